"""The README's examples work as written: every Python block runs, and every ``captioner`` command line of its shell
blocks names a command and options that exist (issue 25, item 6)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def command_lines() -> list[str]:
    """The ``captioner ...`` commands of the bash blocks (comments cut, continued lines joined, one per command of
    ``a && b``)."""
    lines = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].strip()
                if part.startswith("captioner ") or " -m captioner " in part:
                    lines.append(part[part.index("captioner "):] if part.startswith("captioner ") else
                                 "captioner " + part.split(" -m captioner ", 1)[1])
    return lines


def subparser(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The innermost subcommand parser ``words`` name, and the words after its name."""
    for action in parser._actions:  # argparse keeps its subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction) and words and words[0] in action.choices:
            return subparser(action.choices[words[0]], words[1:])
    return parser, words


def test_every_python_block_runs(tmp_path):
    assert blocks("python"), "the README should show the Python API"
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}
    for code in blocks("python"):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"README block failed:\n{code}\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), f"README block printed nothing:\n{code}"


@pytest.mark.parametrize("line", command_lines())
def test_every_command_line_names_options_that_exist(line):
    words = shlex.split(line.replace("~", "HOME"))[1:]
    words = [w for w in words if not w.startswith("-v")] if words and words[0] == "-v" else words
    parser, rest = subparser(build_parser(), [w for w in words if w != "-v"])
    assert parser.prog != "captioner", f"no such command: {line}"
    known = {option for action in parser._actions for option in action.option_strings}
    unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{line}: {unknown} are not options of '{parser.prog}'"
