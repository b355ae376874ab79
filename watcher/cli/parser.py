"""The command line's grammar: one parser class for ``watcher`` and every subcommand.

What a person types should work, so every command gets the same behaviour without asking for it:

* the global options (``--config``) are accepted before *or* after the subcommand
  (``watcher --config w.yaml run`` and ``watcher run --config w.yaml``), the subcommand's copy
  winning when both are given;
* a mistake is one line on stderr naming the command, plus where to find help, and exit status 2
  (argparse's default prints the whole usage block first);
* help texts keep their line breaks (examples stay readable) and show defaults.

A new subcommand is ``commands.add_parser(name, help=..., description=...)`` plus
``.set_defaults(handler=fn)`` in ``watcher.cli.main``: ``fn(args)`` returns the exit status or a
coroutine that does; ``WatcherError`` becomes one line and status 1 (``ConfigError``: 2). The
argument types below (``input_file``, ``output_file``, ``bootstrap``) check a value when the command
line is read, so a wrong path fails before any work is done.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from watcher.config import parse_bootstrap_servers
from watcher.errors import ConfigError

__all__ = ["CommandParser", "VersionAction", "bootstrap", "input_file", "output_file", "port", "positive_int"]


class _Formatter(argparse.HelpFormatter):
    """Prose is wrapped paragraph by paragraph; lines indented by two spaces or more (examples) and
    ``heading:`` lines stay as written. Subcommands are listed without argparse's ``{a,b,c}`` line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                out.append(
                    textwrap.fill(" ".join(prose), width, initial_indent=indent, subsequent_indent=indent)
                )
                prose.clear()

        for line in text.splitlines():
            if not line.strip() or line.startswith("  ") or line.rstrip().endswith(":"):
                flush()
                out.append(indent + line if line.strip() else "")
            else:
                prose.append(line.strip())
        flush()
        return "\n".join(out)

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):  # the commands, one per line
            return "".join(self._format_action(sub) for sub in action._get_subactions())
        return super()._format_action(action)


class CommandParser(argparse.ArgumentParser):
    """``watcher`` and each of its subcommands (argparse makes subparsers of the parent's class).

    ``usage_status`` is the exit status of a usage error (2, as for every Unix tool); a command
    whose statuses mean something else sets its own (``watcher gate``: 2 is "inconclusive")."""

    usage_status = 2

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self._top = top
        self._add_global_options(top)

    def _add_global_options(self, top: bool) -> None:
        group = self.add_argument_group("global options (before or after the command)")
        # Under a subcommand the default is SUPPRESS: an option not given there must not overwrite
        # the value given before the subcommand.
        default = None if top else argparse.SUPPRESS
        group.add_argument(
            "--config",
            metavar="FILE",
            default=default,
            help="YAML settings file (default: $WATCHER_CONFIG, else built-in defaults)",
        )

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A subcommand reports its own unknown options: under its name, with its help and its exit
        status (left to the top parser they exit 2, which ``watcher gate`` means as "inconclusive")."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._top:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """One line: what is wrong, and where help is."""
        self.exit(self.usage_status, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


class VersionAction(argparse.Action):
    """``--version``: prints ``describe()`` (called only when asked: it may look around) and exits 0."""

    def __init__(self, option_strings: list[str], dest: str, describe: Any = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.describe = describe

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        sys.stdout.write(self.describe() + "\n")
        parser.exit(0)


# -- argument types: checked while the command line is read ---------------------------------------
def input_file(value: str) -> str:
    """A file that exists and can be read (a directory is a mistake, not an empty input)."""
    path = Path(value)
    if not value:
        raise argparse.ArgumentTypeError("a file name is required, got ''")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{value}: permission denied")
    return value


def output_file(value: str) -> str:
    """A file that can be written: its folder exists and is writable, and it is not a folder."""
    if not value:
        raise argparse.ArgumentTypeError("a file name is required, got ''")
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{value}: permission denied")
    return value


def bootstrap(value: str) -> str:
    """Kafka bootstrap servers, ``host:port[,host:port...]``, validated as the settings do."""
    try:
        parse_bootstrap_servers(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return value


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def port(value: str) -> int:
    """A TCP port; 0 asks for any free one."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: any free port), got {number}")
    return number
