"""The run configuration: defaults, then a TOML file, then command-line flags, validated once.

:class:`RunConfig` is plain data (it is stored with the run and reloaded by
``--resume``). Every problem a user can cause — an unknown backend, model, dataset or
method (one named in a ``mix`` too) or rank selector, a malformed mix, a ratio that is not a number above 1,
a number of tensor modes below 1, a malformed ``tensor_shapes`` table, a malformed TOML file — becomes a
:class:`ConfigError` whose message is one line; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.mixing import Mix

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
# Sensible upper bounds: a count beyond these is a typo, and would fail late (or never end) instead of now.
MAX_COUNT = 1_000_000
MAX_CELL_TIMEOUT = 30 * 24 * 3600.0


class ConfigError(Exception):
    """A usage or configuration error; its message is one line for the user."""


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tensor-harness")


@dataclass
class RunConfig:
    """Everything that defines a run. Lists are already parsed; names are validated."""

    backends: list[str] = field(default_factory=lambda: ["all"])
    models: list[str] = field(default_factory=lambda: ["lenet5"])
    datasets: list[str] = field(default_factory=lambda: ["mnist-embedded"])
    methods: list[str] = field(default_factory=lambda: ["all"])
    targets: list[str] = field(default_factory=lambda: ["conv", "linear", "all"])
    ratios: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    # Mixes: canonical KEY=METHOD,... specs (see harness.config.mixing), each planned as one more "method".
    mix: list[str] = field(default_factory=list)
    # How per-layer parameter budgets are chosen (NAME or NAME:ARG of a rank selector); "ratio" is dense/ratio.
    rank_selection: list[str] = field(default_factory=lambda: ["ratio"])
    # Tensorized Linear shapes (methods a backend declares tensorized only): numbers of modes to sweep (empty:
    # the default d = 3, unswept), explicit per-layer shapes {PATTERN: {"in": [...], "out": [...]}}, and whether
    # sizes that factor badly are zero-padded to ones that factor evenly. See harness.config.tensorize.
    tt_d: list[int] = field(default_factory=list)
    tensor_shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    tt_pad: bool = False
    epochs: int = 2
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline_epochs: int = 6
    batch_size: int = 64
    lr: float = 0.01
    baseline_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad_norm: float = 5.0
    lr_schedule: str = "cosine"
    latency_batch: int = 32
    # Passes of the quiet latency phase over all networks (harness.run.latency.ROUNDS_PER_PASS rounds per network per pass).
    latency_passes: int = 3
    # Threads of the latency phase. One, as torch.utils.benchmark's Timer defaults to: on a 2-core machine the same
    # sub-millisecond networks timed with two threads came out up to a third apart from one run to the next, with
    # one thread within 3 %.
    latency_threads: int = 1
    # Memory format of the networks and the batch in the latency phase: channels_last is NHWC, the layout
    # oneDNN runs convs fastest in on CPU (harness bench --only latency measures both).
    memory_format: str = "contiguous"
    # Keep every ok cell's fine-tuned network in the run directory (models/), for harness export and ORT latency.
    save_models: bool = False
    keep_edges_dense: bool = True
    # The dense baseline fine-tuned like every decomposed net: the reference for stability.
    dense_control: bool = True
    # fnmatch patterns over cell ids (backend/model/dataset/method/target/xRATIO/sSEED[/r-SELECTION][/t-SHAPES])
    # left out.
    skip: list[str] = field(default_factory=list)
    device: str = "auto"
    cell_timeout: float = 900.0
    # None until build_config: --jobs, or harness.core.resources.default_jobs (one per core).
    jobs: int | None = None
    executor: str = "process"
    # --executor ray: the cluster to join (none: start a local one) and what each cell's task asks for.
    ray_address: str | None = None
    cpus_per_cell: int = 1
    gpus_per_cell: int = 0
    out: str | None = None
    cache_dir: str = field(default_factory=default_cache_dir)
    data_dir: str | None = None
    download: bool = False
    # Checkpoints to start the dense baselines from: model name -> file ("*" for every model).
    weights: dict[str, str] = field(default_factory=dict)
    # Image folders (folder:PATH): side of the square crop (default 224), images kept per class, loader processes.
    image_size: int | None = None
    subset: int | None = None
    data_workers: int = 2
    # Glob patterns over layer paths: only matching layers are decomposed (empty: every targeted layer).
    layers: list[str] = field(default_factory=list)
    # A data-free speed study: no training anywhere, no accuracy; random inputs of the model's native size.
    no_train: bool = False
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


CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"plugin_options"}


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [str(value)]
    items = [v for v in items if v]
    if not items:
        raise ConfigError(f"{key} is empty")
    return items


def _parse_ratios(value: Any) -> list[float]:
    ratios = []
    for item in _as_list(value, "ratios"):
        try:
            ratio = float(item)
        except ValueError:
            raise ConfigError(f"ratio {item!r} is not a number (give compression ratios above 1, e.g. --ratios 2,4,8)") from None
        if not ratio > 1 or ratio == float("inf"):
            raise ConfigError(f"ratio {item} must be a finite number above 1 (it is dense params / compressed params)")
        ratios.append(ratio)
    return _distinct(ratios, "ratios")


def _distinct(items: list, key: str) -> list:
    """``items`` unchanged, or a ConfigError naming the first value given twice (it would run the same cells twice
    and store them once)."""
    seen = set()
    for item in items:
        if item in seen:
            raise ConfigError(f"{key}: {item!r} is given twice")
        seen.add(item)
    return items


def _one(value: Any, key: str, numeric: bool = True) -> Any:
    """The single value of a setting that takes one: a list of several (TOML ``epochs = [1, 2]``) is refused,
    never truncated."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ConfigError(f"{key} takes one value, not a list: {list(value)!r}")
        value = value[0]
    if numeric and isinstance(value, str) and "," in value:
        raise ConfigError(f"{key} takes one value, not a list: {value!r}")
    if isinstance(value, Mapping):
        raise ConfigError(f"{key} takes one value, not a table")
    return value


