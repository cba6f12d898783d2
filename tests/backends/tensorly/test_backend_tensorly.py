"""Tests of the tensorly backend: exactness at full rank, planted CP, conv geometry, bias, budgets,
seeding, tensorly's global backend left alone, and the plugin contract."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import harness_tensorly
from harness import BackendInfo, DecomposeRequest, Unsupported
from harness.tensor import structures
from harness.contract.backend import count_params, largest_fitting
from harness.run.host import load_host
from harness.testing import decompose as host_decompose
from harness_tensorly import tensorly_ops

tl = pytest.importorskip("tensorly")

# CP-ALS needs no accuracy where only parameter counts or shapes are checked.
FAST_CP = {"n_iter_max": 5}

# Module level, as well as in the fixture below: with 2 OpenMP threads on a busy 2-core machine
# MKL's SVD spin-waits and runs ~100-300x slower; one thread keeps the file fast and steady.
_THREADS_BEFORE = torch.get_num_threads()
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(_THREADS_BEFORE)


@pytest.fixture
def tensorly_backend():
    """Put tensorly's global backend back as it was, whatever a test sets it to."""
    before = tl.get_backend()
    yield
    tl.set_backend(before)


def make_request(layer: nn.Module, method: str, backend: str = "tensorly", **kwargs) -> DecomposeRequest:
    kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
    kwargs.setdefault("seed", 0)
    return DecomposeRequest(backend=backend, method=method, layer_path="x", kind=kind,
                            dense_params=count_params(layer), **kwargs)


def decompose(layer: nn.Module, method: str, **kwargs) -> nn.Module:
    replacement = host_decompose(layer, make_request(layer, method, **kwargs))
    assert replacement is not None
    return replacement


def rel_err(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y - y_hat) / torch.linalg.vector_norm(y))


def seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def plant_cp_kernel(layer: nn.Conv2d, rank: int, seed: int = 0) -> None:
    """Overwrite the layer's kernel with an exact CP tensor of the given rank."""
    gen = torch.Generator().manual_seed(seed)
    cout, cin, kh, kw = layer.weight.shape
    a, b, c, d = (torch.randn(n, rank, generator=gen) for n in (cout, cin, kh, kw))
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))


