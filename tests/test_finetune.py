"""Fine-tuning: restore fidelity, frozen parts, objectives, the classifier export, resume, and the binary's errors."""

import json
import os
import signal
import sys
import time

import binaries
import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf import export, serving
from advss_tf.attacks.pgd import pgd_linf
from advss_tf.config import FINETUNE_OPTIMIZER, AttackConfig, PretrainConfig, to_dict
from advss_tf.data import pipeline
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.tasks.finetune import FROZEN_PARTS, FinetuneTask, kl_divergence, trainable_variables
from advss_tf.tasks.table import build_task
from advss_tf.training import finetuning, loop, validation
from advss_tf.training.strategy import make_strategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def values(variables) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in variables]


def pretrain_export(path, backbone="tiny", parts=None, seed=0, task_name="rotation"):
    """A pretraining export written the way `pretraining.run` writes it, with non-trivial BN statistics.

    `parts` restricts a Rotation export to some parts (e.g. only the trunk); Selfie and ensemble exports hold
    their task's own parts (a trunk and no `stage4`).
    """
    keras.utils.set_random_seed(seed)
    cfg = PretrainConfig(
        task=task_name,
        model_dir=str(path),
        backbone=BackboneConfig(backbone),
        selfie_layers=1,
        selfie_heads=4,
        selfie_ff_dim=32,
    )
    task = build_task(cfg)
    model = task.build_model()
    rng = np.random.default_rng(seed)
    for v in model.variables:  # fresh BN moving statistics are all 0/1: make "exactly restored" mean something
        if "float" in str(v.dtype):
            v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.1 + v.numpy())
    all_parts = task.export_parts(model)
    signatures = task.export_signatures(model)
    info = task.export_info()
    if parts is not None:
        all_parts = {k: all_parts[k] for k in parts}
        info["parts"] = list(parts)
        if "stage4" not in parts:  # a trunk-only export: its signature may touch the trunk only
            signatures = {"features": lambda im: {"features": tf.reduce_mean(model.trunk(im, training=False), [1, 2])}}
    export.save(
        str(path),
        all_parts,
        signatures,
        info={
            **info,
            "format": "advss_tf.pretrain",
            "backbone": to_dict(cfg.backbone),
            "feature_dim": cfg.backbone.feature_dim,
            "trunk_channels": cfg.backbone.trunk_channels,
        },
        assets=task.export_assets(),
    )
    return model


# -- restore ---------------------------------------------------------------------------------------------------------
def test_restore_is_exact_for_trunk_and_stage4_and_leaves_the_head_new(tmp_path):
    pre = pretrain_export(tmp_path / "pretrain")
    cfg, info = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"))
    )
    assert cfg.backbone == BackboneConfig("tiny")  # taken from the export
    synced, _ = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir="x", pretrained=str(tmp_path / "pretrain"), sync_bn=True)
    )
    assert synced.backbone == BackboneConfig("tiny", sync_bn=True)
    keras.utils.set_random_seed(1)
    model = ImageClassifier(cfg.backbone, 10)
    head_before = values(model.head.variables)
    assert not np.array_equal(values(model.trunk.variables)[0], values(pre.trunk.variables)[0])
    restored = finetuning.restore_pretrained(cfg.pretrained, info, model)
    assert restored == ["stage4", "trunk"]
    for part in ("trunk", "stage4"):
        mine, theirs = getattr(model, part).variables, getattr(pre, part).variables
        assert len(mine) == len(theirs) > 0
        for a, b in zip(values(mine), values(theirs)):
            np.testing.assert_array_equal(a, b)
    assert model.head.kernel.shape == (cfg.backbone.feature_dim, 10)
    for a, b in zip(values(model.head.variables), head_before):
        np.testing.assert_array_equal(a, b)