def _parse_ints(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> list[int]:
    out = []
    for item in _as_list(value, key):
        try:
            number = int(item)
        except ValueError:
            raise ConfigError(f"{key}: {item!r} is not an integer") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{key}: {number} is below {minimum}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{key}: {number} is above {maximum:,}")
        out.append(number)
    return out


def parse_tensor_shapes(value: Any) -> dict[str, dict[str, list[int]]]:
    """Check the ``tensor_shapes`` table (``{PATTERN = {in = [...], out = [...]}}``) and return it in canonical form."""
    if not isinstance(value, Mapping):
        raise ConfigError('tensor_shapes must be a table, e.g. tensor_shapes = { "fc1" = { in = [4, 5, 20], '
                          'out = [4, 5, 6] } }')
    shapes: dict[str, dict[str, list[int]]] = {}
    for pattern, entry in value.items():
        if not isinstance(entry, Mapping) or set(entry) != {"in", "out"}:
            raise ConfigError(f"tensor_shapes[{pattern!r}] must be a table with exactly the keys in and out")
        sides = {}
        for side in ("in", "out"):
            modes = entry[side]
            if (not isinstance(modes, (list, tuple)) or not modes
                    or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in modes)):
                raise ConfigError(f"tensor_shapes[{pattern!r}].{side} must be a non-empty list of positive integers")
            sides[side] = [int(m) for m in modes]
        if len(sides["in"]) != len(sides["out"]):
            raise ConfigError(f"tensor_shapes[{pattern!r}]: in {sides['in']} and out {sides['out']} have different "
                              "numbers of modes")
        shapes[str(pattern)] = sides
    return shapes


def _parse_mixes(value: Any) -> list[str]:
    """Canonical specs of ``--mix`` / TOML ``mix``: a string (mixes split by ``;``), a table, or a list of either."""
    items = value if isinstance(value, (list, tuple)) else [value]
    specs: list[str] = []
    for item in items:
        if isinstance(item, dict):  # TOML table form: {conv = "tucker2", linear = "svd"}
            if not all(isinstance(v, str) for v in item.values()):
                raise ConfigError(f"mix {item!r}: every value must be a method name")
            texts = [",".join(f"{k}={v}" for k, v in item.items())]
        elif isinstance(item, str):
            texts = [t for t in item.split(";") if t.strip()]
        else:
            raise ConfigError(f"mix {item!r} is neither KEY=METHOD,... text nor a table")
        for text in texts:
            try:
                spec = Mix.parse(text).spec
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise ConfigError("mix is empty (give e.g. --mix 'conv=tucker2,linear=svd')")
    return specs


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
    return {key.replace("-", "_"): value for key, value in run_table.items()}


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


