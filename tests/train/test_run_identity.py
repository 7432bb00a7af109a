"""Runs are identified by what they compute: the same spec resumes or returns the finished run,
another spec on the same folder is refused with the change named, and no metrics row is listed
twice after a resume."""

import json
import shutil
from pathlib import Path

import pytest

from gpo_core.data import load_preferences, write_jsonl
from gpo_core.identity import DifferentSpec, changes
from gpo_core.sweep import stages
from gpo_core.sweep.spec import parse_job_spec
from gpo_core.train.launch import run_training
from gpo_core.train.metrics import ListSink, rewind_jsonl
from gpo_core.train.run import TrainingError
from tests.train.test_loop import make_spec


def step_rows(output_dir: str) -> list[int]:
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "step"]


def test_a_finished_run_is_returned_not_retrained(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(small_task, tmp_path, cache_dir, steps=2)
    first = run_training(spec)
    final = Path(first.final_model_dir) / "model.safetensors"
    written = final.stat().st_mtime_ns
    sink = ListSink()
    again = run_training(spec, sink)
    assert again.steps == 2 and again.final_model_dir == first.final_model_dir and not again.stopped
    assert [r["kind"] for r in sink.records] == ["finished_before"]
    assert final.stat().st_mtime_ns == written  # final/ not overwritten
    assert step_rows(spec.output_dir) == [1, 2]  # no duplicated rows


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"loss": "hinge"}, "loss: logistic -> hinge"),
        ({"steps": 3}, "steps: 2 -> 3"),
        ({"lr": 5e-4}, "lr: 0.001 -> 0.0005"),
    ],
)
def test_another_spec_on_the_same_folder_is_refused_naming_the_change(
    small_task, tmp_path, cache_dir, change, named
) -> None:
    run_training(make_spec(small_task, tmp_path, cache_dir, steps=2))
    with pytest.raises(TrainingError, match="holds a training run of another spec") as caught:
        run_training(make_spec(small_task, tmp_path, cache_dir, **{"steps": 2, **change}))
    assert named in str(caught.value) and "give another output_dir" in str(caught.value)


def test_data_edited_in_place_is_another_run_but_a_copied_model_is_not(small_task, tmp_path, cache_dir) -> None:
    dataset = tmp_path / "pairs.jsonl"
    write_jsonl(dataset, load_preferences(small_task.artifacts.train_pairs)[:64])
    model, copy = tmp_path / "model", tmp_path / "model-copy"
    shutil.copytree(small_task.artifacts.model_dir, model)
    shutil.copytree(small_task.artifacts.model_dir, copy)
    spec = make_spec(small_task, tmp_path, cache_dir, steps=1, dataset=str(dataset), policy=str(model))
    run_training(spec)
    same = make_spec(small_task, tmp_path, cache_dir, steps=1, dataset=str(dataset), policy=str(copy))
    assert run_training(same).steps == 1  # the same model by content: the finished run
    write_jsonl(dataset, load_preferences(small_task.artifacts.train_pairs)[:63])
    with pytest.raises(TrainingError, match="dataset: its content changed"):
        run_training(spec)


def test_a_resumed_run_lists_every_step_once(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(small_task, tmp_path, cache_dir, steps=4, checkpoint_every=2)
    run_training(spec)
    # A crash after step 4, before the run was recorded as finished: it resumes from step 2.
    (Path(spec.output_dir) / "result.json").unlink()
    shutil.rmtree(Path(spec.output_dir) / "final")
    sink = ListSink()
    result = run_training(spec, sink)
    assert result.steps == 4
    assert [r["step"] for r in sink.records if r["kind"] == "resumed"] == [2]
    assert step_rows(spec.output_dir) == [1, 2, 3, 4]


def test_a_checkpoint_cut_short_by_a_kill_mid_save_is_never_resumed_from(small_task, tmp_path, cache_dir) -> None:
    """A worker killed while writing a checkpoint leaves ``step-N.tmp`` with its state file cut
    short (seen: a trainer SIGKILLed mid-save, then every retry failed on EOFError). The run resumes
    from the last complete checkpoint instead."""
    spec = make_spec(small_task, tmp_path, cache_dir, steps=4, checkpoint_every=2)
    run_training(spec)
    (Path(spec.output_dir) / "result.json").unlink()
    shutil.rmtree(Path(spec.output_dir) / "final")
    checkpoints = Path(spec.output_dir) / "checkpoints"
    complete = sorted(checkpoints.glob("step-*"))[-1]
    torn = checkpoints / "step-0000004.tmp"
    shutil.copytree(complete, torn)
    state = next(p for p in torn.iterdir() if p.suffix == ".pt")
    state.write_bytes(state.read_bytes()[:100])  # what a kill during torch.save leaves
    sink = ListSink()
    assert run_training(spec, sink).steps == 4
    assert [r["checkpoint"] for r in sink.records if r["kind"] == "resumed"] == [str(complete)]


def test_a_folder_with_checkpoints_but_no_record_is_refused(small_task, tmp_path, cache_dir) -> None:
    spec = make_spec(small_task, tmp_path, cache_dir, steps=2)
    (Path(spec.output_dir) / "checkpoints" / "step-0000001").mkdir(parents=True)
    with pytest.raises(TrainingError, match="no record of its spec"):
        run_training(spec)


def test_rewind_cuts_the_records_past_a_step_and_a_torn_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "start", "step": 0}, {"kind": "step", "step": 1}, {"kind": "step", "step": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "st')
    assert rewind_jsonl(path, 1) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]
    assert rewind_jsonl(path, -1) == 2 and path.read_text() == ""
    assert rewind_jsonl(tmp_path / "absent.jsonl", 3) == 0


