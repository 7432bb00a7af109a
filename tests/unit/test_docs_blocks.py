"""The code in README.md and docs/ as users copy it: every shell, Python, YAML and JSONL block
parses; every `gpo` command line names a command and options that exist; the specs shown are
valid specs; the library snippet runs as written."""

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GPO = str(Path(sys.executable).parent / "gpo")


def blocks(language: str) -> list[tuple[str, str]]:
    """(page:line, text) of every fenced block in ``language``."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        start = None
        for number, line in enumerate(lines, start=1):
            if start is None and line.strip() == f"```{language}":
                start = number
            elif start is not None and line.strip() == "```":
                found.append((f"{page.name}:{start}", "\n".join(lines[start : number - 1])))
                start = None
    return found


def gpo_lines() -> list[tuple[str, list[str]]]:
    """Each `gpo ...` command in shell and console blocks, as its words (comments dropped)."""
    commands = []
    for where, text in blocks("bash") + blocks("console"):
        for line in text.replace("\\\n", " ").splitlines():  # continued lines joined
            line = line.strip().removeprefix("$ ")
            for part in re.split(r";|&&", line.split(" #")[0]):
                words = shlex.split(part.replace("[", "").replace("]", ""))
                while words and "=" in words[0]:  # VAR=value before the command
                    words = words[1:]
                if words[:1] == ["gpo"]:
                    commands.append((where, words))
    return commands


@cache
def help_text(*command: str) -> str:
    result = subprocess.run([GPO, *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"gpo {' '.join(command)}: {result.stderr}"
    return result.stdout


def test_the_pages_have_blocks_of_every_kind() -> None:
    assert len(blocks("bash")) >= 6 and len(blocks("python")) >= 2 and len(blocks("yaml")) >= 2


@pytest.mark.parametrize(("where", "text"), blocks("bash"), ids=[w for w, _ in blocks("bash")])
def test_shell_blocks_parse(where, text) -> None:
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, f"{where}: {result.stderr}"


@pytest.mark.parametrize(("where", "text"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_blocks_compile(where, text) -> None:
    compile(text, where, "exec")


def test_every_gpo_command_line_names_real_commands_and_options() -> None:
    lines = gpo_lines()
    assert len(lines) >= 30
    groups = {"task", "data", "model", "secret"}
    for where, words in lines:
        command = words[1:3] if len(words) > 2 and words[1] in groups else words[1:2]
        command = [w for w in command if not w.startswith("-")]  # `gpo --version`: the top level
        shown = help_text(*command)
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in shown, f"{where}: gpo {' '.join(command)} has no option {option}"


def test_the_spec_examples_are_valid_specs() -> None:
    from gpo_core.sweep.spec import JudgeSettings, parse_job_spec
    from gpo_core.train.spec import TrainingSpec

    examples = {where.split(":")[0]: text for where, text in blocks("yaml")}
    TrainingSpec(**yaml.safe_load(examples["training.md"]))
    parse_job_spec(yaml.safe_load(examples["platform.md"]), "docs/platform.md")
    assert JudgeSettings(**yaml.safe_load(examples["evaluation.md"])["judge"]).kind == "chat"


def test_the_jsonl_examples_load_as_pairs(tmp_path) -> None:
    from gpo_core.data import load_preferences

    for where, text in blocks("jsonl"):
        (tmp_path / "pairs.jsonl").write_text(text + "\n")
        pairs = load_preferences(tmp_path / "pairs.jsonl")
        assert len(pairs) == len(text.splitlines()), where


def test_the_readme_library_snippet_runs_as_written() -> None:
    ((where, text),) = [(w, t) for w, t in blocks("python") if w.startswith("README.md")]
    result = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"{where}: {result.stderr}"
    assert "accuracy" in result.stdout


def test_flags_show_no_value_type_in_help() -> None:
    """Issue 29: `--watch <bool>` read as if the flag wanted a value."""
    for command in ((), ("submit",), ("report",)):
        text = help_text(*command)
        assert "--help" in text and "<bool>" not in text, command
    assert "--limit          <int range>" in help_text("list")  # options that take a value still say which