def image(layer: nn.Conv2d, size: int = 11, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, layer.in_channels, size, size, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- full rank reproduces the layer


@pytest.mark.parametrize("method", ["svd", "tt"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_reproduces_dense(method, bias):
    layer = seeded(lambda: nn.Linear(60, 24, bias=bias))
    replacement = decompose(layer, method, rank="full")
    x = torch.randn(2, 3, 60)  # leading batch dims must pass through
    with torch.no_grad():
        y, y_hat = layer(x), replacement(x)
    assert y_hat.shape == y.shape
    assert rel_err(y, y_hat) < 1e-4
    assert replacement.decomposition_info["rel_error"] < 1e-10


@pytest.mark.parametrize("options", [{}, {"in_shape": (5, 12), "out_shape": (6, 4)}, {"tt_d": 4}])
def test_tt_matrix_core_layout_is_exact_at_full_rank(options):
    # Output modes are rows in tensorly's TT-matrix cores; a swapped (in, out) layout would fail here.
    layer = seeded(lambda: nn.Linear(60, 24))
    replacement = decompose(layer, "tt", rank=10**6, options=options)
    assert isinstance(replacement, structures.TTMatrixLinear)
    assert torch.allclose(replacement.to_dense(), layer.weight, atol=1e-5)
    x = torch.randn(5, 60)
    with torch.no_grad():
        assert rel_err(layer(x), replacement(x)) < 1e-4
    if "out_shape" in options:
        assert replacement.out_shape == (6, 4) and replacement.in_shape == (5, 12)


def test_tt_matrix_forward_matches_its_dense_weight():
    module = seeded(lambda: structures.TTMatrixLinear((3, 4, 5), (2, 3, 2), (4, 5), bias=True))
    with torch.no_grad():
        module.bias.normal_(generator=torch.Generator().manual_seed(2))
        x = torch.randn(2, 3, 60)
        expected = x @ module.to_dense().T + module.bias
        assert torch.allclose(module(x), expected, atol=1e-5)


def test_conv_tucker2_and_tt_full_rank_reproduce_dense():
    layer = seeded(lambda: nn.Conv2d(6, 10, 3, padding=1))
    x = image(layer)
    for method in ("tucker2", "tt"):
        replacement = decompose(layer, method, rank="full")
        with torch.no_grad():
            assert rel_err(layer(x), replacement(x)) < 1e-4, method


def test_cp_recovers_a_planted_rank():
    layer = seeded(lambda: nn.Conv2d(8, 12, 3, padding=1))
    plant_cp_kernel(layer, rank=3)
    x = image(layer)
    replacement = decompose(layer, "cp", rank=3)
    with torch.no_grad():
        assert rel_err(layer(x), replacement(x)) < 1e-3
    info = replacement.decomposition_info
    assert info["rank"] == 3 and info["rel_error"] < 1e-3
    assert isinstance(info["n_iter"], int) and 1 <= info["n_iter"] <= info["n_iter_max"]
    assert info["converged"] is True


def test_cp_info_reports_unconverged_als():
    # Far from a planted rank, 3 sweeps cannot meet a 1e-12 tolerance: converged must say so.
    layer = seeded(lambda: nn.Conv2d(8, 12, 3, padding=1))
    info = decompose(layer, "cp", rank=10, options={"n_iter_max": 3, "tol": 1e-12}).decomposition_info
    assert info["n_iter"] == 3 and info["converged"] is False
    assert 0 < info["rel_error"] < 1


@pytest.mark.parametrize("method", ["cp", "tucker2", "tt"])
def test_all_zero_kernel(method):
    # A dead (e.g. pruned) layer: tensorly's ALS cannot start from it, the backend must still answer.
    layer = seeded(lambda: nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        layer.weight.zero_()
    x = image(layer)
    replacement = decompose(layer, method, ratio=2.0)
    with torch.no_grad():
        assert torch.allclose(replacement(x), layer(x))
    assert replacement.decomposition_info["rel_error"] == 0.0


# ----------------------------------------------------------------------------- conv geometry

GEOMETRIES = {
    "stride2_pad1": dict(kernel_size=3, stride=2, padding=1),
    "pad1": dict(kernel_size=3, padding=1),
    "pad_same": dict(kernel_size=3, padding="same"),
    "pad_valid": dict(kernel_size=3, padding="valid"),
    "dilation2": dict(kernel_size=3, padding=2, dilation=2),
    "kernel3x5": dict(kernel_size=(3, 5), padding=(1, 2)),
    "stride2_1": dict(kernel_size=3, stride=(2, 1), padding=(1, 0)),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_conv_geometry(geometry):
    layer = seeded(lambda: nn.Conv2d(6, 8, **GEOMETRIES[geometry]))
    x = image(layer)
    with torch.no_grad():
        y = layer(x)
        # Full rank is exact only if stride, padding and dilation sit on the right sub-convs.
        for method in ("tucker2", "tt"):
            y_hat = decompose(layer, method, rank="full")(x)
            assert y_hat.shape == y.shape, method
            assert rel_err(y, y_hat) < 1e-4, method
        budgeted = decompose(layer, "cp", ratio=2.0, options=FAST_CP)(x)
        assert budgeted.shape == y.shape
        plant_cp_kernel(layer, rank=2)
        y = layer(x)
        assert rel_err(y, decompose(layer, "cp", rank=2)(x)) < 1e-3


def test_geometry_only_on_spatial_sub_convs():
    layer = seeded(lambda: nn.Conv2d(4, 6, 3, stride=(2, 1), padding=(1, 0), dilation=(2, 1)))
    first, vertical, horizontal, last = decompose(layer, "cp", rank=3, options=FAST_CP)
    for pointwise in (first, last):
        assert pointwise.stride == (1, 1) and pointwise.padding == (0, 0) and pointwise.dilation == (1, 1)
    assert vertical.stride == (2, 1) and vertical.padding == (1, 0) and vertical.dilation == (2, 1)
    assert horizontal.stride == (1, 1) and horizontal.padding == (0, 0) and horizontal.dilation == (1, 1)
    assert vertical.groups == horizontal.groups == 3


# ----------------------------------------------------------------------------- bias


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", ["svd", "tt", "cp", "tucker2", "conv-tt"])
def test_bias_kept_or_absent(method, bias):
    if method in ("svd", "tt"):
        layer = seeded(lambda: nn.Linear(24, 20, bias=bias))
        zero = torch.zeros(1, 24)
    else:
        layer = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1, bias=bias))
        zero = torch.zeros(1, 6, 5, 5)
    name = "tt" if method == "conv-tt" else method
    replacement = decompose(layer, name, ratio=4.0, options=FAST_CP)
    with torch.no_grad():
        assert torch.allclose(replacement(zero), layer(zero), atol=1e-6)
    biases = [n for n, _ in replacement.named_parameters() if n.endswith("bias")]
    assert len(biases) == (1 if bias else 0)


# ----------------------------------------------------------------------------- budgets

BUDGET_LAYERS = {
    "linear400x120": lambda: nn.Linear(400, 120),
    "conv32to64k3": lambda: nn.Conv2d(32, 64, 3, padding=1),
    "conv6to16k5": lambda: nn.Conv2d(6, 16, 5),
}
BUDGET_CASES = [("linear400x120", m) for m in ("svd", "tt")] + [
    (name, m) for name in ("conv32to64k3", "conv6to16k5") for m in ("cp", "tucker2", "tt")
]


def _param_formula(layer: nn.Module, method: str, request: DecomposeRequest):
    """Parameter count as a function of the method's rank, and the ranks one step above ``rank``."""
    bias = layer.bias is not None
    if method == "svd":
        cap = min(layer.in_features, layer.out_features)
        return (lambda r: structures.svd_params(layer.in_features, layer.out_features, r, bias),
                lambda r: [r + 1] if r < cap else [])
    if method == "tt" and isinstance(layer, nn.Linear):
        from harness.tensor.shapes import tensorized_shapes

        shapes = tensorized_shapes(layer.in_features, layer.out_features, request.options)
        caps = structures.tt_linear_max_ranks(*shapes)
        uniform = lambda r: [min(r, c) for c in caps]  # noqa: E731
        return (lambda rs: structures.tt_linear_params(*shapes, rs, bias),
                lambda rs: [uniform(max(rs) + 1)] if max(rs) < max(caps) else [])
    if method == "cp":
        return (lambda r: structures.cp_params(layer, r), lambda r: [r + 1])
    if method == "tucker2":
        max_out, max_in = structures.tucker2_max_ranks(layer)
        return (lambda rs: structures.tucker2_params(layer, *rs),
                lambda rs: ([[rs[0] + 1, rs[1]]] if rs[0] < max_out else [])
                + ([[rs[0], rs[1] + 1]] if rs[1] < max_in else []))
    caps = structures.tt_conv_max_ranks(layer)
    return (lambda rs: structures.tt_conv_params(layer, rs),
            lambda rs: [[min(max(rs) + 1, c) for c in caps]] if max(rs) < max(caps) else [])


@pytest.mark.parametrize("ratio", [2.0, 4.0, 8.0])
@pytest.mark.parametrize("layer_name,method", BUDGET_CASES)
def test_budget_is_met_as_closely_as_a_rank_step_allows(layer_name, method, ratio):
    layer = seeded(BUDGET_LAYERS[layer_name])
    request = make_request(layer, method, ratio=ratio, options=FAST_CP if method == "cp" else {})
    replacement = host_decompose(layer, request)
    budget, used = request.max_params, count_params(replacement)
    assert used <= budget
    params, next_steps = _param_formula(layer, method, request)
    rank = replacement.decomposition_info["rank"]
    assert params(rank) == used, "the budget formula counts what was built"
    steps = [params(r) for r in next_steps(rank)]
    assert all(p > budget for p in steps), "a larger rank would still have fitted"
    if steps and min(steps) - used <= 0.1 * budget:
        assert used >= 0.9 * budget


def test_budget_too_small_is_unsupported():
    layer = seeded(lambda: nn.Conv2d(4, 4, 3))
    with pytest.raises(Unsupported):
        decompose(layer, "tt", ratio=1000.0)


# ----------------------------------------------------------------------------- explicit ranks


def test_explicit_ranks_are_honoured():
    layer = seeded(lambda: nn.Conv2d(16, 24, 3, padding=1))
    assert decompose(layer, "tucker2", rank=[7, 5]).decomposition_info["rank"] == [7, 5]
    assert decompose(layer, "tt", rank=[6, 9, 4]).decomposition_info["rank"] == [6, 9, 4]
    assert decompose(layer, "cp", rank=11, options=FAST_CP).decomposition_info["rank"] == 11
    lin = seeded(lambda: nn.Linear(64, 48))
    assert decompose(lin, "svd", rank=9).decomposition_info["rank"] == 9
    assert decompose(lin, "tt", rank=[5, 3]).decomposition_info["rank"] == [5, 3]
    assert decompose(lin, "tt", rank=4).decomposition_info["rank"] == [4, 4]


# ----------------------------------------------------------------------------- seeds, RNG, dtype


def test_deterministic_under_a_seed_and_the_seed_matters():
    layer = seeded(lambda: nn.Conv2d(8, 12, 3, padding=1))
    x = image(layer)
    options = {"init": "random", "n_iter_max": 20}
    with torch.no_grad():
        first = decompose(layer, "cp", rank=6, seed=3, options=options)(x)
        again = decompose(layer, "cp", rank=6, seed=3, options=options)(x)
        other = decompose(layer, "cp", rank=6, seed=4, options=options)(x)
        assert torch.equal(first, again)
        assert not torch.equal(first, other), "random_state must reach tensorly's random init"
        for method in ("tucker2", "tt"):
            first, again = (decompose(layer, method, ratio=3.0, seed=5)(x) for _ in range(2))
            assert torch.equal(first, again), method


def test_global_rng_untouched():
    layer = seeded(lambda: nn.Conv2d(8, 12, 3, padding=1))
    lin = seeded(lambda: nn.Linear(60, 24))
    state = torch.random.get_rng_state()
    decompose(layer, "cp", rank=5, options={"init": "random", "n_iter_max": 3})
    decompose(layer, "tucker2", ratio=2.0)
    decompose(layer, "tt", ratio=2.0)
    decompose(lin, "tt", ratio=2.0)
    decompose(lin, "svd", ratio=2.0)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replacement_keeps_the_layer_dtype(dtype):
    layer = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1)).to(dtype)
    for method in ("cp", "tucker2", "tt"):
        replacement = decompose(layer, method, ratio=2.0, options=FAST_CP)
        assert {p.dtype for p in replacement.parameters()} == {dtype}
    lin = seeded(lambda: nn.Linear(24, 20)).to(dtype)
    for method in ("svd", "tt"):
        assert {p.dtype for p in decompose(lin, method, ratio=2.0).parameters()} == {dtype}


# ----------------------------------------------------------------------------- tensorly's global backend


@pytest.mark.parametrize("global_backend", ["numpy", "tltorch"])
def test_global_backend_is_left_as_found(tensorly_backend, global_backend):
    if global_backend == "tltorch":
        pytest.importorskip("tltorch")  # importing it sets tensorly's backend to pytorch globally
        tl.set_backend("pytorch")  # the state that import leaves, even if it happened earlier
        expected = "pytorch"
    else:
        tl.set_backend("numpy")
        expected = "numpy"
    layer = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1))
    lin = seeded(lambda: nn.Linear(24, 20))
    x = image(layer)
    with torch.no_grad():
        assert rel_err(layer(x), decompose(layer, "tucker2", rank="full")(x)) < 1e-4
        decompose(layer, "cp", ratio=2.0, options=FAST_CP)
        decompose(layer, "tt", ratio=2.0)
        decompose(lin, "tt", ratio=2.0)
        decompose(lin, "svd", ratio=2.0)
    assert tl.get_backend() == expected


