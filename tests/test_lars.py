"""LARS (training/lars.py): ACL's update rule, its exclusions, its slots in checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf.training.lars import LARS

RNG = np.random.default_rng(0)
W0 = {"dense/kernel": RNG.normal(size=(4, 3)), "bn/gamma": RNG.uniform(0.5, 1.5, 3), "dense/bias": np.zeros(3)}
GRADS = [{k: RNG.normal(size=v.shape) * 0.1 for k, v in W0.items()} for _ in range(3)]


def acl_lars(w0, grads, lr, momentum=0.9, weight_decay=1e-6, eta=1e-3, plain=()):
    """ACL's optimizer/lars.py step, in NumPy float64; `plain` names get no weight decay and no trust ratio."""
    w, buf = {k: v.copy() for k, v in w0.items()}, {k: np.zeros_like(v) for k, v in w0.items()}
    for g in grads:
        for k in w:
            wd = 0.0 if k in plain else weight_decay
            w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(g[k])
            local = eta * w_norm / (g_norm + wd * w_norm)
            if k in plain or w_norm < 1e-15 or g_norm < 1e-15:
                local = 1.0
            buf[k] = momentum * buf[k] + local * lr * (g[k] + wd * w[k])
            w[k] = w[k] - buf[k]
    return w


def _variables():
    return {k: keras.Variable(v.astype(np.float32), name=k.split("/")[1], dtype="float32") for k, v in W0.items()}


def _apply(opt, variables, grads):
    names = list(variables)
    for g in grads:
        opt.apply_gradients([(tf.constant(g[k], tf.float32), variables[k]) for k in names])


def _paths(variables):
    # keras.Variable(name=...) paths are the bare names: match on them as the model's full paths would be matched.
    return {k: v.path for k, v in variables.items()}


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_equal_acls_formula(steps):
    variables = _variables()
    opt = LARS(learning_rate=5.0, weight_decay_rate=1e-2)  # a visible weight decay
    _apply(opt, variables, GRADS[:steps])
    expected = acl_lars(W0, GRADS[:steps], lr=5.0, weight_decay=1e-2)
    for k, v in variables.items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-5, atol=1e-7)
    # The zero bias has ‖w‖ = 0: trust ratio 1, so it moved by the full learning rate.
    assert np.abs(variables["dense/bias"].numpy()).max() > 0.1


def test_excluded_variables_get_plain_momentum_sgd():
    variables, sgd_variables = _variables(), _variables()
    paths = _paths(variables)
    opt = LARS(
        learning_rate=0.1,
        weight_decay_rate=1e-2,
        exclude_from_weight_decay=[paths["bn/gamma"], paths["dense/bias"]],
        exclude_from_layer_adaptation=[paths["bn/gamma"], paths["dense/bias"]],
    )
    _apply(opt, variables, GRADS)
    expected = acl_lars(W0, GRADS, lr=0.1, weight_decay=1e-2, plain=("bn/gamma", "dense/bias"))
    for k, v in variables.items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-5, atol=1e-7)
    sgd = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)  # Keras' own momentum SGD, for the plain ones
    _apply(sgd, sgd_variables, GRADS)
    for k in ("bn/gamma", "dense/bias"):
        np.testing.assert_allclose(variables[k].numpy(), sgd_variables[k].numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(variables["dense/kernel"].numpy(), sgd_variables["dense/kernel"].numpy())


def test_momentum_slots_survive_a_checkpoint(tmp_path):
    variables = _variables()
    opt = LARS(learning_rate=1.0)
    _apply(opt, variables, GRADS[:2])
    path = tf.train.Checkpoint(optimizer=opt, **{k.replace("/", "_"): v for k, v in variables.items()}).write(
        str(tmp_path / "ckpt")
    )
    restored_vars = _variables()
    restored = LARS(learning_rate=1.0)
    restored.build(list(restored_vars.values()))
    tf.train.Checkpoint(optimizer=restored, **{k.replace("/", "_"): v for k, v in restored_vars.items()}).read(
        path
    ).assert_consumed()
    for a, b in zip(opt.momentums, restored.momentums, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert np.abs(a.numpy()).max() > 0
    _apply(opt, variables, GRADS[2:])
    _apply(restored, restored_vars, GRADS[2:])
    for k in variables:
        np.testing.assert_array_equal(variables[k].numpy(), restored_vars[k].numpy())


def test_config_round_trips_and_bad_arguments_are_refused():
    opt = LARS(learning_rate=2.0, momentum=0.8, weight_decay_rate=1e-4, exclude_from_weight_decay=["bn"])
    again = LARS.from_config(opt.get_config())
    assert (again.momentum, again.weight_decay_rate, again.trust_coefficient) == (0.8, 1e-4, 1e-3)
    assert again.exclude_from_weight_decay_patterns == ("bn",)
    with pytest.raises(ValueError, match="momentum"):
        LARS(momentum=1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(trust_coefficient=0.0)


def test_under_two_replicas_the_trust_ratio_sees_the_summed_gradient(mirrored_strategy):
    """Each replica contributes half of every gradient; apply_gradients sums them before the norms are taken."""
    with mirrored_strategy.scope():
        variables = _variables()
        opt = LARS(learning_rate=5.0, weight_decay_rate=1e-2)
        opt.build(list(variables.values()))
    names = list(variables)

    def step(halves):  # the halves become constants inside each replica (the gradients every replica computes)
        replica = lambda: opt.apply_gradients([(tf.constant(halves[k]), variables[k]) for k in names])  # noqa: E731
        tf.function(lambda: mirrored_strategy.run(replica))()

    for g in GRADS:
        step({k: (g[k] / 2).astype(np.float32) for k in names})
    expected = acl_lars(W0, GRADS, lr=5.0, weight_decay=1e-2)
    for k, v in variables.items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-5, atol=1e-7)