def test_a_sweep_folder_belongs_to_one_spec(tmp_path) -> None:
    base = {"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1], "training": {"steps": 20}}
    stages.write_job_file(parse_job_spec(base), tmp_path)
    stages.write_job_file(parse_job_spec({**base, "name": "renamed"}), tmp_path)  # the name computes nothing
    changed = {**base, "training": {"steps": 25, "lr": 1e-3}}
    with pytest.raises(DifferentSpec) as caught:
        stages.write_job_file(parse_job_spec(changed), tmp_path)
    message = str(caught.value)
    assert "training.steps: 20 -> 25" in message and "training.lr: 0.0005 -> 0.001" in message
    assert "--out" in message


def test_a_sweep_folder_notices_changed_data(small_task, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": "p1", "prompt": "one"}])
    spec = parse_job_spec({
        "policy": small_task.artifacts.model_dir, "dataset": small_task.artifacts.train_pairs,
        "eval_prompts": str(prompts), "judge": {"kind": "local", "model_dir": small_task.artifacts.model_dir},
        "losses": ["logistic"], "betas": [0.1],
    })  # fmt: skip
    stages.write_job_file(spec, tmp_path / "job")
    write_jsonl(prompts, [{"id": "p1", "prompt": "two"}])
    with pytest.raises(DifferentSpec, match="eval_prompts: its content changed"):
        stages.write_job_file(spec, tmp_path / "job")


def test_changes_name_each_setting() -> None:
    assert changes({"a": 1, "b.content": "x"}, {"a": 2, "b.content": "y", "c": 3}) == [
        "a: 1 -> 2",
        "b: its content changed",
        "c: (unset) -> 3",
    ]


def test_the_metrics_follower_goes_on_through_a_rewind_and_bad_lines(tmp_path) -> None:
    """The driver follows rank 0's metrics file. A resumed run cuts it back and appends past where
    the follower had read, all between two of its polls; the follower must go on from the resumed
    run's start record, not read from the middle of a line (which once killed it, and with it every
    progress event of the run)."""
    import threading
    import time

    from gpo_core.train.metrics import follow_jsonl, jsonl_end

    path = tmp_path / "metrics.jsonl"

    def append(*records: dict | str) -> None:
        with path.open("a") as handle:
            for r in records:
                handle.write((r if isinstance(r, str) else json.dumps(r)) + "\n")

    append({"kind": "start", "step": 0}, *({"kind": "step", "step": s} for s in range(1, 11)))
    sink, done = ListSink(), threading.Event()
    follower = threading.Thread(target=follow_jsonl, args=(path, sink, done, lambda: None, jsonl_end(path)))
    follower.start()
    append(*({"kind": "step", "step": s, "padding": "x" * 50} for s in range(11, 21)))
    time.sleep(1.2)
    rewind_jsonl(path, 15)
    append({"kind": "start", "step": 15}, "not json {", *({"kind": "step", "step": s} for s in range(16, 41)))
    time.sleep(1.2)
    done.set()
    follower.join(timeout=5)
    assert not follower.is_alive()
    seen = [(r["kind"], r["step"]) for r in sink.records]
    assert seen[:10] == [("step", s) for s in range(11, 21)]
    assert seen[10:] == [("start", 15), *(("step", s) for s in range(16, 41))]


def test_the_metrics_follower_notices_a_rewind_before_it_has_read_anything(tmp_path) -> None:
    """A resume that cuts the file back and grows it past its old size before the follower's
    first poll: the follower knows the line its start position ends with, so it still goes on
    from the resumed run's start record instead of reading from the middle of a line."""
    import threading

    from gpo_core.train.metrics import follow_jsonl, jsonl_end

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": "step", "step": s}) + "\n" for s in range(1, 11)))
    start = jsonl_end(path)
    rewind_jsonl(path, 5)
    with path.open("a") as handle:
        for record in [{"kind": "start", "step": 5}, *({"kind": "step", "step": s} for s in range(6, 31))]:
            handle.write(json.dumps(record) + "\n")
    sink, done = ListSink(), threading.Event()
    done.set()  # one poll, then return
    follow_jsonl(path, sink, done, start=start)
    assert [(r["kind"], r["step"]) for r in sink.records] == [("start", 5), *(("step", s) for s in range(6, 31))]


def test_jsonl_end_is_the_last_whole_line(tmp_path) -> None:
    from gpo_core.train.metrics import jsonl_end

    path = tmp_path / "m.jsonl"
    assert jsonl_end(path) == (0, b"")
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert jsonl_end(path) == (18, b'{"b": 2}\n')
    path.write_bytes(b'{"a": 1}\n')
    assert jsonl_end(path) == (9, b'{"a": 1}\n')
