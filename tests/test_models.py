"""Backbones: the paper's sizes, the trunk/stage-4 split, config round-trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig, build_stage4, build_trunk
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.layers import ImageNormalization


# Parameters + BatchNorm statistics of the reference's models (version 2) and of the pre-issue-18 ones (version 1,
# without the shortcut BatchNorms: 4 vectors per projection shortcut fewer).
@pytest.mark.parametrize(
    "name, arch_version, params, trunk_channels, features",
    [
        ("resnet18", 2, 11_181_770, 256, 512),
        ("resnet50v2", 2, 23_566_026, 1024, 2048),
        ("tiny", 2, 309_818, 64, 128),
        ("micro", 2, 78_498, 32, 64),
        ("resnet18", 1, 11_178_186, 256, 512),
    ],
)
def test_classifier_sizes(name, arch_version, params, trunk_channels, features):
    cfg = BackboneConfig(name, arch_version=arch_version)
    model = ImageClassifier(cfg, 10)
    assert model.count_params() == params
    assert cfg.trunk_channels == trunk_channels and cfg.feature_dim == features


def test_architecture_version_defaults_to_the_reference_and_old_entries_read_as_1():
    assert BackboneConfig("tiny").arch_version == 2
    assert BackboneConfig.from_dict({"name": "tiny", "sync_bn": False}).arch_version == 1
    assert BackboneConfig.from_dict({"name": "tiny", "arch_version": 2}) == BackboneConfig("tiny")
    assert not BackboneConfig.from_dict({"name": "tiny", "arch_version": 2, "stem_norm": False}).stem_norm
    with pytest.raises(UsageError, match="architecture version 3"):
        BackboneConfig("tiny", arch_version=3)


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
