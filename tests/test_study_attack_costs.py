"""tools/study_attack_costs.py: AutoAttack's cost per image-iteration and stage over a study's evaluations, split
by CPU, --jobs and a time, from results.json and logs/times.jsonl alone (a fabricated study folder here)."""

import json

import pytest
from binaries import run_script

TOOL = "tools/study_attack_costs.py"


def _stage(name, attacked, seconds, steps, targets=None, trace=1.0):
    return {
        "name": name,
        "num_attacked": attacked,
        "num_broken": 0,
        "seconds": seconds,
        "trace_seconds": trace,
        "steps": steps,
        "targets": targets,
    }


def _evaluation(tmp_path, run, stages):
    path = tmp_path / "runs" / run / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"robust_accuracy": {"pgd20": {}, "autoattack": {"stages": stages}}}))


def _attempt(run, outcome, seconds, cpu, jobs, hour):
    return {
        "run": run,
        "outcome": outcome,
        "seconds": seconds,
        "cpu": cpu,
        "jobs": jobs,
        "ended": f"2026-12-07T{hour:02d}:00:00+00:00",
    }


def test_costs_per_image_iteration_split_by_cpu_jobs_and_time(tmp_path):
    # FAB-T: 10 images x 100 iterations x 9 targets = 9,000 image-iterations; 19 s untraced -> 2.111 ms each
    _evaluation(tmp_path, "seed0/evaluate/a", [_stage("apgd_ce", 20, 3.0, 100), _stage("fab_t", 10, 20.0, 100, 9)])
    _evaluation(tmp_path, "seed1/evaluate/a", [_stage("fab_t", 10, 10.0, 100, 9)])  # 1 ms each, after the split
    _evaluation(tmp_path, "seed0/evaluate/b", [_stage("fab_t", 5, 5.5, 100, 9)])  # no AutoAttack elsewhere
    (tmp_path / "runs" / "seed0" / "finetune" / "a").mkdir(parents=True)
    times = [
        _attempt("seed0/evaluate/a", "stopped", 7.0, "CPU X", 2, 10),
        _attempt("seed0/evaluate/a", "done", 30.0, "CPU X", 2, 11),
        _attempt("seed1/evaluate/a", "done", 12.0, "CPU X", 2, 13),
        _attempt("seed0/evaluate/b", "done", 6.0, "CPU Y", 1, 9),
        _attempt("seed0/finetune/a", "done", 3600.0, "CPU X", 2, 8),
    ]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "times.jsonl").write_text("".join(json.dumps(t) + "\n" for t in times) + '{"torn')
    out = tmp_path / "costs.json"
    result = run_script(TOOL, f"--workdir={tmp_path}", "--split=2026-12-07T12:00:00+00:00", f"--json_out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = {(s["group"], s["stage"]): s for s in json.loads(out.read_text())["summary"]}
    before, after = (
        "CPU X, --jobs=2, before 2026-12-07T12:00:00+00:00",
        "CPU X, --jobs=2, after 2026-12-07T12:00:00+00:00",
    )
    assert summary[(before, "fab_t")]["median_ms_per_image_iteration"] == pytest.approx(19.0 / 9.0)
    assert summary[(after, "fab_t")]["median_ms_per_image_iteration"] == pytest.approx(1.0)
    assert summary[(before, "apgd_ce")]["median_ms_per_image_iteration"] == pytest.approx(1.0)  # 2 s / 2,000
    assert summary[("CPU Y, --jobs=1, before 2026-12-07T12:00:00+00:00", "fab_t")]["evaluations"] == 1
    assert len(summary) == 4
    # AutoAttack's seconds beside every attempt's (the stopped one and the fine-tuning's included)
    assert "0.01 h of the study's 1.02 h of run time" in result.stdout


def test_a_folder_without_runs_or_a_bad_split_is_one_line_and_exit_2(tmp_path):
    result = run_script(TOOL, f"--workdir={tmp_path}")
    assert result.returncode == 2 and "has no runs/" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    (tmp_path / "runs").mkdir()
    result = run_script(TOOL, f"--workdir={tmp_path}", "--split=yesterday")
    assert result.returncode == 2 and "not an ISO time" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
