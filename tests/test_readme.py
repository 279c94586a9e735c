"""The README's commands exist: every row of its commands table, every `scrm` line of its shell
blocks and every inline `scrm …` names a command that ``scrm … --help`` accepts.

Commands added to ``scrm`` later need no change here; only what the README names is checked.
Placeholders in the README are written in capitals (FILE, NAME, ID), so a lower-case word after a
group is read as a subcommand name.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bot.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_FENCES = {"sh", "bash", "shell", "console"}
COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]*")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
INLINE_SCRM = re.compile(r"`(scrm(?: [^`]*)?)`")


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def commands_table_rows(text: str) -> list[str]:
    """The first cell of each row of the table under '## Commands'."""
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [row.split("|")[1].strip() for row in rows[2:]]  # skip the header and the |---| line
    return list(dict.fromkeys(cell.strip("`") for cell in cells))


def shell_lines(text: str) -> list[str]:
    """Lines of fenced sh/bash/shell/console blocks that run `scrm`, without prompts or env prefixes."""
    found: list[str] = []
    for line in shell_block_lines(text):
        words = shlex.split(line.removeprefix("$ "), comments=True)
        while words and ENV_ASSIGNMENT.fullmatch(words[0]):
            words.pop(0)
        if words and words[0] == "scrm":
            found.append(shlex.join(words))
    return list(dict.fromkeys(found))


def shell_block_lines(text: str) -> list[str]:
    """The logical lines (backslash continuations joined) of fenced sh/bash/shell/console blocks."""
    lines: list[str] = []
    in_fence = in_shell = False
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_shell = not in_fence and stripped[3:].strip().lower() in SHELL_FENCES
            in_fence = not in_fence
            continue
        if not in_shell:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def inline_commands(text: str) -> list[str]:
    return list(dict.fromkeys(INLINE_SCRM.findall(text)))


def command_path(line: str) -> list[str]:
    """The command names a `scrm …` line walks through: main's own options are skipped, groups are
    followed, and the walk stops at a leaf command, an option or a placeholder."""
    words = line.split()[1:]
    options_with_values = {opt for param in main.params if isinstance(param, click.Option) and not param.is_flag
                           for opt in param.opts}
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in options_with_values and words:
            words.pop(0)
    path: list[str] = []
    command: click.Command | None = main
    while isinstance(command, click.Group) and words and COMMAND_NAME.fullmatch(words[0]):
        name = words.pop(0)
        path.append(name)
        command = command.get_command(click.Context(command), name)
    return path


def assert_help_exits_cleanly(line: str) -> None:
    path = command_path(line)
    result = CliRunner(env={"SCRM_CONFIG": None}).invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"README names `{line}`, but `scrm {' '.join(path)} --help` fails:\n{result.output}"


def test_the_readme_has_a_commands_table_and_shell_examples():
    text = readme_text()
    assert len(commands_table_rows(text)) >= 10
    assert all(row.startswith("scrm ") and command_path(row) for row in commands_table_rows(text))
    assert shell_lines(text)


@pytest.mark.parametrize("row", commands_table_rows(readme_text()))
def test_each_command_in_the_table_exists(row):
    assert_help_exits_cleanly(row)


@pytest.mark.parametrize("line", shell_lines(readme_text()))
def test_each_scrm_line_in_a_shell_block_names_a_command(line):
    assert_help_exits_cleanly(line)


@pytest.mark.parametrize("span", inline_commands(readme_text()))
def test_each_inline_scrm_command_exists(span):
    assert_help_exits_cleanly(span)


def test_a_misspelt_command_is_caught():
    path = command_path("scrm inbox lsit --status failed")
    assert path == ["inbox", "lsit"]
    assert CliRunner().invoke(main, [*path, "--help"]).exit_code != 0
    assert command_path("scrm --config config.toml serve --port 8000") == ["serve"]
    assert command_path("scrm COMMAND --help") == []
