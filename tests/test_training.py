"""The distributed training step and a whole pretraining run: data parallel = per-half gradients averaged,
resume = uninterrupted, NaN guard, export = Keras model, TensorBoard content."""

import dataclasses
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_logged

from advss_tf.config import AttackConfig, OptimizerConfig, PretrainConfig, RuntimeConfig
from advss_tf.data import pipeline
from advss_tf.models.backbones import BackboneConfig
from advss_tf.tasks.table import build_task
from advss_tf.training import loop, pretraining

WD = 5e-4


def _config(model_dir, task="rotation", steps=4, **runtime):
    return PretrainConfig(
        task=task,
        model_dir=str(model_dir),
        backbone=BackboneConfig("tiny"),
        batch_size=16,
        train_steps=steps,
        attack=AttackConfig(steps=2),
        optimizer=OptimizerConfig(learning_rate=0.05, weight_decay=WD, warmup_steps=2),
        runtime=RuntimeConfig(
            **{"steps_per_loop": 2, "checkpoint_every": 2, "image_summary_every": 2, "quiet": True, **runtime}
        ),
    )


@pytest.mark.parametrize("task_name", ["rotation", "jigsaw"])
def test_mirrored_step_equals_per_half_gradients_averaged(sample_arrays, tmp_path, task_name, mirrored_strategy):
    """One adversarial step on 2 replicas == the same step on one device computed per half-batch (per-replica BN)."""
    x, y, _, _ = sample_arrays
    cfg = _config(tmp_path, task=task_name)
    strategy = mirrored_strategy
    batch = next(
        iter(pipeline.train_dataset(x[:64], y[:64], global_batch_size=8, seed=1, transform=build_task(cfg).transform))
    )

    keras.utils.set_random_seed(3)
    with strategy.scope():
        task = build_task(cfg)
        model = task.build_model()
        opt = keras.optimizers.SGD(0.1, momentum=0.9)
        opt.build(model.trainable_variables)
    init = [v.numpy() for v in model.trainable_variables]
    trainer = loop.Trainer(
        strategy, task, model, opt, global_batch_size=8, weight_decay=WD, adversarial=True, attack_bn_train=True
    )
    trainer.train(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))), 1)

    task1 = build_task(cfg)
    ref = task1.build_model()
    for v, value in zip(ref.trainable_variables, init):
        v.assign(value)
    ref_opt = keras.optimizers.SGD(0.1, momentum=0.9)

    @tf.function  # a graph, as the replica step is: eager and grappler-fused kernels round differently
    def half_gradients(half):
        adv = task1.craft(ref, half, half["noise_seed"][0], True)
        with tf.GradientTape() as tape:
            per_example, _ = task1.losses(ref, half, adv)
            loss = (
                tf.reduce_sum(per_example) / 8 + WD * tf.add_n([tf.nn.l2_loss(v) for v in ref.trainable_variables]) / 2
            )
        return tape.gradient(loss, ref.trainable_variables)

    halves = [half_gradients({k: v[4 * h : 4 * h + 4] for k, v in batch.items()}) for h in range(2)]
    grads = [a + b for a, b in zip(*halves)]
    ref_opt.apply_gradients(zip(grads, ref.trainable_variables))

    moved = 0
    for a, b, i in zip(model.trainable_variables, ref.trainable_variables, init):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
        moved += not np.allclose(a.numpy(), i)
    assert moved > len(init) // 2  # the step really changed the weights


