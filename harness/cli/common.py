"""What every command shares: exit codes, the one-line usage error and its parser, output, the ``-p``
plugins, and the lazily imported report rebuild and name validation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the host loads plugins, which import torch: only commands that need them load it
    from harness.run.host import Host


def report(run_dir: Path, host: Host, write: Any) -> int:
    """:func:`harness.results.report.report`, imported when first needed (reports bring pandas)."""
    from harness.results.report import report as rebuild

    return rebuild(run_dir, host, write)


def validate_names(*args: Any, **kwargs: Any) -> list[str]:
    """:func:`harness.run.names.validate_names`, imported when first needed (it brings torch)."""
    from harness.run.names import validate_names as validate

    return validate(*args, **kwargs)
EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE = 0, 1, 2
# harness export: the network cannot be exported, or the file it wrote does not match it.
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit 2), not usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _plugin_args(values: list[str] | None) -> dict[str, list[str]]:
    from harness.run.host import is_plugin_file

    blocked, extra = [], []
    for value in values or []:
        if value.startswith("no:"):
            blocked.append(value.removeprefix("no:"))
        else:
            # A file path is made absolute so that worker processes find the same file.
            extra.append(os.path.abspath(value) if is_plugin_file(value) else value)
    return {"blocked": blocked, "extra_modules": extra}


def _require_command_line_plugins(host: Host) -> None:
    """A plugin the user named with ``-p`` must load: a typo would otherwise run without it."""
    from harness.run.host import COMMAND_LINE

    for record in host.plugins:
        if record.origin == COMMAND_LINE and record.error:
            raise UsageError(f"harness: error: cannot load plugin {record.module!r} given with -p: {record.error}")


def _echo(line: str) -> None:
    print(line, flush=True)
