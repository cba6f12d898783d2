"""Conformance kit for backend plugins: subclass :class:`BackendConformance` in a test file.

A plugin author writes::

    from harness.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"            # the name the plugin registers
        plugin_module = "my_plugin"      # only if the plugin is not installed (no entry point)

and pytest runs every check below once per (layer kind, method) the backend declares:
full-rank exactness (``rank="full"``) and planted-rank CP recovery for methods that start
from trained weights, the parameter budget (never over it, and never more than
:data:`UNUSED_BUDGET` of it left unused while the next rank up would still fit), output
shapes under stride, padding, dilation and odd kernels, the bias, a ``state_dict`` round
trip, determinism under a seed, backward, and that declared conv gaps raise
:class:`harness.Unsupported`. Requests go through :meth:`harness.run.host.Host.decompose`,
exactly as in a run. Methods that train from scratch skip the exactness checks; an
unavailable backend skips everything, with its install hint as the reason.
:func:`decompose` is the same path for a backend's own tests.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

from harness.contract.backend import (
    DecomposeRequest,
    Unsupported,
    check_budget,
    conv_features,
    count_params,
    layer_kind,
)
from harness.measure.metrics import relative_error

RATIOS = (2.0, 4.0, 8.0)
# A replacement may leave at most this share of its budget unused when the next rank up would still fit.
UNUSED_BUDGET = 0.25
# Small layers keep the kit fast; shapes chosen so every format has room at ratio 8.
LINEAR_SHAPE = (64, 48)
CONV_SHAPE = (16, 24, 3)
GEOMETRIES = {
    "stride2_pad1": dict(kernel_size=3, stride=2, padding=1),
    "kernel3x5": dict(kernel_size=(3, 5), padding=(1, 2)),
    "dilation2": dict(kernel_size=3, padding=2, dilation=2),
    "stride2_1": dict(kernel_size=3, stride=(2, 1), padding=1),
    "pad_same": dict(kernel_size=3, padding="same"),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
}
GAP_EXAMPLES = {
    "groups": dict(kernel_size=3, padding=1, groups=2),
    "dilation": GEOMETRIES["dilation2"],
    "non_square_stride": GEOMETRIES["stride2_1"],
    "padding_mode": GEOMETRIES["reflect"],
    "padding_same": GEOMETRIES["pad_same"],
}


_HOSTS: dict[str | None, Any] = {}


def _host(plugin_module: str | None):
    """The plugin host (every installed plugin, plus ``plugin_module``), loaded once per module."""
    from harness.run.host import load_host

    if plugin_module not in _HOSTS:
        _HOSTS[plugin_module] = load_host(extra_modules=[plugin_module] if plugin_module else [])
    return _HOSTS[plugin_module]


def decompose(layer: nn.Module, request: DecomposeRequest, plugin_module: str | None = None) -> nn.Module:
    """``layer``'s replacement as a run gets it: through the host, which refuses undeclared methods and declared
    conv gaps, then checked against the request's budget (:class:`harness.contract.backend.OverBudget`)."""
    replacement = _host(plugin_module).decompose(layer, request)
    check_budget(replacement, request)
    return replacement


def _next_ranks(rank: Any) -> list[Any]:
    """The ranks one step up from ``rank`` (an int, or one int per bond: each bond bumped on its own)."""
    if isinstance(rank, bool):
        return []
    if isinstance(rank, int):
        return [rank + 1]
    if isinstance(rank, (list, tuple)) and rank and all(isinstance(r, int) and not isinstance(r, bool) for r in rank):
        return [[*rank[:i], r + 1, *rank[i + 1:]] for i, r in enumerate(rank)]
    return []


def _seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_layer(kind: str, bias: bool = True, **conv_kwargs: Any) -> nn.Module:
    if kind == "linear":
        return _seeded(lambda: nn.Linear(*LINEAR_SHAPE, bias=bias))
    cin, cout, k = CONV_SHAPE
    kwargs = {"kernel_size": k, "padding": 1, **conv_kwargs}
    return _seeded(lambda: nn.Conv2d(cin, cout, bias=bias, **kwargs))


