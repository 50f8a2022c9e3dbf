"""The PyTorch twins of our pre-activation ResNets (advss_tf.peer.torch_resnet) and WideResNets
(advss_tf.peer.torch_wide_resnet): same size, same logits."""

import numpy as np
import pytest
from conftest import import_torch

from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier

torch = import_torch()
pytestmark = pytest.mark.peer


def _keras_classifier(name: str, num_classes: int, seed: int = 0, arch_version: int = 2) -> ImageClassifier:
    """Our classifier with BatchNorm scales, shifts and statistics moved off their initial 1/0 values."""
    import keras

    keras.utils.set_random_seed(seed)
    model = ImageClassifier(BackboneConfig(name, arch_version=arch_version), num_classes)
    rng = np.random.default_rng(seed)
    for layer in [*model.trunk.layers, *model.stage4.layers]:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
    return model


@pytest.mark.parametrize("name", ["tiny", "micro", "resnet18", "resnet50v2"])
def test_same_parameter_count(name):
    from advss_tf.peer import torch_resnet

    keras_model = ImageClassifier(BackboneConfig(name), 10)
    assert torch_resnet.parameter_count(torch_resnet.build_torch_classifier(name, 10)) == keras_model.count_params()


@pytest.mark.parametrize(
    "name, size, arch_version",
    [("tiny", 32, 2), ("tiny", 8, 2), ("micro", 32, 2), ("resnet18", 32, 2), ("resnet50v2", 32, 2), ("tiny", 32, 1)],
)
def test_logits_agree_after_copying(name, size, arch_version):
    from advss_tf.peer import torch_resnet

    keras_model = _keras_classifier(name, 10, arch_version=arch_version)
    net = torch_resnet.build_torch_classifier(BackboneConfig(name, arch_version=arch_version), 10)
    torch_resnet.copy_keras_weights(keras_model, net)
    assert_same_logits(keras_model, net, size)


def assert_same_logits(keras_model, net, size: int) -> None:
    """Both models' logits on the same random images, in eval and in train mode."""
    images = np.random.default_rng(1).uniform(0, 1, (4, size, size, 3)).astype(np.float32)
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    for training in (False, True):  # eval: moving statistics; train: batch statistics (what PGD crafting runs)
        net.train(training)
        with torch.no_grad():
            theirs = net(nchw).numpy()
        ours = np.asarray(keras_model(images, training=training))
        scale = np.abs(ours).max()
        np.testing.assert_allclose(theirs, ours, atol=2e-4 * scale, rtol=0)


def test_channels_last_gives_the_same_logits():
    from advss_tf.peer import torch_resnet

    net = torch_resnet.build_torch_classifier("tiny", 10).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(images)
        got = net.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_copy_refuses_a_different_architecture():
    from advss_tf.peer import torch_resnet

    with pytest.raises(ValueError, match="layers differ|shape mismatch"):
        torch_resnet.copy_keras_weights(
            ImageClassifier(BackboneConfig("tiny"), 10), torch_resnet.build_torch_classifier("resnet18", 10)
        )


# -- WideResNets (advss_tf.peer.torch_wide_resnet) -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["wrn10_2", "wrn28_10"])
def test_wide_resnet_twin_has_the_same_parameter_count(name):
    from advss_tf.peer import torch_wide_resnet

    keras_model = ImageClassifier(BackboneConfig(name), 10)
    net = torch_wide_resnet.build_torch_classifier(name, 10)
    assert torch_wide_resnet.parameter_count(net) == keras_model.count_params()


@pytest.mark.parametrize("size", [32, 8])
def test_wide_resnet_logits_agree_after_copying(size):
    from advss_tf.peer import torch_wide_resnet

    keras_model = _keras_classifier("wrn10_2", 10)
    net = torch_wide_resnet.build_torch_classifier("wrn10_2", 10)
    torch_wide_resnet.copy_keras_weights(keras_model, net)
    assert_same_logits(keras_model, net, size)


def test_each_twin_takes_only_its_own_family():
    from advss_tf.peer import torch_resnet, torch_wide_resnet

    with pytest.raises(ValueError, match="layers differ"):  # a ResNet's layers into a WRN twin
        torch_wide_resnet.copy_keras_weights(
            ImageClassifier(BackboneConfig("tiny"), 10), torch_wide_resnet.build_torch_classifier("wrn10_2", 10)
        )
    with pytest.raises(ValueError, match="torch_wide_resnet"):
        torch_resnet.build_torch_classifier("wrn10_2", 10)
    with pytest.raises(ValueError, match="not a WideResNet"):
        torch_wide_resnet.build_torch_classifier("tiny", 10)
