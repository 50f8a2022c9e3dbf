"""An export written before the package was rearranged (issue 13) still restores: tests/data holds a tiny Jigsaw
pretraining export made at commit 0548f65 with

    python -m advss_tf.pretrain --flagfile=flags/smoke/pretrain_jigsaw.flags --backbone=tiny --train_steps=2 \
        --steps_per_loop=1 --checkpoint_every=2 --image_summary_every=100 --warmup_steps=1 --model_dir=...

and copied from <model_dir>/export/pretrain."""

import json
import os

import numpy as np
import tensorflow as tf
from conftest import REPO

from advss_tf import export
from advss_tf.models.classifier import ImageClassifier
from advss_tf.pretext import jigsaw
from advss_tf.training import finetuning

OLD_EXPORT = os.path.join(REPO, "tests", "data", "pretrain_jigsaw_tiny_0548f65")


def strings(value) -> list[str]:
    """Every string anywhere in a JSON value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_old_export_names_no_python_module():
    info = export.read_info(OLD_EXPORT)
    assert [s for s in strings(info) if "advss_tf" in s] == [finetuning.PRETRAIN_FORMAT]
    with open(os.path.join(OLD_EXPORT, "saved_model.pb"), "rb") as f:
        assert b"advss_tf" not in f.read()  # no Python class or module path in the object graph


def test_finetune_restores_an_export_written_before_the_move(tmp_path):
    cfg, info = finetuning.resolve_backbone(finetuning.FinetuneConfig(model_dir=str(tmp_path), pretrained=OLD_EXPORT))
    assert cfg.backbone.name == "tiny" and info["task"] == "jigsaw"
    model = ImageClassifier(cfg.backbone, 10)
    assert finetuning.restore_pretrained(OLD_EXPORT, info, model) == ["stage4", "trunk"]

    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 2])
    exported = tf.saved_model.load(OLD_EXPORT).signatures["features"](images)["features"]
    np.testing.assert_allclose(model.features(images, training=False), exported, atol=1e-5)
    # The permutations the export travelled with are still the ones the seed gives.
    perms = json.loads(export.read_asset(OLD_EXPORT, "jigsaw_permutations.json"))
    np.testing.assert_array_equal(perms, jigsaw.make_permutations(30, info["config"]["seed"]))
