"""WideResNets (advss_tf/models/wide_resnet.py): the literature's sizes, the trunk / stage-4 split, every task and
fine-tuning mode on the small one, and a pretraining export restored into a classifier."""

import dataclasses
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_finetune import pretrain_export, values  # the export `pretraining.run` writes, BN statistics moved
from test_tasks import tiny_config

from advss_tf.config import CONTRASTIVE_TASKS
from advss_tf.models import wide_resnet
from advss_tf.models.backbones import BACKBONES, BackboneConfig, build_stage4, build_trunk
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.layers import MEAN, STD, ImageNormalization
from advss_tf.tasks import table
from advss_tf.tasks.finetune import MODES, trainable_variables
from advss_tf.training import finetuning

WIDE = sorted(name for name, spec in BACKBONES.items() if spec.block == wide_resnet.BLOCK)
SMALL = "wrn10_2"


def test_the_table_has_the_literatures_wrns_and_each_entry_is_its_name():
    assert {"wrn28_10", "wrn34_10", SMALL} <= set(WIDE)
    for name in WIDE:  # WRN-d-k: (d - 4) / 6 blocks in each of three stages of 16k, 32k, 64k channels
        depth, widen = map(int, re.fullmatch(r"wrn(\d+)_(\d+)", name).groups())
        spec = BACKBONES[name]
        assert spec.blocks == ((depth - 4) // 6,) * 3 and spec.planes == (16 * widen, 32 * widen, 64 * widen)
        assert spec.stem == 16


def expected_weights(spec) -> tuple[int, int]:
    """(trainable, BatchNorm moving statistics) of a WRN classifier with a 10-way Dense, counted from the design."""
    trainable, moving, channels = 3 * 3 * 3 * spec.stem, 0, spec.stem
    for blocks, width, stride in zip(spec.blocks, spec.planes, wide_resnet.STAGE_STRIDES):
        for i in range(blocks):
            projection = (i == 0 and stride != 1) or channels != width
            trainable += 2 * channels + 9 * channels * width + 2 * width + 9 * width * width
            trainable += channels * width if projection else 0
            moving += 2 * channels + 2 * width
            channels = width
    return trainable + 2 * channels + 10 * channels + 10, moving + 2 * channels


@pytest.mark.parametrize("name", ["wrn28_10", SMALL])
def test_classifier_sizes(name):
    """Built, not run (WRN-34-10 is WRN-28-10 one block deeper per stage: the table test covers it). The trainable
    count is the field's (RobustBench's WRN-28-10: 36,479,194); Keras' count_params adds the BN moving statistics."""
    cfg = BackboneConfig(name)
    model = ImageClassifier(cfg, 10)
    trainable, moving = expected_weights(cfg.spec)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == trainable
    assert model.count_params() == trainable + moving
    assert (cfg.trunk_channels, cfg.feature_dim) == (cfg.spec.planes[1], cfg.spec.planes[2])
    if name == "wrn28_10":
        assert trainable == 36_479_194


def test_trunk_is_stages_1_2_and_stage4_is_stage_3_with_the_final_bn_relu():
    cfg = BackboneConfig(SMALL)
    trunk, stage4 = build_trunk(cfg), build_stage4(cfg)
    features = trunk(tf.zeros([2, 32, 32, 3]))
    assert features.shape == (2, 16, 16, cfg.trunk_channels)
    assert stage4(features).shape == (2, 8, 8, cfg.feature_dim)
    assert trunk(tf.zeros([5, 8, 8, 3])).shape == (5, 4, 4, cfg.trunk_channels)  # Selfie's 8x8 patches
    normalize = trunk.layers[1]  # inside the model, as the ResNets: images stay in [0, 1]
    assert isinstance(normalize, ImageNormalization) and (normalize.mean, normalize.std) == (MEAN, STD)
    names = [layer.name for layer in trunk.layers]
    assert "stem_conv" in names and not any(n.startswith("stem_bn") for n in names)  # no BN/ReLU after the stem
    assert {n.split("_")[0] for n in names if n.startswith("stage")} == {"stage1", "stage2"}
    assert all(layer.name.startswith("stage3_") for layer in stage4.layers[1:-2])
    assert [layer.name for layer in stage4.layers[-2:]] == ["final_bn", "final_relu"]
    assert (stage4(features, training=False).numpy() >= 0).all()  # ends in the ReLU
    # Strided 3x3 convs pad 1 on every side: an explicit ZeroPadding2D, then "valid".
    pads = [layer for layer in [*trunk.layers, *stage4.layers] if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert [p.name for p in pads] == ["stage2_block1_conv1_pad", "stage3_block1_conv1_pad"]
    assert all(p.padding == ((1, 1), (1, 1)) for p in pads)


@pytest.mark.parametrize("task_name", sorted(set(table.TASKS) - set(CONTRASTIVE_TASKS)))
def test_every_pretraining_task_builds_and_runs_on_a_wrn(task_name):
    task = table.build_task(dataclasses.replace(tiny_config(task_name), backbone=BackboneConfig(SMALL)))
    model = task.build_model()
    cfg = BackboneConfig(SMALL)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[0, 1])
    outputs = model(images, training=False)
    outputs = outputs if isinstance(outputs, dict) else {task_name: outputs}
    shapes = {"rotation": (2, 4), "jigsaw": (2, 31), "selfie": (2, 4, 4)}
    for name, out in outputs.items():
        assert out.shape == shapes[name] and np.isfinite(out.numpy()).all(), name
    pooled = cfg.trunk_channels if task_name in ("selfie", "ensemble") else cfg.feature_dim  # trunk / stage 4
    assert model.features(images).shape[-1] == pooled
    assert set(task.export_parts(model)) >= {"trunk"}


@pytest.mark.parametrize("task_name", CONTRASTIVE_TASKS)
def test_the_contrastive_tasks_train_a_step_on_a_wrn(task_name):
    """ACL/DynACL on a WRN: its BatchNorms doubled per route, its convolutions shared (backbones.build_routed)."""
    task = table.build_task(dataclasses.replace(tiny_config(task_name), backbone=BackboneConfig(SMALL), batch_size=4))
    keras.utils.set_random_seed(0)
    model = task.build_model()
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[0, 2])
    batch = task.transform(images, tf.zeros([4], tf.int32), tf.constant([0, 3], tf.int64))
    adv = task.craft(model, batch, tf.constant([1, 2], tf.int64), False)
    variables = task.trained_variables(model)
    before = values(variables)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(task.losses(model, batch, adv)[0])
    gradients = tape.gradient(loss, variables)
    # Both routes' losses reach every trained variable: the shared convolutions and each route's BatchNorms.
    assert np.isfinite(loss.numpy()) and all(g is not None for g in gradients)
    keras.optimizers.SGD(0.1).apply_gradients(zip(gradients, variables))
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True))
    exported = task.export_signatures(model)
    for name in ("features", "features_clean"):
        assert exported[name](images)["features"].shape == (4, BackboneConfig(SMALL).feature_dim)


