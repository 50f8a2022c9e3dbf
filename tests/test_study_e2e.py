"""A smoke-scale study end to end, as a user runs it: two rows (end-to-end adversarial training; adversarial
Rotation pretraining → adversarial full fine-tuning) × 2 seeds, with the runner SIGKILLed inside the first run's
checkpoint write (advss_tf/faults.py) and the same command re-run; its report's numbers equal an uninterrupted
study's. Slow: every run is a real binary on the real sample (13 runs). The killed study is the CLI with its runs as
subprocesses, as a user starts it; the studies run in this process fork their runs (tests/binaries.py: the same
binaries' `__main__`, without each paying TensorFlow's import)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from binaries import start_run
from conftest import REPO
from test_cli_defaults import ENV

from advss_tf import faults
from advss_tf.study import command as command_lib
from advss_tf.study import report

ROWS = "at_e2e,rotation_advpre_full_advft"


def _study(workdir, *flags):
    return [sys.executable, "-m", "advss_tf.study", "--scale=smoke", f"--workdir={workdir}", *flags]


def _processes_in(workdir) -> list[int]:
    """Pids of live processes whose command line names `workdir` (the runner's children write there)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(workdir).encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_a_killed_study_resumes_to_the_report_of_an_uninterrupted_one(tmp_path, capsys):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    marker = tmp_path / "paused"
    env = {**ENV, faults.ENV: "checkpoint@2", f"{faults.ENV}_FILE": str(marker)}
    command = _study(killed, "--seeds=2", f"--rows={ROWS}")
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    # The first run (seed 0's Rotation pretraining) is inside its last checkpoint write: kill -9 the runner.
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while _processes_in(killed) and time.time() < deadline:  # its children die with it (PR_SET_PDEATHSIG)
        time.sleep(0.2)
    assert not _processes_in(killed)
    assert not (killed / "runs" / "seed0" / "pretrain" / "rotation_adv" / "results.json").exists()

    # The same study again, in this process this time (the runs are still the binaries, forked).
    assert command_lib.run_study(str(killed), "smoke", seeds=2, rows=ROWS.split(","), jobs=2, start=start_run) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "study: 10 runs, 0 already finished, 10 to run" in lines, lines
    first_finetune = next(i for i, ln in enumerate(lines) if ln.startswith("study: start seed0/finetune/rotation"))
    assert any(ln.startswith("study: done seed0/pretrain/rotation_adv") for ln in lines[:first_finetune])
    assert command_lib.run_study(str(killed), "smoke", seeds=2, rows=ROWS.split(","), start=start_run) == 0
    assert "study: 10 runs, 10 already finished, 0 to run" in capsys.readouterr().out

    out = json.loads((killed / "report" / report.JSON).read_text())
    rows = {r["id"]: r for r in out["rows"]}
    assert set(rows) == {"at_e2e", "rotation_advpre_full_advft"}
    for r in rows.values():
        assert r["seeds"] == [0, 1] and r["num_examples"] == [16] and r["attacks"] == ["fgsm", "pgd20"]
        for m in ("standard", "pgd20", "worst_case", "epochs_to_best"):
            assert r["metrics"][m]["interval"]["n"] == 2 and r["metrics"][m]["interval"]["half_width"] is not None
        assert r["metrics"]["autoattack"]["interval"] is None  # not run at smoke scale
    q1 = next(q for q in out["questions"] if q["id"] == "Q1")["comparisons"][0]
    assert set(q1["per_seed"]) == {"0", "1"} and q1["verdict"]
    for name in (report.MARKDOWN, report.SCATTER, report.DIFFERENCES):
        assert (killed / "report" / name).stat().st_size > 0

    # The uninterrupted reference: the same row and seed in a study of its own.
    assert (
        command_lib.run_study(str(straight), "smoke", seeds=1, rows=["rotation_advpre_full_advft"], start=start_run)
        == 0
    )
    reference = json.loads((straight / "report" / report.JSON).read_text())["rows"][0]
    resumed = rows["rotation_advpre_full_advft"]
    for m, values in reference["metrics"].items():
        assert resumed["metrics"][m]["per_seed"].get("0") == values["per_seed"].get("0"), m