def _parse_weights(value: Any) -> dict[str, str]:
    """``--weights FILE`` (every model), ``MODEL=FILE,...``, or a TOML table ``{MODEL = FILE}``."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for entry in _as_list(value, "weights"):
            model, sep, path = entry.rpartition("=")
            items.append((model, path) if sep and model else ("*", entry))
    weights: dict[str, str] = {}
    for model, path in items:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"weights for {model!r}: {path!r} is not a file path")
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ConfigError(f"weights file {path!r} does not exist")
        weights[str(model)] = str(resolved.resolve())
    return weights


def build_config(values: dict[str, Any], plugin_keys: set[str] = frozenset()) -> RunConfig:
    """Turn raw values (from TOML and flags, flags last) into a parsed :class:`RunConfig`.

    Names are checked against the plugins later, by :func:`validate_names`.
    """
    config = RunConfig()
    for key, value in values.items():
        if value is None:
            continue
        if key in plugin_keys:
            config.plugin_options[key] = value
            continue
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown setting {key!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
        if key == "skip":
            config.skip = _as_list(value, key) if value not in ("", []) else []
        elif key in ("backends", "models", "datasets", "methods", "targets", "rank_selection"):
            setattr(config, key, _distinct(_as_list(value, key), key))
        elif key == "mix":
            config.mix = _parse_mixes(value) if value not in ("", []) else []
        elif key == "ratios":
            config.ratios = _parse_ratios(value)
        elif key == "tt_d":
            config.tt_d = list(dict.fromkeys(_parse_ints(value, "tt_d (the number of tensor modes)", minimum=1)))
        elif key == "tensor_shapes":
            config.tensor_shapes = parse_tensor_shapes(value)
        elif key == "seeds":
            config.seeds = _distinct(_parse_ints(value, "seeds", minimum=0), "seeds")
        elif key in ("epochs", "baseline_epochs"):
            setattr(config, key, _parse_ints(_one(value, key), key, minimum=0, maximum=MAX_COUNT)[0])
        elif key in ("batch_size", "latency_batch", "latency_passes", "latency_threads", "jobs", "image_size", "subset",
                     "cpus_per_cell"):
            setattr(config, key, _parse_ints(_one(value, key), key, minimum=1, maximum=MAX_COUNT)[0])
        elif key in ("data_workers", "gpus_per_cell"):
            setattr(config, key, _parse_ints(_one(value, key), key, minimum=0, maximum=MAX_COUNT)[0])
        elif key == "weights":
            config.weights = _parse_weights(value) if value not in ("", {}) else {}
        elif key == "layers":
            config.layers = _as_list(value, key) if value not in ("", []) else []
        elif key in ("lr", "baseline_lr", "momentum", "weight_decay", "cell_timeout", "clip_grad_norm"):
            try:
                number = float(_one(value, key))
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: {value!r} is not a number") from None
            if not math.isfinite(number):
                raise ConfigError(f"{key}: {value!r} must be a finite number")
            if number < 0 or (key in ("lr", "baseline_lr", "cell_timeout") and number == 0):
                raise ConfigError(f"{key}: {value!r} must be positive")
            if key == "cell_timeout" and number > MAX_CELL_TIMEOUT:
                raise ConfigError(f"cell_timeout: {value!r} s is more than {MAX_CELL_TIMEOUT:g} s (30 days)")
            setattr(config, key, number)
        elif key in ("keep_edges_dense", "download", "dense_control", "tt_pad", "no_train", "save_models"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false")
            setattr(config, key, value)
        else:
            setattr(config, key, str(_one(value, key, numeric=False)))
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
