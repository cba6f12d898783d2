"""The tensorly calls behind the ``tensorly`` backend, returning plain torch tensors.

This is the only module that talks to tensorly, and it imports tensorly lazily, inside
the functions, so the plugin itself always imports and can declare the backend
unavailable when the library is missing. Every call runs inside
``tl.backend_context("pytorch", local_threadsafe=True)``: tensorly's backend is
process-global state that other code changes (importing tltorch sets it to pytorch),
so the backend is never set globally, only for this thread and only for the call,
and whatever was there before is put back. Every algorithm gets ``random_state``
so a seed gives the same factors. The results come back as small dataclasses of
float64 torch tensors with the iteration counts tensorly reports; the layer builders
in ``linear.py`` and ``conv.py`` turn them into modules.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


INSTALL_HINT = 'pip install -e ".[tensorly]"'


def library_version() -> str | None:
    """tensorly's version, or None when it cannot be imported."""
    try:
        import tensorly
    except Exception:  # a broken install is as unusable as a missing one
        return None
    return str(tensorly.__version__)


@contextlib.contextmanager
def pytorch_backend() -> Iterator[object]:
    """Run tensorly on its pytorch backend for this thread only, then restore what was there.

    ``local_threadsafe=True`` keeps the switch to this thread: with the default, other
    threads would see the pytorch backend while a decomposition runs. With opt_einsum
    installed, tensorly's tensor algebra runs on its ``einsum`` backend too, whose MTTKRP
    (the core of ``parafac``) contracts the tensor instead of forming the Khatri-Rao
    product: the same iterates, 6-7x faster on a 128x128x3x3 kernel at rank 140 and
    without gigabytes per call on a 512-channel one. Without opt_einsum torch contracts an
    einsum left to right, which would be slower than the default, so the default stays.
    """
    import tensorly as tl

    with tl.backend_context("pytorch", local_threadsafe=True), _tensor_algebra(tl):
        yield tl


def _tensor_algebra(tl) -> contextlib.AbstractContextManager:
    if torch.backends.opt_einsum.is_available():
        return tl.tenalg.backend_context("einsum", local_threadsafe=True)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_svd_clipping() -> Iterator[None]:
    # tensorly warns each time it asks an SVD for more vectors than a matrix has (a CP
    # rank above a kernel's 3-long mode, a full Tucker rank); it then pads on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        yield


# ----------------------------------------------------------------------------- shared helpers


# ----------------------------------------------------------------------------- SVD


