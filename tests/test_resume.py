"""Exact resume for every task: a run interrupted after its first checkpoint and resumed ends with every
checkpointed variable bitwise equal to an uninterrupted run's (weights, BatchNorm statistics, optimizer slots, the
run's step, the dropout seed states), with deterministic ops. Plus the float16 case where loss scaling skips steps.

Selfie (mirrored) and the ensemble resume a copy of the uninterrupted run's directory taken right after its first
checkpoint (what a kill -9 there leaves) instead of a third run stopped by SIGTERM: two traces of their step where
a SIGTERM stop needs three (the ensemble's, joint PGD and the diversity term's double backprop, is a minute on the
2-core CPU per run). The SIGTERM stop is the loop's, the same for every task and strategy, and is tested here on
Rotation (the loss-scaling test), in tests/test_resume_finetune.py and on the binaries (tests/test_pretrain_cli.py,
tests/test_finetune.py)."""

import dataclasses
import functools
import json
import os
import shutil
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_logged
from test_training import _config as pretrain_config

from advss_tf.config import AttackConfig, ContrastiveConfig, PretrainConfig, RuntimeConfig
from advss_tf.models.backbones import BackboneConfig, build_trunk
from advss_tf.training import loop, pretraining, runs

STEPS = 4
FIRST_CHECKPOINT = 2
RUNTIME = dict(steps_per_loop=1, checkpoint_every=FIRST_CHECKPOINT, image_summary_every=100, quiet=True)


def _pretrain(task, model_dir, **runtime):
    cfg = pretrain_config(model_dir, task=task, steps=STEPS, **{**RUNTIME, **runtime})
    # The selfie dropout is raised so that its masks matter: a replayed mask changes the weights.
    tiny = dict(batch_size=8, selfie_layers=1, selfie_heads=2, selfie_ff_dim=32, selfie_dropout=0.3)
    return pretraining.run(dataclasses.replace(cfg, **tiny))


# Rotation is the loss-scaling test below, jigsaw the SIGKILL test of the binary (tests/test_sigkill.py), the
# fine-tuning runs tests/test_resume_finetune.py (a file of their own, so the two test processes share the work).
RUNS = {
    "selfie_mirrored": functools.partial(_pretrain, "selfie", strategy="mirrored", num_cpu_devices=2),
    # image summaries at steps 2 and 4: the resumed run's logs are checked (assert_ensemble_export_and_logs)
    "ensemble": functools.partial(_pretrain, "ensemble", image_summary_every=2),
}


def assert_ensemble_export_and_logs(model_dir) -> None:
    """The ensemble run's export serves every head, its trunk restores into a fresh trunk with the same features,
    and its TensorBoard logs have every task's metrics, the diversity term and the Selfie and adversarial images."""
    export_dir = os.path.join(model_dir, "export", "pretrain")
    loaded = tf.saved_model.load(export_dir)  # kept: the signatures' variables live as long as it does
    assert {"features", "rotation_logits", "jigsaw_logits", "selfie_logits"} <= set(loaded.signatures)
    x = tf.random.uniform([3, 32, 32, 3], seed=5)
    features = loaded.signatures["features"](images=x)["features"]
    trunk = build_trunk(BackboneConfig("tiny"))
    status = tf.train.Checkpoint(trunk=trunk).read(os.path.join(export_dir, "variables", "variables"))
    status.expect_partial().assert_existing_objects_matched()
    np.testing.assert_allclose(features, tf.reduce_mean(trunk(x, training=False), axis=[1, 2]), atol=1e-5)
    info = json.load(open(os.path.join(export_dir, "assets", "advss_export.json")))
    assert info["task"] == "ensemble" and info["parts"][0] == "trunk" and "stage4" not in info["parts"]
    assert np.array(json.load(open(os.path.join(export_dir, "assets", "jigsaw_permutations.json")))).shape == (31, 16)
    assert_logged(
        model_dir,
        "train/diversity_h",
        "train/selfie_adv_loss",
        "train/jigsaw_clean_accuracy",
        "train/rotation_adv_accuracy",
        "train/learning_rate",
        "train/images_per_sec",
        "selfie_masked_inputs",
        "adversarial/rotation/",
    )


def after_first_checkpoint(monkeypatch, action):
    """Calls `action()` right after the first checkpoint is written (once; later saves are left alone)."""
    original = tf.train.CheckpointManager.save

    def save(self, *args, **kwargs):
        path = original(self, *args, **kwargs)
        monkeypatch.setattr(tf.train.CheckpointManager, "save", original)
        action()
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def interrupt_after_first_checkpoint(monkeypatch):
    """SIGTERM right after the first checkpoint is written: the loop's SignalGuard then stops the run at that step
    (deterministically, unlike a signal from another thread)."""
    after_first_checkpoint(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))


