"""MultiWorkerMirroredStrategy end to end on 127.0.0.1: equivalence with one process on two devices, resume after
a SIGKILL, a lost worker, bad cluster input (SPEC §11).

A strategy cannot be created in this process after TensorFlow started, so every multi-worker run is a pair of
subprocesses (through `advss_tf.launch` or its helpers). The runs are shared between assertions (the uninterrupted
2-worker pretraining is the reference of both the equivalence and the resume test) to keep the file near 3 minutes
on a 2-core machine. Timeouts are generous bounds against hangs, not timing assertions.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from binaries import PipedProcess, run_binary
from conftest import REPO

from advss_tf import launch

PROCESS_TIMEOUT = 300  # s: a bound for hangs on a loaded 2-core machine, not a speed claim
FAULT_BOUND = 120  # s: --worker_timeout below is 30 s; a lost peer was seen ending the run in ~1-10 s on loopback
WORKER_TIMEOUT = 30
# Weights of the 2-worker run vs the 1-process 2-device run: the same float32 ops on the same slices; the all-reduce
# of two replicas' gradients is one addition either way. Seen equal to the bit; the tolerance leaves room for
# oneDNN kernel choices.
ATOL = 1e-5

PRETRAIN = [
    "--task=rotation",
    "--backbone=tiny",
    "--dataset=sample",
    "--batch_size=32",
    "--train_steps=6",
    "--warmup_steps=2",
    "--learning_rate=0.05",
    "--attack_steps=2",
    "--steps_per_loop=2",
    "--checkpoint_every=2",
    "--image_summary_every=1000",
    "--quiet",
]
FINETUNE = [
    "--mode=full",
    "--objective=adversarial",
    "--dataset=sample",
    "--batch_size=16",
    "--train_steps=4",
    "--warmup_steps=2",
    "--learning_rate=0.05",
    "--lr_boundaries=",
    "--attack_steps=2",
    "--val_attack_steps=2",
    "--val_examples=32",
    "--val_batch_size=16",
    "--steps_per_loop=2",
    "--checkpoint_every=2",
    "--image_summary_every=1000",
    "--quiet",
]


def _launch(binary, model_dir, flags, **kwargs):
    """`python -m advss_tf.launch --workers=2 -- <binary> ...` as a Popen."""
    cmd = [sys.executable, "-m", "advss_tf.launch", "--workers=2", "--grace_sec=30", "--", binary]
    cmd += [f"--model_dir={model_dir}", f"--worker_timeout={WORKER_TIMEOUT}", *flags]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _single(binary, model_dir, flags):
    """The same run in one process on two logical CPU devices (forked: tests/binaries.py; the workers and their
    launcher are fresh interpreters, as a user starts them)."""
    cmd = [sys.executable, "-m", f"advss_tf.{binary}", "--strategy=mirrored", "--num_cpu_devices=2"]
    cmd += [f"--model_dir={model_dir}", *flags]
    return PipedProcess(cmd)


def _finish(proc):
    out, err = proc.communicate(timeout=2 * PROCESS_TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _weights(export_dir) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in k}


def _assert_same_weights(a, b, atol=ATOL):
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb) and wa
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory):
    """(2-worker model_dir, 1-process 2-device model_dir) of the same rotation run, run side by side."""
    root = tmp_path_factory.mktemp("mw_pretrain")
    multi = _launch("pretrain", root / "two_workers", PRETRAIN)
    single = _single("pretrain", root / "one_process", PRETRAIN)
    _finish(multi)
    _finish(single)
    return root / "two_workers", root / "one_process"


@pytest.mark.slow
def test_two_workers_equal_one_process_on_two_devices_and_only_the_chief_writes(pretrain_runs):
    multi, single = pretrain_runs
    _assert_same_weights(multi / "export" / "pretrain", single / "export" / "pretrain")
    results = json.load(open(multi / "results.json"))
    assert results["steps"] == 6
    # The run directory holds the chief's files only; worker 1's output went to logs/, its scratch dir is gone.
    assert sorted(os.listdir(multi)) == ["checkpoints", "config.json", "export", "logs", "results.json", "tensorboard"]
    assert os.listdir(multi / "logs") == ["worker1.log"]
    worker_log = open(multi / "logs" / "worker1.log").read()
    scratch = re.search(r"pretraining done: 6 steps; SavedModel at (\S+)/export/pretrain", worker_log)
    assert scratch and not scratch.group(1).startswith(str(multi)) and not os.path.exists(scratch.group(1))
    assert len(glob.glob(str(multi / "tensorboard" / "train" / "events.*"))) == 1


def _start_workers(binary, model_dir, flags):
    """Two workers started directly (TF_CONFIG from the launcher's helpers), output to files under `model_dir`."""
    addresses = [f"127.0.0.1:{p}" for p in launch.free_ports(2)]
    cmd = launch.worker_command(binary, [f"--model_dir={model_dir}", f"--worker_timeout={WORKER_TIMEOUT}", *flags])
    # A SIGKILLed worker cannot remove its scratch directory: keep it under the test's tmp_path, not in /tmp.
    scratch_root = model_dir.parent / "scratch"
    scratch_root.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": launch.tf_config(addresses, i), "TMPDIR": str(scratch_root)}
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return procs


def _wait_for(pattern, timeout=PROCESS_TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if glob.glob(pattern):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


@pytest.mark.slow
def test_a_sigkilled_worker_stops_the_other_with_one_line_and_a_rerun_resumes_to_the_same_weights(
    pretrain_runs, tmp_path
):
    model_dir = tmp_path / "faulty"
    chief, worker = _start_workers("pretrain", model_dir, PRETRAIN)
    _wait_for(str(model_dir / "checkpoints" / "ckpt-2.index"))
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = chief.communicate(timeout=PROCESS_TIMEOUT)
    took = time.monotonic() - killed
    worker.communicate()
    assert chief.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: lost worker 1 (127.0.0.1:"), err[-3000:]
    assert took < FAULT_BOUND, took
    # Nothing half-written: checkpoints before the end, no export, no results, no temporary export directory.
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.json", "tensorboard"]
    steps = [int(p.rsplit("-", 1)[1].split(".")[0]) for p in glob.glob(str(model_dir / "checkpoints" / "*.index"))]
    assert 2 <= max(steps) < 6  # a worker cannot pass the next step's all-reduce without the other

    # Re-running every worker with the same command resumes and ends where the uninterrupted run ended.
    out, _ = _finish(_launch("pretrain", model_dir, PRETRAIN))
    assert "pretraining done: 6 steps" in out
    _assert_same_weights(model_dir / "export" / "pretrain", pretrain_runs[0] / "export" / "pretrain", atol=0)


@pytest.mark.slow
def test_adversarial_finetuning_on_two_workers_equals_one_process_on_two_devices(pretrain_runs, tmp_path):
    export_dir = pretrain_runs[0] / "export" / "pretrain"
    flags = [f"--pretrained={export_dir}", *FINETUNE]
    multi = _launch("finetune", tmp_path / "two_workers", flags)
    single = _single("finetune", tmp_path / "one_process", flags)
    _finish(multi)
    _finish(single)
    _assert_same_weights(tmp_path / "two_workers" / "export" / "last", tmp_path / "one_process" / "export" / "last")
    a = json.load(open(tmp_path / "two_workers" / "results.json"))
    b = json.load(open(tmp_path / "one_process" / "results.json"))
    for key in ("clean_accuracy", "robust_accuracy"):
        assert a["best_robust_accuracy"][key] == pytest.approx(b["best_robust_accuracy"][key], abs=1e-6)


def _tf_config(cluster, index=0, job="worker"):
    return json.dumps({"cluster": cluster, "task": {"type": job, "index": index}})


def test_multi_worker_without_a_cluster_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    flags = ["--strategy=multi_worker", f"--model_dir={tmp_path / 'run'}", *PRETRAIN]
    proc = run_binary("advss_tf.pretrain", *flags, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: --strategy=multi_worker needs the cluster: set TF_CONFIG")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "tf_config, resolver, needle",
    [
        ("{not json", "tf_config", "malformed TF_CONFIG (JSONDecodeError"),
        (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), "tf_config", "malformed TF_CONFIG (KeyError: 'task')"),
        (
            _tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, index=2),
            "tf_config",
            "index 2 is outside the cluster",
        ),
        (_tf_config({"worker": ["127.0.0.1:1"]}, job="ps"), "tf_config", "task type 'ps' is not a job"),
        (
            _tf_config({"worker": ["127.0.0.1:1"], "evaluator": ["127.0.0.1:2"]}, job="evaluator"),
            "tf_config",
            "does not train",
        ),
        (_tf_config({"ps": ["127.0.0.1:1"]}, job="ps"), "tf_config", "has no chief or worker addresses"),
        (None, "slurm", "SLURM_PROCID is not set"),
    ],
)
def test_bad_cluster_input_is_refused_before_tensorflow_starts(monkeypatch, tf_config, resolver, needle):
    """What the binaries turn into one `error:` line and exit 2 (the path is the one of the test above)."""
    from advss_tf.errors import UsageError
    from advss_tf.training.strategy import cluster_resolver

    monkeypatch.delenv("SLURM_PROCID", raising=False)
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UsageError, match=re.escape(needle)):
        cluster_resolver(resolver)


