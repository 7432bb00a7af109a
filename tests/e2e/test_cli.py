"""The gpo command line, run as users run it: the installed console script, JSON parsed back."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GPO = shutil.which("gpo", path=str(Path(sys.executable).parent))


def gpo(*args: str) -> subprocess.CompletedProcess:
    assert GPO, "the gpo console script is not installed in this environment"
    return subprocess.run([GPO, *args], capture_output=True, text=True, timeout=300)


def test_losses_json_lists_every_builtin() -> None:
    result = gpo("losses", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [
        "logistic", "hinge", "square", "exponential", "truncated_quadratic", "savage",
    ]  # fmt: skip
    for row in rows:
        assert {"name", "fprime0", "fsecond0", "ratio", "convex", "tail"} <= row.keys()
    savage = rows[-1]
    assert savage["convex"] is False and savage["ratio"] == 0.5


def test_losses_json_for_a_formula_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "losses.png"
    result = gpo("losses", "--json", "--formula", "exp(-x)+0.1*x^2", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["fprime0"] == -1.0 and row["fsecond0"] == pytest.approx(1.2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("losses", "--formula", "__import__('os')"), "unknown function '__import__'"),
        (("losses", "--formula", "x**2"), "f'(0) = 0"),
        (("bandit", "--loss", "nope"), "unknown loss 'nope'"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(args: tuple[str, ...], message: str) -> None:
    result = gpo(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bandit_json(tmp_path: Path) -> None:
    plot = tmp_path / "bandit.png"
    result = gpo("bandit", "--json", "--loss", "logistic", "--loss", "square", "--steps", "200", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert set(runs) == {"logistic", "square"}
    assert len(runs["logistic"]["final_pi"]) == 3
    assert runs["logistic"]["trajectory"][-1]["step"] == 200
    assert plot.exists()


def test_gaussians_json(tmp_path: Path) -> None:
    result = gpo("gaussians", "--json", "--seed", "0", "--plot", str(tmp_path / "g.png"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["c"]) == len(data["kl"]["sampled"]) == len(data["square_loss"]["integrated"])
    assert data["local_minima"]["kl"]["integrated"] == [0.0]
    assert data["counterexample"] is True
    assert (tmp_path / "g.png").exists()


@pytest.mark.slow
def test_paper_reproduction_writes_results(tmp_path: Path) -> None:
    result = gpo("paper", "--out", str(tmp_path), "--steps", "300")
    assert result.returncode == 0, result.stderr
    for name in ("losses", "bandit", "gaussians"):
        assert json.loads((tmp_path / f"{name}.json").read_text())
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("args", [["--help"], ["list", "--server", "http://127.0.0.1:9"], ["--version"]])
def test_quick_commands_load_no_heavy_library(args: list[str]) -> None:
    """`gpo --help` and `gpo list` start in well under a second because they import neither
    torch, transformers, sympy nor Ray (measured: 0.13 s and 0.28 s; the heavy ones take 2.5 s)."""
    program = (
        "import sys\n"
        f"sys.argv = ['gpo', *{args!r}]\n"
        "from gpo_client.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sympy', 'ray', 'vllm'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr


def test_version() -> None:
    result = gpo("--version")
    assert result.returncode == 0 and result.stdout.startswith("gpo 0.")


def test_the_run_table_is_followed_by_the_differences_the_data_resolves() -> None:
    from gpo_client.cli.output import console, print_differences

    differences = [
        {"beta": 0.1, "a": "r00-logistic-b0.1", "b": "r02-square-b0.1", "difference": -0.21, "low": -0.30,
         "high": -0.12, "resolved": True},
        {"beta": 1.0, "a": "r01-logistic-b1", "b": "r03-square-b1", "difference": 0.02, "low": -0.05,
         "high": 0.09, "resolved": False},
    ]  # fmt: skip
    with console.capture() as captured:
        print_differences(differences)
    assert captured.get().splitlines() == [
        "Resolved differences at equal beta (1 of 2 pairs):",
        "  beta 0.1: r02-square-b0.1 beats r00-logistic-b0.1 by 0.210 [0.120, 0.300]",
    ]
    with console.capture() as captured:
        print_differences(differences[1:])
    assert "No difference between runs at equal beta is resolved (1 pairs compared" in captured.get()


def test_the_claims_follow_the_run_table() -> None:
    from gpo_client.cli.output import console, print_claims

    claims = [{"claim": "C4", "verdict": "not resolved", "statement": "case-II losses keep the policy closer"}]
    with console.capture() as captured:
        print_claims(claims)
    assert captured.get() == "C4 not resolved: case-II losses keep the policy closer\n"


def test_data_check_reads_trls_conversational_and_implicit_prompt_formats(tmp_path: Path) -> None:
    """It crashed on lists of messages (AttributeError on .strip), which gpo data push accepts."""
    user = {"role": "user", "content": "hi"}
    records = [
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        {"chosen": [user, {"role": "assistant", "content": "hello"}], "rejected": [user, {"role": "assistant",
         "content": "bye"}]},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "same"}],
         "rejected": [{"role": "assistant", "content": "same"}]},
    ]  # fmt: skip
    path = tmp_path / "conversations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = gpo("data", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "3 valid preference pairs (conversational)" in result.stdout
    assert "1 pairs have chosen == rejected (records 3)" in result.stderr


@pytest.mark.parametrize("command", ["submit", "run", "train", "plan"])
def test_a_specs_errors_come_before_any_heavy_library_loads(command: str, tmp_path: Path) -> None:
    """Issue 29: spec errors took seconds (tens under load) because torch loaded before the spec
    was read. A spec with registry losses is now checked without torch, sympy or transformers."""
    spec = tmp_path / "job.yaml"
    spec.write_text("task: {size: small}\nlosses: [dpo, hinge]\nbetas: 0.1\n")
    args = ["gpo", command, str(spec), *(["--server", "http://127.0.0.1:9"] if command == "submit" else [])]
    program = (
        "import sys\n"
        f"sys.argv = {args!r}\n"
        "from gpo_client.cli import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    print('EXIT', done.code, file=sys.stderr)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sympy', 'ray', 'vllm'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert "EXIT 2" in result.stderr and "HEAVY []" in result.stderr, result.stderr
    assert "betas: a list is expected here: [0.1]" in result.stderr or "not a training spec" in result.stderr


def test_the_losses_page_shows_what_gpo_losses_prints() -> None:
    """Issue 29: docs/losses.md's table had columns `gpo losses` did not print (f(x), the names a
    TRL user knows). Each row of the page and of the command agree on f(x) and its other names."""
    from gpo_core.loss_names import REGISTRY

    result = gpo("losses", "--json")
    assert result.returncode == 0, result.stderr
    printed = {row["name"]: (row["f"], row["also_called"]) for row in json.loads(result.stdout)}
    page = (Path(__file__).parents[2] / "docs" / "losses.md").read_text()
    for name, (f_of_x, also_called, _) in REGISTRY.items():
        assert printed[name] == (f_of_x, also_called), name
        assert f"| `{name}` | {f_of_x} | {also_called} |" in page, name