def test_finetuning_modes_train_what_they_say_on_a_wrn():
    model = ImageClassifier(BackboneConfig(SMALL), 10)
    ids = {part: {id(v) for v in getattr(model, part).trainable_variables} for part in ("trunk", "stage4", "head")}
    expected = {"linear": ("head",), "partial": ("stage4", "head"), "full": ("trunk", "stage4", "head")}
    assert set(expected) == set(MODES)
    for mode, parts in expected.items():
        assert {id(v) for v in trainable_variables(model, mode)} == set().union(*(ids[p] for p in parts)), mode


def test_a_pretraining_export_restores_into_a_classifier(tmp_path):
    """A WRN Rotation export (written as `pretraining.run` writes it, every variable moved off its initial value):
    fine-tuning takes the backbone from it and restores trunk and stage 4 exactly; the new head stays new."""
    pre = pretrain_export(tmp_path / "pretrain", backbone=SMALL)
    cfg, info = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=str(tmp_path / "pretrain"), mode="linear")
    )
    assert cfg.backbone == BackboneConfig(SMALL)
    assert (info["trunk_channels"], info["feature_dim"]) == (cfg.backbone.trunk_channels, cfg.backbone.feature_dim)
    keras.utils.set_random_seed(3)
    model = ImageClassifier(cfg.backbone, 10)
    head_before = values(model.head.variables)
    assert finetuning.restore_pretrained(cfg.pretrained, info, model) == ["stage4", "trunk"]
    for part in ("trunk", "stage4"):
        mine, theirs = getattr(model, part).variables, getattr(pre, part).variables
        assert len(mine) == len(theirs) > 0
        for a, b in zip(values(mine), values(theirs)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(values(model.head.variables), head_before):
        np.testing.assert_array_equal(a, b)
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[2, 3])
    np.testing.assert_array_equal(model.features(images).numpy(), pre.features(images).numpy())  # same mode
