"""The pretrain binary as a user runs it: bad input is one line and exit 2, SIGTERM checkpoints, re-run resumes."""

import json
import os
import signal
import sys
import time

import pytest
from binaries import PipedProcess, run_binary, run_command

TINY = ["--backbone=tiny", "--batch_size=16", "--attack_steps=1", "--steps_per_loop=1", "--quiet"]


def pretrain(*args):
    return run_binary("advss_tf.pretrain", *args, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task=colorize"], "--task=colorize: value should be one of"),
        (["--task=rotation", "--backbone=vgg"], "value should be one of"),
        (["--task=rotation", "--strategy=tpu"], "value should be one of"),
        (["--task=rotation", "--epsilon=0"], "--epsilon must be in (0, 1]"),
        (["--task=rotation", "--epsilon=300/255"], "--epsilon must be in (0, 1]"),
        (["--task=rotation", "--attack_step_size=0"], "--attack_step_size must be > 0"),
        (["--task=rotation", "--attack_steps=0"], "--attack_steps must be >= 1"),
        (["--task=rotation", "--epsilon=eight"], "not a number or fraction"),
        (["--task=rotation", "--num_cpu_devices=2", "--batch_size=15"], "not divisible by the 2 replicas"),
        (["--task=rotation", "--dataset=binary", "--data_dir=/no/such/dir"], "does not exist"),
        (["--task=rotation", "--dataset=binary"], "needs --data_dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    model_dir = tmp_path / "run"
    result = pretrain(*args, f"--model_dir={model_dir}", "--train_steps=1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not model_dir.exists()  # nothing written


def test_truncated_data_is_refused(tmp_path):
    data = tmp_path / "cifar"
    data.mkdir()
    (data / "data_batch_1.bin").write_bytes(b"\1" * 3073 * 3 + b"\0" * 7)
    for i in range(2, 6):
        (data / f"data_batch_{i}.bin").write_bytes(b"\1" * 3073)
    result = pretrain("--task=rotation", f"--model_dir={tmp_path / 'run'}", "--dataset=binary", f"--data_dir={data}")
    assert result.returncode == 2 and "truncated" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sigterm_checkpoints_then_the_same_command_resumes_and_another_run_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "advss_tf.pretrain",
        "--task=rotation",
        f"--model_dir={model_dir}",
        "--train_steps=60",
        "--checkpoint_every=5",
        *TINY,
    ]
    proc = PipedProcess(cmd)
    deadline = time.time() + 240
    while time.time() < deadline and not (model_dir / "checkpoints" / "ckpt-5.index").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err.strip().splitlines()[-1]
    steps = sorted(
        int(f.split("-")[1].split(".")[0]) for f in os.listdir(model_dir / "checkpoints") if f.endswith(".index")
    )
    assert 5 <= steps[-1] < 60
    assert not (model_dir / "export").exists()

    # A different run in the same directory is refused, and nothing of the first is touched.
    other = pretrain("--task=jigsaw", f"--model_dir={model_dir}", "--train_steps=2", *TINY)
    assert other.returncode == 2 and "holds a different run" in other.stderr
    assert json.load(open(model_dir / "config.json"))["task"] == "rotation"

    # The same command resumes from the last checkpoint and finishes.
    result = run_command(cmd, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.load(open(model_dir / "results.json"))
    assert results["steps"] == 60 and os.path.exists(os.path.join(results["export"], "saved_model.pb"))
