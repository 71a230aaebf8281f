"""Every option and argument of every `edgevl` subcommand says what it does in --help."""

from __future__ import annotations

import argparse

from edgevl.cli import build_parser


def _without_help(parser: argparse.ArgumentParser, name: str = "edgevl") -> list[str]:
    """'COMMAND OPTION' for each action of `parser` and its subcommands that has no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._choices_actions if (choice.help or "").strip()}
            for command, sub in action.choices.items():
                if command not in described:
                    missing.append(f"{name} {command} (the subcommand)")
                missing += _without_help(sub, f"{name} {command}")
        elif action.help != argparse.SUPPRESS and not (action.help or "").strip():
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"export", "profile", "distill", "models", "targets"} <= set(commands)
    assert _without_help(parser) == []


def test_the_check_finds_an_option_without_help():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    run = sub.add_parser("run", help="runs")
    run.add_argument("--steps", type=int)
    run.add_argument("--seed", type=int, help="the seed")
    sub.add_parser("quiet")
    assert _without_help(parser) == ["edgevl run --steps", "edgevl quiet (the subcommand)"]
