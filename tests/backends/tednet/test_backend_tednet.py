"""Tests of the tednet backend: fills that reproduce the dense layer, budgets, shapes, gaps, seeding, stdout.

The conformance kit (tests/backends/test_conformance.py) checks the plugin contract on small
layers; this file checks what is particular to TedNet on the layers of the brief
(Linear 400 -> 120, Conv 16 -> 32 3x3): that the factors copied into TedNet's own
parameter layout reproduce the dense layer, that the closed-form parameter counts the
budget is solved with are TedNet's real counts, and that the gaps declared are real.
"""

from __future__ import annotations

import inspect
import math
import sys

import pytest
import torch
from torch import nn

import harness_tednet
from harness import DecomposeRequest, Unsupported
from harness.contract.backend import count_params
from harness.run.host import load_host
from harness.testing import decompose as host_decompose
from harness_tednet.library import TedNetLayer, build_quietly, tednet_class
from harness.measure.metrics import relative_error
from harness import ring_to_tensor as chain_to_tensor
from harness_tednet.tensor_ops import tr_svd, tt_svd

pytest.importorskip("tednet")

# The layers are small; with 2 threads on a busy 2-core machine the SVDs spin-wait, so one thread.
_THREADS = torch.get_num_threads()
torch.set_num_threads(1)

METHODS = ("cp", "tucker2", "tt", "tr", "btt")
CASES = [(kind, method) for kind in ("linear", "conv2d") for method in METHODS]
DECOMPOSED = [case for case in CASES if harness_tednet.METHODS[case][1] == "decompose"]
# CP-ALS accuracy does not matter where only sizes and shapes are checked.
FAST = {"n_iter_max": 5, "n_restarts": 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(_THREADS)


def seeded(build, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_layer(kind: str, bias: bool = True, **conv_kwargs) -> nn.Module:
    if kind == "linear":
        return seeded(lambda: nn.Linear(400, 120, bias=bias))
    kwargs = {"kernel_size": 3, "padding": 1, **conv_kwargs}
    return seeded(lambda: nn.Conv2d(16, 32, bias=bias, **kwargs))


def sample(layer: nn.Module, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, layer.in_features, generator=generator)
    return torch.randn(batch, layer.in_channels, 10, 10, generator=generator)


def decompose(layer: nn.Module, method: str, seed: int = 0, options: dict | None = None, **kwargs) -> nn.Module:
    kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
    request = DecomposeRequest(backend="tednet", method=method, layer_path="x", kind=kind, seed=seed,
                               dense_params=count_params(layer), options=options or {}, **kwargs)
    replacement = host_decompose(layer, request)
    assert replacement is not None
    return replacement


def rel_err(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def plant_cp_kernel(layer: nn.Conv2d, rank: int) -> None:
    generator = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, rank, generator=generator) for n in layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))


# ----------------------------------------------------------------------------- declaration


def test_declaration():
    import importlib.metadata

    infos = []
    harness_tednet.harness_register_backends(register=infos.append)
    (info,) = infos
    assert (info.name, info.library, info.available) == ("tednet", "tednet", True)
    assert info.library_version == importlib.metadata.version("tednet")
    assert info.methods == {"linear": METHODS, "conv2d": METHODS}
    assert info.conv_unsupported == {"groups", "dilation", "padding_mode"}
    assert info.init_for("cp", "linear") == "scratch"
    assert all(info.init_for(m, k) == "decompose" for k, m in DECOMPOSED)
    assert len(DECOMPOSED) == 9


