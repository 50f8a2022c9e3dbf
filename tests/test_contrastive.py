"""The contrastive tasks (tasks/contrastive.py: --task=acl, --task=dynacl, AIR): their losses on known inputs, the
BatchNorm routes each view goes through, DynACL's schedules and momentum key, and the binary's smoke run killed with
-9, resumed bitwise, exported and fine-tuned from on both routes."""

import dataclasses
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import run_command
from test_resume import assert_same_checkpoints
from test_sigkill import _kill_at, _latest

from advss_tf import export
from advss_tf.attacks.air import invariance_regularisers
from advss_tf.attacks.nt_xent import nt_xent
from advss_tf.config import AttackConfig, ContrastiveConfig, PretrainConfig
from advss_tf.models import post_resnet
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.contrastive import MomentumEncoders
from advss_tf.models.post_resnet import ADVERSARIAL, CLEAN
from advss_tf.tasks import contrastive
from advss_tf.tasks.table import build_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(task="acl", **contrastive_kw) -> PretrainConfig:
    return PretrainConfig(
        task=task,
        model_dir="unused",
        backbone=BackboneConfig("tiny_post"),
        batch_size=4,
        epochs=1000,
        attack=AttackConfig(steps=1, bn="eval"),
        contrastive=ContrastiveConfig(**contrastive_kw),
    )


def _images(n=4, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32))


def _moving(model, route):
    return [v.numpy().copy() for v in model.weights if f"_{route}/moving_" in v.path]


def _moved(before, after):
    return [not np.array_equal(b, a) for b, a in zip(before, after, strict=True)]


# -- losses on known inputs -----------------------------------------------------------------------------------------
def test_acl_loss_is_the_mean_of_the_clean_and_adversarial_nt_xent():
    task = build_task(_config())
    keras.utils.set_random_seed(0)
    model = task.build_model()
    batch = task.transform(_images(), tf.zeros([4], tf.int32), tf.constant([0, 1], tf.int64))
    adv = (batch["view1"] * 0.9, batch["view2"] * 0.9)
    loss, metrics = task.losses(model, batch, adv)
    # Train mode normalises with the batch's statistics, so the same calls give the same projections again.
    z_adv = model(tf.concat(adv, 0), training=True, route=ADVERSARIAL)
    z = model(tf.concat([batch["view1"], batch["view2"]], 0), training=True, route=CLEAN)
    expected = (nt_xent(z[:4], z[4:]) + nt_xent(z_adv[:4], z_adv[4:])) / 2
    np.testing.assert_allclose(tf.reduce_mean(loss).numpy(), expected.numpy(), rtol=1e-5)
    assert sorted(metrics) == ["adv_loss", "adv_weight", "clean_loss", "loss", "strength"]


def test_air_regularisers_are_kl_divergences_over_the_batch_with_log_probabilities():
    rng = np.random.default_rng(1)
    z = [tf.constant(rng.normal(size=(5, 8)).astype(np.float32)) for _ in range(5)]
    sir, air = invariance_regularisers(*z, temperature=0.5)

    def diag(a, b):
        a, b = a.numpy(), b.numpy()
        return (a / np.linalg.norm(a, axis=1, keepdims=True) * (b / np.linalg.norm(b, axis=1, keepdims=True))).sum(
            1
        ) / 0.5

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    z1, z2, zo, a1, a2 = z
    p, q = softmax(diag(z1, zo)), softmax(diag(z2, zo))
    np.testing.assert_allclose(sir.numpy().sum(), (q * np.log(q / p)).sum(), rtol=1e-4)
    p2 = softmax(diag(a1, zo)) * softmax(diag(a1, z1))
    q2 = softmax(diag(a2, zo)) * softmax(diag(a2, z2))
    np.testing.assert_allclose(air.numpy().sum(), (q2 * np.log(q2 / p2)).sum(), rtol=1e-4)
    # AIR's code's Σ Q (log Q − P) (probabilities where kl_div takes log-probabilities) is another number.
    assert abs((q * (np.log(q) - p)).sum() - sir.numpy().sum()) > 1e-3


