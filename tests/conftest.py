"""Test set-up: two logical CPU devices (for MirroredStrategy tests) before TensorFlow initialises, no network."""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import advss_tf  # noqa: E402,F401  (imports TensorFlow quietly)
from advss_tf.training.strategy import configure_cpu_devices  # noqa: E402

configure_cpu_devices(2)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def sample_arrays():
    """Real CIFAR-10 images from the bundled sample: (train images, train labels, test images, test labels)."""
    from advss_tf.data import cifar10

    x, y = cifar10.load_arrays(cifar10.DataSource(), "train")
    xt, yt = cifar10.load_arrays(cifar10.DataSource(), "test")
    return x, y, xt, yt


@pytest.fixture(scope="session")
def mirrored_strategy():
    """MirroredStrategy over the two logical CPU devices; share this one: see advss_tf.training.strategy."""
    from advss_tf.training.strategy import make_strategy

    strategy = make_strategy("mirrored", 2)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end paths (CI still runs them once)")
    config.addinivalue_line("markers", "peer: needs torch (installed by .ci/run)")


@pytest.fixture(scope="session")
def trained_classifier(sample_arrays):
    """A tiny pre-activation ResNet fitted to 256 real training images (undefended), and those images.

    Returns (model, images float32 [256,32,32,3] in [0,1], labels int32 [256]); clean accuracy on them is high,
    which is what attack-strength tests need (an attack must drive it to ~0%).
    """
    import keras
    import numpy as np

    from advss_tf.models.classifier import ImageClassifier
    from advss_tf.models.resnet import BackboneConfig

    x, y, _, _ = sample_arrays
    images = x[:256].astype(np.float32) / 255.0
    labels = y[:256].astype(np.int32)
    keras.utils.set_random_seed(0)
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, batch_size=64, epochs=40, verbose=0)
    return model, images, labels