def test_backend_restored_after_an_error_and_other_threads_unaffected(tensorly_backend):
    tl.set_backend("numpy")
    layer = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1))
    with pytest.raises(ValueError):
        decompose(layer, "cp", rank=3, options={"init": "no-such-init"})
    assert tl.get_backend() == "numpy"

    # While one thread is inside a decomposition's pytorch context, the others keep their backend.
    inside, release = threading.Event(), threading.Event()
    worker_saw = []

    def worker():
        with tensorly_ops.pytorch_backend():
            worker_saw.append(tl.get_backend())
            inside.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(timeout=10)
        # A fresh thread follows the process-wide default (this one has its own, set above).
        fresh_saw = []
        observer = threading.Thread(target=lambda: fresh_saw.append(tl.get_backend()))
        observer.start()
        observer.join()
        main_saw = tl.get_backend()
    finally:
        release.set()
        thread.join()
    assert worker_saw == ["pytorch"]
    assert main_saw == fresh_saw[0] == "numpy", "a decomposition must not switch tensorly's backend for other threads"
    assert tl.get_backend() == "numpy"


# ----------------------------------------------------------------------------- plugin contract


def test_registration_declares_the_backend():
    infos: list[BackendInfo] = []
    harness_tensorly.harness_register_backends(infos.append)
    (info,) = infos
    assert info.name == "tensorly" and info.library == "tensorly" and info.available
    assert info.library_version == tl.__version__
    assert info.methods == {"linear": ("svd", "tt"), "conv2d": ("cp", "tucker2", "tt", "svd")}
    assert info.conv_unsupported == frozenset({"groups"})
    assert info.init_for("cp", "conv2d") == "decompose"