# -- routes ---------------------------------------------------------------------------------------------------------
def test_the_attack_moves_no_statistics_and_adversarial_views_move_only_the_adversarial_route():
    task = build_task(_config())
    keras.utils.set_random_seed(2)
    model = task.build_model()
    batch = task.transform(_images(8), tf.zeros([8], tf.int32), tf.constant([0, 3], tf.int64))
    clean0, adv0 = _moving(model, CLEAN), _moving(model, ADVERSARIAL)
    a1, a2 = task.craft(model, batch, tf.constant([1, 2], tf.int64), False)  # inference mode, ACL's attack
    assert not any(_moved(clean0, _moving(model, CLEAN)) + _moved(adv0, _moving(model, ADVERSARIAL)))
    assert float(tf.reduce_max(tf.abs(a1 - batch["view1"]))) <= 8 / 255 + 1e-6
    task._pair(model, a1, a2, True, ADVERSARIAL)
    assert all(_moved(adv0, _moving(model, ADVERSARIAL))) and not any(_moved(clean0, _moving(model, CLEAN)))
    task._pair(model, batch["view1"], batch["view2"], True, CLEAN)
    assert all(_moved(clean0, _moving(model, CLEAN)))


def test_dynacl_sends_view_one_through_the_query_two_through_the_key_and_moves_the_key_by_momentum():
    task = build_task(_config("dynacl", dynacl_encoder_momentum=0.5))
    keras.utils.set_random_seed(3)
    model = task.build_model()
    assert isinstance(model, MomentumEncoders)
    assert task.trained_variables(model) == model.query.trainable_variables
    for v in model.query.trainable_variables:  # the query moved away from the key (a trained step)
        v.assign(v + 0.25)
    key0 = [v.numpy().copy() for v in model.key.trainable_variables]
    query = [v.numpy().copy() for v in model.query.trainable_variables]
    batch = task.transform(_images(), tf.zeros([4], tf.int32), tf.constant([0, 4], tf.int64))
    task.losses(model, batch, (batch["view1"], batch["view2"]))
    for k0, q, k in zip(key0, query, model.key.trainable_variables, strict=True):
        np.testing.assert_allclose(k.numpy(), 0.5 * k0 + 0.5 * q, rtol=1e-6, atol=1e-7)


