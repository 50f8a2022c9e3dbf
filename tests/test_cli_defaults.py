"""The binaries as the mission writes them: `python -m advss_tf.pretrain --task=jigsaw` with no --model_dir (a run
directory under the current one, with the resume/refuse rules), and a --data_dir that is used, never ignored."""

import json
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


def test_pretrain_and_finetune_without_model_dir_run_in_runs_under_the_current_directory(tmp_path):
    done = _binary("advss_tf.pretrain", "--task=jigsaw", f"--data_dir={SUBSET}", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "jigsaw"
    assert (run_dir / "export" / "pretrain" / "saved_model.pb").is_file()
    assert f"run directory: {run_dir} " in done.stdout
    assert "tensorboard --logdir runs/jigsaw/tensorboard" in done.stdout
    assert "export: runs/jigsaw/export/pretrain" in done.stdout
    config = json.load(open(run_dir / "config.json"))
    assert config["data"]["source"] == "binary" and config["data"]["data_dir"] == SUBSET  # the given folder

    # The default directory keeps the refuse rule: other settings are another run.
    other = _binary("advss_tf.pretrain", "--task=jigsaw", f"--data_dir={SUBSET}", "--seed=1", *TINY, cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: runs/jigsaw holds a different run")

    tuned = _binary(
        "advss_tf.finetune",
        "--pretrained=runs/jigsaw/export/pretrain",
        *[f for f in TINY if not f.startswith("--backbone")],
        "--val_examples=16",
        "--val_batch_size=16",
        "--val_attack_steps=1",
        cwd=tmp_path,
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert (tmp_path / "runs" / "jigsaw_ft" / "export" / "best_ra" / "saved_model.pb").is_file()
    assert f"run directory: {tmp_path / 'runs' / 'jigsaw_ft'} " in tuned.stdout


def test_a_data_dir_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    model_dir = tmp_path / "run"
    assert_usage_error(
        pretrain_command("rotation", model_dir, "--data_dir=/nonexistent/cifar", *TINY), model_dir, "/nonexistent/cifar"
    )


def test_a_data_dir_with_another_dataset_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    command = pretrain_command("rotation", model_dir, "--dataset=sample", f"--data_dir={SUBSET}", *TINY)
    assert_usage_error(command, model_dir, "--data_dir reads the official binary files")
