"""Direct tests of the shared stock-module builders and formulas in :mod:`harness.tensor.structures`.

Each builder gets factors of a kernel (or weight) they represent exactly, so the built
module must reproduce the dense layer under any geometry; the parameter formulas must
count exactly what the builders build.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.tensor import structures
from harness.contract.backend import count_params

# Geometries that break a builder which puts the stride, padding or dilation on the wrong sub-conv.
GEOMETRIES = [
    {"stride": 2, "padding": 1},
    {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"stride": 1, "padding": "same", "dilation": 2},
    {"stride": 2, "padding": (2, 1), "dilation": (2, 1), "padding_mode": "reflect"},
    {"stride": (1, 2), "padding": 1, "padding_mode": "circular"},
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _conv_layer(weight: torch.Tensor, geometry: dict, bias: bool = True) -> nn.Conv2d:
    cout, cin, kh, kw = weight.shape
    layer = nn.Conv2d(cin, cout, (kh, kw), bias=bias, **geometry)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(_randn(cout, seed=99))
    return layer


def _assert_reproduces(layer: nn.Module, module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        y, y_hat = layer(x), module(x)
    assert y_hat.shape == y.shape
    assert float(torch.linalg.vector_norm(y - y_hat) / torch.linalg.vector_norm(y)) < 1e-5


def _image(cin: int) -> torch.Tensor:
    return torch.randn(2, cin, 11, 13, generator=_gen(7))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cp_module_reproduces_a_cp_kernel(geometry):
    cout, cin, kh, kw, rank = 6, 5, 3, 3, 4
    a, b = _randn(cout, rank, seed=1), _randn(cin, rank, seed=2)
    c, d = _randn(kh, rank, seed=3), _randn(kw, rank, seed=4)
    layer = _conv_layer(torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d), geometry)
    module = structures.cp_conv_module(layer, a, b, c, d)
    assert [m.groups for m in module] == [1, rank, rank, 1]
    _assert_reproduces(layer, module, _image(cin))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_tucker2_module_reproduces_a_tucker2_kernel(geometry):
    cout, cin, kh, kw, r_out, r_in = 7, 5, 3, 2, 3, 2
    core, u_out, u_in = _randn(r_out, r_in, kh, kw, seed=1), _randn(cout, r_out, seed=2), _randn(cin, r_in, seed=3)
    layer = _conv_layer(torch.einsum("abyx,oa,ib->oiyx", core, u_out, u_in), geometry)
    module = structures.tucker2_conv_module(layer, core, u_out, u_in)
    assert [tuple(m.weight.shape) for m in module] == [(r_in, cin, 1, 1), (r_out, r_in, kh, kw), (cout, r_out, 1, 1)]
    _assert_reproduces(layer, module, _image(cin))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_tt_module_reproduces_a_tt_kernel(geometry):
    cout, cin, kh, kw, (r1, r2, r3) = 6, 4, 3, 3, (3, 4, 2)
    cores = [
        _randn(1, cin, r1, seed=1), _randn(r1, kh, r2, seed=2), _randn(r2, kw, r3, seed=3), _randn(r3, cout, 1, seed=4)
    ]
    full = torch.einsum("aib,byc,cxd,doe->iyxo", *cores)  # (Cin, kh, kw, Cout): the TT order
    layer = _conv_layer(full.permute(3, 0, 1, 2), geometry)
    module = structures.tt_conv_module(layer, cores)
    _assert_reproduces(layer, module, _image(cin))


def _tt_svd(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Full-rank TT-SVD, written here so the test does not lean on a backend."""
    cores, rest, r_prev = [], tensor.reshape(1, -1), 1
    for size in tensor.shape[:-1]:
        u, s, vh = torch.linalg.svd(rest.reshape(r_prev * size, -1), full_matrices=False)
        cores.append(u.reshape(r_prev, size, -1))
        rest, r_prev = s[:, None] * vh, s.numel()
    cores.append(rest.reshape(r_prev, tensor.shape[-1], 1))
    return cores


