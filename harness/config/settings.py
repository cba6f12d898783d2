"""The run configuration: defaults, then a TOML file, then command-line flags, validated once.

:class:`RunConfig` is plain data (it is stored with the run and reloaded by
``--resume``). Each setting is declared once, as its field: type and default, its parser
(:mod:`harness.config.values`), its flag and help (:func:`setting`); the ``harness run`` options and the
TOML keys are derived from those declarations, so adding a setting is one line plus its use. Every problem a user can cause — an unknown backend, model, dataset or
method (one named in a ``mix`` too) or rank selector, a malformed mix, a ratio that is not a number above 1,
a number of tensor modes below 1, a malformed ``tensor_shapes`` table, a malformed TOML file — becomes a
:class:`ConfigError` whose message is one line; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.values import (
    MAX_CELL_TIMEOUT,
    ConfigError,
    boolean,
    count,
    directory,
    ints_from,
    names,
    number,
    parse_ints,
    parse_mixes,
    parse_ratios,
    parse_tensor_shapes,
    parse_weights,
    patterns,
    text,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad_norm: float | None = 5.0
    schedule: str = "cosine"


@dataclass(frozen=True)
class DataOptions:
    """Settings of the datasets named on the spot: image size, images kept per class, loader workers."""

    image_size: int | None = None
    subset: int | None = None
    workers: int = 2


TARGETS = ("conv", "linear", "all")
# The dataset of a data-free study: random images of the model's native input size (see harness.run.data).
NATIVE_INPUT = "random:3x224x224"
# Which layer kinds each target decomposes.
TARGET_KINDS = {"conv": ("conv2d",), "linear": ("linear",), "all": ("conv2d", "linear")}


EXECUTORS = ("process", "inprocess", "ray")
MEMORY_FORMATS = ("contiguous", "channels_last")
QUANTIZATIONS = ("none", "int8")
# Sensible upper bounds: a count beyond these is a typo, and would fail late (or never end) instead of now.


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tensor-harness")




# ----------------------------------------------------------------------------- the settings, each declared once

# The groups of `harness run --help`, in order.
SWEEP, DATA, TRAINING, EXECUTION = ("what to compare", "models, weights and data",
                                    "training (the same for every backend)", "execution")


@dataclass(frozen=True)
class Setting:
    """How one :class:`RunConfig` field is set: its parser (a TOML value or the flag's text in, the value out,
    :class:`ConfigError` for a bad one), its ``harness run`` flag (None: TOML only), and the flag's help. The TOML
    key is the field's name (dashes or underscores) and the default is the field's; ``--help`` shows it in brackets,
    as ``shown`` says it where the default itself would not read well ("" shows none)."""

    parse: Callable[[Any, str], Any]
    help: str = ""
    group: str = EXECUTION
    flag: str | None = ""  # "": the field's name with dashes
    metavar: str | None = None
    switch: Any = None  # a flag that takes no value and sets the setting to this
    repeat: bool = False  # the flag may be given several times (its values collected in a list)
    shown: str | None = None


def setting(default: Any, parse: Callable[[Any, str], Any], **options: Any) -> Any:
    """A :class:`RunConfig` field with its :class:`Setting`; a list or dict default is copied for each config."""
    meta = {"setting": Setting(parse, **options)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that defines a run, each setting declared once (:func:`setting`): its type and default here, its
    parser, flag and help beside them. Lists are already parsed; names are validated by the host later."""

    backends: list[str] = setting(["all"], names, group=SWEEP,
                                  help="'all' (the available ones) or a comma list, e.g. native,tensorly")
    models: list[str] = setting(["lenet5"], names, group=SWEEP,
                                help="comma list of models: registered ones (harness list), torchvision:NAME, "
                                     "pkg.module:callable or path/to/file.py:callable")
    datasets: list[str] = setting(["mnist-embedded"], names, group=SWEEP,
                                  help="comma list of datasets: registered ones (harness list), folder:PATH (an "
                                       "ImageFolder with train/ and test/ or val/) or random:CxHxW")
    methods: list[str] = setting(["all"], names, group=SWEEP, shown="all, none with --mix",
                                 help="'all' or a comma list, e.g. svd,tucker2; 'auto' picks, per layer, the "
                                      "backend's lowest-error decompose-init method ('all' leaves it out)")
    # Mixes: canonical KEY=METHOD,... specs (see harness.config.mixing), each planned as one more "method".
    mix: list[str] = setting([], lambda value, key: parse_mixes(value) if value not in ("", []) else [],
                             group=SWEEP, metavar="KEY=METHOD,...", repeat=True, shown="",
                             help="one cell with a method per layer: KEY is conv, linear or a glob over layer paths "
                                  "(a path beats a kind; unmapped layers stay dense), e.g. 'conv=tucker2,linear=svd'; "
                                  "repeat the flag or separate mixes by ';' to compare several")
    targets: list[str] = setting(["conv", "linear", "all"], names, group=SWEEP,
                                 help="comma list of conv, linear, all (both at once)")
    ratios: list[float] = setting([2.0, 4.0, 8.0], lambda value, key: parse_ratios(value), group=SWEEP,
                                  help="target compression of the decomposed layers' parameters")
    # How per-layer parameter budgets are chosen (NAME or NAME:ARG of a rank selector); "ratio" is dense/ratio.
    rank_selection: list[str] = setting(["ratio"], names, group=SWEEP, metavar="NAME[:ARG]",
                                        help="how each layer's parameter budget is chosen, the same for every "
                                             "backend: ratio (dense/ratio), energy[:SHARE], vbmf, budget, sensitivity "
                                             "or a plugin's (see 'harness list'); a comma list compares them; SEL@REF "
                                             "(e.g. budget@vbmf) holds SEL to the total REF chooses, for a comparison "
                                             "at equal parameters")
    # Tensorized Linear shapes (methods a backend declares tensorized only): numbers of modes to sweep (empty:
    # the default d = 3, unswept), explicit per-layer shapes {PATTERN: {"in": [...], "out": [...]}}, and whether
    # sizes that factor badly are zero-padded to ones that factor evenly. See harness.config.tensorize.
    tt_d: list[int] = setting([], lambda value, key: list(dict.fromkeys(
                                  parse_ints(value, "tt_d (the number of tensor modes)", minimum=1))),
                              group=SWEEP, metavar="D,...", shown="3, unswept",
                              help="numbers of tensor modes to sweep for the Linear layers of tensorized methods "
                                   "('harness list' marks them), one cell each, e.g. 2,3,4; other methods run once; "
                                   "explicit per-layer shapes: tensor_shapes in --config")
    tensor_shapes: dict[str, dict[str, list[int]]] = setting({}, lambda value, key: parse_tensor_shapes(value),
                                                             flag=None)
    tt_pad: bool = setting(False, boolean, group=SWEEP, switch=True, shown="",
                           help="zero-pad Linear sizes that factor badly (e.g. a prime) up to sizes that factor "
                                "evenly, within the original layer's budget, for tensorized methods")
    seeds: list[int] = setting([0], ints_from(0), group=SWEEP,
                               help="comma list of seeds; reports give mean, std and n over them")
    # fnmatch patterns over cell ids (backend/model/dataset/method/target/xRATIO/sSEED[/r-SELECTION][/t-SHAPES])
    # left out.
    skip: list[str] = setting([], patterns, group=SWEEP, metavar="PATTERNS", shown="",
                              help="comma list of glob patterns over cell ids (backend/model/dataset/method/target/"
                                   "xR/sS[/r-SELECTION][/t-SHAPES]) to leave out, e.g. 'tednet/*/*/btt/linear/*'")
    keep_edges_dense: bool = setting(True, boolean, group=SWEEP, flag="--include-edges", switch=False, shown="",
                                     help="also decompose the first conv and the last Linear (kept dense by default)")
    # Glob patterns over layer paths: only matching layers are decomposed (empty: every targeted layer).
    layers: list[str] = setting([], patterns, group=SWEEP, metavar="GLOB,...", shown="",
                                help="decompose only the layers whose path matches a glob (e.g. 'layer3.*,layer4.*'; "
                                     "paths as in model.named_modules()); the edge rule then does not apply")
    # Checkpoints to start the dense baselines from: model name -> file ("*" for every model).
    weights: dict[str, str] = setting({}, lambda value, key: parse_weights(value) if value not in ("", {}) else {},
                                      group=DATA, metavar="FILE | MODEL=FILE,...", shown="",
                                      help="start the dense baseline from a local checkpoint (a state dict, or a dict "
                                           "holding one under state_dict/model/...) instead of a random init; "
                                           "--baseline-epochs then fine-tunes it, 0 uses it as it is")
    # Image folders (folder:PATH): side of the square crop (default 224), images kept per class, loader processes.
    image_size: int | None = setting(None, count(1), group=DATA, metavar="PIXELS", shown="224",
                                     help="side of the square crop of folder:PATH datasets")
    subset: int | None = setting(None, count(1), group=DATA, metavar="N", shown="",
                                 help="keep at most N images per class in each split of folder:PATH datasets, for "
                                      "quick studies")
    data_workers: int = setting(2, count(0), group=DATA, metavar="N", help="loader processes for folder:PATH datasets")
    # A data-free speed study: no training anywhere, no accuracy; random inputs of the model's native size.
    no_train: bool = setting(False, boolean, group=DATA, switch=True, shown="",
                             help="a data-free speed study: no training or accuracy; random inputs of the model's "
                                  "native size (--datasets random:3x224x224 unless given): params, FLOPs, "
                                  "reconstruction error, decomposition time and latency")
    epochs: int = setting(2, count(0), group=TRAINING, help="fine-tuning epochs after decomposition")
    baseline_epochs: int = setting(6, count(0), group=TRAINING, help="epochs to train the dense baseline")
    lr: float = setting(0.01, number(positive=True), group=TRAINING,
                        help="fine-tuning learning rate (SGD, momentum 0.9, cosine schedule)")
    lr_schedule: str = setting("cosine", text, group=TRAINING, help="fine-tuning schedule: cosine (to zero) or constant")
    baseline_lr: float = setting(0.05, number(positive=True), group=TRAINING, help="baseline learning rate")
    clip_grad_norm: float = setting(5.0, number(), group=TRAINING,
                                    help="gradient-norm clipping for all training, 0 to disable")
    batch_size: int = setting(64, count(1), group=TRAINING, help="training batch size")
    momentum: float = setting(0.9, number(), flag=None)
    weight_decay: float = setting(5e-4, number(), flag=None)
    latency_batch: int = setting(32, count(1), group=TRAINING, help="batch size of the latency measurement")
    # Passes of the quiet latency phase over all networks (harness.run.latency.ROUNDS_PER_PASS rounds per network per
    # pass).
    latency_passes: int = setting(3, count(1), group=TRAINING, metavar="N",
                                  help="passes of the quiet latency phase over all networks, 7 alternating rounds each")
    # Threads of the latency phase. One, as torch.utils.benchmark's Timer defaults to: on a 2-core machine the same
    # sub-millisecond networks timed with two threads came out up to a third apart from one run to the next, with
    # one thread within 3 %.
    latency_threads: int = setting(1, count(1), group=TRAINING, metavar="N",
                                   help="torch threads of the latency phase; more than one times multi-threaded "
                                        "inference, which varies more from run to run")
    # Memory format of the networks and the batch in the latency phase: channels_last is NHWC, the layout
    # oneDNN runs convs fastest in on CPU (harness bench --only latency measures both).
    memory_format: str = setting("contiguous", text, group=TRAINING, metavar="contiguous|channels_last",
                                 help="memory format of the networks and the batch the latency phase times: "
                                      "channels_last is NHWC, in which oneDNN runs convs (and factored ones most) "
                                      "fastest on CPU")
    # Per-layer latency tables for every cell, not only the latency selectors': each replacement's row then says how
    # fast it runs against its dense layer, and the report flags the ones slower than dense.
    layer_latency: bool = setting(False, boolean, group=TRAINING, switch=True, shown="",
                                  help="before the cells run, time every targeted layer's dense form and the "
                                       "backend's candidate structures (cached), so each layer row records its "
                                       "replacement's latency against the dense layer's and the report flags the "
                                       "slower ones (always on for --rank-selection latency)")
    # The dense baseline fine-tuned like every decomposed net: the reference for stability.
    dense_control: bool = setting(True, boolean, group=TRAINING, flag="--no-dense-control", switch=False, shown="",
                                  help="do not fine-tune the dense baseline as a control (it is, by default, once "
                                       "per seed)")
    # Keep every ok cell's fine-tuned network in the run directory (models/), for harness export and ORT latency.
    save_models: bool = setting(False, boolean, group=TRAINING, switch=True, shown="",
                                help="keep every ok cell's fine-tuned network in RUN_DIR/models for 'harness export', "
                                     "and time each one and its dense baseline in ONNX Runtime too when onnxruntime "
                                     "is installed")
    # After the ONNX Runtime phase's FP32 graphs: the same networks and their dense baselines in INT8.
    quantize: str = setting("none", text, group=TRAINING, metavar="none|int8",
                            help="with --save-models: quantize each kept network and its dense baseline to INT8 "
                                 "with onnxruntime.quantization (static QDQ calibrated on a fixed sample of the "
                                 "training split, dynamic where static fails), then evaluate them on the test set "
                                 "and time them in ONNX Runtime beside the FP32 graphs")
    out: str | None = setting(None, text, metavar="DIR", shown="runs/TIMESTAMP", help="run directory")
    device: str = setting("auto", text, help="auto, cpu or cuda")
    cell_timeout: float = setting(900.0, number(positive=True, maximum=MAX_CELL_TIMEOUT), metavar="SECONDS",
                                  help="stop a cell after this long")
    # None until build_config: --jobs, or harness.core.resources.default_jobs (one per core).
    jobs: int | None = setting(None, count(1), shown="one per CPU core; 1 on a GPU",
                               help="worker processes running cells in parallel")
    executor: str = setting("process", text,
                            help="process (workers, enforce the timeout), inprocess, or ray (each cell a Ray task, on "
                                 "this machine or a cluster)")
    # --executor ray: the cluster to join (none: start a local one) and what each cell's task asks for.
    ray_address: str | None = setting(None, text, shown="start a local one",
                                      help="with --executor ray: the cluster to join, e.g. HEAD:6379 or auto")
    cpus_per_cell: int = setting(1, count(1), help="with --executor ray: CPUs each cell's task asks for (its torch "
                                                     "threads)")
    gpus_per_cell: int = setting(0, count(0), help="with --executor ray and --device cuda: GPUs each cell's task "
                                                     "asks for")
    cache_dir: str = setting(default_cache_dir, directory, metavar="DIR", shown="~/.cache/tensor-harness",
                             help="where dense baselines are cached")
    data_dir: str | None = setting(None, text, metavar="DIR", shown="", help="folder holding torchvision datasets")
    download: bool = setting(False, boolean, switch=True, shown="",
                             help="download torchvision datasets into --data-dir if missing")
    plugin_options: dict[str, Any] = field(default_factory=dict)

    def weights_for(self, model: str) -> str | None:
        """The checkpoint the dense baseline of ``model`` starts from, or None for a random init."""
        return self.weights.get(model, self.weights.get("*"))

    def data_options(self):
        return DataOptions(image_size=self.image_size, subset=self.subset, workers=self.data_workers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def fine_tune_settings(self) -> TrainSettings:
        """The fine-tuning recipe, identical for every backend and method."""
        return TrainSettings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                             weight_decay=self.weight_decay, clip_grad_norm=self.clip_grad_norm or None,
                             schedule=self.lr_schedule)

    def training_spec(self) -> dict[str, Any]:
        """The settings that define a dense baseline (its cache key, with model, dataset and seed)."""
        return {"epochs": self.baseline_epochs, "batch_size": self.batch_size, "lr": self.baseline_lr,
                "momentum": self.momentum, "weight_decay": self.weight_decay, "clip_grad_norm": self.clip_grad_norm}