def test_trunk_only_export_restores_the_trunk_and_keeps_stage4_random(tmp_path):
    pre = pretrain_export(tmp_path / "pretrain", parts=("trunk",))
    cfg, info = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"))
    )
    model = ImageClassifier(cfg.backbone, 10)
    stage4_before = values(model.stage4.variables)
    assert finetuning.restore_pretrained(cfg.pretrained, info, model) == ["trunk"]
    for a, b in zip(values(model.trunk.variables), values(pre.trunk.variables)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(values(model.stage4.variables), stage4_before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("task_name", ["selfie", "ensemble"])
def test_selfie_and_ensemble_exports_give_their_shared_trunk(task_name, tmp_path):
    pre = pretrain_export(tmp_path / "pretrain", task_name=task_name)
    cfg, info = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"))
    )
    model = ImageClassifier(cfg.backbone, 10)
    assert finetuning.restore_pretrained(cfg.pretrained, info, model) == ["trunk"]
    assert len(model.trunk.variables) == len(pre.trunk.variables)
    for a, b in zip(values(model.trunk.variables), values(pre.trunk.variables)):
        np.testing.assert_array_equal(a, b)


def test_export_of_another_architecture_is_refused(tmp_path):
    # Same code path, other widths: the classifier is "tiny" but the variables are "micro"'s (half the widths).
    pretrain_export(tmp_path / "pretrain", backbone="micro")
    info = finetuning.read_pretrained_info(str(tmp_path / "pretrain"))
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    with pytest.raises(UsageError, match="cannot restore"):
        finetuning.restore_pretrained(str(tmp_path / "pretrain"), info, model)
    with pytest.raises(UsageError, match="pretrained with micro"):
        finetuning.resolve_backbone(
            finetuning.FinetuneConfig(
                model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"), backbone=BackboneConfig("tiny")
            )
        )


def test_linear_mode_refuses_an_export_without_stage4(tmp_path):
    pretrain_export(tmp_path / "pretrain", parts=("trunk",))
    cfg = finetuning.FinetuneConfig(
        model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"), mode="linear"
    )
    with pytest.raises(UsageError, match="no stage 4"):
        finetuning.run(cfg)
    assert not os.path.exists(tmp_path / "ft")  # refused before anything was written


# -- frozen parts ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, strategy_name", [("linear", "default"), ("partial", "mirrored")])
def test_frozen_parts_stay_bit_identical_including_bn_statistics(mode, strategy_name, sample_arrays):
    strategy = make_strategy("mirrored", 2) if strategy_name == "mirrored" else tf.distribute.get_strategy()
    x, y, _, _ = sample_arrays
    with strategy.scope():
        model = ImageClassifier(BackboneConfig("tiny"), 10)
        model.frozen_parts = frozenset(FROZEN_PARTS[mode])
        task = FinetuneTask("adversarial", AttackConfig(steps=2))
        variables = trainable_variables(model, mode)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(variables)
    frozen = [v for part in FROZEN_PARTS[mode] for v in getattr(model, part).variables]
    training = [
        v
        for part in ("trunk", "stage4", "head")
        if part not in FROZEN_PARTS[mode]
        for v in getattr(model, part).variables
    ]
    assert {id(v) for v in variables} == {id(v) for v in training if v.trainable}
    trainer = loop.Trainer(
        strategy,
        task,
        model,
        optimizer,
        global_batch_size=16,
        weight_decay=3e-4,
        adversarial=True,
        attack_bn_train=True,  # the attack runs the model in training mode: frozen BN must still not move
        trainable_variables=variables,
    )
    ds = pipeline.train_dataset(x[:64], y[:64], global_batch_size=16, seed=0, transform=task.transform)
    frozen_before, training_before = values(frozen), values(training)
    metrics = trainer.train(iter(strategy.experimental_distribute_dataset(ds)), 2)
    assert set(metrics) == {"loss", "adv_loss", "adv_accuracy"}
    assert any("moving" in v.path for v in frozen)
    for v, before in zip(frozen, frozen_before):
        np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)
    moved = [v.path for v, before in zip(training, training_before) if not np.array_equal(v.numpy(), before)]
    assert "head_dense/kernel" in " ".join(moved)
    if mode == "partial":  # stage 4 trains in training mode: its BN statistics move
        assert any("stage4" in p and "moving_mean" in p for p in moved), moved


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(UsageError, match="linear, partial, full"):
        trainable_variables(ImageClassifier(BackboneConfig("tiny"), 10), "half")


