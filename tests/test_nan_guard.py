"""Never save a broken model: a step with a finite loss but a non-finite gradient stops the run before any save,
naming the last good checkpoint; and the diversity term's norm has gradient 0 (not NaN) at an exactly-zero input
gradient, the trigger a fully saturated cross-entropy gives."""

import os

import numpy as np
import pytest
import tensorflow as tf
from test_resume import _pretrain

from advss_tf.attacks import diversity
from advss_tf.attacks.pgd import cross_entropy
from advss_tf.training import loop, pretraining

B = 4


def test_safe_norm_is_tf_norm_with_gradient_zero_at_zero():
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 50)), tf.float32)
    x = tf.concat([x, tf.zeros([1, 50])], 0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        safe = diversity.safe_norm(x)
        plain = tf.norm(x, axis=-1, keepdims=True)
    np.testing.assert_array_equal(safe.numpy(), plain.numpy())
    g_safe, g_plain = tape.gradient(safe, x).numpy(), tape.gradient(plain, x).numpy()
    np.testing.assert_array_equal(g_safe[:3], g_plain[:3])
    assert np.isnan(g_plain[3]).all() and (g_safe[3] == 0).all()


def _h_and_weight_gradient(norm_fn, jit_compile: bool):
    """h of three tasks on a linear model w, where task 0's cross-entropy is fully saturated (softmax exactly one-hot
    in float32: loss 0, input gradient exactly 0), and dh/dw; the per-example gradients normalised with `norm_fn`."""
    rng = np.random.default_rng(1)
    w = tf.Variable(rng.normal(size=(12, 10)).astype(np.float32))
    inputs = [tf.constant(rng.uniform(size=(B, 2, 2, 3)).astype(np.float32)) for _ in range(3)]

    def loss_fn(scale):
        def fn(x):
            logits = scale * tf.matmul(tf.reshape(x, [B, -1]), w)
            return cross_entropy(tf.argmax(logits, -1, output_type=tf.int32), logits)

        return fn

    @tf.function(jit_compile=jit_compile)
    def run():
        with tf.GradientTape() as tape:
            _, grads = diversity.input_gradients([loss_fn(1e4), loss_fn(1.0), loss_fn(0.5)], inputs)
            flat = [tf.cast(tf.reshape(g, [B, -1]), tf.float64) for g in grads]
            g = tf.stack([f / (norm_fn(f) + diversity.NORM_EPSILON) for f in flat], axis=2)
            gram = tf.matmul(g, g, transpose_a=True) + diversity.RIDGE * tf.eye(3, dtype=tf.float64)
            h = tf.reduce_mean(tf.linalg.logdet(gram))
        return grads[0], h, tape.gradient(h, w)

    return run()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_h_has_finite_weight_gradients_when_a_cross_entropy_is_fully_saturated(jit_compile):
    zero_grad, h, dh_dw = _h_and_weight_gradient(diversity.safe_norm, jit_compile)
    assert (zero_grad.numpy() == 0).all()  # the saturated case really happened
    assert np.isfinite(h.numpy()) and np.isfinite(dh_dw.numpy()).all()
    if jit_compile:  # XLA (--jit_compile, the GPU path) differentiates tf.norm at 0 to NaN, and h passed it on
        _, _, plain = _h_and_weight_gradient(lambda f: tf.norm(f, axis=1, keepdims=True), jit_compile)
        assert np.isnan(plain.numpy()).all()


class NaNGradientFromStep:
    """A task whose loss gains ‖w − stop_gradient(w)‖₂ from its `bad_step`-th step on: the value is exactly 0, so
    every loss stays finite, but the gradient is NaN (tf.norm at 0)."""

    def __init__(self, task, bad_step: int):
        self.task = task
        self.bad_step = bad_step
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)  # built in the strategy scope, as the task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def losses(self, model, batch, adv):
        per_example, metrics = self.task.losses(model, batch, adv)
        self.calls.assign_add(1)
        w = model.trainable_variables[0]
        poison = tf.cond(
            self.calls >= self.bad_step, lambda: tf.norm(w - tf.stop_gradient(w)), lambda: tf.constant(0.0)
        )
        return per_example + poison, metrics


def test_a_finite_loss_with_a_nan_gradient_stops_before_the_next_checkpoint(tmp_path, monkeypatch):
    build_task = pretraining.build_task
    monkeypatch.setattr(pretraining, "build_task", lambda cfg: NaNGradientFromStep(build_task(cfg), bad_step=4))
    with pytest.raises(loop.TrainingError, match="non-finite gradients or weights at steps 4-4") as error:
        _pretrain("rotation", tmp_path)
    checkpoints = tmp_path / "checkpoints"
    latest = tf.train.latest_checkpoint(str(checkpoints))
    assert latest.endswith("ckpt-2") and not (checkpoints / "ckpt-4.index").exists()  # steps 3 and 4 unsaved
    assert str(error.value).endswith(f"the last good checkpoint is {latest}")
    assert "nan" not in str(error.value).split(";")[0]  # the losses of the bad step were finite
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
    assert not os.path.exists(tmp_path / "export")
