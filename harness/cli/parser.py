"""The argument parser of every command, with the run options derived from the settings."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import harness
from harness.cli.common import Parser

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


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