def test_missing_tensorly_registers_as_unavailable(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "tensorly" or m.startswith("tensorly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorly", None)  # makes `import tensorly` raise ImportError
    infos: list[BackendInfo] = []
    harness_tensorly.harness_register_backends(infos.append)
    (info,) = infos
    assert not info.available and info.library_version is None
    assert info.install_hint == 'pip install -e ".[tensorly]"'
    layer = seeded(lambda: nn.Linear(8, 8))
    with pytest.raises(Unsupported, match="pip install"):
        load_host().decompose(layer, make_request(layer, "svd", ratio=2.0))



def test_unsupported_requests():
    grouped = seeded(lambda: nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(Unsupported):
        decompose(grouped, "tucker2", ratio=2.0)
    layer = seeded(lambda: nn.Conv2d(8, 8, 3))
    with pytest.raises(Unsupported):
        decompose(layer, "cp", rank="full")
    with pytest.raises(Unsupported):
        decompose(nn.Linear(8, 8), "cp", ratio=2.0)


def test_decomposition_info_is_plain_json():
    import json

    layer = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1))
    for method in ("cp", "tucker2", "tt"):
        info = decompose(layer, method, ratio=2.0, options=FAST_CP).decomposition_info
        assert json.loads(json.dumps(info)) == info
    info = decompose(seeded(lambda: nn.Linear(24, 20)), "tt", ratio=2.0).decomposition_info
    assert json.loads(json.dumps(info)) == info