def test_registers_unavailable_without_tednet(monkeypatch):
    for name in [m for m in sys.modules if m == "tednet" or m.startswith("tednet.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
    infos = []
    harness_tednet.harness_register_backends(register=infos.append)
    (info,) = infos
    assert not info.available and info.library_version is None
    assert info.install_hint == 'pip install -e ".[tednet]"'
    layer = make_layer("linear")
    request = DecomposeRequest(backend="tednet", method="tt", layer_path="x", kind="linear", ratio=4.0,
                               dense_params=count_params(layer))
    with pytest.raises(Unsupported, match="unavailable"):
        load_host().decompose(layer, request)


def test_the_host_routes_requests_here():
    host = load_host()
    assert host.backends["tednet"].available
    layer = make_layer("linear")
    request = DecomposeRequest(backend="tednet", method="tt", layer_path="x", kind="linear", ratio=4.0,
                               dense_params=count_params(layer))
    assert isinstance(host.decompose(layer, request), TedNetLayer)


# ----------------------------------------------------------------------------- fills reproduce the dense layer


@pytest.mark.parametrize("geometry", [{}, {"stride": 2}, {"stride": (2, 1)}, {"padding": "same"}])
def test_tucker2_conv_at_full_rank_reproduces_the_conv(geometry):
    layer = make_layer("conv2d", **geometry)
    replacement = decompose(layer, "tucker2", rank="full")
    assert isinstance(replacement.tednet, tednet_class("TK2Conv2D"))
    assert replacement.decomposition_info["rank"] == [16, 32]
    x = sample(layer)
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-4


def test_cp_conv_recovers_a_planted_rank_kernel():
    layer = make_layer("conv2d")
    plant_cp_kernel(layer, rank=3)
    replacement = decompose(layer, "cp", rank=3)
    assert isinstance(replacement.tednet, tednet_class("CPConv2D"))
    info = replacement.decomposition_info
    assert info["init"] == "decompose" and info["rank"] == [3] and info["converged"]
    x = sample(layer)
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-3


@pytest.mark.parametrize("kind,method", [c for c in DECOMPOSED if c[1] != "cp"])
def test_every_fill_is_exact_at_full_rank(kind, method):
    # TT, TR and BTT conv included: their parameters are factors of a rearranged kernel too.
    layer = make_layer(kind)
    replacement = decompose(layer, method, rank="full")
    assert replacement.decomposition_info["rel_error"] < 1e-10
    x = sample(layer)
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-4


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("geometry", [{"stride": (2, 1)}, {"padding": "same", "kernel_size": 4},
                                      {"kernel_size": (3, 5), "padding": (1, 2)}])
@pytest.mark.parametrize("method", ["tt", "tr", "btt"])
def test_undeclared_conv_features_are_carried_exactly(method, geometry):
    layer = make_layer("conv2d", **geometry)
    replacement = decompose(layer, method, rank="full")
    x = sample(layer)
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-4


def test_fill_keeps_a_float64_layer_in_float64():
    layer = make_layer("linear").double()
    replacement = decompose(layer, "tt", rank="full")
    x = sample(layer).double()
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-10


def test_linear_tucker2_single_mode_is_a_truncated_svd_and_two_modes_are_refused():
    layer = make_layer("linear")
    replacement = decompose(layer, "tucker2", rank="full", options={"tt_d": 1})
    x = sample(layer)
    with torch.no_grad():
        assert rel_err(replacement(x), layer(x)) < 1e-4
    with pytest.raises(Unsupported, match="1 or 3 input modes"):
        decompose(layer, "tucker2", ratio=4.0, options={"tt_d": 2})


def test_padded_ranks_keep_the_tensor_and_can_train():
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(4, 3, 5, 2, dtype=torch.float64, generator=generator)
    for cores in (tt_svd(tensor, [4, 20, 2], generator), tr_svd(tensor, [5, 5, 25, 5], generator)):
        assert relative_error(tensor, chain_to_tensor(cores)) < 1e-12
    # The padded slots are zero where a product enters them, but their gradient is not.
    cores = [core.clone().requires_grad_() for core in tt_svd(tensor, [4, 20, 2], generator)]
    (chain_to_tensor(cores) * torch.randn(tensor.shape, dtype=tensor.dtype, generator=generator)).sum().backward()
    assert cores[1].grad[:, :, 10:].abs().sum() > 0


def test_a_ring_wider_than_its_first_unfolding_is_swept_compact_and_padded_trainable():
    # r0 r1 = 100 columns for an unfolding of rank 4: the zero rows were once swept too (24.5 GB on ResNet-18's
    # 512x512x3x3 kernels at x4), and the closing bond's extra slots were zero on both sides, a saddle.
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randn(4, 6, 5, 7, dtype=torch.float64, generator=generator)
    cores = tr_svd(tensor, [10, 10, 30, 8], generator)
    assert [tuple(core.shape) for core in cores] == [(10, 4, 10), (10, 6, 30), (30, 5, 8), (8, 7, 10)]
    assert relative_error(tensor, chain_to_tensor(cores)) < 1e-12
    assert cores[0][1:].abs().sum() > 0 and cores[-1][:, :, 1:].abs().sum() == 0


@pytest.mark.parametrize("shape,ranks", [([3, 4, 5, 2, 3], [2, 3, 4, 2, 5]), ([4], [3]), ([4, 5], [2, 3]),
                                         ([3, 4, 5], [1, 3, 1])])
def test_a_ring_is_contracted_as_einsum_contracts_it(shape, ranks):
    # chain_to_tensor splits the ring in two halves (VGG-11's Linear held 5 GB when built left to right).
    generator = torch.Generator().manual_seed(0)
    d = len(shape)
    cores = [torch.randn(ranks[k], shape[k], ranks[(k + 1) % d], dtype=torch.float64, generator=generator)
             for k in range(d)]
    bonds, modes = "abcdefghij", "pqrstuvwxy"
    spec = ",".join(bonds[k] + modes[k] + bonds[(k + 1) % d] for k in range(d)) + "->" + modes[:d]
    assert torch.allclose(chain_to_tensor(cores), torch.einsum(spec, *cores), atol=1e-12)


# ----------------------------------------------------------------------------- every method runs


@pytest.mark.parametrize("kind,method,geometry", [(k, m, g) for k, m in CASES
                                                    for g in ([{}] if k == "linear" else [{}, {"stride": 2}])])
def test_every_method_runs_forward_and_backward(kind, method, geometry):
    layer = make_layer(kind, **geometry)
    replacement = decompose(layer, method, ratio=8.0, options=FAST)
    x = sample(layer)
    out = replacement(x)
    assert out.shape == layer(x).shape
    out.square().mean().backward()
    grads = [p.grad for p in replacement.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_drop_in_inputs():
    linear = make_layer("linear")
    replacement = decompose(linear, "cp", ratio=8.0)
    with torch.no_grad():
        # TedNet's Linear reshapes to (shape[0], -1): the adapter flattens leading dims first.
        assert replacement(torch.randn(2, 3, 400)).shape == (2, 3, 120)
        assert replacement(torch.randn(400)).shape == (120,)
    conv = make_layer("conv2d")
    replacement = decompose(conv, "tr", rank="full")
    x = sample(conv).to(memory_format=torch.channels_last)  # TedNet's TR/TT convs .view() their input
    with torch.no_grad():
        assert rel_err(replacement(x), conv(x)) < 1e-4
        assert rel_err(replacement(x[0]), conv(x[0])) < 1e-4


# ----------------------------------------------------------------------------- budgets and ranks


@pytest.mark.parametrize("kind,method", CASES)
def test_params_within_budget_and_close_to_it(kind, method):
    layer = make_layer(kind)
    for ratio in (2.0, 4.0, 8.0):
        replacement = decompose(layer, method, ratio=ratio, options=FAST)
        budget = math.floor(count_params(layer) / ratio)
        achieved = count_params(replacement)
        assert replacement.decomposition_info["params"] == achieved
        assert achieved <= budget
        assert achieved / budget >= 0.9, f"{kind}/{method} at ratio {ratio}: {achieved}/{budget}"


@pytest.mark.parametrize("kind,method", CASES)
def test_closed_form_counts_are_tednets_counts(kind, method):
    # The budget is solved with Format.params; it must be what count_params measures, at any ranks.
    layer = make_layer(kind, bias=kind == "linear")
    fmt = harness_tednet.METHODS[(kind, method)][0](layer, {})
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        ranks = [int(torch.randint(1, min(cap, 6) + 1, (), generator=generator)) for cap in fmt.caps]
        module, _ = build_quietly(lambda: fmt.build(ranks), seed=0)
        assert count_params(module) == fmt.params(ranks), ranks


def test_explicit_ranks_are_honoured():
    conv = make_layer("conv2d")
    tk2 = decompose(conv, "tucker2", rank=[5, 7]).tednet
    assert tk2.node0.shape == (16, 5) and tk2.kernel.weight.shape == (7, 5, 3, 3) and tk2.node1.shape == (7, 32)
    assert decompose(conv, "cp", rank=4, options=FAST).decomposition_info["rank"] == [4]
    assert decompose(conv, "tt", rank=2).decomposition_info["rank"] == [2, 2, 2]
    linear = make_layer("linear")
    assert decompose(linear, "tt", rank=[3, 4]).decomposition_info["rank"] == [3, 4]
    with pytest.raises(ValueError):
        decompose(linear, "tt", rank=[3, 4, 5])


def test_a_budget_below_rank_one_is_unsupported_with_the_numbers():
    conv = make_layer("conv2d")  # 4640 params; CP rank 1 needs 16 + 32 + 3 + 3 + 32 (bias) = 86
    with pytest.raises(Unsupported, match=r"needs 86 parameters, over the budget of 77"):
        decompose(conv, "cp", ratio=60.0)


# ----------------------------------------------------------------------------- gaps


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("feature", [{"groups": 2}, {"dilation": 2, "padding": 2}, {"padding_mode": "reflect"}])
def test_declared_gaps_raise_unsupported(method, feature):
    with pytest.raises(Unsupported, match="cannot handle conv"):
        decompose(make_layer("conv2d", **feature), method, ratio=2.0)


@pytest.mark.parametrize("name", ["CPConv2D", "TK2Conv2D", "TTConv2D", "TRConv2D", "BTTConv2D"])
def test_the_gaps_are_tednets(name):
    # TedNet's convs take kernel_size, stride and padding only: nowhere to put the declared features.
    parameters = inspect.signature(tednet_class(name).__init__).parameters
    assert {"stride", "padding"} <= set(parameters)
    assert not {"dilation", "groups", "padding_mode"} & set(parameters)


# ----------------------------------------------------------------------------- stdout and seeding


def test_tednet_printout_is_captured(capsys):
    replacement = decompose(make_layer("conv2d"), "tt", ratio=4.0)
    assert capsys.readouterr().out == ""
    assert "compression_ration" in replacement.decomposition_info["tednet_stdout"]


@pytest.mark.parametrize("kind,method", [("linear", "cp"), ("conv2d", "cp"), ("linear", "tr")])
def test_deterministic_under_a_seed_and_global_rng_untouched(kind, method):
    layer = make_layer(kind)
    state = torch.random.get_rng_state()
    first = decompose(layer, method, ratio=8.0, seed=3, options=FAST).state_dict()
    second = decompose(layer, method, ratio=8.0, seed=3, options=FAST).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    if harness_tednet.METHODS[(kind, method)][1] == "scratch":
        other = decompose(layer, method, ratio=8.0, seed=4).state_dict()
        assert not all(torch.equal(first[k], other[k]) for k in first)


def test_scratch_keeps_tednets_init_and_records_it():
    layer = make_layer("linear")
    replacement = decompose(layer, "cp", ratio=8.0)
    info = replacement.decomposition_info
    assert info["init"] == "scratch" and info["in_shape"] == [10, 8, 5] and info["out_shape"] == [6, 5, 4]
    assert torch.count_nonzero(replacement.tednet.bias) == 0  # TedNet's zero bias, not the trained one
