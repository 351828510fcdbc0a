"""Argument parsing shared by every command line: comma-separated lists, and one grammar for every parser.

One parser per kind of list, so every flag reads ``a,b,,c`` the same way (empty parts dropped,
whitespace stripped) and says what it expected in one sentence when it cannot.

Every command's parser ends with :func:`finish_parser`: ``--log-level`` and ``-q`` on it and on each
subcommand (read by ``errors.cli_entry`` before the parser runs), help that shows every option's
default, and the program name it was started as (``python -m sparse_deploy.<x>`` or
``sparse-deploy <x>``). A flag renamed for one grammar keeps its old spelling as a hidden alias
(:func:`add_alias`): the same destination, left out of ``--help``.
"""

from __future__ import annotations

import argparse

from .errors import LOG_LEVELS, SparseDeployError

__all__ = [
    "comma_list",
    "comma_ints",
    "comma_floats",
    "DefaultsHelpFormatter",
    "finish_parser",
    "add_alias",
    "aliases_of",
    "set_program",
    "MODULE_PROG",
]

#: How a command's ``prog`` starts when it is run as ``python -m sparse_deploy.<x>``.
MODULE_PROG = "python -m sparse_deploy."
_program: dict[str, str] = {}  # {module prog: the name it was started under}, set by the sparse-deploy command
_ALIASES = "_sparse_deploy_aliases"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (unless its text already says it), and no hidden alias."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, _ALIASES, None)
        if not hidden:
            return super()._format_action_invocation(action)
        shown = argparse.Action(
            [o for o in action.option_strings if o not in hidden],
            action.dest,
            nargs=action.nargs,
            metavar=action.metavar,
        )
        return super()._format_action_invocation(shown)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text.lower()
            and not (default is None or default is False or default == argparse.SUPPRESS)
            and not (isinstance(default, (tuple, list)) and not default)
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else "%(default)s"
            text += f" (default {shown})"
        return text


def set_program(module_prog: str, name: str) -> None:
    """Parsers whose prog is ``module_prog`` show ``name`` instead (``sparse-deploy run`` for the run module)."""
    _program[module_prog] = name


def add_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a hidden spelling of the option ``new``: the same action (type, choices, required), not in
    ``--help``."""
    action = parser._option_string_actions[new]
    if old in parser._option_string_actions:
        raise ValueError(f"{old} is already an option of {parser.prog}")
    action.option_strings.append(old)
    parser._option_string_actions[old] = action
    hidden = getattr(action, _ALIASES, set())
    setattr(action, _ALIASES, hidden | {old})


def aliases_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{old spelling: the option it is an alias of}`` of ``parser`` (:func:`add_alias`)."""
    found = {}
    for action in parser._actions:
        hidden = getattr(action, _ALIASES, set())
        visible = [o for o in action.option_strings if o not in hidden]
        found.update({old: visible[0] for old in hidden})
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: parser}`` of a parser's subcommands (none: empty)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--log-level``/``-q`` on ``parser`` and its subcommands, defaults in every help, the name it runs as."""
    prog = parser.prog
    name = _program.get(prog)
    for each in (parser, *subparsers(parser).values()):
        each.formatter_class = DefaultsHelpFormatter
        if name is not None and each.prog.startswith(prog):
            each.prog = name + each.prog[len(prog) :]
        if not any("--log-level" in a.option_strings for a in each._actions):
            top = each is parser
            each.add_argument(
                "--log-level",
                choices=LOG_LEVELS,
                default="info" if top else argparse.SUPPRESS,
                help="how much to log (default info)",
            )
            each.add_argument(
                "-q",
                "--quiet",
                action="store_true",
                default=False if top else argparse.SUPPRESS,
                help="warnings and errors only, no progress bars (--log-level warning)",
            )
    return parser


def comma_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or empty text -> ``()``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def comma_ints(text: str, what: str = "comma-separated integers like 1,2,4,8") -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; anything else is one error naming ``what`` was expected."""
    try:
        return tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise SparseDeployError(f"expected {what}; got '{text}'") from None


def comma_floats(text: str, count: int | None = None, what: str | None = None) -> tuple[float, ...]:
    """``"1,0.1"`` -> ``(1.0, 0.1)``; with ``count``, exactly that many numbers."""
    expected = what or (f"{count} comma-separated numbers" if count else "comma-separated numbers")
    try:
        values = tuple(float(part) for part in comma_list(text))
    except ValueError:
        raise SparseDeployError(f"expected {expected}; got '{text}'") from None
    if count is not None and len(values) != count:
        raise SparseDeployError(f"expected {expected}; got '{text}'")
    return values
