"""``harness run``: a fresh run or ``--resume``, under the run directory's lock."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli.common import EXIT_INTERRUPTED, UsageError, _echo, report, validate_names
from harness.config.settings import ConfigError, RunConfig, build_config, check_values, load_preset, load_toml
from harness.plan.status import RETRYABLE as RETRYABLE_STATUSES
from harness.results.store import STORE_NAME, RunLock, StoreError

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.preset:
        values.update(load_preset(args.preset))
    if args.config:
        from_file = load_toml(args.config)
        check_values(from_file, f"config file {args.config!r}", args._plugin_keys)
        values.update(from_file)
    skip = {"command", "plugins", "config", "preset", "resume", "retry", "_plugin_keys", "run_dir"}
    values.update({k: v for k, v in vars(args).items() if k not in skip and v is not None})
    return values


# Settings that change how a run executes, not what it measures: the only ones --resume takes from the command line.
RESUME_MAY_CHANGE = ("jobs", "cell_timeout", "executor", "latency_passes", "ray_address", "cpus_per_cell",
                     "gpus_per_cell", "save_models", "quantize")


def _refuse_other_settings(run_dir: Path, config: RunConfig, values: dict[str, Any], host: Host,
                           plugin_keys: Any) -> None:
    """Raise ConfigError when the command asks ``--resume`` for settings other than the run's own.

    Resuming takes the stored settings; silently dropping, say, a preset's new rank selection would leave the user
    believing it ran. Settings are compared after the same normalisation (``all`` expanded, canonical specs).
    """
    given = {k: v for k, v in values.items() if k not in RESUME_MAY_CHANGE and k != "out"}
    if not given:
        return
    requested = build_config(given, plugin_keys=plugin_keys)
    validate_names(requested, host.backends, host.models, host.datasets, host.rank_selectors)
    missing = object()
    differ = sorted(key for key in given if hasattr(config, key)
                    and getattr(requested, key, missing) != getattr(config, key, missing))
    if differ:
        raise ConfigError(f"cannot resume {str(run_dir)!r} with other settings ({', '.join(differ)}): --resume runs "
                          "the missing cells of the run as it was set up; start a new run with --out for new settings")


RETRYABLE = tuple(str(status) for status in RETRYABLE_STATUSES)


def _retry_statuses(args: argparse.Namespace) -> tuple[str, ...]:
    """The stored statuses ``--retry`` runs again: only with ``--resume``, only ones a rerun can change."""
    if args.retry is None:
        return ()
    if not args.resume:
        raise UsageError("harness run: --retry goes with --resume DIR (it reruns cells of a stored run)")
    statuses = tuple(dict.fromkeys(s.strip() for s in args.retry.split(",") if s.strip()))
    wrong = [s for s in statuses if s not in RETRYABLE]
    if wrong or not statuses:
        raise UsageError(f"harness run: --retry takes {' and/or '.join(RETRYABLE)}, not {args.retry!r} (ok, "
                         "unsupported and over_budget cells would come out the same)")
    return statuses


def _store_opener(run_dir: Path, resume: bool) -> Any:
    """What the session opens its store with: the run's existing store when resuming (the resume noted in its
    metadata), else a new one made with the metadata the session gives."""
    import datetime as dt

    from harness.results.store import Store

    def open_store(meta: dict[str, Any]) -> Store:
        if not resume:
            return Store.create(run_dir, meta)
        store = Store(run_dir)
        store.set_meta({"resumed_at": dt.datetime.now().isoformat(timespec="seconds")})
        return store

    return open_store


def cmd_run(host: Host, args: argparse.Namespace, argv: list[str], plugin_args: dict[str, list[str]]) -> int:
    from harness.run import session

    values = _config_values(args)
    retry = _retry_statuses(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / STORE_NAME).is_file():
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no results.sqlite")
        config = _resume_config(run_dir, values, host, args)  # reads the store only: a refusal changes nothing
    else:
        config = build_config(values, plugin_keys=args._plugin_keys)
        skipped = validate_names(config, host.backends, host.models, host.datasets, host.rank_selectors)
        for name in skipped:
            info = host.backends[name]
            _echo(f"skipping backend {name}: {info.library} is not installed ({info.install_hint})")
        run_dir = Path(config.out or session.default_run_dir())
    made_here = not run_dir.exists()
    # One driver per run directory, from before the "does it hold a run?" check to the last report, so two
    # commands can neither both start a fresh run there nor both resume it.
    lock = RunLock(run_dir)
    try:
        if not args.resume:
            _claim_fresh(run_dir)
            config.out = str(run_dir)
        host.pm.hook.harness_configure.call_historic(kwargs={"config": config})
        try:
            session.execute(config, host, run_dir, argv, plugin_args, _echo, _store_opener(run_dir, args.resume),
                            retry=retry)
            return report(run_dir, host, _echo)
        except KeyboardInterrupt:
            print(f"harness: interrupted; finished cells are kept (continue with --resume {run_dir})",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    except (ConfigError, StoreError):
        if not args.resume:
            _leave_nothing(run_dir, made_here)
        raise
    finally:
        lock.release()


def _leave_nothing(run_dir: Path, made_here: bool) -> None:
    """A fresh run refused before any cell finished (a bad checkpoint found by the baseline phase, an unreachable
    Ray cluster) leaves nothing behind: its store and lock go, and the directory too where the run made it."""
    from harness.results.store import Store

    store_path = run_dir / STORE_NAME
    if store_path.is_file():
        try:
            store = Store(run_dir)
            finished = bool(store.finished_ids())
            store.close()
        except StoreError:
            return
        if finished:
            return
        for name in (STORE_NAME, f"{STORE_NAME}-journal", f"{STORE_NAME}-wal", f"{STORE_NAME}-shm"):
            (run_dir / name).unlink(missing_ok=True)
    if made_here and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {RunLock.NAME}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _resume_config(run_dir: Path, values: dict[str, Any], host: Host, args: argparse.Namespace) -> RunConfig:
    """The stored configuration of the run in ``run_dir``, with the settings ``--resume`` may change applied."""
    from harness.results.store import read_meta

    stored = read_meta(run_dir).get("config")
    if not stored:
        raise ConfigError(f"cannot resume {str(run_dir)!r}: its store was never set up (killed before its "
                          f"configuration was written); start it again with --out {run_dir}")
    try:
        config = RunConfig.from_dict(stored)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot resume {str(run_dir)!r}: its stored configuration is damaged ({exc})") from None
    config.out = str(run_dir)  # the run directory as found now, should it have moved since
    # Only settings that do not change results may differ on resume.
    changed = {key: values[key] for key in RESUME_MAY_CHANGE if key in values}
    if changed:  # checked beside the stored settings they depend on (--quantize on --save-models and the device)
        built = build_config({"save_models": config.save_models, "device": config.device, **changed})
        for key in changed:
            setattr(config, key, getattr(built, key))
    validate_names(config, host.backends, host.models, host.datasets, host.rank_selectors)
    _refuse_other_settings(run_dir, config, values, host, args._plugin_keys)
    return config


def _claim_fresh(run_dir: Path) -> None:
    """Refuse a directory that holds a run; clear a store left half-made by a kill (schema, no configuration)."""
    from harness.results.store import Store

    if not (run_dir / STORE_NAME).is_file():
        return
    store = Store(run_dir)
    configured, finished = bool(store.meta().get("config")), bool(store.finished_ids())
    store.close()
    if configured or finished:
        raise ConfigError(f"{str(run_dir)!r} already holds a run: use --resume {run_dir} or another --out")
    _echo(f"note: {run_dir} held a store without a configuration (a run killed while starting); replacing it")
    (run_dir / STORE_NAME).unlink()
