"""DynACL++'s recipe on the fine-tuning side: k-means pseudo-labels on an export's clean route, the linear probe on
them, the adversarial full fine-tuning that continues its head, and the zero-initialised head of the RobustSSL
protocols."""

import json
import os
import types

import binaries
import numpy as np
import pytest
import tensorflow as tf
from test_finetune import small_config

from advss_tf import export
from advss_tf.config import AttackConfig
from advss_tf.data import datasets, pipeline
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import finetuning, pseudo_labels, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JIGSAW_EXPORT = os.path.join(REPO, "tests", "data", "pretrain_jigsaw_tiny_0548f65")  # trunk, stage4, head (31)


def test_the_clean_route_is_read_when_the_export_has_one():
    both = types.SimpleNamespace(signatures={"features": None, "features_clean": None})
    assert pseudo_labels.feature_route(both) == "features_clean"
    assert pseudo_labels.feature_route(types.SimpleNamespace(signatures={"features": None})) == "features"
    with pytest.raises(UsageError, match="no features signature"):
        pseudo_labels.feature_route(types.SimpleNamespace(signatures={"serving_default": None}))


def test_export_features_come_from_features_clean_of_a_two_route_export(tmp_path):
    path = str(tmp_path / "two_routes")
    export.save(
        path,
        {},
        {
            "features": lambda im: {"features": tf.reduce_mean(im, [1, 2])},
            "features_clean": lambda im: {"features": tf.reduce_max(im, [1, 2])},
        },
        info={"format": "advss_tf.pretrain"},
    )
    images = np.random.default_rng(0).integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    features, route = pseudo_labels.export_features(path, images, batch_size=3)  # 3 batches, the last one short
    assert route == "features_clean"
    np.testing.assert_allclose(features, images.max(axis=(1, 2)) / 255.0, rtol=1e-6)


def test_kmeans_labels_recover_separated_blobs_and_follow_the_seed():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 40)
    points = centres[truth] + rng.normal(scale=0.3, size=(120, 2))
    labels = pseudo_labels.kmeans_labels(points, 3, seed=0)
    assert labels.dtype == np.int32 and labels.shape == (120,)
    # one cluster per blob, up to the naming of the clusters
    assert {(t, lab) for t, lab in zip(truth, labels)} == {(t, labels[truth == t][0]) for t in range(3)}
    assert len(set(labels)) == 3
    np.testing.assert_array_equal(labels, pseudo_labels.kmeans_labels(points, 3, seed=0))
    with pytest.raises(UsageError, match="at least 3 images"):
        pseudo_labels.kmeans_labels(points[:2], 3, seed=0)


def test_labels_of_an_export_without_them_or_of_other_data_are_refused(tmp_path):
    with pytest.raises(UsageError, match="holds no pseudo-labels"):
        pseudo_labels.read_labels(JIGSAW_EXPORT, 10)
    path = str(tmp_path / "labelled")
    export.save(path, {}, {"features": lambda im: {"features": im}}, info={}, assets=pseudo_labels.labels_asset([1, 0]))
    np.testing.assert_array_equal(pseudo_labels.read_labels(path, 2), [1, 0])
    with pytest.raises(UsageError, match="not one label >= 0 for each of the 3"):
        pseudo_labels.read_labels(path, 3)


def test_zero_head_init_and_config_checks(tmp_path):
    cfg = small_config(tmp_path / "zeros", head_init="zeros")
    info = datasets.DatasetInfo("cifar10", 10, (32, 32, 3))
    model = finetuning.FinetuneRun().build(cfg, info).model
    assert all(not np.any(v.numpy()) for v in model.head.variables)
    assert np.any(model.trunk.variables[0].numpy())  # only the head
    for bad, message in [
        (dict(head_init="ones"), "unknown head_init"),
        (dict(restore_head=True), "give --pretrained"),
        (dict(pseudo_labels="kmeans"), "give --pretrained"),
        (dict(pseudo_labels="file.npy", pretrained="x"), "unknown pseudo_labels"),
        (dict(kmeans_clusters=1), "--kmeans_clusters must be >= 2"),
    ]:
        with pytest.raises(UsageError, match=message):
            small_config(tmp_path / "bad", **bad)


