"""Tests of the native backend: exactness at full rank, conv geometry, bias, budgets, seeding, plugin contract."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch
from torch import nn

import harness
import harness.hookspecs
import harness_native
from harness.testing import decompose as host_decompose
from harness import BackendInfo, DecomposeRequest, Unsupported
from harness.tensor import structures
from harness.contract.backend import count_params
from harness.tensor.shapes import balanced_factors

# CP-ALS needs no accuracy where only the parameter count is checked.
FAST_CP = {"n_iter_max": 5, "n_restarts": 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These matrices are tiny; with 2 OpenMP threads on a busy 2-core machine MKL's SVD
    # spin-waits and runs ~100x slower, so one thread keeps the file fast and its timing steady.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_request(layer: nn.Module, method: str, **kwargs) -> DecomposeRequest:
    kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
    return DecomposeRequest(
        backend="native", method=method, layer_path="x", kind=kind, seed=0, dense_params=count_params(layer), **kwargs
    )


def decompose(layer: nn.Module, method: str, **kwargs) -> nn.Module:
    replacement = host_decompose(layer, make_request(layer, method, **kwargs))
    assert replacement is not None
    return replacement


def rel_err(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y - y_hat) / torch.linalg.vector_norm(y))


def seeded_conv(*args, seed: int = 0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(*args, **kwargs)


def plant_cp_kernel(layer: nn.Conv2d, rank: int, seed: int = 0) -> None:
    """Overwrite the layer's kernel with an exact CP tensor of the given rank."""
    gen = torch.Generator().manual_seed(seed)
    cout, cin, kh, kw = layer.weight.shape
    a, b, c, d = (torch.randn(n, rank, generator=gen) for n in (cout, cin, kh, kw))
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))


# ----------------------------------------------------------------------------- full rank reproduces the layer


