"""The command line: ``harness run``, ``harness list``, ``harness report``, ``harness compare`` and ``harness export``.

A shipped ``--preset``, a ``--config`` TOML file (same keys as the long flags), flags and
plugin options are merged, in that order, into one :class:`~harness.config.settings.RunConfig`. Every usage or configuration
problem is one line on stderr and exit code 2; a run ends with 0 when every cell is
``ok`` or ``unsupported`` and 1 when any cell errored or timed out. ``harness export`` ends with 1 when the
network cannot be written in the format or the written file does not match it.

One module per command (``run``, ``listing``, ``report``, ``export``; ``bench`` apart), the parser in
``parser`` and what they share in ``common``; this module only dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.cli.common import (
    EXIT_FAILED,
    EXIT_FAILED_CELLS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    _echo,
    _plugin_args,
    _require_command_line_plugins,
)
from harness.cli.export import cmd_export
from harness.cli.listing import cmd_list, cmd_plugins
from harness.cli.parser import EXPORT_FORMATS, build_parser
from harness.cli.report import cmd_compare, cmd_report
from harness.cli.run import cmd_run
from harness.config.settings import ConfigError
from harness.results.store import StoreError

__all__ = ["EXIT_FAILED", "EXIT_FAILED_CELLS", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "EXPORT_FORMATS", "Parser",
           "UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # -p must be known before plugins load, so it is read ahead of the full parse.
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("-p", dest="plugins", action="append")
        early, _ = pre.parse_known_args(argv)
        rest = [a for a in argv if a not in ("-p", *(early.plugins or []))]
        if rest[:1] == ["bench"]:
            from harness.cli import bench

            return bench.run(rest[1:], _echo)
        if not rest or rest[0] in ("-h", "--help"):  # the command list: no plugin (and no torch) needed
            parser = build_parser(None)
            if rest:
                parser.parse_args(rest[:1])  # prints the help and exits 0, as argparse does
            parser.print_help()
            return EXIT_USAGE
        plugin_args = _plugin_args(early.plugins)
        from harness.run.host import load_host

        host = load_host(**plugin_args)
        _require_command_line_plugins(host)
        parser = build_parser(host)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "plugins" or (args.command == "list" and args.plugins_only):
            return cmd_plugins(host)
        if args.command == "list":
            return cmd_list(host)
        if args.command == "report":
            return cmd_report(host, args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "export":
            return cmd_export(host, args)
        return cmd_run(host, args, argv, plugin_args)
    except (UsageError, ConfigError, StoreError) as exc:
        print(f"harness: error: {exc}" if not str(exc).startswith("harness") else f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(f"harness: internal error: {type(exc).__name__}: {exc} (set HARNESS_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
