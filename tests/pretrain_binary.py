"""Helpers for tests that run `python -m advss_tf.pretrain` as a user would (imported by the Selfie and ensemble
tests; not a test module itself)."""

import glob
import json
import signal
import sys
import time

from binaries import PipedProcess, run_command


def pretrain_command(task: str, model_dir, *flags: str) -> list[str]:
    """The binary's command line for `task` in `model_dir`."""
    return [sys.executable, "-m", "advss_tf.pretrain", f"--task={task}", f"--model_dir={model_dir}", *flags]


def assert_usage_error(command: list[str], model_dir, needle: str = "") -> None:
    """The command exits 2 with one `error: ...` line on stderr (containing `needle`) and writes nothing."""
    proc = run_command(command, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not model_dir.exists()  # nothing written


def assert_sigterm_saves_and_rerun_finishes(command: list[str], model_dir, first_checkpoint: int, total_steps: int):
    """SIGTERM after the first checkpoint: exit 128+15 with one last `error:` line and a checkpoint before the end;
    the same command then resumes and finishes. Returns the finished run's results.json. Give the run enough steps
    after `first_checkpoint` for the signal to arrive before its end (a fast machine finishes a tiny step in ~0.1 s)."""
    proc = PipedProcess(command)
    deadline = time.time() + 600
    while time.time() < deadline and not glob.glob(str(model_dir / "checkpoints" / f"ckpt-{first_checkpoint}.index")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by signal 15")
    stopped = max(
        int(p.rsplit("-", 1)[1].split(".")[0]) for p in glob.glob(str(model_dir / "checkpoints" / "ckpt-*.index"))
    )
    assert first_checkpoint <= stopped < total_steps
    assert not (model_dir / "export").exists()

    done = run_command(command, timeout=900)
    assert done.returncode == 0, done.stderr
    results = json.load(open(model_dir / "results.json"))
    assert results["steps"] == total_steps
    return results
