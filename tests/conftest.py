"""Test set-up: two logical CPU devices (for MirroredStrategy tests) before TensorFlow initialises, no network."""

import contextlib
import fcntl
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import advss_tf  # noqa: E402,F401  (imports TensorFlow quietly)
from advss_tf.training.strategy import configure_cpu_devices  # noqa: E402

configure_cpu_devices(2)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def import_torch():
    """torch for the peer tests (skipped without it), on one intra-op thread. With its default of one OpenMP thread
    per core, every small op ends at a spinning barrier that waits for the thread the other pytest process is
    using: on the 2-core machine under `-n 2`, torchattacks' standard AutoAttack in the peer test took 259 s with
    2 threads and 12 s with 1 (AMD EPYC, 2026-12-03, the same 200 images)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def assert_logged(model_dir, *prefixes: str) -> None:
    """The run's TensorBoard train log (`<model_dir>/tensorboard/train/events*`) has a tag starting with each of
    `prefixes`."""
    import glob

    import tensorflow as tf

    tags = set()
    for f in glob.glob(os.path.join(str(model_dir), "tensorboard", "train", "events*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            tags |= {v.tag for v in event.summary.value}
    for prefix in prefixes:
        assert any(t.startswith(prefix) for t in tags), (prefix, tags)


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


@pytest.fixture
def deterministic_ops():
    """What --deterministic does, for this test only."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was:
        tf_config.disable_op_determinism()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end paths (CI still runs them once)")
    config.addinivalue_line("markers", "peer: needs torch (installed by .ci/run)")


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on `path` (flock), so that one pytest process builds a shared artefact and the others wait."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A directory shared by every pytest process of this run (pytest-xdist workers included), for artefacts that
    are built once per run: the first process to need one builds it under a lock, the others read it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: workers' temps are siblings
    path = root / "shared_artefacts"
    path.mkdir(exist_ok=True)
    return path


# The attack fixture's backbone: tiny's block at half its widths (backbones.BACKBONES). The attack-strength tests run
# it tens of thousands of times (Square alone ~76k image-forwards), so its width is most of their time.
FIXTURE_BACKBONE = "micro"


def fit_trained_classifier(images, labels):
    """The fixture model of `trained_classifier`, fitted: a micro pre-activation ResNet, Adam 2e-3, 40 epochs of 64
    on `images` (float32 [256, 32, 32, 3] in [0, 1]) and `labels`, seed 0. About half a minute on the 2-core CPU."""
    import keras

    model = _trained_classifier_model(images)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, batch_size=64, epochs=40, verbose=0)
    return model


def _trained_classifier_model(images):
    import keras

    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.classifier import ImageClassifier

    keras.utils.set_random_seed(0)
    model = ImageClassifier(BackboneConfig(FIXTURE_BACKBONE), 10)
    model(images[:1], training=False)  # build, so that saved weights can be loaded
    return model


def trained_classifier_data(sample_arrays):
    """The fixture's images and labels: the first 256 training images of the bundled sample."""
    import numpy as np

    x, y, _, _ = sample_arrays
    return x[:256].astype(np.float32) / 255.0, y[:256].astype(np.int32)


def committed_weights_path() -> str:
    """tests/data's fitted weights of `trained_classifier`, named by the block definition they were fitted with
    (a new ARCH_VERSION finds no file and fits anew; tests/make_trained_classifier.py writes it)."""
    from advss_tf.models.backbones import ARCH_VERSION

    return os.path.join(REPO, "tests", "data", f"trained_classifier_{FIXTURE_BACKBONE}_v{ARCH_VERSION}.npz")


def save_weights_npz(model, path) -> None:
    """The model's weights (get_weights order) as arrays w0, w1, ... in an .npz (no pickle, no optimizer state),
    whole or absent: a process killed mid-write leaves no file."""
    import numpy as np

    partial = f"{path}.partial.npz"
    np.savez(partial, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    os.replace(partial, path)


def load_weights_npz(model, path) -> None:
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        model.set_weights([f[f"w{i}"] for i in range(len(f.files))])


@pytest.fixture(scope="session")
def trained_classifier(sample_arrays, shared_dir):
    """A micro pre-activation ResNet (FIXTURE_BACKBONE) fitted to 256 real training images (undefended), and
    those images.

    Returns (model, images float32 [256,32,32,3] in [0,1], labels int32 [256]); clean accuracy on them is high,
    which is what attack-strength tests need (an attack must drive it to ~0%). The weights are fitted once and
    committed (tests/data, `committed_weights_path`; the same model on every machine, and half a minute of CPU
    saved per run); where no file matches the current block definition, they are fitted once per test run: the
    first process saves them and the others (pytest-xdist workers) load them, bit for bit.
    """
    images, labels = trained_classifier_data(sample_arrays)
    weights = committed_weights_path()
    if not os.path.exists(weights):
        weights = shared_dir / "trained_classifier.npz"
        with _locked(shared_dir / "trained_classifier.lock"):
            if not weights.exists():
                save_weights_npz(fit_trained_classifier(images, labels), weights)
    model = _trained_classifier_model(images)
    load_weights_npz(model, weights)
    return model, images, labels


# The files that take longest, longest first (from `--durations` of CI runs): CI runs the suite in two processes,
# each file in one of them (.ci/run: -n 2 --dist loadfile --no-loadscope-reorder), and files are handed out in
# collection order, so starting the long ones first keeps one process from running a long file alone at the end.
# Only the order changes; a file missing here runs after these, in its usual place.
LONGEST_FIRST = (  # ~seconds per file, idle Xeon, 2026-12-07: the slow tests' --durations summed per file
    "test_resume.py",  # ~140
    "test_multi_worker.py",  # ~115
    "test_study_e2e.py",  # ~90
    "test_ensemble.py",  # ~65
    "test_training.py",  # ~60
    "test_contrastive.py",  # ~55
    "test_attacks.py",  # ~42
    "test_autoattack_attacks.py",  # ~40
    "test_resume_finetune.py",  # ~35
    "test_sigkill.py",  # ~33
    "test_finetune.py",  # ~32
    "test_dataset_runs.py",  # ~30
    "test_worst_case.py",  # ~29
    "test_peer_autoattack.py",  # ~28
    "test_autoattack_api.py",  # ~27
    "test_import_acl.py",  # ~25
    "test_contrastive_backbones.py",  # ~21
    "test_pseudo_labels.py",  # ~21
    "test_cli_defaults.py",  # ~18
    "test_import_reference.py",  # ~17
    "test_autoattack_l2.py",  # ~16
    "test_selfie.py",  # ~15
    "test_pretrain_cli.py",  # ~14
    "test_evaluate.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: in-file order kept
