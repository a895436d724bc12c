"""Command-line parsers with short errors: the error, a did-you-mean, and where the help is."""

from __future__ import annotations

import difflib
import re
import sys
from functools import cache
from typing import Any

from mmrec.config import ConfigError

_OPTION = re.compile(r"(--[A-Za-z0-9_][\w.\-]*)")


def did_you_mean(message: str, options: set[str]) -> list[str]:
    """``--opt: did you mean --option?`` for each unknown option the message names."""
    out = []
    for bad in dict.fromkeys(_OPTION.findall(message)):
        if bad in options:
            continue
        close = difflib.get_close_matches(bad, sorted(options), n=2, cutoff=0.75)
        if close:
            out.append(f"{bad}: did you mean {' or '.join(close)}?")
    return out


def _options(parser: Any) -> set[str]:
    found: set[str] = set()
    for action in getattr(parser, "_actions", []):
        found.update(s for s in action.option_strings if s.startswith("--"))
        sub = getattr(action, "_name_parser_map", None)  # subcommands
        if isinstance(sub, dict):
            for p in sub.values():
                found |= _options(p)
    return found


class ShortErrors:
    """Mixin for jsonargparse parsers: on a bad argument print the error, did-you-mean hints
    and the help command, then exit with status 2 (instead of the whole usage text)."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        if not getattr(self, "exit_on_error", True):
            return super().error(message, ex)  # type: ignore[misc]
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        lines = [f"{prog}: error: {_one_line(message)}"]
        lines += [f"  {hint}" for hint in did_you_mean(message, _options(parser))]
        lines.append(f"  see `{prog} --help` for every option")
        sys.stderr.write("\n".join(lines) + "\n")
        self.exit(2)  # type: ignore[attr-defined]


def _one_line(message: str) -> str:
    """jsonargparse's error on one line: its first line, and the value it was given (a type
    error lists every subtype it tried, one per line)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message.strip()
    given = next((line for line in lines if line.startswith("Given value:")), None)
    first = lines[0].rstrip(":")
    return f"{first}; {given[0].lower()}{given[1:]}" if given else f"{first}: {lines[1]}"


@cache
def short_errors(base: type) -> type:
    """``base`` (a jsonargparse ``ArgumentParser`` class) with :class:`ShortErrors`."""
    return type(base.__name__, (ShortErrors, base), {})


def argument_parser(**kwargs: Any):
    """A jsonargparse ``ArgumentParser`` with short errors (for ``mmrec`` tools)."""
    from jsonargparse import ArgumentParser

    return short_errors(ArgumentParser)(**kwargs)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message tells the user what to change: shown as one line, no traceback."""
    from mmrec.ingest.errors import DataError

    return (ConfigError, DataError, FileNotFoundError)


def dataclass_parser(settings: type, prog: str, description: str, **kwargs: Any):
    """The parser of an ``mmrec`` tool whose options are the fields of the dataclass
    ``settings`` (help from its docstring's ``Args:``), with ``--config FILE`` (later flags
    override it) and ``--print_config``, and short errors."""
    from jsonargparse import ActionConfigFile

    parser = argument_parser(
        prog=prog, description=f"{description} Later flags override --config values.", **kwargs
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML file with any of the options below"
    )
    parser.add_class_arguments(settings, as_group=False)
    return parser


def parse_settings(settings: type, parser: Any, argv: list[str] | None) -> Any:
    """``argv`` (default: the process's arguments) parsed into an instance of ``settings``."""
    import dataclasses

    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return settings(**{f.name: args[f.name] for f in dataclasses.fields(settings)})


def exit_status(prog: str, run: Any) -> int:
    """Call ``run()``; 0 when it returns, 2 with one line ``<prog>: error: <message>`` on
    stderr when it raises an error whose message tells the user what to change."""
    try:
        run()
    except user_error_types() as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
