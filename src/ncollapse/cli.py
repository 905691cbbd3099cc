"""The ``ncollapse`` command line: one subcommand per module in :mod:`ncollapse.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ncollapse import __version__

# Each module ncollapse.commands.<name> defines ``register(subparsers)``, which adds its parser
# and sets ``func=run`` (a callable taking the parsed namespace and returning an exit code).
COMMANDS = ("measure", "train", "plot", "animate", "report", "demo", "theory", "lm")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ncollapse",
        description="Measure, train into, visualise and explain neural collapse.",
    )
    parser.add_argument("--version", action="version", version=f"ncollapse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ncollapse.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (``ncollapse measure ... | head``): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        # User errors (an optional extra not installed among them): one clear line, no traceback.
        print(f"ncollapse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The system said no (permissions, no space left, is/not a directory, run in use):
        # one line naming the path, exit 1.
        print(f"ncollapse {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ncollapse {args.command}: interrupted", file=sys.stderr)
        return 130


def _os_error(exc: OSError) -> str:
    """``No space left on device: out/metrics.jsonl`` (or the message of an OSError without)."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc.strerror or exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
