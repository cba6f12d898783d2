"""The plugin manager: loads entry points one by one and collects what plugins register.

Plugins are found through the ``harness`` entry-point group, built-ins included, and
each is imported on its own so that one that fails to import is recorded (and shown by
``harness list``) instead of stopping the host. ``-p`` adds modules by name (found in
the current folder too) or by file path, and ``-p no:NAME`` blocks one, which stays
listed as blocked. Registration hooks are also called plugin by plugin for the same
reason. The host never imports a backend directly: it only knows what plugins
registered here, and :meth:`Host.decompose` is the one way a layer reaches a backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy
from torch import nn

from harness import hookspecs
from harness.contract.backend import BackendInfo, DecomposeRequest, Unsupported, conv_features, layer_kind
from harness.contract.selection import RankSelector
from harness.core.errors import one_line
from harness.run.data import DatasetSpec
from harness.run.models import ModelSpec

ENTRY_POINT_GROUP = "harness"
BUILTIN_MODULES = {"builtin-models": "harness.run.models", "builtin-datasets": "harness.run.data",
                   "builtin-rank-selectors": "harness.run.selectors"}


# Where a plugin came from, as `harness plugins` shows it.
BUILTIN, ENTRY_POINT, COMMAND_LINE = "built into harness", "entry point", "-p"
DISTRIBUTION = "tensor-harness"  # the package whose own entry points (the shipped backends) count as harness's


@dataclass
class PluginRecord:
    """One plugin as the host saw it: where it came from (``origin``), whether it loaded or was blocked."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    origin: str = ENTRY_POINT
    blocked: bool = False


@dataclass
class Host:
    """The loaded plugins and everything they registered."""

    pm: pluggy.PluginManager
    plugins: list[PluginRecord]
    backends: dict[str, BackendInfo]
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    backend_plugin: dict[str, str]
    report_plugins: list[str]
    registration_errors: list[str]
    rank_selectors: dict[str, RankSelector] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def failed_plugins(self) -> list[PluginRecord]:
        return [p for p in self.plugins if p.error]

    def decompose(self, layer: nn.Module, request: DecomposeRequest) -> nn.Module:
        """The replacement of ``layer`` that ``request.backend`` gives: from the callable the backend declared
        for the method, else from the ``harness_decompose_layer`` hook.

        Before any backend code runs, the host refuses (:class:`Unsupported`) a request for a backend that is
        unavailable, a method it does not declare for the layer's kind, or a conv feature it declared it
        cannot handle, so no backend repeats those checks. The caller checks the answer's budget.
        """
        info = self.backends.get(request.backend)
        if info is None:
            raise RuntimeError(f"no plugin registers the backend {request.backend!r}")
        if not info.available:
            raise Unsupported(f"{info.name} is unavailable: {info.install_hint or 'its library is missing'}")
        kind = layer_kind(layer)
        if request.method not in info.methods_for(kind):
            raise Unsupported(f"{info.name} declares no {request.method} for {kind} layers")
        if isinstance(layer, nn.Conv2d):
            gaps = conv_features(layer) & set(info.conv_unsupported)
            if gaps:
                raise Unsupported(f"{info.name} cannot handle conv {', '.join(sorted(gaps))}")
        implementation = info.implementation(kind, request.method)
        if implementation is not None:
            replacement = implementation(layer, request)
        else:
            replacement = self.pm.hook.harness_decompose_layer(layer=layer, request=request)
        if replacement is None:
            raise RuntimeError(f"no plugin answered harness_decompose_layer for backend {request.backend!r}")
        return replacement


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(impl_caller.name for impl_caller in (pm.get_hookcallers(plugin) or []))


def is_plugin_file(spec: str) -> bool:
    """True when a ``-p`` value names a Python file rather than a module path."""
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def import_plugin(spec: str):
    """Import a ``-p`` plugin: a file path (``plugins/mine.py``) or a module path, looked up in the current folder
    too, as ``python -m`` does, so ``harness -p mymodule`` works from the module's folder."""
    if is_plugin_file(spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {spec}")
        name = os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so pickling and dataclasses inside the plugin find their module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(spec)


def load_host(blocked: Iterable[str] = (), extra_modules: Iterable[str] = ()) -> Host:
    """Create the plugin manager, load every plugin and collect their registrations.

    ``blocked`` names plugins (entry-point names or module paths) not to load; they are
    still listed, marked blocked. ``extra_modules`` are module paths or ``.py`` files to
    load as plugins although not installed (``-p``).
    """
    blocked = set(blocked)
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    records: list[PluginRecord] = []

    def register(name: str, module_path: str, load, dist=None, origin: str = ENTRY_POINT) -> None:
        record = PluginRecord(name=name, module=module_path,
                              distribution=getattr(dist, "name", None) if dist else None,
                              version=getattr(dist, "version", None) if dist else None, origin=origin)
        records.append(record)
        if name in blocked or module_path in blocked:
            record.blocked = True
            return
        try:
            plugin = load()
            pm.register(plugin, name=name)
            record.hooks = _hooks_of(pm, plugin)
        except (Exception, SystemExit) as exc:  # a broken plugin must never take the host down, nor end it
            record.error = one_line(exc)

    for name, module_path in BUILTIN_MODULES.items():
        register(name, module_path, lambda m=module_path: importlib.import_module(m), origin=BUILTIN)
    seen_names = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen_names:
            continue
        seen_names.add(ep.name)
        register(ep.name, ep.value, ep.load, ep.dist)
    for spec in extra_modules:
        register(spec, spec, lambda s=spec: import_plugin(s), origin=COMMAND_LINE)

    host = Host(pm=pm, plugins=records, backends={}, models={}, datasets={}, backend_plugin={},
                report_plugins=[], registration_errors=[])
    _collect(host)
    return host


# The dense control's rows carry backend "dense"; a plugin's backend of that name would mix with them.
RESERVED_BACKENDS = frozenset({"dense"})


def _collect(host: Host) -> None:
    """Call each registration hook plugin by plugin, so one faulty plugin only loses its own entries."""

    def collect(hook_name: str, target: dict, key=lambda item: item.name) -> None:
        for impl in getattr(host.pm.hook, hook_name).get_hookimpls():
            owner = impl.plugin_name

            def add(item, owner=owner) -> None:
                name = key(item)
                if hook_name == "harness_register_backends" and name in RESERVED_BACKENDS:
                    host.registration_errors.append(
                        f"plugin {owner!r} registers backend {name!r}, a name the harness reserves; ignored")
                    return
                if name in target:
                    host.registration_errors.append(
                        f"plugin {owner!r} registers {name!r} again; the first registration is kept")
                    return
                target[name] = item
                if hook_name == "harness_register_backends":
                    host.backend_plugin[name] = owner

            try:
                impl.function(add)
            except Exception as exc:
                host.registration_errors.append(f"plugin {owner!r} failed in {hook_name}: {one_line(exc)}")
                for record in host.plugins:
                    if record.name == owner and not record.error:
                        record.error = f"{hook_name}: {one_line(exc)}"

    collect("harness_register_backends", host.backends)
    collect("harness_register_models", host.models)
    collect("harness_register_datasets", host.datasets)
    collect("harness_register_rank_selectors", host.rank_selectors)
    host.report_plugins = [impl.plugin_name for impl in host.pm.hook.harness_report.get_hookimpls()]


def format_exception(exc: BaseException) -> tuple[str, str]:
    """One-line message and full traceback of an exception, for a cell's error fields."""
    return one_line(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
