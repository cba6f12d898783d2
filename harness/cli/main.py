"""The command line: ``harness run``, ``harness list``, ``harness report``, ``harness compare`` and ``harness export``.

A shipped ``--preset``, a ``--config`` TOML file (same keys as the long flags), flags and
plugin options are merged, in that order, into one :class:`~harness.config.settings.RunConfig`. Every usage or configuration
problem is one line on stderr and exit code 2; a run ends with 0 when every cell is
``ok`` or ``unsupported`` and 1 when any cell errored or timed out. ``harness export`` ends with 1 when the
network cannot be written in the format or the written file does not match it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import harness
from harness.config.settings import (
    ConfigError,
    RunConfig,
    build_config,
    load_preset,
    load_toml,
    preset_description,
    preset_names,
)
from harness.results.store import STORE_NAME, RunLock, StoreError


def report(run_dir: Path, host: Host, write: Any) -> int:
    """:func:`harness.results.report.report`, imported when first needed (reports bring pandas)."""
    from harness.results.report import report as rebuild

    return rebuild(run_dir, host, write)


def validate_names(*args: Any, **kwargs: Any) -> list[str]:
    """:func:`harness.run.names.validate_names`, imported when first needed (it brings torch)."""
    from harness.run.names import validate_names as validate

    return validate(*args, **kwargs)

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host

EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE = 0, 1, 2
# harness export: the network cannot be exported, or the file it wrote does not match it.
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit 2), not usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _plugin_args(values: list[str] | None) -> dict[str, list[str]]:
    from harness.run.host import is_plugin_file

    blocked, extra = [], []
    for value in values or []:
        if value.startswith("no:"):
            blocked.append(value.removeprefix("no:"))
        else:
            # A file path is made absolute so that worker processes find the same file.
            extra.append(os.path.abspath(value) if is_plugin_file(value) else value)
    return {"blocked": blocked, "extra_modules": extra}


def _require_command_line_plugins(host: Host) -> None:
    """A plugin the user named with ``-p`` must load: a typo would otherwise run without it."""
    from harness.run.host import COMMAND_LINE

    for record in host.plugins:
        if record.origin == COMMAND_LINE and record.error:
            raise UsageError(f"harness: error: cannot load plugin {record.module!r} given with -p: {record.error}")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("what to compare")
    sweep.add_argument("--backends", help="'all' (the available ones) or a comma list, e.g. native,tensorly [all]")
    sweep.add_argument("--models", help="comma list of models: registered ones (harness list), torchvision:NAME, "
                                        "pkg.module:callable or path/to/file.py:callable [lenet5]")
    sweep.add_argument("--datasets", help="comma list of datasets: registered ones (harness list), folder:PATH "
                                          "(an ImageFolder with train/ and test/ or val/) or random:CxHxW "
                                          "[mnist-embedded]")
    sweep.add_argument("--methods", help="'all' or a comma list, e.g. svd,tucker2; 'auto' picks, per layer, the "
                                         "backend's lowest-error decompose-init method ('all' leaves it out) "
                                         "[all, none with --mix]")
    sweep.add_argument("--mix", action="append", metavar="KEY=METHOD,...",
                       help="one cell with a method per layer: KEY is conv, linear or a glob over layer paths "
                            "(a path beats a kind; unmapped layers stay dense), e.g. 'conv=tucker2,linear=svd'; "
                            "repeat the flag or separate mixes by ';' to compare several")
    sweep.add_argument("--targets", help="comma list of conv, linear, all (both at once) [conv,linear,all]")
    sweep.add_argument("--ratios", help="target compression of the decomposed layers' parameters [2,4,8]")
    sweep.add_argument("--rank-selection", metavar="NAME[:ARG]",
                       help="how each layer's parameter budget is chosen, the same for every backend: ratio "
                            "(dense/ratio), energy[:SHARE], vbmf, budget, sensitivity or a plugin's (see "
                            "'harness list'); a comma list compares them; SEL@REF (e.g. budget@vbmf) holds SEL "
                            "to the total REF chooses, for a comparison at equal parameters [ratio]")
    sweep.add_argument("--tt-d", metavar="D,...",
                       help="numbers of tensor modes to sweep for the Linear layers of tensorized methods ('harness "
                            "list' marks them), one cell each, e.g. 2,3,4; other methods run once "
                            "[3, unswept]; explicit per-layer shapes: tensor_shapes in --config")
    sweep.add_argument("--tt-pad", action="store_const", const=True,
                       help="zero-pad Linear sizes that factor badly (e.g. a prime) up to sizes that factor evenly, "
                            "within the original layer's budget, for tensorized methods")
    sweep.add_argument("--seeds", help="comma list of seeds; reports give mean, std and n over them [0]")
    sweep.add_argument("--skip", metavar="PATTERNS",
                       help="comma list of glob patterns over cell ids (backend/model/dataset/method/target/xR/sS"
                            "[/r-SELECTION][/t-SHAPES]) "
                            "to leave out, e.g. 'tednet/*/*/btt/linear/*'")
    sweep.add_argument("--include-edges", dest="keep_edges_dense", action="store_const", const=False,
                       help="also decompose the first conv and the last Linear (kept dense by default)")
    sweep.add_argument("--layers", metavar="GLOB,...",
                       help="decompose only the layers whose path matches a glob (e.g. 'layer3.*,layer4.*'; paths "
                            "as in model.named_modules()); the edge rule then does not apply")
    models = parser.add_argument_group("models, weights and data")
    models.add_argument("--weights", metavar="FILE | MODEL=FILE,...",
                        help="start the dense baseline from a local checkpoint (a state dict, or a dict holding one "
                             "under state_dict/model/...) instead of a random init; --baseline-epochs then "
                             "fine-tunes it, 0 uses it as it is")
    models.add_argument("--image-size", metavar="PIXELS",
                        help="side of the square crop of folder:PATH datasets [224]")
    models.add_argument("--subset", metavar="N", help="keep at most N images per class in each split of folder:PATH "
                                                      "datasets, for quick studies")
    models.add_argument("--data-workers", metavar="N", help="loader processes for folder:PATH datasets [2]")
    models.add_argument("--no-train", action="store_const", const=True,
                        help="a data-free speed study: no training or accuracy; random inputs of the model's native "
                             "size (--datasets random:3x224x224 unless given): params, FLOPs, reconstruction error, "
                             "decomposition time and latency")
    train = parser.add_argument_group("training (the same for every backend)")
    train.add_argument("--epochs", help="fine-tuning epochs after decomposition [2]")
    train.add_argument("--baseline-epochs", help="epochs to train the dense baseline [6]")
    train.add_argument("--lr", help="fine-tuning learning rate (SGD, momentum 0.9, cosine schedule) [0.01]")
    train.add_argument("--lr-schedule", help="fine-tuning schedule: cosine (to zero) or constant [cosine]")
    train.add_argument("--baseline-lr", help="baseline learning rate [0.05]")
    train.add_argument("--clip-grad-norm", help="gradient-norm clipping for all training, 0 to disable [5]")
    train.add_argument("--batch-size", help="training batch size [64]")
    train.add_argument("--latency-batch", help="batch size of the latency measurement [32]")
    train.add_argument("--latency-passes", metavar="N",
                       help="passes of the quiet latency phase over all networks, 7 alternating rounds each [3]")
    train.add_argument("--latency-threads", metavar="N",
                       help="torch threads of the latency phase; more than one times multi-threaded inference, "
                            "which varies more from run to run [1]")
    train.add_argument("--memory-format", metavar="contiguous|channels_last",
                       help="memory format of the networks and the batch the latency phase times: channels_last is "
                            "NHWC, in which oneDNN runs convs (and factored ones most) fastest on CPU [contiguous]")
    train.add_argument("--no-dense-control", dest="dense_control", action="store_const", const=False,
                       help="do not fine-tune the dense baseline as a control (it is, by default, once per seed)")
    train.add_argument("--save-models", action="store_const", const=True,
                       help="keep every ok cell's fine-tuned network in RUN_DIR/models for 'harness export', and "
                            "time each one and its dense baseline in ONNX Runtime too when onnxruntime is installed")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--out", metavar="DIR", help="run directory [runs/TIMESTAMP]")
    execution.add_argument("--resume", metavar="DIR", help="finish an interrupted run: run only its missing cells")
    execution.add_argument("--retry", metavar="STATUSES",
                           help="with --resume: also run again the cells stored with these statuses (timeout, "
                                "error; e.g. after a raised --cell-timeout or a machine that was busy)")
    execution.add_argument("--device", help="auto, cpu or cuda [auto]")
    execution.add_argument("--cell-timeout", metavar="SECONDS", help="stop a cell after this long [900]")
    execution.add_argument("--jobs", help="worker processes running cells in parallel [one per CPU core; 1 on a GPU]")
    execution.add_argument("--executor", help="process (workers, enforce the timeout), inprocess, or ray (each cell "
                                              "a Ray task, on this machine or a cluster) [process]")
    execution.add_argument("--ray-address", help="with --executor ray: the cluster to join, e.g. HEAD:6379 or auto "
                                                 "[start a local one]")
    execution.add_argument("--cpus-per-cell", help="with --executor ray: CPUs each cell's task asks for (its torch "
                                                   "threads) [1]")
    execution.add_argument("--gpus-per-cell", help="with --executor ray and --device cuda: GPUs each cell's task asks "
                                                   "for [0]")
    execution.add_argument("--cache-dir", metavar="DIR", help="where dense baselines are cached [~/.cache/tensor-harness]")
    execution.add_argument("--data-dir", metavar="DIR", help="folder holding torchvision datasets")
    execution.add_argument("--download", action="store_const", const=True,
                           help="download torchvision datasets into --data-dir if missing")
    execution.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file (keys = long flags)")
    execution.add_argument("--preset", metavar="NAME",
                           help="start from a shipped study (see 'harness list'); --config and flags override it")


# harness.run.export.FORMATS, spelled out here so that --help needs no torch (a test keeps them equal).
EXPORT_FORMATS = ("pt", "torchscript", "onnx")


def build_parser(host: Host | None) -> Parser:
    parser = Parser(prog="harness", description="Compare tensor-decomposition backends for compressing neural networks.")
    parser.add_argument("--version", action="version", version=f"harness {harness.__version__}")
    parser.add_argument("-p", dest="plugins", action="append", metavar="NAME",
                        help="'-p no:NAME' blocks a plugin; '-p module.path' (the current folder included) or "
                             "'-p path/to/file.py' loads a module as a plugin")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    # -p is read ahead of parsing (plugins must load first); it is declared on every parser so it may stand anywhere.
    plugin_flag = argparse.ArgumentParser(add_help=False)
    plugin_flag.add_argument("-p", dest="plugins", action="append", metavar="NAME", default=argparse.SUPPRESS,
                             help="'-p no:NAME' blocks a plugin; '-p module.path' loads a module as a plugin")
    run = sub.add_parser("run", parents=[plugin_flag], help="decompose, fine-tune, measure and report",
                         description="Run every backend over the same models, data and budgets.")
    add_run_options(run)
    plugin_group = run.add_argument_group("options added by plugins")
    before = {a.dest for a in run._actions}
    if host is not None:  # None: the top-level --help, which lists commands only and loads no plugin
        host.pm.hook.harness_addoption.call_historic(kwargs={"parser": plugin_group})
    run.set_defaults(_plugin_keys={a.dest for a in run._actions} - before)
    listing = sub.add_parser("list", parents=[plugin_flag],
                             help="show backends, methods, rank selectors, models, datasets, reports and plugins",
                             description="Show what the installed plugins provide.")
    listing.add_argument("--plugins", dest="plugins_only", action="store_true",
                         help="only the plugins: module, distribution, version and hooks")
    sub.add_parser("plugins", parents=[plugin_flag], help="same as 'list --plugins'",
                   description="Show each plugin, its distribution and version and the hooks it implements.")
    report = sub.add_parser("report", parents=[plugin_flag],
                            help="rebuild a run's reports from its store, or compare two runs",
                            description="With one RUN_DIR: rebuild every report from RUN_DIR/results.sqlite "
                                        "(no recomputation). With two: show what changed from RUN_A to RUN_B, "
                                        "cell by cell.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare = sub.add_parser("compare", parents=[plugin_flag], help="show what changed between two runs",
                             description="Match the cells of two runs by id and list those that changed.")
    compare.add_argument("run_dirs", nargs=2, metavar="RUN_DIR")
    export = sub.add_parser("export", parents=[plugin_flag],
                            help="write a kept network (run with --save-models) as a deployable file, checked on "
                                 "the test set",
                            description="Write one cell's kept network as a torch.export program (pt), TorchScript "
                                        "or ONNX, read the file back and compare its outputs with the kept network "
                                        "on the cell's test set (max abs difference, float32, within 1e-4). Pick the "
                                        "cell by id or with --best and constraints.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("cell_id", nargs="?", metavar="CELL_ID", help="as in the run's cells.csv")
    export.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, default="onnx",
                        help="pt: torch.export program (torch.export.load(FILE).module()); torchscript: "
                             "torch.jit.load(FILE); onnx: for ONNX Runtime [onnx]")
    export.add_argument("--out", metavar="FILE", help="[BACKEND-METHOD-TARGET-xRATIO-sSEED.pt2|.torchscript.pt|.onnx]")
    export.add_argument("--best", metavar="METRIC",
                        help="instead of CELL_ID: the kept decomposed network best by METRIC (acc_final, speedup, "
                             "ort_speedup, compression, ...; latency_ms and params: lowest) within the constraints")
    export.add_argument("--min-compression", type=float, metavar="X", help="with --best: compression at least X")
    export.add_argument("--min-speedup", type=float, metavar="X", help="with --best: eager speedup at least X")
    export.add_argument("--max-latency-ms", type=float, metavar="MS", help="with --best: eager latency at most MS")
    export.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="with --best: final accuracy at most POINTS below the dense baseline")
    # Parsed by harness.cli.bench itself (main hands it the rest of the command line); declared for --help.
    sub.add_parser("bench", add_help=False, help="reproduce the project's speed figures on this machine (see "
                   "harness bench --help)")
    for sub_parser in (report, compare):
        sub_parser.add_argument("--threshold", type=float, default=0.5, metavar="POINTS",
                                help="an accuracy change above this many points counts as changed [0.5]")
        sub_parser.add_argument("--relative-threshold", type=float, default=0.1, metavar="FRACTION",
                                help="a speedup, compression or error change above this fraction counts [0.1]")
        sub_parser.add_argument("--csv", metavar="FILE", help="also write the comparison table to FILE")
    return parser


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_plugins(host: Host) -> int:
    _echo("plugins:")
    from harness.run.host import BUILTIN, COMMAND_LINE

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
        _echo(f"  {record.name:<18} {record.module} ({origin}): {status}")
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
    for name, selector in sorted(host.rank_selectors.items()):
        usage = "uses --ratios" if selector.uses_ratio else "ignores --ratios"
        argument = f"{name}:ARG" if selector.takes_argument else name
        _echo(f"  {argument:<14} {selector.description} ({usage})")
    references = [n for n, s in sorted(host.rank_selectors.items()) if not s.uses_ratio]
    matchable = [n for n, s in sorted(host.rank_selectors.items()) if s.matchable]
    if references and matchable:
        _echo(f"  SEL@REF        SEL ({', '.join(matchable)}) spends the total REF ({', '.join(references)}) chooses: "
              "equal total parameters")
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


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.preset:
        values.update(load_preset(args.preset))
    if args.config:
        values.update(load_toml(args.config))
    skip = {"command", "plugins", "config", "preset", "resume", "retry", "_plugin_keys", "run_dir"}
    values.update({k: v for k, v in vars(args).items() if k not in skip and v is not None})
    return values


# Settings that change how a run executes, not what it measures: the only ones --resume takes from the command line.
RESUME_MAY_CHANGE = ("jobs", "cell_timeout", "executor", "latency_passes", "ray_address", "cpus_per_cell",
                     "gpus_per_cell", "save_models")


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


RETRYABLE = ("timeout", "error")


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
        if made_here and {p.name for p in run_dir.iterdir()} <= {RunLock.NAME}:
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused command leaves nothing behind
        raise
    finally:
        lock.release()


def _resume_config(run_dir: Path, values: dict[str, Any], host: Host, args: argparse.Namespace) -> RunConfig:
    """The stored configuration of the run in ``run_dir``, with the settings ``--resume`` may change applied."""
    from harness.results.store import read_meta

    stored = read_meta(run_dir).get("config")
    if not stored:
        raise ConfigError(f"cannot resume {str(run_dir)!r}: its store was never set up (killed before its "
                          f"configuration was written); start it again with --out {run_dir}")
    config = RunConfig.from_dict(stored)
    config.out = str(run_dir)  # the run directory as found now, should it have moved since
    # Only settings that do not change results may differ on resume.
    for key in RESUME_MAY_CHANGE:
        if key in values:
            setattr(config, key, build_config({key: values[key]}).__getattribute__(key))
    validate_names(config, host.backends, host.models, host.datasets, host.rank_selectors)
    _refuse_other_settings(run_dir, config, values, host, args._plugin_keys)
    return config


def _claim_fresh(run_dir: Path) -> None:
    """Refuse a directory that holds a run; clear a store left half-made by a kill (schema, no configuration)."""
    from harness.run import session
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


def cmd_report(host: Host, args: argparse.Namespace) -> int:
    from harness.run import session

    if len(args.run_dirs) == 1:
        return report(Path(args.run_dirs[0]), host, _echo)
    if len(args.run_dirs) != 2:
        raise UsageError("harness report: give one RUN_DIR to rebuild its reports, or two to compare them")
    return cmd_compare(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.results.compare import compare_runs
    from harness.results.store import load_results

    if not (0 <= args.threshold < float("inf") and 0 <= args.relative_threshold < float("inf")):
        raise UsageError("harness compare: thresholds must be finite numbers, not negative")
    first, second = (load_results(path) for path in args.run_dirs)
    for line in first.warnings + second.warnings:
        print(line, file=sys.stderr)
    comparison = compare_runs(first, second, args.threshold, args.relative_threshold)
    changed = comparison.changed
    _echo(f"A = {args.run_dirs[0]}  ({first.meta.get('command', '?')})")
    _echo(f"B = {args.run_dirs[1]}  ({second.meta.get('command', '?')})")
    _echo(f"{len(comparison.table)} cells in both runs: {len(changed)} changed "
          f"(accuracy > {args.threshold:g} points, speedup/compression/error > {args.relative_threshold:.0%}); "
          f"{len(comparison.only_a)} only in A, {len(comparison.only_b)} only in B")
    if not changed.empty:
        shown = changed[["cell_id", "status_a", "status_b", "acc_final_a", "acc_final_b", "speedup_a", "speedup_b",
                         "why"]]
        _echo(tabulate(shown, headers="keys", tablefmt="simple", showindex=False, floatfmt=".2f"))
    for label, ids in (("only in A", comparison.only_a), ("only in B", comparison.only_b)):
        for cell_id in ids:
            _echo(f"{label}: {cell_id}")
    if args.csv:
        try:
            comparison.table.to_csv(args.csv, index=False)
        except OSError as exc:
            raise UsageError(f"harness compare: cannot write {args.csv!r}: {exc.strerror or exc}") from None
        _echo(f"comparison written to {args.csv}")
    return EXIT_OK


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1000 or unit == "MB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _export_choice(args: argparse.Namespace, cells: Any, run_dir: Path) -> Any:
    """The cell ``harness export`` writes: by id, or the best kept decomposed network within the constraints."""
    from harness.results.aggregate import decomposed_ok, with_delta
    from harness.run.export import pick_cell

    constraints = {"min_compression": args.min_compression, "max_latency_ms": args.max_latency_ms,
                   "min_speedup": args.min_speedup, "max_drop_pp": args.max_drop}
    if (args.cell_id is None) == (args.best is None):
        raise UsageError("harness export: give a CELL_ID or --best METRIC, one of the two")
    if args.cell_id is not None:
        if any(value is not None for value in constraints.values()):
            raise UsageError("harness export: --min-compression, --min-speedup, --max-latency-ms and --max-drop go "
                             "with --best, not with a CELL_ID")
        match = cells[cells["cell_id"] == args.cell_id]
        if match.empty:
            raise UsageError(f"harness export: no cell {args.cell_id!r} in {run_dir} (the ids are in its cells.csv)")
        cell = match.iloc[0]
        if cell["status"] != "ok":
            raise UsageError(f"harness export: cell {args.cell_id!r} is {cell['status']}, not ok: nothing to export")
        return cell
    kept = with_delta(decomposed_ok(cells))
    kept = kept[kept["model_file"].notna()] if "model_file" in kept.columns else kept.iloc[0:0]
    if kept.empty:
        raise UsageError(f"harness export: {run_dir} kept no decomposed network (run it with --save-models)")
    if args.best not in kept.columns or not _numeric(kept[args.best]):
        raise UsageError(f"harness export: --best {args.best!r} is not a metric of this run (e.g. acc_final, speedup, "
                         f"compression{', ort_speedup' if 'ort_speedup' in kept.columns else ''})")
    cell = pick_cell(kept, args.best, **constraints)
    if cell is None:
        given = ", ".join(f"{name} {value:g}" for name, value in constraints.items() if value is not None)
        raise UsageError(f"harness export: no kept decomposed network of {run_dir} meets the constraints ({given})")
    return cell


def _numeric(column: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(pd.to_numeric(column, errors="coerce").dropna())


def cmd_export(host: Host, args: argparse.Namespace) -> int:
    from harness.results.store import load_results, read_cell
    from harness.run import export, session
    from harness.run.models import ModelUnavailable
    from harness.run.networks import NetworkInvalid

    run_dir = Path(args.run_dir)
    results = load_results(run_dir)
    for line in results.warnings:
        print(line, file=sys.stderr)
    cell = _export_choice(args, results.cells, run_dir)
    cell_id = cell["cell_id"]
    model_file = cell.get("model_file")
    if not isinstance(model_file, str):
        raise UsageError(f"harness export: cell {cell_id!r} has no kept network: {run_dir} was run without "
                         "--save-models")
    path = run_dir / model_file
    if not path.is_file():
        raise UsageError(f"harness export: the kept network of {cell_id!r} is missing ({path})")
    try:
        model, data = session.kept_network(run_dir, results.meta, cell, read_cell(run_dir, cell_id), host, path)
    except NetworkInvalid as exc:
        raise UsageError(f"harness export: {exc}") from None
    except ModelUnavailable as exc:
        raise UsageError(f"harness export: the model of {cell_id!r} cannot be built here: {exc}") from None
    out = Path(args.out) if args.out else export.default_out(cell, args.fmt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"harness export: cannot write into {str(out.parent)!r}: {exc.strerror or exc}") from None
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"harness export: cannot write {str(out)!r}")
    example = data.head("test", 2)[0]
    # The ONNX graph the run timed in ONNX Runtime is this very export: copied, then checked like a new one.
    timed = run_dir / cell["onnx_file"] if args.fmt == "onnx" and isinstance(cell.get("onnx_file"), str) else None
    try:
        check = export.export_and_check(model, example, args.fmt, out, (x for x, _ in data.test_batches(256)), timed)
    except export.ExportFailed as exc:
        print(f"harness export: {cell_id}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _echo(f"wrote {out} ({args.fmt}, {_size(check['bytes'])}) from cell {cell_id}")
    verdict = "match" if check["match"] else "do NOT match"
    bound = "≤" if check["match"] else ">"
    _echo(f"read back from the file, its outputs {verdict} the kept network on {check['inputs']} test inputs: max abs "
          f"difference {check['max_abs_diff']:.2e} {bound} {export.MATCH_TOLERANCE:g}")
    return EXIT_OK if check["match"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # -p must be known before plugins load, so it is read ahead of the full parse.
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("-p", dest="plugins", action="append")
        early, _ = pre.parse_known_args(argv)
        rest = [a for a in argv if a not in ("-p", *(early.plugins or []))]
        if rest[:1] == ["bench"]:
            from harness.cli import bench

            return bench.run(rest[1:], _echo)
        if not rest or rest[0] in ("-h", "--help"):  # the command list: no plugin (and no torch) needed
            parser = build_parser(None)
            if rest:
                parser.parse_args(rest[:1])  # prints the help and exits 0, as argparse does
            parser.print_help()
            return EXIT_USAGE
        plugin_args = _plugin_args(early.plugins)
        from harness.run.host import load_host

        host = load_host(**plugin_args)
        _require_command_line_plugins(host)
        parser = build_parser(host)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "plugins" or (args.command == "list" and args.plugins_only):
            return cmd_plugins(host)
        if args.command == "list":
            return cmd_list(host)
        if args.command == "report":
            return cmd_report(host, args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "export":
            return cmd_export(host, args)
        return cmd_run(host, args, argv, plugin_args)
    except (UsageError, ConfigError, StoreError) as exc:
        print(f"harness: error: {exc}" if not str(exc).startswith("harness") else f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(f"harness: internal error: {type(exc).__name__}: {exc} (set HARNESS_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