def test_largest_fitting_is_the_shared_helper():
    # The budget search is the host's, not a private copy: same answer as calling it directly.
    layer = seeded(lambda: nn.Conv2d(32, 64, 3, padding=1))
    request = make_request(layer, "cp", ratio=4.0, options=FAST_CP)
    expected = largest_fitting(lambda r: structures.cp_params(layer, r), request.max_params, 10**4)
    assert host_decompose(layer, request).decomposition_info["rank"] == expected


# ----------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layers_decompose_on_the_gpu_like_on_the_cpu():
    # tensorly's pytorch backend keeps the work on the layer's device; the numpy-drawn random
    # inits make the same seed give the same factors there as on the CPU.
    cases = [
        (lambda: nn.Linear(60, 24), "svd", {"ratio": 2.0}),
        (lambda: nn.Linear(60, 24), "tt", {"ratio": 2.0}),
        (lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1), "cp",
         {"rank": 5, "options": {"init": "random", "n_iter_max": 30}}),
        (lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1), "tucker2", {"ratio": 2.0}),
        (lambda: nn.Conv2d(6, 8, (3, 5), padding="same"), "tt", {"ratio": 2.0}),
        (lambda: nn.Conv2d(6, 8, 3, padding=1), "tucker2", {"rank": "full"}),
    ]
    for build, method, kwargs in cases:
        cpu_layer = seeded(build).double()
        gpu_layer = seeded(build).double().cuda()
        cpu, gpu = decompose(cpu_layer, method, **kwargs), decompose(gpu_layer, method, **kwargs)
        assert {p.device.type for p in gpu.parameters()} == {"cuda"}, method
        x = (torch.randn(2, 60) if isinstance(cpu_layer, nn.Linear) else image(cpu_layer)).double()
        with torch.no_grad():
            y_cpu, y_gpu = cpu(x), gpu(x.cuda()).cpu()
            assert rel_err(y_cpu, y_gpu) < 1e-6, method
            if kwargs.get("rank") == "full":
                assert rel_err(gpu_layer(x.cuda()).cpu(), y_gpu) < 1e-6
    half = seeded(lambda: nn.Conv2d(6, 8, 3, padding=1)).to("cuda", torch.bfloat16)
    replacement = decompose(half, "tucker2", rank="full")
    assert {(p.device.type, p.dtype) for p in replacement.parameters()} == {("cuda", torch.bfloat16)}
    x = image(half).to("cuda", torch.bfloat16)
    with torch.no_grad():
        assert rel_err(half(x).float(), replacement(x).float()) < 3e-2
