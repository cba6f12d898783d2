"""The argument parser of every command, with the run options derived from the settings."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import harness
from harness.cli.common import Parser
from harness.config.settings import DATA, EXECUTION, QUANTIZATIONS, SETTINGS, SWEEP, TRAINING, shown_default

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Every setting's flag, derived from its declaration (:data:`harness.config.settings.SETTINGS`): the flag, its
    help with the default in brackets, its group; then the flags that are not settings (resuming, config files)."""
    groups = {name: parser.add_argument_group(name) for name in (SWEEP, DATA, TRAINING, EXECUTION)}
    for name, setting in SETTINGS.items():
        if setting.flag is None:  # TOML only
            continue
        options: dict = {"dest": name, "help": setting.help + shown_default(name)}
        if setting.metavar:
            options["metavar"] = setting.metavar
        if setting.switch is not None:
            options.update(action="store_const", const=setting.switch)
        elif setting.repeat:
            options["action"] = "append"
        groups[setting.group].add_argument(setting.flag or "--" + name.replace("_", "-"), **options)
    execution = groups[EXECUTION]
    execution.add_argument("--resume", metavar="DIR", help="finish an interrupted run: run only its missing cells")
    execution.add_argument("--retry", metavar="STATUSES",
                           help="with --resume: also run again the cells stored with these statuses (timeout, "
                                "error; e.g. after a raised --cell-timeout or a machine that was busy)")
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
    export.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="int8 (with --format onnx, of a run with --quantize int8): write the INT8 graph the run "
                             "measured and check its test-set accuracy against the run's int8_acc (exactly)")
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
