"""Helpers for tests that run `python -m advss_tf.pretrain` as a user would (imported by the Selfie and ensemble
tests; not a test module itself)."""

import sys

from binaries import run_command


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