def checkpointed_values(model_dir) -> dict[str, np.ndarray]:
    """Every variable of the latest checkpoint but `save_counter` (it counts save calls, not the run's state)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return {n: reader.get_tensor(n) for n in names if not n.startswith("save_counter")}


def assert_same_checkpoints(a_dir, b_dir) -> dict[str, np.ndarray]:
    a, b = checkpointed_values(a_dir), checkpointed_values(b_dir)
    assert sorted(a) == sorted(b)
    different = [n for n in a if not np.array_equal(a[n], b[n])]
    assert not different, f"{len(different)} of {len(a)} checkpointed variables differ, e.g. {different[:5]}"
    return a


def interrupted_then_resumed(run, model_dir, monkeypatch):
    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(loop.Interrupted):
        run(model_dir)
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith(f"ckpt-{FIRST_CHECKPOINT}")
    return run(model_dir)


def straight_and_resumed(run, tmp_path, monkeypatch) -> dict[str, np.ndarray]:
    """`run` uninterrupted and interrupted-then-resumed: every checkpointed variable bitwise equal, `STEPS` steps.
    Returns the checkpointed values."""
    run(tmp_path / "straight")
    interrupted_then_resumed(run, tmp_path / "resumed", monkeypatch)
    return assert_resumed_equals_straight(tmp_path)


def assert_resumed_equals_straight(tmp_path) -> dict[str, np.ndarray]:
    values = assert_same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == STEPS
    return values


def straight_and_resumed_from_its_copy(run, tmp_path, monkeypatch) -> dict[str, np.ndarray]:
    """`run` uninterrupted, and the copy of its directory at its first checkpoint resumed: every checkpointed
    variable bitwise equal, `STEPS` steps (two runs where straight_and_resumed has three). Returns the values."""
    after_first_checkpoint(monkeypatch, lambda: shutil.copytree(tmp_path / "straight", tmp_path / "resumed"))
    run(tmp_path / "straight")
    assert tf.train.latest_checkpoint(tmp_path / "resumed" / "checkpoints").endswith(f"ckpt-{FIRST_CHECKPOINT}")
    run(tmp_path / "resumed")
    return assert_resumed_equals_straight(tmp_path)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_interrupted_then_resumed_run_ends_bitwise_equal(name, tmp_path, monkeypatch, deterministic_ops):
    values = straight_and_resumed_from_its_copy(RUNS[name], tmp_path, monkeypatch)
    if name == "ensemble":  # the resumed run's export and logs (its own events file holds steps 3-4)
        assert_ensemble_export_and_logs(tmp_path / "resumed")
    # Dropout and attention dropout: one SeedGenerator state each, advanced by every training-mode call.
    seeds = [n for n in values if n.startswith("random_state/")]
    assert len(seeds) == 3 and all(values[n][1] > 0 for n in seeds), seeds


def test_dynacl_resumes_bitwise_momentum_key_and_both_routes_included(tmp_path, monkeypatch, deterministic_ops):
    """DynACL, with its momentum key encoder (moved after every step) and both BatchNorm routes of query and key:
    resumed from a copy taken at the first checkpoint, as a kill -9 there leaves it, every checkpointed variable ends
    bitwise equal to the uninterrupted run's. (ACL's binary is killed with -9 and resumed in tests/test_contrastive.py;
    DynACL+AIR has one encoder and no state beyond ACL's.)"""

    def run(model_dir):
        cfg = PretrainConfig(
            task="dynacl",
            model_dir=str(model_dir),
            backbone=BackboneConfig("tiny_post"),
            batch_size=8,
            train_steps=STEPS,
            attack=AttackConfig(steps=1, bn="eval"),
            contrastive=ContrastiveConfig(),
            runtime=RuntimeConfig(**RUNTIME),
        )
        return pretraining.run(cfg)

    values = straight_and_resumed_from_its_copy(run, tmp_path, monkeypatch)
    # The key's own weights are checkpointed (not rebuilt from the query on resume).
    assert any("key" in n for n in values) and any("query" in n for n in values), sorted(values)[:10]


def test_steps_skipped_by_loss_scaling_still_count_and_resume_where_they_stopped(
    tmp_path, monkeypatch, deterministic_ops
):
    """--mixed_precision=float16's LossScaleOptimizer skips a step whose scaled gradients overflow, and its
    iterations stay behind. The same optimizer over float32 with a loss scale of 2^127 (float32 overflows at 2^128)
    skips its first steps without float16's slow CPU kernels. The run still counts the skipped steps, numbers its
    checkpoints by them, and resumes where it stopped."""
    make_optimizer = runs.make_optimizer

    def with_loss_scaling(*args, **kwargs):
        optimizer, lr = make_optimizer(*args, **kwargs)
        return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**127), lr

    monkeypatch.setattr(runs, "make_optimizer", with_loss_scaling)
    run = functools.partial(_pretrain, "rotation")
    straight = run(tmp_path / "straight")
    resumed = interrupted_then_resumed(run, tmp_path / "resumed", monkeypatch)
    assert straight["steps"] == resumed["steps"] == STEPS
    values = assert_same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == STEPS
    iterations = [v for n, v in values.items() if n.startswith("optimizer/") and "iterations" in n]
    assert iterations and min(int(v) for v in iterations) < STEPS, iterations  # some steps really were skipped