def sample_input(layer: nn.Module, batch: int = 4, size: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, layer.in_features, generator=generator)
    return torch.randn(batch, layer.in_channels, size, size, generator=generator)


class BackendConformance:
    """Checks every backend plugin must pass; subclass it and set ``backend``."""

    backend: str = ""
    plugin_module: str | None = None
    full_rank_tolerance: float = 1e-4
    planted_tolerance: float = 1e-3
    # Methods whose rank is a CP rank, checked by recovering a kernel of planted rank.
    cp_methods: tuple[str, ...] = ("cp",)
    # Options every request of the kit carries, e.g. {"n_iter_max": 100} to keep a slow solver quick: the kit
    # checks contracts (budget, shapes, seeds, state dicts), which do not depend on how long a fit runs.
    request_options: dict[str, Any] = {}

    # -- collection ---------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "case" not in metafunc.fixturenames:
            return
        host = _host(self.plugin_module)
        info = host.backends.get(self.backend)
        if info is None or not info.available:
            reason = (f"backend {self.backend!r} is not registered" if info is None
                      else f"backend {self.backend!r} unavailable: {info.install_hint}")
            metafunc.parametrize("case", [pytest.param(None, marks=pytest.mark.skip(reason=reason))], ids=["unavailable"])
            return
        cases = [(kind, method) for kind, methods in info.methods.items() for method in methods]
        metafunc.parametrize("case", cases, ids=[f"{k}-{m}" for k, m in cases])

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def single_thread(cls):
        # Small layers gain nothing from threads, and on a busy machine OpenMP/MKL spinning
        # can make an SVD hundreds of times slower.
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @pytest.fixture(scope="class")
    @classmethod
    def host(cls):
        return _host(cls.plugin_module)

    @pytest.fixture(scope="class")
    @classmethod
    def info(cls, host):
        info = host.backends.get(cls.backend)
        if info is None:
            pytest.skip(f"backend {cls.backend!r} is not registered")
        if not info.available:
            pytest.skip(f"backend {cls.backend!r} unavailable: {info.install_hint}")
        return info

    # -- helpers ------------------------------------------------------------------------------
    def decompose(self, host, layer: nn.Module, method: str, ratio: float | None = None, rank: Any = None,
                  seed: int = 0) -> nn.Module:
        request = DecomposeRequest(backend=self.backend, method=method, layer_path="layer", kind=layer_kind(layer),
                                   ratio=ratio, rank=rank, seed=seed, dense_params=count_params(layer),
                                   options=dict(self.request_options))
        # The host's path, without its budget check: test_budget_is_respected reports that one itself.
        return host.decompose(layer, request)

    def _skip_if_gap(self, info, layer: nn.Module) -> None:
        if isinstance(layer, nn.Conv2d):
            gaps = conv_features(layer) & set(info.conv_unsupported)
            if gaps:
                pytest.skip(f"declared gap: {', '.join(sorted(gaps))}")

    def _require_decompose(self, info, kind: str, method: str) -> None:
        if info.init_for(method, kind) != "decompose":
            pytest.skip(f"{kind}/{method} trains from scratch: no exactness to check")

    # -- checks -------------------------------------------------------------------------------
    def test_declaration(self, info):
        assert info.library and info.methods, "a backend declares its library and methods"
        assert set(info.methods) <= {"linear", "conv2d"}
        assert info.library_version, "an available backend records its library version"

    def test_other_backends_requests_are_ignored(self, host, info, case):
        kind, method = case
        if info.implementation(kind, method) is not None:
            pytest.skip("a declared callable: the host dispatches, no request of another backend reaches it")
        plugin = host.pm.get_plugin(host.backend_plugin[self.backend])
        layer = make_layer(kind)
        request = DecomposeRequest(backend=self.backend + "-not-me", method=method, layer_path="layer", kind=kind,
                                   ratio=2.0, dense_params=count_params(layer))
        assert plugin.harness_decompose_layer(layer=layer, request=request) is None

    def test_full_rank_reproduces_the_layer(self, host, info, case):
        kind, method = case
        self._require_decompose(info, kind, method)
        if method in self.cp_methods:
            pytest.skip("CP has no finite full rank; see test_planted_cp_rank_is_recovered")
        layer = make_layer(kind)
        x = sample_input(layer)
        replacement = self.decompose(host, layer, method, rank="full")
        with torch.no_grad():
            _assert_close_outputs(layer, layer(x), replacement(x), self.full_rank_tolerance, f"{method} at full rank")

    def test_planted_cp_rank_is_recovered(self, host, info, case):
        kind, method = case
        if method not in self.cp_methods:
            pytest.skip("not a CP method")
        if kind != "conv2d":
            # A Linear CP factorises the weight in the library's own tensorized layout, so a
            # planted rank only means something there; backends test that themselves.
            pytest.skip("Linear CP rank depends on the backend's tensorization")
        self._require_decompose(info, kind, method)
        layer = make_layer(kind)
        rank = 3
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            cout, cin, kh, kw = layer.weight.shape
            a, b, c, d = (torch.randn(n, rank, generator=generator) for n in (cout, cin, kh, kw))
            layer.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
        x = sample_input(layer)
        replacement = self.decompose(host, layer, method, rank=rank)
        with torch.no_grad():
            _assert_close_outputs(layer, layer(x), replacement(x), self.planted_tolerance,
                                  f"{method} at the planted rank {rank}")

    def _at_ratio(self, host, kind: str, method: str, ratio: float) -> tuple[nn.Module, nn.Module, int]:
        """The layer, its replacement at ``ratio`` and the budget; skips when the backend reports it unreachable."""
        layer = make_layer(kind)
        try:
            replacement = self.decompose(host, layer, method, ratio=ratio)
        except Unsupported as exc:
            pytest.skip(f"budget not reachable, reported as unsupported: {exc}")
        return layer, replacement, int(count_params(layer) // ratio)

    @pytest.mark.parametrize("ratio", RATIOS)
    def test_budget_is_respected(self, host, info, case, ratio):
        _, replacement, budget = self._at_ratio(host, *case, ratio)
        assert count_params(replacement) <= budget, f"{count_params(replacement)} params over the budget {budget}"

    @pytest.mark.parametrize("ratio", RATIOS)
    def test_budget_is_filled(self, host, info, case, ratio):
        """A replacement uses at least 1 - UNUSED_BUDGET of its budget, unless the next rank up would not fit."""
        kind, method = case
        layer, replacement, budget = self._at_ratio(host, kind, method, ratio)
        params = count_params(replacement)
        if params >= (1 - UNUSED_BUDGET) * budget:
            return
        rank = (getattr(replacement, "decomposition_info", None) or {}).get("rank")
        bigger = _next_ranks(rank)
        assert bigger, (f"{params} params use {params / budget:.0%} of the budget {budget}, and the replacement "
                        "reports no decomposition_info['rank'] (an int or a list of ints) for the kit to check "
                        "that the next rank up would not fit")
        for larger in bigger:
            try:
                candidate = self.decompose(host, layer, method, rank=larger)
            except Exception:  # a rank the format cannot take does not fit either
                continue
            assert count_params(candidate) > budget, (
                f"rank {rank} uses {params} of {budget} budgeted parameters ({params / budget:.0%}), but rank "
                f"{larger} would fit with {count_params(candidate)}: pick the largest rank that fits "
                "(DecomposeRequest.pick_rank)")

    @pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
    def test_conv_output_shape(self, host, info, case, geometry):
        kind, method = case
        if kind != "conv2d":
            pytest.skip("conv geometry")
        layer = make_layer(kind, **GEOMETRIES[geometry])
        self._skip_if_gap(info, layer)
        x = sample_input(layer)
        replacement = self.decompose(host, layer, method, ratio=2.0)
        with torch.no_grad():
            got, expected = replacement(x).shape, layer(x).shape
        assert got == expected, (f"{method} on {_describe(layer)} ({geometry}) gives output {tuple(got)} for input "
                                 f"{tuple(x.shape)}, where the layer gives {tuple(expected)}")
        if info.init_for(method, kind) == "decompose" and method not in self.cp_methods:
            # Geometry carried right means full rank is exact here too (catches stride on every sub-layer).
            full = self.decompose(host, layer, method, rank="full")
            with torch.no_grad():
                _assert_close_outputs(layer, layer(x), full(x), self.full_rank_tolerance,
                                      f"{method} at full rank ({geometry})")

    @pytest.mark.parametrize("bias", [True, False])
    def test_bias_is_kept(self, host, info, case, bias):
        kind, method = case
        self._require_decompose(info, kind, method)
        layer = make_layer(kind, bias=bias)
        replacement = self.decompose(host, layer, method, ratio=4.0)
        zero = torch.zeros_like(sample_input(layer, batch=1))
        with torch.no_grad():
            response = replacement(zero)
            expected = layer(zero)
        gap = (response - expected).abs().max().item()
        assert torch.allclose(response, expected, atol=1e-5), (
            f"{method} on {_describe(layer)} (bias={bias}): the response to a zero input differs from the layer's by "
            f"up to {gap:.3g} (atol 1e-5); the bias must be kept")

    def test_state_dict_round_trip(self, host, info, case):
        kind, method = case
        layer = make_layer(kind)
        first = self.decompose(host, layer, method, ratio=4.0, seed=0)
        other = self.decompose(host, copy.deepcopy(layer), method, ratio=4.0, seed=1)
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        x = sample_input(layer)
        with torch.no_grad():
            a, b = first(x), other(x)
        assert torch.allclose(a, b, atol=1e-6), (
            f"{method} on {_describe(layer)}: after load_state_dict the outputs differ by up to "
            f"{(a - b).abs().max().item():.3g} (atol 1e-6): some state lives outside the state dict")

    def test_deterministic_under_a_seed(self, host, info, case):
        kind, method = case
        layer = make_layer(kind)
        x = sample_input(layer)
        with torch.no_grad():
            first = self.decompose(host, layer, method, ratio=4.0, seed=3)(x)
            second = self.decompose(host, layer, method, ratio=4.0, seed=3)(x)
        assert torch.equal(first, second), (
            f"{method} on {_describe(layer)}: two decompositions under seed 3 differ by up to "
            f"{(first - second).abs().max().item():.3g}")

    def test_trains(self, host, info, case):
        kind, method = case
        layer = make_layer(kind)
        replacement = self.decompose(host, layer, method, ratio=4.0)
        replacement(sample_input(layer)).square().mean().backward()
        named = list(replacement.named_parameters())
        bad = [name for name, p in named if p.grad is None or not torch.isfinite(p.grad).all()]
        assert named and not bad, (f"{method} on {_describe(layer)}: " + (
            "the replacement has no parameters" if not named else
            f"no finite gradient for {', '.join(bad)} (of {len(named)} parameters)"))

    @pytest.mark.parametrize("gap", sorted(GAP_EXAMPLES))
    def test_declared_gaps_raise_unsupported(self, host, info, case, gap):
        kind, method = case
        if kind != "conv2d" or gap not in info.conv_unsupported:
            pytest.skip("not a declared conv gap")
        layer = make_layer(kind, **GAP_EXAMPLES[gap])
        with pytest.raises(Unsupported):
            self.decompose(host, layer, method, ratio=2.0)


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__} {tuple(layer.weight.shape)}"


def _assert_close_outputs(layer: nn.Module, expected: torch.Tensor, got: torch.Tensor, tolerance: float,
                          what: str) -> None:
    """The kit's assertion on a replacement's output, with the numbers a plugin author needs when it fails."""
    assert got.shape == expected.shape, (f"{what} on {_describe(layer)}: output {tuple(got.shape)}, where the layer "
                                         f"gives {tuple(expected.shape)}")
    error = relative_error(expected, got)
    assert error < tolerance, (f"{what} on {_describe(layer)}: relative output error {float(error):.3g}, above the "
                               f"tolerance {tolerance:g}")
