"""The ensemble: the diversity term h, the joint attack, the λ = 0 reduction, training under MirroredStrategy, and
the binary's bad-input behaviour (a pretraining run's resume, export and logs: tests/test_resume.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from pretrain_binary import assert_usage_error, pretrain_command

from advss_tf.attacks import diversity
from advss_tf.attacks.pgd import pgd_linf
from advss_tf.config import AttackConfig, OptimizerConfig, PretrainConfig, RuntimeConfig
from advss_tf.data import pipeline
from advss_tf.models.backbones import BackboneConfig
from advss_tf.tasks.ensemble import ENSEMBLE_TASKS
from advss_tf.tasks.table import AUGMENTATION, build_task
from advss_tf.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 8 / 255


def _config(model_dir="/tmp/unused", steps=4, attack_steps=1, weight=0.1, **runtime):
    return PretrainConfig(
        task="ensemble",
        model_dir=str(model_dir),
        backbone=BackboneConfig("tiny"),
        batch_size=8,
        train_steps=steps,
        attack=AttackConfig(steps=attack_steps),
        optimizer=OptimizerConfig(learning_rate=0.01, nesterov=True, weight_decay=1e-4, warmup_steps=0),
        selfie_layers=1,
        selfie_heads=2,
        selfie_ff_dim=32,
        diversity_weight=weight,
        runtime=RuntimeConfig(
            **{"steps_per_loop": 1, "checkpoint_every": 2, "image_summary_every": 2, "quiet": True, **runtime}
        ),
    )


# -- h -----------------------------------------------------------------------------------------------------------------
def _numpy_h(grads):
    cols = []
    for g in grads:
        flat = g.reshape(g.shape[0], -1).astype(np.float64)
        cols.append(flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-10))
    G = np.stack(cols, axis=2)
    gram = np.einsum("bnk,bnl->bkl", G, G) + 1e-5 * np.eye(3)
    return np.mean([np.log(np.linalg.det(m)) for m in gram])


def test_h_matches_numpy_on_a_hand_made_batch():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 2, 2, 3))
    # Example 0 near-parallel, 1 orthogonal-ish, 2 and 3 random; different scales must not matter.
    grads = [base * 5.0, base + 0.01 * rng.normal(size=base.shape), rng.normal(size=base.shape) * 1e-3]
    grads[1][1] = np.eye(12)[0].reshape(2, 2, 3)
    grads[0][1], grads[2][1] = np.eye(12)[1].reshape(2, 2, 3), np.eye(12)[2].reshape(2, 2, 3)
    h = diversity.diversity([tf.constant(g, tf.float32) for g in grads])
    np.testing.assert_allclose(float(h), _numpy_h(grads), rtol=1e-4)


def test_h_is_about_zero_for_orthogonal_gradients_and_very_negative_for_parallel_ones():
    eye = np.eye(6, dtype=np.float32)
    orthogonal = [tf.constant(eye[k].reshape(1, 2, 3) * (k + 1)) for k in range(3)]
    parallel = [tf.constant(eye[0].reshape(1, 2, 3) * s) for s in (1.0, 2.0, 0.5)]
    h_orth = float(diversity.diversity(orthogonal))
    h_par = float(diversity.diversity(parallel))
    assert abs(h_orth) < 1e-4
    assert h_par < -20.0  # log(3e-10) ≈ -21.9
    rng = np.random.default_rng(1)
    for _ in range(5):  # anything else lies in between (Hadamard's inequality)
        h = float(diversity.diversity([tf.constant(rng.normal(size=(2, 2, 3)), tf.float32) for _ in range(3)]))
        assert h_par < h <= 1e-4


@pytest.fixture(scope="module")
def tiny_ensemble(sample_arrays):
    x, y, _, _ = sample_arrays
    keras.utils.set_random_seed(2)
    task = build_task(_config())
    model = task.build_model()
    data = pipeline.train_dataset(
        x[:64], y[:64], global_batch_size=4, seed=3, transform=task.transform, **AUGMENTATION["ensemble"]
    )
    return task, model, next(iter(data))


def _heads(task, model, batch, training=False):
    return [lambda x, f=f, loss=loss: loss(f(x)) for f, loss, _ in task._heads(model, batch, training)]


def test_h_has_finite_nonzero_gradients_wrt_each_input_and_the_weights(tiny_ensemble):
    task, model, batch = tiny_ensemble
    inputs = task._inputs(batch)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(inputs)
        _, grads = diversity.input_gradients(_heads(task, model, batch), inputs)
        h = diversity.diversity(grads)
    assert -22.0 < float(h) <= 1e-4
    for g in outer.gradient(h, inputs):
        g = g.numpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    trunk_grads = outer.gradient(h, model.trunk.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in trunk_grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in trunk_grads) > 0


# -- attack and objective ----------------------------------------------------------------------------------------------
def test_one_joint_pgd_step_moves_each_input_within_its_ball(tiny_ensemble):
    task, model, batch = tiny_ensemble
    adv = task.craft(model, batch, batch["noise_seed"][0], False)
    assert set(adv) == set(ENSEMBLE_TASKS)
    for name, clean in zip(ENSEMBLE_TASKS, task._inputs(batch), strict=True):
        delta = (adv[name] - clean).numpy()
        assert np.abs(delta).max() <= EPS + 1e-6 and np.abs(delta).max() > 0.5 * EPS, name
        assert adv[name].numpy().min() >= 0.0 and adv[name].numpy().max() <= 1.0


def test_zero_diversity_weight_is_exactly_three_independent_attacks_and_the_plain_objective(tiny_ensemble):
    task, model, batch = tiny_ensemble
    plain = build_task(
        PretrainConfig(**{**_config().__dict__, "diversity_weight": 0.0, "attack": AttackConfig(steps=2)})
    )
    assert "diversity_h" not in plain.metric_names(True) and "diversity_h" in task.metric_names(True)

    seed = batch["noise_seed"][0]
    joint = plain.craft(model, batch, seed, False)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    for k, (loss_fn, x) in enumerate(zip(_heads(plain, model, batch), plain._inputs(batch), strict=True)):
        alone = pgd_linf(
            lambda z: z,
            x,
            None,
            eps=EPS,
            step_size=2 / 255,
            steps=2,
            seed=seeds[k],
            loss_fn=lambda _, z, f=loss_fn: f(z),
        )
        np.testing.assert_allclose(joint[ENSEMBLE_TASKS[k]], alone, atol=1e-6)

    loss, metrics = plain.losses(model, batch, joint)
    six = sum(metrics[f"{t}_{kind}_loss"] for t in ENSEMBLE_TASKS for kind in ("clean", "adv")) / 6.0
    np.testing.assert_allclose(loss, six, rtol=1e-6)
    # With λ > 0 the only difference is + λ·h_b, h_b on the same adversarial inputs.
    loss_h, metrics_h = task.losses(model, batch, joint)
    six_h = sum(metrics_h[f"{t}_{kind}_loss"] for t in ENSEMBLE_TASKS for kind in ("clean", "adv")) / 6.0
    np.testing.assert_allclose(loss_h - task.weight * metrics_h["diversity_h"], six_h, rtol=1e-5, atol=1e-5)
    assert np.all(metrics_h["diversity_h"].numpy() < 0)


@pytest.mark.slow
def test_loss_decreases_over_a_short_run_mirrored_on_two_cpus(tiny_ensemble, mirrored_strategy):
    """30 adversarial steps of the whole objective (three tasks, joint PGD, the diversity term's double backprop) on
    one batch, as MirroredStrategy runs them over two CPU replicas: the loss falls. (A pretraining run of the ensemble,
    its export and its logs: tests/test_resume.py, which resumes one.)"""
    task, _, batch = tiny_ensemble
    keras.utils.set_random_seed(4)
    with mirrored_strategy.scope():
        model = task.build_model()
        optimizer = keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True)
        optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(
        mirrored_strategy,
        task,
        model,
        optimizer,
        global_batch_size=4,
        weight_decay=1e-4,
        adversarial=True,
        attack_bn_train=True,
    )
    it = iter(mirrored_strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    first = trainer.train(it, 3)
    trainer.train(it, 24)
    last = trainer.train(it, 3)
    assert np.isfinite(list(last.values())).all()
    assert {"diversity_h", "selfie_adv_accuracy", "rotation_clean_loss", "jigsaw_adv_loss"} <= set(last)
    assert last["loss"] < first["loss"] - 0.5, (first, last)


# -- the binary --------------------------------------------------------------------------------------------------------
TINY_ENSEMBLE = [
    "--backbone=tiny", "--batch_size=8", "--train_steps=4", "--attack_steps=1", "--selfie_layers=1",
    "--selfie_heads=2", "--selfie_ff_dim=32", "--steps_per_loop=1", "--checkpoint_every=2",
    "--image_summary_every=100", "--quiet",
]  # fmt: skip


@pytest.mark.parametrize(
    "bad, message",
    [("--diversity_weight=-0.1", "--diversity_weight must be >= 0"), ("--selfie_heads=5", "does not divide")],
)
def test_binary_rejects_bad_ensemble_settings_with_one_line(tmp_path, bad, message):
    assert_usage_error(pretrain_command("ensemble", tmp_path / "run", *TINY_ENSEMBLE, bad), tmp_path / "run", message)
