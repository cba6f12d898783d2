"""The one-line form of an exception: what a user reads for a failed cell or plugin."""

from __future__ import annotations

import errno

from harness.core.errors import disk_full, one_line


def test_one_line_is_the_type_and_the_first_line():
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert one_line(KeyError()) == "KeyError"


def test_a_full_disk_is_named_whatever_raised_it():
    assert one_line(OSError(errno.ENOSPC, "No space left on device")).startswith("disk full: no space left")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer) == "disk full: no space left on device"
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError()  # an empty message, with the full disk only in its context
    except RuntimeError as outer:
        assert one_line(outer) == "disk full: no space left on device (RuntimeError)"
    assert disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
    assert disk_full(OSError(errno.EACCES, "Permission denied")) == ""


def test_a_sys_exit_is_named():
    assert one_line(SystemExit(0)) == "it called sys.exit(0)"