@pytest.mark.parametrize("method", ["svd", "tt"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_reproduces_dense(method, bias):
    torch.manual_seed(0)
    layer = nn.Linear(60, 24, bias=bias)
    rank = 24 if method == "svd" else 10**6  # TT ranks are capped per bond at their maximum
    replacement = decompose(layer, method, rank=rank)
    x = torch.randn(2, 3, 60)  # leading batch dims must pass through
    with torch.no_grad():
        y, y_hat = layer(x), replacement(x)
    assert y_hat.shape == y.shape
    assert rel_err(y, y_hat) < 1e-4


def test_tt_linear_explicit_shapes_and_dense_weight():
    torch.manual_seed(0)
    layer = nn.Linear(24, 30)
    request = make_request(layer, "tt", rank=[10, 30], options={"in_shape": [2, 3, 4], "out_shape": [5, 3, 2]})
    replacement = host_decompose(layer, request)
    assert isinstance(replacement, structures.TTMatrixLinear)
    assert [tuple(c.shape) for c in replacement.cores] == [(1, 5, 2, 10), (10, 3, 3, 8), (8, 2, 4, 1)]
    assert replacement.decomposition_info["rank"] == [10, 8]  # 30 is capped by the last pair, 2*4
    with torch.no_grad():
        assert rel_err(layer.weight, replacement.to_dense()) < 1e-5
    bad = make_request(layer, "tt", rank=2, options={"in_shape": [5, 5], "out_shape": [5, 6]})
    with pytest.raises(ValueError, match="tensorize"):
        host_decompose(layer, bad)


@pytest.mark.parametrize(
    ("n", "d", "expected"),
    [(784, 3, (14, 8, 7)), (256, 3, (8, 8, 4)), (120, 3, (6, 5, 4)), (7, 3, (7, 1, 1)), (1, 2, (1, 1))],
)
def test_balanced_factors(n, d, expected):
    assert balanced_factors(n, d) == expected
    assert math.prod(balanced_factors(n, d)) == n


# Geometries that break a decomposition which puts the stride (or padding) on the wrong sub-conv.
GEOMETRIES = {
    "stride2-pad1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "same": {"kernel_size": 3, "padding": "same"},
    "valid": {"kernel_size": 3, "padding": "valid"},
    "dilation2": {"kernel_size": 3, "dilation": 2, "padding": 2},
    "kernel3x5": {"kernel_size": (3, 5), "padding": (1, 2)},
    "stride2x1": {"kernel_size": 3, "stride": (2, 1), "padding": 1},
    "everything": {"kernel_size": (3, 5), "stride": (2, 3), "dilation": (2, 1), "padding": (2, 1)},
    "reflect": {"kernel_size": 3, "stride": 2, "padding": 1, "padding_mode": "reflect"},
    "circular-same": {"kernel_size": (3, 5), "padding": "same", "padding_mode": "circular"},
}


def conv_output_error(layer: nn.Conv2d, replacement: nn.Module) -> float:
    x = torch.randn(2, layer.in_channels, 13, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, y_hat = layer(x), replacement(x)
    assert y_hat.shape == y.shape
    return rel_err(y, y_hat)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize(("method", "rank"), [("tucker2", [16, 8]), ("tt", 10**6)])
def test_conv_full_rank_reproduces_dense(geometry, method, rank):
    layer = seeded_conv(8, 16, **geometry)
    assert conv_output_error(layer, decompose(layer, method, rank=rank)) < 1e-4


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_cp_recovers_planted_rank(geometry):
    layer = seeded_conv(8, 16, **geometry)
    plant_cp_kernel(layer, rank=4)
    replacement = decompose(layer, "cp", rank=4)
    info = replacement.decomposition_info
    assert info["rank"] == 4 and isinstance(info["n_iter"], int) and isinstance(info["converged"], bool)
    assert info["rel_error"] < 1e-3
    assert conv_output_error(layer, replacement) < 1e-3
    # The stride belongs to the spatial sub-convs only; the 1x1 convs keep stride 1.
    assert replacement[0].stride == replacement[3].stride == (1, 1)
    assert (replacement[1].stride[0], replacement[2].stride[1]) == layer.stride


def test_truncation_error_shrinks_with_rank():
    layer = seeded_conv(16, 32, 3, padding=1)
    errors = [conv_output_error(layer, decompose(layer, "tucker2", rank=r)) for r in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2] > 0


# ----------------------------------------------------------------------------- bias and dtype


BIAS_CASES = [
    ("svd", lambda bias: nn.Linear(20, 10, bias=bias)),
    ("tt", lambda bias: nn.Linear(20, 10, bias=bias)),
    ("cp", lambda bias: nn.Conv2d(4, 6, 3, bias=bias)),
    ("tucker2", lambda bias: nn.Conv2d(4, 6, 3, bias=bias)),
    ("tt", lambda bias: nn.Conv2d(4, 6, 3, bias=bias)),
]


@pytest.mark.parametrize(("method", "build"), BIAS_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(BIAS_CASES)])
def test_bias_is_kept_or_absent(method, build):
    torch.manual_seed(0)
    with_bias = build(True)
    replacement = decompose(with_bias, method, rank=2, options=FAST_CP)
    final_bias = replacement.bias if isinstance(replacement, structures.TTMatrixLinear) else replacement[-1].bias
    torch.testing.assert_close(final_bias, with_bias.bias, rtol=0, atol=0)
    biases = [name for name, _ in replacement.named_parameters() if name.endswith("bias")]
    assert len(biases) == 1

    without = build(False)
    replacement = decompose(without, method, rank=2, options=FAST_CP)
    assert not any(name.endswith("bias") for name, _ in replacement.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replacement_keeps_dtype(dtype):
    layer = nn.Conv2d(4, 6, 3, dtype=dtype)
    replacement = decompose(layer, "cp", rank=3, options=FAST_CP)
    assert {p.dtype for p in replacement.parameters()} == {dtype}


# ----------------------------------------------------------------------------- budgets


def achieved_is_maximal(layer: nn.Module, method: str, info: dict, budget: int) -> tuple[bool, int | None]:
    """Whether one more step of the method's rank would break the budget, and that step's size in params."""
    rank = info["rank"]
    if method == "svd":
        if rank == min(layer.in_features, layer.out_features):
            return True, None
        now, more = (structures.svd_params(layer.in_features, layer.out_features, r, layer.bias is not None)
                     for r in (rank, rank + 1))
    elif method == "tt" and isinstance(layer, nn.Linear):
        caps = structures.tt_linear_max_ranks(info["in_shape"], info["out_shape"])
        r = max(rank)
        if r >= max(caps):
            return True, None
        now, more = (structures.tt_linear_params(info["in_shape"], info["out_shape"], [min(q, c) for c in caps], True)
                     for q in (r, r + 1))
    elif method == "cp":
        now, more = structures.cp_params(layer, rank), structures.cp_params(layer, rank + 1)
    elif method == "tucker2":
        r_out, r_in = rank
        max_out, max_in = structures.tucker2_max_ranks(layer)
        bumps = [b for b in ((r_out + 1, r_in), (r_out, r_in + 1)) if b[0] <= max_out and b[1] <= max_in]
        if not bumps:
            return True, None
        now = structures.tucker2_params(layer, r_out, r_in)
        more = min(structures.tucker2_params(layer, *b) for b in bumps)
    else:  # tt conv
        caps = structures.tt_conv_max_ranks(layer)
        r = max(rank)
        if r >= max(caps):
            return True, None
        now, more = (structures.tt_conv_params(layer, [min(q, c) for c in caps]) for q in (r, r + 1))
    return more > budget, more - now


BUDGET_LAYERS = {
    "linear400x120": (lambda: nn.Linear(400, 120), ("svd", "tt")),
    "linear784x256": (lambda: nn.Linear(784, 256), ("svd", "tt")),
    "conv32-64-3x3": (lambda: nn.Conv2d(32, 64, 3, padding=1), ("cp", "tucker2", "tt")),
    "conv6-16-5x5": (lambda: nn.Conv2d(6, 16, 5), ("cp", "tucker2", "tt")),
}
BUDGET_CASES = [(name, method) for name, (_, methods) in BUDGET_LAYERS.items() for method in methods]
RATIOS = (1.5, 2, 3, 4, 8, 16)


@pytest.mark.parametrize(("layer_name", "method"), BUDGET_CASES)
def test_budget_is_never_exceeded_and_filled(layer_name, method):
    torch.manual_seed(0)
    layer = BUDGET_LAYERS[layer_name][0]()
    for ratio in RATIOS:
        request = make_request(layer, method, ratio=ratio, options=FAST_CP)
        replacement = host_decompose(layer, request)
        params, budget = count_params(replacement), request.max_params
        assert params <= budget, (ratio, params, budget)
        maximal, step = achieved_is_maximal(layer, method, replacement.decomposition_info, budget)
        assert maximal, (ratio, replacement.decomposition_info, params, budget)
        # Within 10% of the budget wherever the format's rank step is fine enough to get there.
        if step is not None and step <= 0.1 * budget:
            assert params >= 0.9 * budget, (ratio, params, budget)


def test_budget_below_the_smallest_rank_is_unsupported():
    layer = nn.Conv2d(6, 16, 5)
    with pytest.raises(Unsupported):
        decompose(layer, "tucker2", ratio=1000)


# ----------------------------------------------------------------------------- plugin contract


@pytest.mark.parametrize("method", ["cp", "tucker2", "tt"])
def test_grouped_conv_is_unsupported(method):
    layer = nn.Conv2d(4, 8, 3, groups=2)
    with pytest.raises(Unsupported, match="groups"):
        decompose(layer, method, rank=2)


def test_unknown_method_is_unsupported():
    with pytest.raises(Unsupported):
        decompose(nn.Linear(4, 4), "cp", rank=2)


def test_cp_is_deterministic_per_seed_and_leaves_global_rng_alone():
    layer = seeded_conv(8, 16, 3)
    state = torch.get_rng_state()
    first = decompose(layer, "cp", rank=5, options={"n_iter_max": 30})
    torch.rand(10)  # disturbing the global RNG must not matter
    second = decompose(layer, "cp", rank=5, options={"n_iter_max": 30})
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert first.decomposition_info == second.decomposition_info
    # The two decompositions drew nothing from the global generator (only torch.rand above did).
    torch.set_rng_state(state)
    torch.rand(10)
    expected = torch.get_rng_state()
    torch.set_rng_state(state)
    decompose(layer, "cp", rank=5, options={"n_iter_max": 3})
    torch.rand(10)
    assert torch.equal(torch.get_rng_state(), expected)



def test_registration_and_hook_through_pluggy():
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(harness.hookspecs)
    pm.register(harness_native)
    infos: list[BackendInfo] = []
    pm.hook.harness_register_backends(register=infos.append)
    (info,) = infos
    assert info.name == "native" and info.library == "torch" and info.init == "decompose"
    assert info.methods == {"linear": ("svd", "tt"), "conv2d": ("cp", "tucker2", "tt", "svd")}
    assert info.conv_unsupported == frozenset({"groups"})

    assert info.implementation("linear", "svd") is not None  # the host dispatches; no hook to answer

    layer = nn.Linear(8, 4)
    replacement = info.implementation("linear", "svd")(layer, make_request(layer, "svd", ratio=2))
    assert isinstance(replacement, nn.Sequential)
    assert replacement.decomposition_info["rank"] == 1  # 1*(8+4)+4 = 16 <= floor(36/2) < 2*(8+4)+4


# ----------------------------------------------------------------------------- CP-ALS algebra


@pytest.mark.parametrize("shape", [(6, 5, 3, 2), (7, 4, 5), (4, 9)], ids=["4-way", "3-way", "matrix"])
def test_mttkrp_without_khatri_rao_matches_the_unfolding_product(shape):
    from harness.tensor.algebra import khatri_rao, mttkrp, unfold

    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(shape, generator=generator, dtype=torch.float64)
    factors = [torch.randn(size, 5, generator=generator, dtype=torch.float64) for size in shape]
    for mode in range(len(shape)):
        expected = unfold(tensor, mode) @ khatri_rao([f for m, f in enumerate(factors) if m != mode])
        torch.testing.assert_close(mttkrp(tensor, factors, mode), expected)


@pytest.mark.parametrize("shape", [(12, 10, 3, 3), (9, 8, 7)], ids=["kernel", "3-way"])
def test_cp_als_error_from_grams_is_the_reconstruction_error(shape):
    # The sweep's error comes from Gram matrices and float32 contractions, never from a reconstruction:
    # it must still be the error of the factors returned, to well under the convergence tolerance's scale.
    from harness.tensor.algebra import cp_als, cp_to_tensor

    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fit = cp_als(tensor, 7, generator=torch.Generator().manual_seed(3), n_iter_max=40, n_restarts=1)
    true = float(torch.linalg.vector_norm(tensor - cp_to_tensor(fit.weights, fit.factors)) / tensor.norm())
    assert 0 < fit.rel_error < 1
    assert abs(fit.rel_error - true) < 1e-6
