"""Errors: the one base every user-facing harness error derives from, and the one-line form of any exception.

A :class:`HarnessError` (as pytest's ``UsageError``) is something the user can act on: the CLI prints its message,
one line, and exits 2. Everything else that reaches the CLI is an internal error (exit 3).
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user caused or can fix; the message is one line."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone for an empty message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
