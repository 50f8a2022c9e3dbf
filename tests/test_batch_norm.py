"""FusedBatchNormalization: Keras' BatchNormalization numerics and checkpoints through TensorFlow's fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf.config import AttackConfig, OptimizerConfig, PretrainConfig
from advss_tf.data import pipeline
from advss_tf.models.backbones import BackboneConfig, build_trunk
from advss_tf.models.batch_norm import FusedBatchNormalization
from advss_tf.models.layers import AUTO, batch_norm_layer
from advss_tf.tasks.table import build_task
from advss_tf.training import loop


def _pair(shape, dtype_policy=None):
    """Keras' layer and ours, built with the same non-trivial weights."""
    rng = np.random.default_rng(0)
    kw = dict(momentum=0.9, epsilon=1e-5, dtype=dtype_policy)
    ref, fused = keras.layers.BatchNormalization(**kw), FusedBatchNormalization(**kw)
    ref.build(shape)
    fused.build(shape)
    for a, b in zip(ref.weights, fused.weights, strict=True):
        value = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return ref, fused


def _close(a, b, rtol=1e-5):
    # Relative to the array's scale, floored at 1e-3: a variable that is zero up to rounding (seen: values of
    # ~1e-9 after one step, 29 of 32 of them "different" at a 1e-10 tolerance) is compared at the rounding of the
    # O(1) sums it comes from, not at a tolerance derived from its own noise.
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(b, a, rtol=0, atol=rtol * max(np.abs(a).max(), 1e-3))


@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_moving_averages_match_keras(training):
    x = tf.constant(np.random.default_rng(1).normal(1.0, 2.0, (8, 6, 6, 5)).astype(np.float32))
    ref, fused = _pair(x.shape)
    initial = ref.moving_variance.numpy().copy()
    results = []
    for layer in (ref, fused):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(tf.sin(y) * y)
            grads = inner.gradient(loss, [x, layer.gamma, layer.beta])
            curvature = tf.reduce_sum(tf.square(grads[0]))
        # Second order: the ensemble's diversity term differentiates input gradients (double backprop).
        second = outer.gradient(curvature, [x, layer.gamma])
        results.append([y, *grads, *second, layer.moving_mean, layer.moving_variance])
    for a, b in zip(*results, strict=True):
        _close(a, b)
    # Training moved the averages (by the biased batch variance, as Keras); inference left them alone.
    assert np.allclose(fused.moving_variance.numpy(), initial) != training


def test_traced_training_call_is_one_fused_op():
    _, fused = _pair((4, 4, 4, 3))
    graph = tf.function(lambda x: fused(x, training=True)).get_concrete_function(tf.TensorSpec([4, 4, 4, 3])).graph
    ops = [n.op for n in graph.as_graph_def().node]
    assert "FusedBatchNormV3" in ops and "Mean" not in ops and "SquaredDifference" not in ops


def test_mixed_precision_keeps_float32_statistics():
    x = tf.constant(np.random.default_rng(2).normal(0, 3, (4, 4, 4, 8)).astype(np.float32))
    ref, fused = _pair(x.shape, dtype_policy="mixed_bfloat16")
    for training in (True, False):
        a, b = ref(tf.cast(x, tf.bfloat16), training=training), fused(tf.cast(x, tf.bfloat16), training=training)
        assert b.dtype == tf.bfloat16 and fused.moving_mean.dtype == "float32"
        _close(tf.cast(a, tf.float32), tf.cast(b, tf.float32), rtol=1e-2)
    _close(ref.moving_mean, fused.moving_mean)


def test_synchronized_and_3d_inputs_fall_back_to_keras():
    x = tf.constant(np.random.default_rng(3).normal(0, 1, (4, 6, 5)).astype(np.float32))
    ref, fused = _pair(x.shape)
    _close(ref(x, training=True), fused(x, training=True))
    sync = FusedBatchNormalization(synchronized=True)
    assert not sync._fusable(tf.zeros([2, 2, 2, 3]), None)