# -- objectives ------------------------------------------------------------------------------------------------------
def test_kl_divergence_is_zero_for_equal_logits_and_matches_the_formula():
    clean = tf.constant([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    adv = tf.constant([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(kl_divergence(clean, clean).numpy(), [0.0, 0.0], atol=1e-6)
    p, q = tf.nn.softmax(clean).numpy(), tf.nn.softmax(adv).numpy()
    np.testing.assert_allclose(kl_divergence(clean, adv).numpy(), (p * np.log(p / q)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize(
    "objective, aux, names",
    [
        ("standard", 0.0, {"loss", "accuracy"}),
        ("trades", 0.0, {"loss", "clean_loss", "kl", "clean_accuracy", "adv_accuracy"}),
        ("adversarial", 0.5, {"loss", "adv_loss", "adv_accuracy", "rotation_loss", "rotation_accuracy"}),
    ],
)
def test_objectives_give_per_example_losses_and_bounded_attacks(objective, aux, names):
    keras.utils.set_random_seed(0)
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    task = FinetuneTask(objective, AttackConfig(steps=2), trades_beta=6.0, aux_rotation_weight=aux, feature_dim=128)
    x = tf.random.stateless_uniform([4, 32, 32, 3], seed=[0, 1])
    batch = {"inputs": x, "labels": tf.constant([0, 1, 2, 3])}
    adv = task.craft(model, batch, tf.constant([1, 2], tf.int64), False) if task.adversarial else None
    if adv is not None:
        expected_rows = 20 if aux else 4  # rotation aux: the 4 images + their 4 rotations each
        assert adv.shape[0] == expected_rows
        clean_rows = task._aux_inputs(x) if aux else x
        assert float(tf.reduce_max(tf.abs(adv - clean_rows))) <= 8 / 255 + 1e-6
        assert float(tf.reduce_max(tf.abs(adv - clean_rows))) > 0
    loss, metrics = task.losses(model, batch, adv)
    assert loss.shape == (4,)
    assert set(metrics) == names == set(task.metric_names(task.adversarial))
    assert all(m.shape == (4,) for m in metrics.values())
    if objective == "trades":
        np.testing.assert_allclose(loss, metrics["clean_loss"] + 6.0 * metrics["kl"], rtol=1e-5)
    if aux:
        np.testing.assert_allclose(loss, metrics["adv_loss"] + 0.5 * metrics["rotation_loss"], rtol=1e-5)
        assert len(task.extra_variables()) == 2


def test_rotation_aux_attack_targets_the_rotation_loss():
    """With the classification loss switched off, the attack still moves the rotated copies (and only those)."""
    keras.utils.set_random_seed(0)
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    task = FinetuneTask("adversarial", AttackConfig(steps=2), aux_rotation_weight=0.5, feature_dim=128)
    x = tf.random.stateless_uniform([2, 32, 32, 3], minval=0.3, maxval=0.7, seed=[0, 1])
    inputs = task._aux_inputs(x)
    loss_rot_only = lambda t, o: task._aux_attack_loss(t, o) * tf.concat([tf.zeros(2), tf.ones(8)], 0)  # noqa: E731
    labels = (tf.constant([0, 1]), tf.repeat(tf.range(4), 2))
    adv = pgd_linf(
        lambda z: task._aux_outputs(model, z, False),
        inputs,
        labels,
        eps=8 / 255,
        step_size=2 / 255,
        steps=2,
        random_start=False,
        loss_fn=loss_rot_only,
    )
    delta = tf.reduce_max(tf.abs(adv - inputs), axis=[1, 2, 3]).numpy()
    assert np.all(delta[:2] == 0) and np.all(delta[2:] > 0)


def test_bad_objective_settings_are_usage_errors():
    with pytest.raises(UsageError, match="valid: standard, adversarial, trades"):
        FinetuneTask("mart", AttackConfig())
    with pytest.raises(UsageError, match="trades_beta"):
        finetuning.FinetuneConfig(model_dir="x", objective="trades", trades_beta=-1.0)
    with pytest.raises(UsageError, match="needs --pretrained"):
        finetuning.FinetuneConfig(model_dir="x", mode="partial")


# -- export ----------------------------------------------------------------------------------------------------------
def test_classifier_export_attacks_like_the_keras_model(tmp_path, trained_classifier):
    model, images, labels = trained_classifier
    x, y = tf.constant(images[:64]), tf.constant(labels[:64])
    path = str(tmp_path / "clf")
    validation.export_classifier(path, model, {"backbone": {"name": model.backbone.name}, "num_classes": 10})
    assert export.read_info(path)["format"] == serving.CLASSIFIER_FORMAT
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    out = serve(images=x)
    np.testing.assert_allclose(out["logits"], model(x, training=False), atol=1e-4)
    np.testing.assert_allclose(tf.reduce_sum(out["probabilities"], -1), 1.0, atol=1e-5)
    as_uint8 = tf.constant(np.round(images[:8] * 255).astype(np.uint8))
    np.testing.assert_allclose(
        loaded.signatures["serving_uint8"](images=as_uint8)["logits"],
        serve(images=tf.cast(as_uint8, tf.float32) / 255.0)["logits"],
        atol=1e-5,
    )

    def robust_accuracy(model_fn):
        adv = pgd_linf(model_fn, x, y, eps=8 / 255, step_size=2 / 255, steps=5, seed=tf.constant([3, 4], tf.int64))
        return float(tf.reduce_mean(tf.cast(tf.argmax(model_fn(adv), -1, output_type=tf.int32) == y, tf.float32)))

    clean = float(tf.reduce_mean(tf.cast(tf.argmax(model(x), -1, output_type=tf.int32) == y, tf.float32)))
    keras_ra = robust_accuracy(lambda z: model(z, training=False))
    loaded_ra = robust_accuracy(lambda z: serve(images=z)["logits"])
    _, logits_fn = serving.logits_function(path)
    assert clean > 0.8 and keras_ra < clean  # the attack does something to this undefended model
    assert loaded_ra == pytest.approx(keras_ra, abs=1 / 64)
    assert robust_accuracy(logits_fn) == pytest.approx(keras_ra, abs=1 / 64)


def test_validator_agrees_across_strategies_on_an_uneven_last_batch(trained_classifier):
    """5 images in batches of 4 over 2 replicas: one replica gets an empty slice of the last batch."""
    model, images, labels = trained_classifier
    x, y = (images[:5] * 255).round().astype(np.uint8), labels[:5]
    results = []
    for strategy in (tf.distribute.get_strategy(), make_strategy("mirrored", 2)):
        validator = validation.Validator(
            strategy, model, x, y, batch_size=4, attack=AttackConfig(steps=2), steps=2, seed=0, quiet=True
        )
        results.append(validator())
    assert results[0]["clean_accuracy"] == pytest.approx(results[1]["clean_accuracy"])
    assert 0 <= results[0]["robust_accuracy"] <= results[0]["clean_accuracy"]
    # random starts differ per replica slice, so robust accuracy may differ by an image at most
    assert results[0]["robust_accuracy"] == pytest.approx(results[1]["robust_accuracy"], abs=1 / 5 + 1e-9)


# -- a whole run: validation, exports, resume --------------------------------------------------------------------------
def small_config(model_dir, **overrides) -> finetuning.FinetuneConfig:
    from advss_tf.config import RuntimeConfig

    base = dict(
        model_dir=str(model_dir),
        backbone=BackboneConfig("tiny"),
        batch_size=16,
        train_fraction=0.05,  # 68 of the sample's 1,350 training images: 4 steps per epoch
        epochs=2,
        attack=AttackConfig(steps=1),
        val_attack_steps=2,
        val_examples=32,
        val_batch_size=16,
        optimizer=dataclass_replace(FINETUNE_OPTIMIZER, warmup_steps=2, boundaries_epochs=(1,)),
        runtime=RuntimeConfig(steps_per_loop=2, checkpoint_every=100, quiet=True),
    )
    return finetuning.FinetuneConfig(**{**base, **overrides})


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_run_validates_every_epoch_exports_and_resumes_after_sigterm_in_validation(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "run")
    calls = []
    original = validation.Validator.__call__

    def sigterm_on_second(self, should_stop=None):
        calls.append(1)
        if len(calls) == 2:  # SIGTERM arrives during the second validation
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, should_stop)

    monkeypatch.setattr(validation.Validator, "__call__", sigterm_on_second)
    with pytest.raises(loop.Interrupted, match="stopped by signal 15 at step 8"):
        finetuning.run(cfg)
    history = json.load(open(tmp_path / "run/export/validation_history.json"))
    assert [h["step"] for h in history] == [4]
    assert tf.train.latest_checkpoint(str(tmp_path / "run/checkpoints")).endswith("ckpt-8")
    monkeypatch.setattr(validation.Validator, "__call__", original)

    results = finetuning.run(cfg)  # the same command again: resumes at step 8, validates only what is missing
    assert results["train_steps_this_session"] == 0
    assert [h["step"] for h in results["history"]] == [4, 8]
    assert results["epochs"] == 2 and results["steps"] == 8
    for name in ("best_ra", "best_sa", "last"):
        info = export.read_info(results["exports"][name])
        assert info["format"] == "advss_tf.classifier" and info["num_classes"] == 10
    assert export.read_info(results["exports"]["last"])["validation"]["step"] == 8
    assert export.read_info(results["exports"]["best_sa"])["selected_by"] == "clean_accuracy"
    assert export.read_info(results["exports"]["best_ra"])["selected_by"] == "robust_accuracy"
    best = results["best_robust_accuracy"]
    assert best["robust_accuracy"] == max(h["robust_accuracy"] for h in results["history"])
    assert 0.0 <= results["last"]["robust_accuracy"] <= results["last"]["clean_accuracy"] + 1 / 32 + 1e-9
    assert os.path.exists(tmp_path / "run/results.json")
    assert os.listdir(tmp_path / "run/tensorboard/validation")


# -- the binary --------------------------------------------------------------------------------------------------------
def run_binary(*args, timeout=300):
    return binaries.run_binary("advss_tf.finetune", *args, timeout=timeout)


@pytest.fixture(scope="module")
def foreign_savedmodels(tmp_path_factory):
    """A plain SavedModel (no advss info) and a classifier export (not a pretraining one)."""
    root = tmp_path_factory.mktemp("foreign")
    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(root / "plain"))
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    validation.export_classifier(str(root / "classifier"), model, {"num_classes": 10})
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pretrained={root}/nowhere"], "does not exist"),
        (["--pretrained={root}/plain"], "not an advss_tf export"),
        (["--pretrained={root}/classifier"], "not a pretraining export"),
        (["--mode=half"], "--mode"),
        (["--objective=mart"], "--objective"),
        (["--objective=trades", "--trades_beta=-1"], "--trades_beta must be >= 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, foreign_savedmodels, tmp_path):
    proc = run_binary(*[a.format(root=foreign_savedmodels) for a in args], f"--model_dir={tmp_path}/run", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_smoke_pipeline_pretrain_finetune_export_reload_predict(tmp_path, sample_arrays):
    pre = binaries.run_binary(
        "advss_tf.pretrain",
        "--flagfile=flags/smoke/pretrain_rotation.flags",
        "--train_steps=2",
        "--batch_size=16",
        "--attack_steps=1",
        "--steps_per_loop=2",
        f"--model_dir={tmp_path}/pre",
        "--quiet",
        timeout=600,
    )
    assert pre.returncode == 0, pre.stderr[-2000:]
    proc = run_binary(
        "--flagfile=flags/smoke/finetune.flags",
        f"--pretrained={tmp_path}/pre/export/pretrain",
        "--train_steps=4",
        "--batch_size=16",
        "--val_examples=32",
        "--val_batch_size=16",
        f"--model_dir={tmp_path}/ft",
        "--quiet",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fine-tuning done" in proc.stdout
    results = json.load(open(tmp_path / "ft/results.json"))
    assert results["pretrained"].endswith("export/pretrain") and results["steps"] == 4
    _, _, xt, yt = sample_arrays
    loaded = tf.saved_model.load(results["exports"]["best_ra"])
    out = loaded.signatures["serving_uint8"](images=tf.constant(xt[:16]))
    assert out["logits"].shape == (16, 10) and out["probabilities"].shape == (16, 10)
    assert np.all(np.isfinite(out["logits"].numpy()))
    info = export.read_info(results["exports"]["best_ra"])
    assert info["pretrained"]["task"] == "rotation" and info["backbone"]["name"] == "tiny"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    model_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "advss_tf.finetune",
        "--backbone=tiny",  # no --pretrained: the end-to-end baseline
        "--batch_size=16",
        "--train_steps=200",
        "--attack_steps=1",
        "--steps_per_loop=1",
        "--checkpoint_every=2",
        f"--model_dir={model_dir}",
        "--quiet",
    ]
    proc = binaries.PipedProcess(cmd)
    deadline = time.time() + 300
    while time.time() < deadline and not (model_dir / "checkpoints" / "ckpt-2.index").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "checkpoint saved" in err.strip().splitlines()[-1]
    assert not (model_dir / "results.json").exists()
