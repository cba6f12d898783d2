"""The harness conformance kit, run against the example backend."""

from harness.testing import BackendConformance


class TestLowrank(BackendConformance):
    backend = "lowrank"