def _weights(model_dir, task="rotation"):
    cfg = _config(model_dir, task=task)
    model = build_task(cfg).build_model()
    ckpt = tf.train.Checkpoint(model=model)
    ckpt.restore(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))).expect_partial()
    return model


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _config(tmp_path, steps=40, steps_per_loop=1, checkpoint_every=1)
    cfg = PretrainConfig(
        **{**cfg.__dict__, "optimizer": OptimizerConfig(learning_rate=1e12, warmup_steps=0, schedule="constant")}
    )
    with pytest.raises(loop.TrainingError, match="non-finite"):
        pretraining.run(cfg)
    model = _weights(str(tmp_path))
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_export_reloads_with_the_same_outputs_and_tensorboard_has_the_content(tmp_path):
    cfg = _config(tmp_path, task="jigsaw", steps=4)
    results = pretraining.run(cfg)
    export_dir = results["export"]
    model = _weights(str(tmp_path), task="jigsaw")
    loaded = tf.saved_model.load(export_dir)
    x = tf.random.uniform([3, 32, 32, 3], seed=4)
    np.testing.assert_allclose(loaded.features(x)["features"], model.features(x), atol=1e-5)
    np.testing.assert_allclose(loaded.jigsaw_logits(x)["logits"], model(x), atol=1e-5)
    assert {"features", "jigsaw_logits"} <= set(loaded.signatures)
    perms = np.array(__import__("json").load(open(os.path.join(export_dir, "assets", "jigsaw_permutations.json"))))
    assert perms.shape == (31, 16)
    # input gradients work through the loaded export
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(loaded.jigsaw_logits(x)["logits"])
    assert float(tf.reduce_sum(tf.abs(tape.gradient(out, x)))) > 0

    assert_logged(
        tmp_path,
        "train/loss",
        "train/adv_accuracy",
        "train/clean_accuracy",
        "train/learning_rate",
        "train/images_per_sec",
        "config",
        "adversarial/",
        "jigsaw_inputs",
    )
    assert os.path.exists(os.path.join(str(tmp_path), "results.json"))


def test_bfloat16_on_a_cpu_without_amx_is_announced_as_slower(monkeypatch, caplog):
    """bfloat16 without AMX's bfloat16 units runs slower than float32 on a CPU: said once, not silently paid."""
    from advss_tf import machine
    from advss_tf.training import runs

    assert runs.precision_warning("bfloat16", on_gpu=False, amx_bf16=False)
    for mode, on_gpu, amx in [
        ("bfloat16", False, True),
        ("bfloat16", True, False),
        ("bfloat16", False, None),
        ("none", False, False),
        ("float16", False, False),
    ]:
        assert runs.precision_warning(mode, on_gpu=on_gpu, amx_bf16=amx) is None, (mode, on_gpu, amx)
    monkeypatch.setattr(machine, "has_amx_bf16", lambda: False)
    try:
        with caplog.at_level(logging.WARNING):
            runs.set_precision("bfloat16")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert [r for r in caplog.records if "without AMX" in r.getMessage()]


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_run_trains_and_exports_float32_signatures(tmp_path, precision):
    """--mixed_precision computes in 16 bits but keeps float32 variables, and the export's signatures still return
    float32 (SPEC §10): a serving pipeline never sees bf16/fp16 tensors."""
    try:
        # Rotation (4 views an image) rather than Jigsaw (9 patches each), 4 images a batch and one loop of 2 steps
        # (a checkpoint at its end): float16 is emulated on a CPU (~2-3 s a step here), and the policy's path through
        # the step, the checkpoint and the export is the same for every task, batch size and step count.
        cfg = _config(tmp_path, task="rotation", steps=2, mixed_precision=precision)
        results = pretraining.run(dataclasses.replace(cfg, batch_size=4))
        model = _weights(str(tmp_path), task="rotation")  # built under the run's policy
        assert all(v.dtype == "float32" for v in model.weights)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert results["steps"] == 2 and np.isfinite(results["final_train_metrics"]["loss"]), results
    loaded = tf.saved_model.load(results["export"])
    x = tf.random.uniform([3, 32, 32, 3], seed=5)
    for name in ("features", "rotation_logits"):
        (out,) = loaded.signatures[name](images=x).values()
        assert out.dtype == tf.float32 and np.isfinite(out.numpy()).all(), (name, out.dtype)
    assert keras.mixed_precision.dtype_policy().name == "float32"