def truncated_svd(matrix: Tensor, rank: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``U (m, r), S (r,), Vh (r, n)`` of the rank-``r`` truncated SVD, by ``tensorly.tenalg.svd_interface``."""
    with pytorch_backend():
        from tensorly.tenalg import svd_interface

        u, s, vh = svd_interface(matrix, method="truncated_svd", n_eigenvecs=rank, random_state=seed)
    return u, s, vh


# ----------------------------------------------------------------------------- CP


@dataclass
class CPFit:
    """``sum_r weights[r] * outer(factors[0][:, r], ...)`` from ``parafac``, with its ALS record."""

    weights: Tensor
    factors: list[Tensor]
    n_iter: int
    converged: bool
    errors: list[float]


def cp_to_tensor(weights: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """The dense tensor that CP weights and factors describe."""
    with pytorch_backend() as tl:
        return tl.cp_to_tensor((weights, list(factors)))


def parafac(tensor: Tensor, rank: int, *, seed: int, init: str, n_iter_max: int, tol: float) -> CPFit:
    """CP by tensorly's ALS (``tensorly.decomposition.parafac``) from one ``init``.

    ``converged`` says whether ALS stopped because the relative error moved by less
    than ``tol`` between two sweeps, rather than by running out of ``n_iter_max`` sweeps.
    """
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    if not torch.any(tensor):
        # ALS cannot start from an all-zero tensor (tensorly's solve meets a singular Gram
        # matrix, its relative error divides by zero), and zero factors reproduce it exactly.
        zeros = [torch.zeros(n, rank, dtype=tensor.dtype, device=tensor.device) for n in tensor.shape]
        return CPFit(torch.ones(rank, dtype=tensor.dtype, device=tensor.device), zeros, 0, True, [])
    with pytorch_backend(), _quiet_svd_clipping():
        from tensorly.decomposition import parafac as tl_parafac

        # return_errors gives one error per sweep whatever tol is; the callback that tensorly
        # suggests instead only sees errors when tol is non-zero.
        try:
            (weights, factors), errors = tl_parafac(
                tensor,
                rank,
                n_iter_max=n_iter_max,
                init=init,
                svd="truncated_svd",
                tol=tol,
                random_state=seed,
                return_errors=True,
            )
        except torch.linalg.LinAlgError as exc:
            # tensorly's ALS solves with the Gram matrix (no pseudo-inverse), so a rank-deficient
            # start fails here; say which fit failed rather than only "matrix is singular".
            raise RuntimeError(f"tensorly parafac at rank {rank} (init={init!r}) failed: {exc}") from exc
    errors = [float(e) for e in errors]
    # parafac breaks out exactly when |e[-2] - e[-1]| < tol (cvg_criterion "abs_rec_error"),
    # possibly on its last allowed sweep, so the count alone cannot tell.
    converged = bool(tol) and len(errors) >= 2 and abs(errors[-2] - errors[-1]) < tol
    return CPFit(weights, list(factors), len(errors), converged, errors)


# ----------------------------------------------------------------------------- Tucker


@dataclass
class TuckerFit:
    """``tensor ≈ core`` times each orthonormal factor along its mode, from ``partial_tucker``."""

    core: Tensor
    factors: list[Tensor]
    n_iter: int
    errors: list[float]


def partial_tucker(
    tensor: Tensor, modes: Sequence[int], ranks: Sequence[int], *, seed: int, n_iter_max: int, tol: float
) -> TuckerFit:
    """Tucker along ``modes`` only by tensorly's HOOI (``tensorly.decomposition.partial_tucker``), SVD init."""
    with pytorch_backend(), _quiet_svd_clipping():
        from tensorly.decomposition import partial_tucker as tl_partial_tucker

        # tensorly 0.10 returns ((core, factors), errors) and takes rank= and modes=.
        (core, factors), errors = tl_partial_tucker(
            tensor,
            rank=[int(r) for r in ranks],
            modes=list(modes),
            n_iter_max=n_iter_max,
            init="svd",
            tol=tol,
            svd="truncated_svd",
            random_state=seed,
        )
    return TuckerFit(core, list(factors), len(errors), [float(e) for e in errors])


def tucker_to_tensor(fit: TuckerFit, modes: Sequence[int]) -> Tensor:
    """The dense tensor a partial Tucker fit describes."""
    with pytorch_backend():
        from tensorly.tenalg import multi_mode_dot

        return multi_mode_dot(fit.core, fit.factors, modes=list(modes))


# ----------------------------------------------------------------------------- tensor train


def tensor_train(tensor: Tensor, ranks: Sequence[int], seed: int) -> list[Tensor]:
    """TT-SVD by ``tensorly.decomposition.tensor_train``: cores ``(r_{k-1}, n_k, r_k)``, ``r_0 = r_d = 1``.

    ``ranks`` are the ``d - 1`` inner ranks; tensorly lowers each to what its sequential
    SVDs can deliver, so the cores' shapes give the ranks actually kept.
    """
    if len(ranks) != tensor.ndim - 1:
        raise ValueError(f"a {tensor.ndim}-way tensor train needs {tensor.ndim - 1} ranks, got {list(ranks)}")
    with pytorch_backend():
        from tensorly.decomposition import tensor_train as tl_tensor_train

        # A fresh list: tensor_train writes the ranks it really kept into the list it is given.
        tt = tl_tensor_train(tensor, [1, *(int(r) for r in ranks), 1], svd="truncated_svd", random_state=seed)
    return list(tt.factors)


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """The dense tensor a list of TT cores ``(r_{k-1}, n_k, r_k)`` describes."""
    with pytorch_backend() as tl:
        return tl.tt_to_tensor(list(cores))


def tensor_train_matrix(
    weight: Tensor, in_shape: Sequence[int], out_shape: Sequence[int], ranks: Sequence[int], seed: int
) -> list[Tensor]:
    """TT-matrix of a ``(out, in)`` weight by ``tensorly.decomposition.tensor_train_matrix``.

    tensorly takes the matrix tensorized as (row modes..., column modes...) and returns
    cores ``(r_{k-1}, row_k, col_k, r_k)``; the rows of a Linear weight are its outputs,
    so the cores come back as ``(r_{k-1}, m_k, n_k, r_k)`` with ``m`` the output modes.
    """
    d = len(in_shape)
    if len(ranks) != d - 1:
        raise ValueError(f"a {d}-core TT-matrix needs {d - 1} ranks, got {list(ranks)}")
    tensor = weight.reshape(*out_shape, *in_shape)
    with pytorch_backend():
        from tensorly.decomposition import tensor_train_matrix as tl_tensor_train_matrix

        ttm = tl_tensor_train_matrix(tensor, [1, *(int(r) for r in ranks), 1], svd="truncated_svd", random_state=seed)
    return list(ttm.factors)


def tt_matrix_to_matrix(cores: Sequence[Tensor]) -> Tensor:
    """The ``(rows, columns)`` matrix that TT-matrix cores ``(r_{k-1}, row_k, col_k, r_k)`` describe."""
    with pytorch_backend() as tl:
        return tl.tt_matrix_to_matrix(list(cores))
