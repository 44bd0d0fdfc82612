"""`hassod <command> --help` stays true to the parser: every option that has a default says so,
and a default the help spells out (a number, or one of the option's choices) is the one
argparse uses."""

from __future__ import annotations

import argparse
import re

import pytest

from hassod.cli import _subcommands, build_parser

# "default 4", "(default 0.4 0.2 0.1)", "default: auto", "default off: ..."
STATED = re.compile(r"\bdefault:? ([\w.-]+(?: -?\d[\d.]*)*)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def options():
    """(command, action) for every option of every subcommand, -h excluded."""
    for name, sub in _subcommands(build_parser()).choices.items():
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


def label(command: str, action: argparse.Action) -> str:
    return f"hassod {command} {'/'.join(action.option_strings)}"


def stated_defaults(action: argparse.Action) -> list[str]:
    return STATED.findall(" ".join((action.help or "").split()))


def as_words(default) -> list[str]:
    values = default if isinstance(default, (list, tuple)) else [default]
    return [str(value) for value in values]


def test_every_option_with_a_default_states_it():
    silent = [
        label(command, action)
        for command, action in options()
        if action.default not in (None, False, argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert not silent, f"options whose help hides their default: {silent}"


def test_stated_defaults_are_the_parsers():
    """A number after "default" in a help text, or a choice of the option, is its default."""
    checked, wrong = 0, []
    for command, action in options():
        if action.default is None:  # the help says what None means (the checkpoint's, ...)
            continue
        for text in stated_defaults(action):
            words = text.split()
            if all(NUMBER.fullmatch(word) for word in words):
                stated = [float(word) for word in words]
                actual = [float(value) for value in as_words(action.default)]
            elif action.choices and words[0] in action.choices:
                stated, actual = words[:1], as_words(action.default)
            else:
                continue  # prose ("default: cuda if present"), not a value
            checked += 1
            if stated != actual:
                wrong.append(f"{label(command, action)}: help {text!r}, parser {action.default!r}")
    assert checked >= 10, checked  # the pattern still finds the help texts' defaults
    assert not wrong


@pytest.mark.parametrize(
    ("help_text", "stated"),
    [
        ("images per chunk file (default 8)", ["8"]),
        ("merge thresholds (default 0.4 0.2 0.1)", ["0.4 0.2 0.1"]),
        ("key transform (default auto: none for DINO v1)", ["auto"]),
        ("cpu, cuda or auto (default: cuda if present)", ["cuda"]),
    ],
)
def test_the_pattern_reads_a_stated_default(help_text, stated):
    assert stated_defaults(argparse.Action(["--x"], "x", help=help_text)) == stated


def test_every_argument_has_a_help_text():
    bare = [
        f"hassod {name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in _subcommands(build_parser()).choices.items()
        for action in sub._actions
        if not action.help
    ]
    assert not bare


def test_every_command_lists_the_exit_codes_it_can_give():
    """0, 1, 2 and 130 in every command's help: any command ends with exit 1 when the disk
    fills up or turns read-only while it writes (hassod.cli._main, "every command alike" in
    the README), 2 on bad arguments and 130 on Ctrl-C or SIGTERM."""
    missing = {}
    for name, sub in _subcommands(build_parser()).choices.items():
        listed = set(re.findall(r"^  (\d+) ", sub.epilog or "", flags=re.MULTILINE))
        if listed != {"0", "1", "2", "130"}:
            missing[name] = sorted(listed)
    assert not missing, f"commands whose help lists other exit codes: {missing}"
