"""The README and docs/ against the code: every option of the real `edgevl` parser is documented,
every `edgevl` command in a README shell block parses with that parser, and every relative
markdown link resolves. No model is loaded."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from edgevl.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED = [README, *DOCS, ROOT / "benchmarks" / "RESULTS.md"]
SHELL_FENCES = {"bash", "sh", "console", "shell"}
COMMANDS = ("edgevl", ".venv/bin/edgevl")
# [text](target) but not images' sizes or reference-style links; target up to a space or ")".
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _option_strings() -> list[tuple[str, str]]:
    """(subcommand, option string) for the top-level parser and every subcommand."""
    parser = build_parser()
    parsers = {"edgevl": parser, **{f"edgevl {name}": sub for name, sub in _subparsers(parser).items()}}
    return [(name, opt) for name, p in parsers.items() for action in p._actions for opt in action.option_strings]


def _documented(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_cli_option_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in [README, *DOCS])
    options = _option_strings()
    assert len(options) > 40 and ("edgevl export", "--profile") in options
    missing = [f"{cmd} {opt}" for cmd, opt in options if not _documented(opt, text)]
    assert not missing, f"options in edgevl's parser that README.md and docs/*.md never mention: {', '.join(missing)}"


def shell_commands(markdown: str) -> list[str]:
    """Every `edgevl ...` command line in the ```bash/sh/console blocks of `markdown`, with
    continuation lines joined and a console prompt (`$ `) dropped."""
    commands, fence, pending = [], None, ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            pending = ""
            continue
        if fence not in SHELL_FENCES:
            continue
        line = pending + (stripped[2:] if stripped.startswith("$ ") else stripped)
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words and words[0] in COMMANDS:
            commands.append(line)
    return commands


def _parse_error(command: str) -> str | None:
    words = shlex.split(command, comments=True)[1:]
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:  # --help exits 0; a bad command line exits 2 after one line
        return None if exc.code == 0 else "the parser rejects it"
    if args.command is None:
        return "no subcommand"
    return None


def test_every_readme_command_parses():
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 5, "README.md shows no `edgevl` commands in its ```bash blocks"
    bad = [f"{c!r}: {why}" for c in commands if (why := _parse_error(c))]
    assert not bad, "README.md commands that the real parser refuses: " + "; ".join(bad)


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            bad.append(f"{path.relative_to(ROOT)} -> {target}")
    return bad


def test_every_relative_link_resolves():
    assert DOCS, "docs/ holds no pages"
    bad = [b for p in LINKED for b in broken_links(p)]
    assert not bad, "broken relative links: " + ", ".join(bad)


@pytest.mark.parametrize("command, ok", [
    ("edgevl export --out out/x --force  # a comment", True),
    ("edgevl export --target onnx", False),  # --out is required
    ("edgevl export --out o --no-such-option", False),
    ("edgevl", False),
])
def test_the_checks_can_fail(command, ok, capsys):
    assert (_parse_error(command) is None) is ok
    block = f"text\n```bash\n{command}\n.venv/bin/edgevl models \\\n  --help\n```\n```python\nedgevl = 1\n```\n"
    assert shell_commands(block) == [command, ".venv/bin/edgevl models  --help"]
    assert not _documented("--out", "--output") and _documented("-q", "`-q`, `--quiet`")