# Every setting, by its field name (the TOML key): what build_config parses and the CLI offers.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(RunConfig)
                                if "setting" in f.metadata}
CONFIG_KEYS = set(SETTINGS)


def shown_default(name: str) -> str:
    """The default of setting ``name`` as ``--help`` shows it, in brackets (empty where it shows none)."""
    setting = SETTINGS[name]
    if setting.shown is not None:
        return f" [{setting.shown}]" if setting.shown else ""
    field_ = next(f for f in dataclasses.fields(RunConfig) if f.name == name)
    value = field_.default_factory() if field_.default is dataclasses.MISSING else field_.default
    items = value if isinstance(value, list) else [value]
    return " [" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items) + "]"


def load_toml(path: str) -> dict[str, Any]:
    """Read a ``--config`` file; keys are the long flag names (dashes or underscores)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (is it the right file?)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    run_table = data.get("run", data)
    if not isinstance(run_table, dict):
        raise ConfigError(f"config file {path!r}: [run] must be a table")
    beside = sorted(key for key in data if key != "run") if "run" in data else []
    if beside:  # read as settings they would be ignored: TOML puts keys written above [run] outside it
        raise ConfigError(f"config file {path!r}: {', '.join(map(repr, beside))} outside the [run] table (move "
                          "it under [run], or drop the [run] line and give every setting at the top level)")
    return {key.replace("-", "_"): value for key, value in run_table.items()}


def parse_values(values: dict[str, Any], plugin_keys: set[str] = frozenset()) -> dict[str, Any]:
    """Each raw value (TOML or a flag's text) parsed by its setting; None values and plugin options are left out,
    an unknown key is a :class:`ConfigError`."""
    parsed = {}
    for key, value in values.items():
        if value is None or key in plugin_keys:
            continue
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown setting {key!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
        parsed[key] = SETTINGS[key].parse(value, key)
    return parsed


def check_values(values: dict[str, Any], source: str, plugin_keys: set[str] = frozenset()) -> None:
    """Parse every setting of one source (a preset or ``--config`` file) on its own, so a bad value is refused
    even where a flag overrides it; raises :class:`ConfigError` naming the source."""
    try:
        parse_values(values, plugin_keys)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """The studies shipped with harness, usable as ``harness run --preset NAME``."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def preset_description(name: str) -> str:
    """The first comment line of a preset file (its one-line purpose)."""
    for line in (PRESETS_DIR / f"{name}.toml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a shipped preset (flags and ``--config`` given with it override them)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(preset_names()) or 'none'})")
    return load_toml(str(PRESETS_DIR / f"{name}.toml"))


def build_config(values: dict[str, Any], plugin_keys: set[str] = frozenset()) -> RunConfig:
    """Turn raw values (from TOML and flags, flags last) into a parsed :class:`RunConfig`.

    Names are checked against the plugins later, by :func:`validate_names`.
    """
    config = RunConfig()
    config.plugin_options.update({key: value for key, value in values.items()
                                  if value is not None and key in plugin_keys})
    for key, value in parse_values(values, plugin_keys).items():
        setattr(config, key, value)
    if config.no_train:
        # Nothing is trained, so there is no accuracy to track and no control to fine-tune.
        config.epochs, config.baseline_epochs, config.dense_control = 0, 0, False
        if values.get("datasets") is None:
            config.datasets = [NATIVE_INPUT]
    if config.mix and values.get("methods") is None:
        # A mix alone asks for its own cells only; --methods adds single-method cells beside it.
        config.methods = []
    for target in config.targets:
        if target not in TARGETS:
            raise ConfigError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ConfigError(f"unknown device {config.device!r} (choose auto, cpu or cuda)")
    if config.memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"unknown memory format {config.memory_format!r} (choose {', '.join(MEMORY_FORMATS)})")
    if config.quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {config.quantize!r} (choose {', '.join(QUANTIZATIONS)})")
    if config.quantize != "none":
        import importlib.util

        if not config.save_models:
            raise ConfigError(f"--quantize {config.quantize} quantizes the kept networks: add --save-models")
        if config.device.startswith("cuda"):
            raise ConfigError(f"--quantize {config.quantize} runs on ONNX Runtime's CPU execution provider: use "
                              "--device cpu")
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            raise ConfigError(f"--quantize {config.quantize} needs onnxruntime: pip install 'tensor-harness[onnx]'")
    if config.lr_schedule not in ("cosine", "constant"):
        raise ConfigError(f"unknown lr schedule {config.lr_schedule!r} (choose cosine or constant)")
    if config.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {config.executor!r} (choose {', '.join(EXECUTORS)})")
    if config.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray needs Ray: pip install -e \".[ray]\"")
    elif config.ray_address or values.get("cpus_per_cell") is not None or config.gpus_per_cell:
        raise ConfigError("--ray-address, --cpus-per-cell and --gpus-per-cell go with --executor ray")
    if config.gpus_per_cell and not config.device.startswith("cuda"):
        raise ConfigError("--gpus-per-cell needs --device cuda")
    if config.jobs is None:
        from harness.core.resources import default_jobs  # imports torch, which this module does not need otherwise

        config.jobs = default_jobs(config.device)
    return config
