"""The binaries as the mission writes them: `python -m advss_tf.pretrain --task=jigsaw` with no --model_dir (a run
directory under the current one, with the resume/refuse rules), and a --data_dir that is used, never ignored."""

import os
import subprocess
import sys

from conftest import REPO, SHARED_DATA
from pretrain_binary import assert_usage_error, pretrain_command

SUBSET = os.path.join(SHARED_DATA, "cifar10-subset")
TINY = ["--backbone=tiny", "--batch_size=16", "--train_steps=2", "--attack_steps=1", "--steps_per_loop=1", "--quiet"]
# The worktree's advss_tf, from a directory that is not the repository.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _binary(module, *args, cwd):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900
    )


def test_finetune_without_model_dir_runs_in_runs_under_the_current_directory_and_keeps_the_refuse_rule(tmp_path):
    # (pretrain without --model_dir, in runs/jigsaw: tests/test_sigkill.py runs the mission's command that way.)
    flags = [*TINY[1:], "--val_examples=16", "--val_batch_size=16", "--val_attack_steps=1", "--backbone=tiny"]
    done = _binary("advss_tf.finetune", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "end_to_end"
    assert (run_dir / "export" / "best_ra" / "saved_model.pb").is_file()
    assert f"run directory: {run_dir} " in done.stdout
    assert "tensorboard --logdir runs/end_to_end/tensorboard" in done.stdout

    other = _binary("advss_tf.finetune", *flags, "--seed=1", cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: runs/end_to_end holds a different run")

    # With an export: runs/<pretraining run>_ft, as WORKSPACE.md names it.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from advss_tf.finetune import default_model_dir as d; print(d('runs/jigsaw/export/pretrain', 0), d(None, 0.5))",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.stdout.split() == [os.path.join("runs", "jigsaw_ft"), os.path.join("runs", "rotation_aux")], (
        probe.stderr
    )


def test_a_data_dir_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    model_dir = tmp_path / "run"
    assert_usage_error(
        pretrain_command("rotation", model_dir, "--data_dir=/nonexistent/cifar", *TINY), model_dir, "/nonexistent/cifar"
    )


def test_a_data_dir_with_another_dataset_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    command = pretrain_command("rotation", model_dir, "--dataset=sample", f"--data_dir={SUBSET}", *TINY)
    assert_usage_error(command, model_dir, "--data_dir reads the official binary files")
