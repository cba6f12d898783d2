"""What a request's seed and options become in tensorly's decompositions, and what a fit reports.

tltorch passes ``decomposition_kwargs`` straight to tensorly (``parafac`` for CP,
``tucker`` for Tucker, ``tensor_train_matrix`` for block-TT; its conv TT ignores
them). :func:`decomposition_kwargs` builds that dict: the seed as ``random_state``
wherever it is accepted (CP's SVD init draws random columns when the rank exceeds a
mode's size) and the solver options a request may set. For CP it also installs a
callback that counts ALS sweeps, since tltorch discards everything ``parafac``
reports; :class:`CPTrace` turns that into the ``n_iter``/``converged`` the store keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import DecomposeRequest, cp_options

# Options a request may set, per tltorch factorization name, passed on to tensorly as they are.
SOLVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "cp": ("n_iter_max", "tol", "init", "l2_reg", "linesearch"),
    "tucker": ("n_iter_max", "tol", "init"),
    "tt": (),
    "blocktt": (),
}


@dataclass
class CPTrace:
    """Relative errors ``parafac`` reported: once for the initialisation, then once per ALS sweep."""

    n_iter_max: int
    tol: float
    errors: list[float] = field(default_factory=list)

    def __call__(self, cp_tensor: Any, rec_error: Any) -> None:
        self.errors.append(float(rec_error))

    def info(self) -> dict[str, Any]:
        n_iter = max(0, len(self.errors) - 1)
        # tensorly stops early only when one sweep changed the error by less than tol.
        converged = n_iter >= 2 and abs(self.errors[-2] - self.errors[-1]) < self.tol
        return {"n_iter": n_iter, "converged": converged, "n_iter_max": self.n_iter_max}


def decomposition_kwargs(factorization: str, request: DecomposeRequest) -> tuple[dict[str, Any], CPTrace | None]:
    """tensorly keyword arguments for ``factorization`` under ``request``, and the CP trace if any."""
    factorization = factorization.lower()
    kwargs = {key: request.options[key] for key in SOLVER_OPTIONS[factorization] if key in request.options}
    trace = None
    if factorization in ("cp", "tucker", "blocktt"):
        kwargs["random_state"] = int(request.seed)
    if factorization == "cp":
        # The host's CP budget, not parafac's own default of 100 sweeps: the same as every other backend's (and one
        # sweep when the host only rebuilds the structure).
        kwargs.update(cp_options(request))
        trace = CPTrace(n_iter_max=int(kwargs["n_iter_max"]), tol=float(kwargs["tol"]))
        kwargs["callback"] = trace
    return kwargs, trace


def as_json_rank(rank: Any) -> int | list[int]:
    """tltorch's rank attribute (int, tuple, list, NumPy ints) as plain JSON."""
    if isinstance(rank, (list, tuple)):
        return [int(r) for r in rank]
    return int(rank)
