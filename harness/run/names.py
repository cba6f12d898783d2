"""Names checked against what plugins registered: backends, models, datasets, methods, mixes, rank selectors.

:func:`validate_names` runs once a :class:`harness.config.settings.RunConfig` is built and the plugins are loaded:
``all`` is resolved to the available backends and declared methods, every name must be known, and rank selections
are written in canonical form. Every problem is a one-line :class:`harness.config.settings.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

from harness.config.mixing import AUTO, Mix, check_labels
from harness.config.settings import ConfigError, RunConfig
from harness.run.data import DataUnavailable, resolve_dataset
from harness.run.models import ModelUnavailable, resolve_model


def validate_names(config: RunConfig, backends: dict, models: dict, datasets: dict,
                   rank_selectors: dict | None = None) -> list[str]:
    """Resolve ``all`` and check every name against what plugins registered.

    Returns the names of requested-as-``all`` backends that were skipped because their
    library is missing. Raises :class:`ConfigError` for any unknown name. With
    ``rank_selectors`` the rank selections are checked too and written in canonical form
    (``energy`` becomes ``energy:0.9``), so equal selections share their cells.
    """
    skipped: list[str] = []
    if config.backends == ["all"]:
        config.backends = [n for n, info in backends.items() if info.available]
        skipped = [n for n, info in backends.items() if not info.available]
        if not config.backends:
            raise ConfigError("no backend is available: run `harness list` to see why")
    for name in config.backends:
        if name not in backends:
            installed = ", ".join(sorted(backends)) or "none"
            raise ConfigError(f"unknown backend {name!r} (installed: {installed})")
        if not backends[name].available:
            hint = backends[name].install_hint
            raise ConfigError(f"backend {name!r} is unavailable: its library {backends[name].library} is missing"
                              + (f" ({hint})" if hint else ""))
    for name in config.models:
        try:
            resolve_model(name, models)
        except ModelUnavailable as exc:
            raise ConfigError(str(exc)) from None
    for name in config.datasets:
        try:
            resolve_dataset(name, datasets, config.data_options())
        except DataUnavailable as exc:
            raise ConfigError(str(exc)) from None
    for model in config.weights:
        if model != "*" and model not in config.models:
            raise ConfigError(f"weights are given for {model!r}, which is not among the run's models "
                              f"({', '.join(config.models)})")
    declared = sorted({m for n in config.backends for m in backends[n].all_methods()})
    # "all" is every declared method; auto is a strategy over them, asked for by name only.
    methods = [m for name in config.methods for m in (declared if name == "all" else [name])]
    config.methods = list(dict.fromkeys(methods))
    known = ", ".join([*declared, AUTO])
    for method in config.methods:
        if method not in declared and method != AUTO:
            raise ConfigError(f"unknown method {method!r} for backends {', '.join(config.backends)} "
                              f"(known: {known})")
    mixes = [Mix.parse(spec) for spec in config.mix]
    for mix in mixes:
        for method in mix.methods:
            if method not in declared and method != AUTO:
                raise ConfigError(f"mix {mix.spec!r}: unknown method {method!r} for backends "
                                  f"{', '.join(config.backends)} (known: {known})")
    try:
        check_labels(mixes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if rank_selectors is not None:
        from harness.contract.selection import normalize_spec

        selections: list[str] = []
        for spec in config.rank_selection:
            try:
                canonical = normalize_spec(spec, rank_selectors)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if canonical not in selections:
                selections.append(canonical)
        config.rank_selection = selections
    if config.data_dir is not None:
        config.data_dir = str(Path(config.data_dir).expanduser())
    return skipped
