"""kill -9 at three moments of a real pretraining run — during training, inside a checkpoint write, during the
export — with the same command re-run after each: the run ends bitwise equal to an uninterrupted one (every
checkpointed variable and the exported variables). The moments come from the test-only pause points of
advss_tf/faults.py, so they are the same however loaded the machine is. The command is the mission's, without
--model_dir (so it runs in runs/jigsaw under its directory), on a real CIFAR-10 folder given by --data_dir."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from binaries import run_command
from conftest import SHARED_DATA
from pretrain_binary import pretrain_command
from test_cli_defaults import ENV
from test_resume import assert_same_checkpoints

from advss_tf import faults

FLAGS = [
    f"--data_dir={os.path.join(SHARED_DATA, 'cifar10-subset')}",
    "--backbone=tiny",
    "--batch_size=8",
    "--train_steps=6",
    "--attack_steps=1",
    "--steps_per_loop=1",
    "--checkpoint_every=2",
    "--image_summary_every=100",
    "--deterministic",
    "--quiet",
]


def _kill_at(point: str, command: list[str], cwd, marker) -> None:
    """Runs `command` in `cwd` until it reaches the pause `point`, then SIGKILLs it."""
    env = {**ENV, faults.ENV: point, f"{faults.ENV}_FILE": str(marker)}
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before reaching {point}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


def _latest(model_dir) -> str:
    return os.path.basename(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))


def test_sigkill_during_training_a_checkpoint_write_and_the_export_then_the_same_command_ends_bitwise_equal(tmp_path):
    straight, cwd, marker = tmp_path / "straight", tmp_path / "cwd", tmp_path / "paused"
    done = run_command(pretrain_command("jigsaw", straight, *FLAGS))  # the reference
    assert done.returncode == 0, done.stderr[-2000:]
    cwd.mkdir()
    command = [sys.executable, "-m", "advss_tf.pretrain", "--task=jigsaw", *FLAGS]
    killed = cwd / "runs" / "jigsaw"

    _kill_at("train@3", command, cwd, marker)  # step 3 trained, not saved
    assert _latest(killed) == "ckpt-2"
    _kill_at("checkpoint", command, cwd, marker)  # resumed at 2; killed inside the write of ckpt-4
    assert (killed / "checkpoints" / "ckpt-4.index").exists() and _latest(killed) == "ckpt-2"
    _kill_at("export", command, cwd, marker)  # resumed at 2 again; trained to the end, killed inside the export
    assert _latest(killed) == "ckpt-6" and not (killed / "export" / "pretrain").exists()
    done = run_command(command, cwd=cwd, env=ENV)  # the same command, to the end
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run directory: {killed} " in done.stdout
    assert "tensorboard --logdir runs/jigsaw/tensorboard" in done.stdout
    assert "export: runs/jigsaw/export/pretrain" in done.stdout
    config = json.load(open(killed / "config.json"))
    assert config["data"]["source"] == "binary" and config["data"]["data_dir"] == FLAGS[0].split("=", 1)[1]

    values = assert_same_checkpoints(straight, killed)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 6
    exported = [
        tf.train.load_checkpoint(str(d / "export" / "pretrain" / "variables" / "variables")) for d in (straight, killed)
    ]
    names = sorted(n for n in exported[0].get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert names == sorted(n for n in exported[1].get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert all(np.array_equal(exported[0].get_tensor(n), exported[1].get_tensor(n)) for n in names)