def test_linear_probe_on_kmeans_labels_then_aft_from_its_head_then_a_protocol_from_the_result(tmp_path):
    """LP (kmeans on the export's features) → AFT (--pseudo_labels=pretrained, --restore_head) → SLF-style run."""
    tiny = dict(train_steps=2, val_examples=16, attack=AttackConfig(steps=1), val_attack_steps=1, kmeans_clusters=4)
    lp_cfg = small_config(
        tmp_path / "lp", pretrained=JIGSAW_EXPORT, mode="linear", objective="standard", pseudo_labels="kmeans", **tiny
    )
    lp = finetuning.run(lp_cfg)

    # The labels are k-means of the export's features of the whole training split, in its own order.
    split = datasets.load(lp_cfg.data, lp_cfg.data.train_split)
    loaded = tf.saved_model.load(JIGSAW_EXPORT)
    features = loaded.signatures["features"](images=pipeline.to_float(tf.constant(split.images)))["features"]
    expected = pseudo_labels.kmeans_labels(features.numpy(), 4, seed=lp_cfg.seed)
    lp_export = lp["pseudo_labels"]["export"]
    np.testing.assert_array_equal(pseudo_labels.read_labels(lp_export, len(split.images)), expected)
    lp_info = export.read_info(lp_export)
    assert lp_info["format"] == "advss_tf.pretrain" and lp_info["task"] == "jigsaw"
    assert lp_info["post_processing"][0]["pseudo_labels"]["route"] == "features"
    assert lp["data"]["num_classes"] == 4

    # A linear probe leaves the encoder as it was: the trunk equals the original export's.
    backbone = BackboneConfig.from_dict(lp_info["backbone"])  # the fixture's tiny, of its own block version
    probe = ImageClassifier(backbone, 4)
    finetuning.restore_pretrained(lp_export, lp_info, probe, head=True)
    original = ImageClassifier(backbone, 4)
    finetuning.restore_pretrained(JIGSAW_EXPORT, export.read_info(JIGSAW_EXPORT), original)
    for a, b in zip(probe.trunk.variables, original.trunk.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    last = tf.saved_model.load(lp["exports"]["last"])
    x = pipeline.to_float(tf.constant(split.images[:4]))
    np.testing.assert_allclose(probe(x).numpy(), last.signatures["serving_default"](images=x)["logits"], atol=1e-5)

    # The AFT starts from the probe's head (built by the run kind, restored before any step) on the same labels.
    aft_cfg = small_config(
        tmp_path / "aft",
        pretrained=lp_export,
        mode="full",
        objective="trades",
        pseudo_labels="pretrained",
        restore_head=True,
        head_init="zeros",
        **tiny,
    )
    kind = finetuning.FinetuneRun()
    aft_cfg = kind.resolve(aft_cfg)
    data = kind.check_data(aft_cfg, runs.load_training_images(aft_cfg, purpose=kind.labels_for))
    train_idx, val_idx = runs.split_indices(split.labels, aft_cfg)
    np.testing.assert_array_equal(data.y_train, expected[train_idx])
    np.testing.assert_array_equal(data.y_val[:16], expected[val_idx][:16])
    head = kind.build(aft_cfg, data.info).model.head
    for a, b in zip(head.variables, probe.head.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    aft = finetuning.run(aft_cfg)
    steps = export.read_info(aft["pseudo_labels"]["export"])["post_processing"]
    assert [(s["mode"], s["objective"]) for s in steps] == [("linear", "standard"), ("full", "trades")]

    # The result is a pretraining export the protocols take: trunk and stage 4 restored, a new 10-class head.
    slf_cfg = finetuning.FinetuneRun().resolve(
        small_config(tmp_path / "slf", pretrained=aft["pseudo_labels"]["export"], mode="linear")
    )
    classifier = ImageClassifier(slf_cfg.backbone, 10)
    restored = finetuning.restore_pretrained(slf_cfg.pretrained, export.read_info(slf_cfg.pretrained), classifier)
    assert restored == ["stage4", "trunk"]
    with pytest.raises(UsageError, match="head_dense"):  # the jigsaw export's head has 31 classes, not 4
        finetuning.restore_pretrained(JIGSAW_EXPORT, export.read_info(JIGSAW_EXPORT), original, head=True)
    assert json.load(open(tmp_path / "aft" / "results.json"))["pseudo_labels"]["source"] == {"trained_on_by": lp_export}


def test_the_binary_refuses_an_export_without_pseudo_labels_in_one_line_before_writing(tmp_path):
    proc = binaries.run_binary(
        "advss_tf.finetune",
        f"--pretrained={JIGSAW_EXPORT}",
        "--pseudo_labels=pretrained",
        f"--model_dir={tmp_path / 'run'}",
        "--train_steps=1",
    )
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "holds no pseudo-labels" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
