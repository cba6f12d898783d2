"""The conformance kit (harness.testing) run against every built-in backend.

A backend whose library is not installed (the tox ``minimal`` environment) is skipped
with its install hint as the reason.
"""

from harness.testing import BackendConformance


class TestNative(BackendConformance):
    backend = "native"


class TestTensorly(BackendConformance):
    backend = "tensorly"


class TestTltorch(BackendConformance):
    backend = "tltorch"


class TestTltorchReconstructed(BackendConformance):
    backend = "tltorch-rec"


class TestTednet(BackendConformance):
    backend = "tednet"