def test_checkpoints_restore_across_keras_and_fused_trunks(tmp_path):
    """A trunk written with Keras' layer (every existing checkpoint and export) restores into ours, and back."""
    images = tf.constant(np.random.default_rng(4).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32))
    cfg = BackboneConfig("tiny")
    with batch_norm_layer("keras"):
        old = build_trunk(cfg)
    old(images, training=True)  # move the BatchNorm statistics off their initial values
    path = tf.train.Checkpoint(trunk=old).write(str(tmp_path / "old"))
    new = build_trunk(cfg)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in new.layers)
    tf.train.Checkpoint(trunk=new).read(path).assert_existing_objects_matched().assert_consumed()
    for training in (False, True):
        _close(old(images, training=training), new(images, training=training))
    back = tf.train.Checkpoint(trunk=new).write(str(tmp_path / "new"))
    with batch_norm_layer("keras"):
        again = build_trunk(cfg)
    tf.train.Checkpoint(trunk=again).read(back).assert_existing_objects_matched().assert_consumed()
    _close(new(images), again(images))
    assert [v.path for v in again.weights] == [v.path for v in new.weights]


def test_unknown_batch_norm_layer_is_a_usage_error():
    from advss_tf.errors import UsageError

    with pytest.raises(UsageError, match="fused"):
        with batch_norm_layer("cudnn"):
            pass


def test_the_ensemble_builds_keras_layers_the_other_tasks_fused_ones_unless_a_caller_chooses():
    """The ensemble's double backprop keeps more tensors through the fused kernel's gradient (17.7 vs 13.9 GiB,
    docs/benchmarks.md), so it prefers Keras' layer; `batch_norm_layer` still forces either for every task."""

    def layers(task, choice=AUTO):
        cfg = PretrainConfig(
            task=task, model_dir="/tmp/unused", backbone=BackboneConfig("tiny"), batch_size=8,
            selfie_layers=1, selfie_heads=2, selfie_ff_dim=32,
        )  # fmt: skip
        with batch_norm_layer(choice):
            model = build_task(cfg).build_model()
        found = {type(m) for m in model._flatten_layers() if isinstance(m, keras.layers.BatchNormalization)}
        assert found, task
        return found

    assert layers("rotation") == {FusedBatchNormalization}
    assert layers("ensemble") == {keras.layers.BatchNormalization}
    assert layers("ensemble", "fused") == {FusedBatchNormalization}
    assert layers("rotation", "keras") == {keras.layers.BatchNormalization}
    assert layers("rotation") == {FusedBatchNormalization}  # the contexts leave nothing behind


def test_one_training_step_updates_weights_as_the_keras_layer(sample_arrays):
    """One adversarial step from the same weights on the same batch: every updated variable as with Keras' BN."""
    x, y, _, _ = sample_arrays
    cfg = PretrainConfig(
        task="jigsaw",
        model_dir="/tmp/unused",
        backbone=BackboneConfig("tiny"),
        batch_size=8,
        train_steps=1,
        attack=AttackConfig(steps=2),
        optimizer=OptimizerConfig(learning_rate=0.1, weight_decay=5e-4),
    )
    batch = next(
        iter(pipeline.train_dataset(x[:64], y[:64], global_batch_size=8, seed=1, transform=build_task(cfg).transform))
    )
    updated = []
    for layer in ("keras", "fused"):
        keras.utils.set_random_seed(3)
        with batch_norm_layer(layer):
            task = build_task(cfg)
            model = task.build_model()
        opt = keras.optimizers.SGD(0.1, momentum=0.9)
        opt.build(model.trainable_variables)
        trainer = loop.Trainer(
            tf.distribute.get_strategy(),
            task,
            model,
            opt,
            global_batch_size=8,
            weight_decay=5e-4,
            adversarial=True,
            attack_bn_train=True,
        )
        metrics = trainer.train(iter(tf.data.Dataset.from_tensors(batch).repeat()), 1)
        updated.append(([v.numpy() for v in model.weights], metrics))
    (ref, ref_metrics), (new, new_metrics) = updated
    assert len(ref) == len(new)
    for a, b in zip(ref, new, strict=True):
        _close(a, b, rtol=1e-4)
    for k in ref_metrics:
        np.testing.assert_allclose(new_metrics[k], ref_metrics[k], rtol=1e-4, atol=1e-5)
