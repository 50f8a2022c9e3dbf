"""Backbones: the paper's sizes, the trunk/stage-4 split, config round-trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf.errors import UsageError
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.resnet import BackboneConfig, ImageNormalization, build_stage4, build_trunk


@pytest.mark.parametrize(
    "name, params, trunk_channels, features",
    [("resnet18", 11_178_186, 256, 512), ("resnet50v2", 23_550_666, 1024, 2048), ("tiny", 308_922, 64, 128)],
)
def test_classifier_sizes(name, params, trunk_channels, features):
    cfg = BackboneConfig(name)
    model = ImageClassifier(cfg, 10)
    assert model.count_params() == params
    assert cfg.trunk_channels == trunk_channels and cfg.feature_dim == features


def test_trunk_is_8x8_at_stage3_and_takes_patches():
    cfg = BackboneConfig("tiny")
    trunk, stage4 = build_trunk(cfg), build_stage4(cfg)
    assert trunk(tf.zeros([2, 32, 32, 3])).shape == (2, 8, 8, 64)
    assert stage4(trunk(tf.zeros([2, 32, 32, 3]))).shape == (2, 4, 4, 128)
    assert trunk(tf.zeros([5, 8, 8, 3])).shape == (5, 2, 2, 64)  # Selfie encodes 8x8 patches


def test_heads_share_one_trunk_object():
    cfg = BackboneConfig("tiny")
    trunk = build_trunk(cfg)
    rot, jig = (
        ImageClassifier(cfg, 4, trunk=trunk, head_name="rotation"),
        ImageClassifier(cfg, 31, trunk=trunk, head_name="jigsaw"),
    )
    assert rot.trunk is jig.trunk and rot.stage4 is not jig.stage4


def test_normalization_is_inside_the_model_and_round_trips():
    layer = ImageNormalization()
    x = tf.fill([1, 2, 2, 3], 0.485)
    np.testing.assert_allclose(layer(x)[0, 0, 0, 0], 0.0, atol=1e-6)
    clone = ImageNormalization.from_config(layer.get_config())
    assert clone.mean == layer.mean and clone.std == layer.std


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UsageError, match="resnet18"):
        BackboneConfig("vgg16")


def test_sync_bn_flag_reaches_batchnorm():
    trunk = build_trunk(BackboneConfig("tiny", sync_bn=True))
    bns = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.synchronized for bn in bns)