@pytest.mark.parametrize("bias", [True, False])
def test_tt_matrix_linear_from_full_rank_tt_svd_reproduces_the_linear(bias):
    in_shape, out_shape = (3, 4, 5), (2, 3, 4)
    layer = nn.Linear(60, 24, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(_randn(24, 60, seed=1))
    d = len(in_shape)
    # (m1..md, n1..nd) -> (m1 n1, ..., md nd), TT-SVD, then split each core's pair back into (m_k, n_k).
    paired = layer.weight.detach().double().reshape(*out_shape, *in_shape)
    paired = paired.permute(*(i for k in range(d) for i in (k, d + k)))
    paired = paired.reshape([m * n for m, n in zip(out_shape, in_shape)])
    cores = [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(_tt_svd(paired), out_shape, in_shape)]
    module = structures.tt_matrix_linear_module(layer, cores)
    assert module.in_shape == in_shape and module.out_shape == out_shape
    assert list(module.ranks) == structures.tt_linear_max_ranks(in_shape, out_shape)
    torch.testing.assert_close(module.to_dense(), layer.weight.detach(), rtol=1e-5, atol=1e-5)
    _assert_reproduces(layer, module, torch.randn(2, 3, 60, generator=_gen(7)))


def test_svd_linear_module_from_full_svd_reproduces_the_linear():
    layer = nn.Linear(20, 12)
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    module = structures.svd_linear_module(layer, s.sqrt()[:, None] * vh, u * s.sqrt())
    _assert_reproduces(layer, module, torch.randn(4, 20, generator=_gen(7)))


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_formulas_count_the_built_modules(bias):
    conv = nn.Conv2d(5, 7, (3, 2), bias=bias)
    cout, cin, kh, kw = conv.weight.shape
    cp = structures.cp_conv_module(conv, _randn(cout, 4), _randn(cin, 4), _randn(kh, 4), _randn(kw, 4))
    assert count_params(cp) == structures.cp_params(conv, 4)
    tucker = structures.tucker2_conv_module(conv, _randn(3, 2, kh, kw), _randn(cout, 3), _randn(cin, 2))
    assert count_params(tucker) == structures.tucker2_params(conv, 3, 2)
    tt = structures.tt_conv_module(conv, [_randn(1, cin, 3), _randn(3, kh, 4), _randn(4, kw, 2), _randn(2, cout, 1)])
    assert count_params(tt) == structures.tt_conv_params(conv, [3, 4, 2])

    linear = nn.Linear(12, 10, bias=bias)
    svd = structures.svd_linear_module(linear, _randn(3, 12), _randn(10, 3))
    assert count_params(svd) == structures.svd_params(12, 10, 3, bias)
    cores = [_randn(1, 2, 3, 4), _randn(4, 5, 4, 1)]
    ttm = structures.tt_matrix_linear_module(linear, cores)
    assert count_params(ttm) == structures.tt_linear_params((3, 4), (2, 5), [4], bias)


def test_builders_cast_to_the_layer_dtype_and_leave_the_global_rng_alone():
    conv = nn.Conv2d(4, 6, 3, padding=1).to(torch.float32)
    linear = nn.Linear(12, 10)
    state = torch.get_rng_state()
    modules = [
        structures.cp_conv_module(conv, _randn(6, 2), _randn(4, 2), _randn(3, 2), _randn(3, 2)),
        structures.tucker2_conv_module(conv, _randn(2, 2, 3, 3), _randn(6, 2), _randn(4, 2)),
        structures.tt_conv_module(conv, [_randn(1, 4, 2), _randn(2, 3, 2), _randn(2, 3, 2), _randn(2, 6, 1)]),
        structures.svd_linear_module(linear, _randn(3, 12), _randn(10, 3)),
        structures.tt_matrix_linear_module(linear, [_randn(1, 2, 3, 4), _randn(4, 5, 4, 1)]),
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters())


def test_budget_solvers_fit_the_budget_and_stop_at_the_maximum():
    conv = nn.Conv2d(16, 32, 3)
    budget = 2000
    rank = structures.cp_budget_rank(conv, budget)
    assert structures.cp_params(conv, rank) <= budget < structures.cp_params(conv, rank + 1)
    assert structures.tucker2_params(conv, *structures.tucker2_budget_ranks(conv, budget)) <= budget
    assert structures.tt_conv_params(conv, structures.tt_conv_budget_ranks(conv, budget)) <= budget
    assert structures.tt_conv_budget_ranks(conv, 10**9) == structures.tt_conv_max_ranks(conv)
    assert structures.tucker2_budget_ranks(conv, 10**9) == structures.tucker2_max_ranks(conv)
    linear = nn.Linear(60, 24)
    assert structures.svd_budget_rank(linear, 10**9) == 24
    ranks = structures.tt_linear_budget_ranks((3, 4, 5), (2, 3, 4), True, 1500)
    assert structures.tt_linear_params((3, 4, 5), (2, 3, 4), ranks, True) <= 1500


def test_ranks_arg_and_max_ranks():
    assert structures.ranks_arg(3, 2) == [3, 3]
    assert structures.ranks_arg((4, "5"), 2) == [4, 5]
    with pytest.raises(ValueError):
        structures.ranks_arg([1, 2], 3)
    assert structures.tt_max_ranks((3, 4, 5)) == [3, 5]
    assert structures.tt_conv_max_ranks(nn.Conv2d(4, 6, 3)) == [4, 12, 6]
