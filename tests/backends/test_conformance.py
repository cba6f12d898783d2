"""The conformance kit (harness.testing) run against the built-in backends.

A backend whose library is not installed (the tox ``minimal`` environment) is skipped
with its install hint as the reason.
"""

from harness.testing import BackendConformance


class TestNative(BackendConformance):
    backend = "native"


class TestTensorly(BackendConformance):
    backend = "tensorly"


# tltorch and tltorch-rec run the kit in tests/backends/tltorch/test_backend_tltorch.py, where a subclass
# adds the planted CP check in tltorch's tensorized Linear layout.


class TestTednet(BackendConformance):
    backend = "tednet"
