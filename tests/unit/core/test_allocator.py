"""The allocation policy: a step that makes and frees large intermediates soon reuses their memory."""

import subprocess
import sys

import pytest

# A forward-like step: two 64 MB intermediates made and freed, twenty times; prints the page faults of the last
# eight (with the policy the heap settles within the first eight steps or so).
STEPS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from harness.core.allocator import keep_freed_memory
    assert keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.set_num_threads(1)
x = torch.ones(1 << 20)
counts = []
for step in range(20):
    before = faults()
    h = x.repeat(16)  # 64 MB: above the largest threshold at which glibc stops mapping blocks (32 MB)
    (h * 2).sum()
    del h
    counts.append(faults() - before)
print(sum(counts[12:]))
"""


def _page_faults(policy: str) -> int:
    done = subprocess.run([sys.executable, "-c", STEPS, policy], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_large_intermediates_are_reused_without_page_faults():
    from harness.core.allocator import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("the policy is glibc's, and this C library is another")
    as_shipped, kept = _page_faults("ship"), _page_faults("keep")
    # As glibc ships, every 64 MB intermediate is a fresh mmap: 16,384 page faults of 4 kB each, every step.
    assert as_shipped > 8 * 2 * 15_000
    assert kept < as_shipped / 4  # a late fault or two while the heap settles, never one per intermediate
