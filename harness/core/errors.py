"""Errors: the one base every user-facing harness error derives from, and the one-line form of any exception.

A :class:`HarnessError` (as pytest's ``UsageError``) is something the user can act on: the CLI prints its message,
one line, and exits 2. Everything else that reaches the CLI is an internal error (exit 3).
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user caused or can fix; the message is one line."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone for an empty message); a ``sys.exit`` says so."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    plain = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    full = disk_full(exc)
    return f"{full} ({plain[:250]})" if full else plain


def disk_full(exc: BaseException | None) -> str:
    """What to tell the user where ``exc`` (or what it was raised from) is a write that found no space, else "": an
    ``OSError`` with ENOSPC says so; torch.save's zip writer only says ``file write failed``, almost always a full
    disk."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk full: no space left on device"
        if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
            return "a file write failed, most likely because the disk is full"
        exc = exc.__cause__ or exc.__context__
    return ""