# -- DynACL's schedules -----------------------------------------------------------------------------------------------
def _their_loop(epochs: int, period: int, swap_param: float) -> dict[int, tuple[float, float]]:
    """DynACL's train_DynACL.py:216-219 and :288, as written: epoch → (strength, adversarial weight)."""
    out, strength = {}, None
    for epoch in range(1, epochs + 1):
        if epoch % period == 1 or period == 1:
            strength = 1 - (epoch - 1) / epochs
        out[epoch] = (strength, min(1.0 + (epoch // period) * (period / epochs) * swap_param, 2))
    return out


@pytest.mark.parametrize("epochs, period", [(1000, 50), (12, 1), (10, 3)])
def test_dynacl_schedules_equal_their_code_at_every_epoch(epochs, period):
    theirs = _their_loop(epochs, period, 2 / 3)
    e = np.arange(1, epochs + 1, dtype=np.float32)
    strength = contrastive.dynacl_strength(e, epochs, period).numpy()
    weight = contrastive.dynacl_adversarial_weight(e, epochs, period, 2 / 3).numpy()
    np.testing.assert_allclose(strength, [theirs[i][0] for i in range(1, epochs + 1)], atol=1e-6)
    np.testing.assert_allclose(weight, [theirs[i][1] for i in range(1, epochs + 1)], atol=1e-6)


def test_the_batch_carries_the_epochs_strength_and_loss_weights():
    task = build_task(dataclasses.replace(_config("dynacl", dynacl_period=50), epochs=1000))
    theirs = _their_loop(1000, 50, 2 / 3)
    for epoch in (1, 50, 51, 100, 101, 1000):
        batch = task.step_transform(_images(2), None, tf.constant([0, 5], tf.int64), (epoch - 1) * 10 + 3, 10)
        strength, w = theirs[epoch]
        np.testing.assert_allclose(batch["strength"].numpy(), strength, atol=1e-6)
        np.testing.assert_allclose(batch["adv_weight"].numpy(), w / 2, atol=1e-6)
        np.testing.assert_allclose(batch["clean_weight"].numpy(), (2 - w) / 2, atol=1e-6)
    air = build_task(_config("dynacl", air=True))  # AIR's DynACL: w = λ(1 − s), (1 − w)·clean + (1 + w)·adv
    batch = air.step_transform(_images(2), None, tf.constant([0, 5], tf.int64), 500 * 10, 10)
    w = 2 / 3 * (1 - theirs[501][0])
    np.testing.assert_allclose([batch["clean_weight"][0], batch["adv_weight"][0]], [1 - w, 1 + w], atol=1e-6)
    assert not isinstance(air.build_model(), MomentumEncoders) and air.interpolation == "bicubic"


# -- the binary: kill -9, resume, export, fine-tune on both routes ----------------------------------------------------
SMOKE = os.path.join(REPO, "flags", "smoke", "pretrain_acl.flags")
FAST = [
    "--train_steps=6",
    "--batch_size=16",
    "--steps_per_loop=1",
    "--checkpoint_every=2",
    "--deterministic",
    "--quiet",
]


def _finetune(pretrained, model_dir, *flags):
    command = [sys.executable, "-m", "advss_tf.finetune", f"--pretrained={pretrained}", f"--model_dir={model_dir}"]
    command += ["--dataset=sample", "--batch_size=16", "--train_steps=1", "--val_examples=16", "--quiet", *flags]
    command += ["--attack_steps=1", "--val_attack_steps=1", "--val_batch_size=16"]
    return run_command(command)


def test_acl_smoke_run_killed_resumes_bitwise_exports_both_routes_and_finetunes(tmp_path):
    straight, killed, marker = tmp_path / "straight", tmp_path / "killed", tmp_path / "paused"
    base = [sys.executable, "-m", "advss_tf.pretrain", f"--flagfile={SMOKE}", *FAST]
    done = run_command([*base, f"--model_dir={straight}"])
    assert done.returncode == 0, done.stderr[-2000:]
    command = [*base, f"--model_dir={killed}"]
    _kill_at("train@3", command, REPO, marker)  # step 3 trained, not saved
    assert _latest(killed) == "ckpt-2"
    done = run_command(command)
    assert done.returncode == 0, done.stderr[-2000:]
    assert assert_same_checkpoints(straight, killed)["step/.ATTRIBUTES/VARIABLE_VALUE"] == 6

    exported = killed / "export" / "pretrain"
    info = export.read_info(str(exported))
    assert info["routes"] == ["clean", "adversarial"] and info["signature_routes"]["features"] == "adversarial"
    loaded = tf.saved_model.load(str(exported))
    x = _images(2)
    features = {name: loaded.signatures[name](images=x)["features"].numpy() for name in ("features", "features_clean")}
    assert not np.allclose(features["features"], features["features_clean"])  # the routes' statistics differ

    # The binary fine-tunes from the adversarial route by default (the clean route through the binary:
    # tests/test_contrastive_backbones.py, tests/test_import_acl.py; each route restored into the classifier: the
    # next test).
    done = _finetune(exported, tmp_path / "ft")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "its adversarial BatchNorm route" in done.stderr
    refused = _finetune(
        os.path.join(REPO, "tests", "data", "pretrain_jigsaw_tiny_0548f65"), tmp_path / "x", "--pretrained_route=clean"
    )
    assert refused.returncode == 2 and "has one BatchNorm route" in refused.stderr.strip().splitlines()[-1]


def test_finetuning_restores_the_chosen_routes_batchnorm_into_the_one_route_classifier(tmp_path):
    keras.utils.set_random_seed(4)
    net = post_resnet.DualBNResNet(BackboneConfig("tiny_post").spec)
    for v in net.weights:  # distinct statistics per route
        v.assign(tf.random.uniform(v.shape, 0.5, 1.5))
    path = str(tmp_path / "export")
    export.save(path, net.checkpoint_items, {"features": lambda x: {"features": net.features(x)}}, info={})
    from advss_tf.training.finetuning import restore_pretrained

    x = _images(2)
    for route in ("clean", "adversarial"):
        classifier = ImageClassifier(BackboneConfig("tiny_post"), 10)
        info = {"parts": ["trunk", "stage4", "projection"], "routes": ["clean", "adversarial"]}
        restore_pretrained(path, info, classifier, route)
        np.testing.assert_allclose(classifier.features(x).numpy(), net.features(x, route=route).numpy(), rtol=1e-5)