def test_a_global_batch_not_divisible_by_all_replicas_is_refused(tmp_path):
    """2 workers (one CPU replica each), batch 31: every worker refuses, one line, exit 2, nothing written."""
    launcher = [sys.executable, "-m", "advss_tf.launch", "--workers=2", "--grace_sec=5"]
    proc = subprocess.run(
        [*launcher, f"--worker_log_dir={tmp_path / 'logs'}", "--", "pretrain", f"--model_dir={tmp_path / 'run'}"]
        + [*PRETRAIN, "--batch_size=31"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: batch size 31 is not divisible by the 2 replicas"], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_slurm_environment_resolves_to_a_cpu_cluster(monkeypatch):
    """SlurmClusterResolver without GPUs: the cluster of a 2-task step on two nodes (no runtime started here)."""
    from advss_tf.training.strategy import cluster_resolver

    for key, value in {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "node[01-02]",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    }.items():
        monkeypatch.setenv(key, value)
    resolver = cluster_resolver("slurm")
    assert resolver.cluster_spec().as_dict() == {"worker": ["node01:8888", "node02:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert not resolver.num_accelerators().get("GPU")


def test_replica_slices_split_a_global_batch_as_mirrored_strategy_does():
    from advss_tf.data import pipeline

    batch = {"inputs": tf.reshape(tf.range(48), [8, 6]), "noise_seed": tf.reshape(tf.range(16), [8, 2])}
    ds = tf.data.Dataset.from_tensors(batch).repeat(2)
    got = list(pipeline.replica_slices(ds, 4, first=2, count=2))
    assert len(got) == 4  # 2 steps x 2 local replicas, in replica order
    np.testing.assert_array_equal(got[0]["inputs"], batch["inputs"][4:6])
    np.testing.assert_array_equal(got[1]["noise_seed"], batch["noise_seed"][6:8])
    np.testing.assert_array_equal(got[2]["inputs"], batch["inputs"][4:6])


def test_a_timed_out_collective_names_the_peer_whose_port_is_closed(monkeypatch):
    """A collective's timeout names no task; the chief then finds the killed peer by its closed port (loopback)."""
    import socket

    from advss_tf.training import cluster

    alive = socket.socket()
    alive.bind(("127.0.0.1", 0))
    alive.listen()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused as to a killed process
    alive_at, dead_at = (f"127.0.0.1:{s.getsockname()[1]}" for s in (alive, dead))
    try:
        config = {"cluster": {"worker": ["127.0.0.1:1", alive_at, dead_at]}, "task": {"type": "worker", "index": 0}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        assert cluster._lost_worker_name("Collective has timed out during execution.") == f"worker 2 ({dead_at})"
        assert cluster._lost_worker_name("from /job:worker/replica:0/task:1: x") == f"worker 1 ({alive_at})"
        monkeypatch.delenv("TF_CONFIG")
        assert cluster._lost_worker_name("Collective has timed out during execution.") == "a worker"
    finally:
        alive.close()
        dead.close()
