"""``harness plugins`` and ``harness list``: what is installed, available and registered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.cli.common import EXIT_OK, _echo
from harness.config.settings import preset_description, preset_names

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def cmd_plugins(host: Host) -> int:
    _echo("plugins:")
    from harness.run.host import BUILTIN, COMMAND_LINE

    # A -p file is its own name and module: shown once. Names are aligned however long a path is.
    width = max([18, *(len(record.name) for record in host.plugins)])
    for record in host.plugins:
        if record.origin == BUILTIN:
            origin = BUILTIN
        elif record.origin == COMMAND_LINE:
            origin = "loaded with -p"
        else:
            origin = "entry point" + (f" of {record.distribution} {record.version}" if record.distribution else "")
        if record.blocked:
            status = "blocked (-p no:NAME)"
        else:
            status = f"FAILED: {record.error}" if record.error else ", ".join(record.hooks)
        module = "" if record.module == record.name else f"{record.module} "
        _echo(f"  {record.name:<{width}} {module}({origin}): {status}")
    for problem in host.registration_errors:
        _echo(f"warning: {problem}")
    return EXIT_OK


def cmd_list(host: Host) -> int:
    _echo("backends:")
    for name, info in sorted(host.backends.items()):
        state = "available" if info.available else f"unavailable ({info.install_hint or 'library missing'})"
        version = f" {info.library_version}" if info.library_version else ""
        _echo(f"  {name:<12} {info.library}{version}, init={info.init}, {state}")
        for kind, methods in info.methods.items():
            # Methods whose init differs from the backend's default are marked, e.g. "cp (scratch)".
            shown = [m if info.init_for(m, kind) == info.init else f"{m} ({info.init_for(m, kind)})" for m in methods]
            _echo(f"      {kind:<7} {', '.join(shown)}")
        if info.tensorized_methods:
            # Linear methods whose shapes --tt-d, --tt-pad and tensor_shapes set.
            shaped = [m for m in info.methods_for("linear") if m in info.tensorized_methods]
            _echo(f"      tensorized: {', '.join(shaped)} (Linear; --tt-d, --tt-pad, tensor_shapes)")
        if info.conv_unsupported:
            _echo(f"      cannot: conv {', '.join(sorted(info.conv_unsupported))}")
    _echo("  every backend also takes --methods auto (per layer, its lowest-error decompose-init method) "
          "and --mix 'conv=M,linear=M,PATTERN=M' (a method per layer, in one cell)")
    _echo("rank selectors (harness run --rank-selection NAME[:ARG]):")
    shown = {name: f"{name}:ARG" if selector.takes_argument else name
             for name, selector in host.rank_selectors.items()}
    width = max([14, *map(len, shown.values())])
    for name, selector in sorted(host.rank_selectors.items()):
        usage = "uses --ratios" if selector.uses_ratio else "ignores --ratios"
        _echo(f"  {shown[name]:<{width}} {selector.description} ({usage})")
    references = [n for n, s in sorted(host.rank_selectors.items()) if not s.uses_ratio]
    matchable = [n for n, s in sorted(host.rank_selectors.items()) if s.matchable]
    if references and matchable:
        _echo(f"  {'SEL@REF':<{width}} SEL ({', '.join(matchable)}) spends the total REF ({', '.join(references)}) "
              "chooses: equal total parameters")
    _echo("models:")
    for name, spec in sorted(host.models.items()):
        _echo(f"  {name:<14} {spec.description}")
    _echo("  torchvision:NAME  any torchvision classification architecture (resnet50, vgg16, mobilenet_v2, ...), "
          "random weights; pkg.module:callable and path/file.py:callable call your own builder")
    _echo("datasets:")
    for name, spec in sorted(host.datasets.items()):
        _echo(f"  {name:<14} {spec.description}")
    _echo("  folder:PATH    an ImageFolder with train/ and test/ (or val/), streamed; random:CxHxW random inputs "
          "for data-free speed studies (--no-train)")
    _echo("reports:")
    for name in host.report_plugins:
        _echo(f"  {name}")
    _echo("presets (harness run --preset NAME):")
    names = preset_names()
    width = max([14, *(len(name) for name in names)])
    for name in names:
        _echo(f"  {name:<{width}} {preset_description(name)}")
    return cmd_plugins(host)
