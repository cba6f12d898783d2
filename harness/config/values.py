"""Parsing setting values: each setting's parser turns a TOML value or a flag's text into its value, or raises a
one-line :class:`ConfigError` naming the setting.

Lists are comma text or TOML arrays (a value given twice is refused, as it would run the same cells twice); a
setting that takes one value refuses a list instead of truncating it; numbers are finite and within their bounds;
mixes, tensorized shapes and checkpoints have parsers of their own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.config.mixing import Mix
from harness.core.errors import HarnessError

MAX_COUNT = 1_000_000
MAX_CELL_TIMEOUT = 30 * 24 * 3600.0


class ConfigError(HarnessError):
    """A usage or configuration error; its message is one line for the user."""


def as_list(value: Any, key: str) -> list[str]:
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


def parse_ratios(value: Any) -> list[float]:
    ratios = []
    if isinstance(value, (list, tuple)) and any(isinstance(v, (list, tuple, Mapping, bool)) for v in value):
        raise ConfigError(f"ratios must be a list of numbers above 1, not {value!r}")
    for item in as_list(value, "ratios"):
        try:
            ratio = float(item)
        except ValueError:
            raise ConfigError(f"ratio {item!r} is not a number (give compression ratios above 1, e.g. --ratios 2,4,8)") from None
        if not ratio > 1 or ratio == float("inf"):
            raise ConfigError(f"ratio {item} must be a finite number above 1 (it is dense params / compressed params)")
        ratios.append(ratio)
    return distinct(ratios, "ratios")


def distinct(items: list, key: str) -> list:
    """``items`` unchanged, or a ConfigError naming the first value given twice (it would run the same cells twice
    and store them once)."""
    seen = set()
    for item in items:
        if item in seen:
            raise ConfigError(f"{key}: {item!r} is given twice")
        seen.add(item)
    return items


def one(value: Any, key: str, numeric: bool = True) -> Any:
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


def parse_ints(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> list[int]:
    out = []
    if any(isinstance(v, bool) for v in (value if isinstance(value, (list, tuple)) else [value])):
        raise ConfigError(f"{key}: {value!r} is not an integer")
    for item in as_list(value, key):
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


def parse_mixes(value: Any) -> list[str]:
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


def names(value: Any, key: str) -> list[str]:
    return distinct(as_list(value, key), key)


def patterns(value: Any, key: str) -> list[str]:
    return as_list(value, key) if value not in ("", []) else []


def count(minimum: int) -> Callable[[Any, str], int]:
    def parse(value: Any, key: str) -> int:
        return parse_ints(one(value, key), key, minimum=minimum, maximum=MAX_COUNT)[0]
    return parse


def number(positive: bool = False, maximum: float | None = None) -> Callable[[Any, str], float]:
    def parse(value: Any, key: str) -> float:
        single = one(value, key)
        if isinstance(single, bool):  # TOML true would otherwise be read as 1.0
            raise ConfigError(f"{key}: {str(value).lower()} is not a number")
        try:
            number = float(single)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} must be a finite number")
        if number < 0 or (positive and number == 0):
            raise ConfigError(f"{key}: {value!r} must be positive")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{key}: {value!r} s is more than {maximum:g} s (30 days)")
        return number
    return parse


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false")
    return value


def text(value: Any, key: str) -> str:
    return str(one(value, key, numeric=False))


def directory(value: Any, key: str) -> str:
    """A folder harness writes into (made when missing): refused when it, or the first part of it that exists,
    is a file, or that part cannot be written to."""
    path = Path(text(value, key)).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key} {str(path)!r} is not a folder: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {str(path)!r} cannot be written: no write permission on {str(existing)!r}")
    return str(path)


def ints_from(minimum: int) -> Callable[[Any, str], list[int]]:
    def parse(value: Any, key: str) -> list[int]:
        return distinct(parse_ints(value, key, minimum=minimum), key)
    return parse


def parse_weights(value: Any) -> dict[str, str]:
    """``--weights FILE`` (every model), ``MODEL=FILE,...``, or a TOML table ``{MODEL = FILE}``."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for entry in as_list(value, "weights"):
            model, sep, path = entry.rpartition("=")
            items.append((model, path) if sep and model else ("*", entry))
    weights: dict[str, str] = {}
    for model, path in items:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"weights for {model!r}: {path!r} is not a file path")
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ConfigError(f"weights file {path!r} does not exist")
        try:
            open(resolved, "rb").close()
        except OSError as exc:
            raise ConfigError(f"weights file {path!r} cannot be read: {exc.strerror}") from None
        weights[str(model)] = str(resolved.resolve())
    return weights


