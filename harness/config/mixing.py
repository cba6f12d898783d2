"""Per-layer method choice: mixes (a method per layer kind or layer-path pattern) and the ``auto`` method.

A *mix* such as ``conv=tucker2,linear=svd,fc1=tt`` gives each targeted layer its own method within one cell:
``conv`` and ``linear`` name layer kinds, any other key is an fnmatch pattern over layer paths. A path pattern
beats a kind key; among patterns the one with the most literal (non-wildcard) characters wins, then the first
given. A targeted layer the mix maps to nothing stays dense. :class:`Mix` parses and canonicalises a mix and
gives it its cell label (``mix-tucker2+svd``). The method ``auto`` (:data:`AUTO`), usable alone or inside a mix,
lets the runner try every decompose-init method a backend offers for a layer and keep the one with the lowest
reconstruction error; :func:`auto_candidates` says which methods the planner lists for the runner to try. Nothing here knows about backends beyond their :class:`~harness.contract.backend.BackendInfo`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type only: importing backends would import torch, and the CLI's --help must not
    from harness.contract.backend import BackendInfo

AUTO = "auto"
# Kind keys of a mix and the layer kind each names; "conv2d" is accepted as a spelling of "conv".
KIND_KEYS = {"conv": "conv2d", "conv2d": "conv2d", "linear": "linear"}
MIX_PREFIX = "mix-"
# What an unmapped kind is called in a label: its layers stay dense.
DENSE = "dense"
_WILDCARDS = re.compile(r"[*?\[\]]")


@dataclass(frozen=True)
class Mix:
    """A parsed mix: kind rules (layer kind -> method) and path rules ((pattern, method), in the order given)."""

    kinds: tuple[tuple[str, str], ...]
    patterns: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Mix:
        """Parse ``KEY=METHOD[,KEY=METHOD...]``; raises ``ValueError`` with a one-line reason."""
        kinds: dict[str, str] = {}
        patterns: dict[str, str] = {}
        entries = [entry.strip() for entry in str(text).split(",")]
        if not any(entries):
            raise ValueError("mix is empty (give e.g. conv=tucker2,linear=svd)")
        for entry in entries:
            key, sep, method = (part.strip() for part in entry.partition("="))
            if not sep or not key or not method:
                raise ValueError(f"mix {text!r}: entry {entry!r} is not KEY=METHOD "
                                 "(KEY is conv, linear or a layer-path pattern)")
            if "=" in method or not re.fullmatch(r"[A-Za-z0-9._-]+", method):
                raise ValueError(f"mix {text!r}: {method!r} is not a method name")
            kind = KIND_KEYS.get(key)
            rules, rule_key = (kinds, kind) if kind else (patterns, key)
            if rule_key in rules:
                raise ValueError(f"mix {text!r}: {key!r} is mapped twice")
            rules[rule_key] = method
        order = ("conv2d", "linear")
        return cls(tuple((k, kinds[k]) for k in order if k in kinds), tuple(patterns.items()))

    @property
    def spec(self) -> str:
        """The canonical text of the mix (kinds first, conv then linear, then patterns as given)."""
        names = {"conv2d": "conv", "linear": "linear"}
        return ",".join([f"{names[k]}={m}" for k, m in self.kinds] + [f"{p}={m}" for p, m in self.patterns])

    @property
    def methods(self) -> list[str]:
        """Every method the mix names, once each."""
        return list(dict.fromkeys(m for _, m in self.kinds + self.patterns))

    @property
    def label(self) -> str:
        """The cell's method column: ``mix-CONV+LINEAR[+PATTERN=METHOD...]``, ``dense`` for an unmapped kind.

        Both kind slots are always written so ``conv=svd`` and ``linear=svd`` differ; characters that are special
        to paths or globs become ``_`` (two mixes that then collide are refused by :func:`check_labels`).
        """
        kinds = dict(self.kinds)
        parts = [kinds.get("conv2d", DENSE), kinds.get("linear", DENSE)]
        parts += [f"{re.sub(r'[^A-Za-z0-9._-]', '_', p)}={m}" for p, m in self.patterns]
        return MIX_PREFIX + "+".join(parts)

    def method_for(self, path: str, kind: str) -> str | None:
        """The method for the layer at ``path`` of ``kind``, or None when the mix leaves it dense."""
        matching = [(i, p, m) for i, (p, m) in enumerate(self.patterns) if fnmatchcase(path, p)]
        if matching:
            # Most literal characters first, then the first given.
            return min(matching, key=lambda item: (-len(_WILDCARDS.sub("", item[1])), item[0]))[2]
        return dict(self.kinds).get(kind)


def label_kinds(label: str) -> tuple[str | None, str | None]:
    """The conv and linear methods a mix's cell label names (``mix-tucker2+svd``: tucker2, svd); None = left dense.

    The inverse of :attr:`Mix.label` for its two kind slots, which it always writes first.
    """
    parts = label.removeprefix(MIX_PREFIX).split("+")
    conv = parts[0] if parts and parts[0] != DENSE else None
    linear = parts[1] if len(parts) > 1 and parts[1] != DENSE else None
    return conv, linear


def check_labels(mixes: list[Mix]) -> None:
    """Refuse two different mixes whose labels coincide (their cells would share ids)."""
    seen: dict[str, str] = {}
    for mix in mixes:
        if seen.get(mix.label, mix.spec) != mix.spec:
            raise ValueError(f"mixes {seen[mix.label]!r} and {mix.spec!r} have the same label {mix.label!r}; "
                             "rename a pattern")
        seen[mix.label] = mix.spec


def auto_candidates(info: BackendInfo, kind: str) -> tuple[str, ...]:
    """The methods ``auto`` tries on a layer of ``kind``: those of the backend that start from the trained weights,
    in its declared order (a scratch-init layer approximates nothing, so it has no error to compare)."""
    return tuple(m for m in info.methods_for(kind) if info.init_for(m, kind) == "decompose")
