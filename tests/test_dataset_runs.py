"""Whole runs beyond CIFAR-10: pretraining on unlabelled 96x96 images, fine-tuning on a labelled folder, evaluating a
3-class and a 100-class classifier, CIFAR-100-C from its official files; and the bad inputs, refused before anything
is written."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from binaries import run_binary
from test_datasets import class_images, write_cifar100_binary, write_image, write_labelled_folder

from advss_tf import serving
from advss_tf.config import AttackConfig, ContrastiveConfig, OptimizerConfig, PretrainConfig, RuntimeConfig
from advss_tf.data.datasets import DataSource
from advss_tf.errors import UsageError
from advss_tf.evaluation import evaluator
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import finetuning, pretraining

SIZE = 96
RUNTIME = RuntimeConfig(steps_per_loop=1, checkpoint_every=100, image_summary_every=100, quiet=True)
OPTIMIZER = OptimizerConfig(learning_rate=0.02, warmup_steps=0, schedule="constant")


def _pretrain_config(model_dir, data: DataSource, task="rotation") -> PretrainConfig:
    return PretrainConfig(
        task=task,
        adversarial=False,  # the attacks are tested elsewhere; here the data's path through a run
        model_dir=str(model_dir),
        backbone=BackboneConfig("tiny"),
        data=data,
        batch_size=8,
        train_steps=2,
        attack=AttackConfig(steps=1),
        optimizer=OPTIMIZER,
        runtime=RUNTIME,
    )


def _finetune_config(model_dir, data: DataSource, pretrained=None) -> finetuning.FinetuneConfig:
    return finetuning.FinetuneConfig(
        model_dir=str(model_dir),
        pretrained=pretrained,
        backbone=None if pretrained else BackboneConfig("tiny"),
        data=data,
        objective="standard",
        batch_size=8,
        train_steps=2,
        attack=AttackConfig(steps=1),
        val_attack_steps=1,
        val_examples=4,
        val_batch_size=4,
        optimizer=OPTIMIZER,
        runtime=RUNTIME,
    )


def _evaluate_config(model, output_dir, data: DataSource, **overrides) -> evaluator.EvaluateConfig:
    settings = dict(attacks=("fgsm",), batch_size=8, max_examples=8, strategy="one_device", quiet=True)
    return evaluator.EvaluateConfig(
        model=str(model), output_dir=str(output_dir), data=data, **{**settings, **overrides}
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An unlabelled folder of 96x96 images and a labelled one (3 classes, train/ and test/)."""
    root = tmp_path_factory.mktemp("images")
    for i, image in enumerate(class_images(24, SIZE, 7)):
        write_image(str(root / "unlabelled" / f"{i:02d}.png"), image)
    write_labelled_folder(root / "pets" / "train", per_class=8, size=SIZE, seed=0)
    write_labelled_folder(root / "pets" / "test", per_class=3, size=SIZE, seed=10)
    return str(root / "unlabelled"), str(root / "pets")


def test_contrastive_tasks_pretrain_on_unlabelled_96px_images_and_export_both_routes(folders, tmp_path):
    """STL-10's use (its unlabelled split): the contrastive tasks need no labels and any image size — SimCLR's views
    are cropped back to the input size — and the export serves both BatchNorm routes at that size. DynACL+AIR: the
    views, the strength schedule and AIR's regularisers on top of ACL's loss (ACL's own path through the views and
    the export is tests/test_contrastive.py's, at 32x32)."""
    unlabelled, _ = folders
    task, air = "dynacl", True
    cfg = PretrainConfig(
        task=task,
        model_dir=str(tmp_path / task),
        backbone=BackboneConfig("tiny_post"),
        data=DataSource("folder", unlabelled),
        batch_size=8,
        train_steps=2,
        attack=AttackConfig(steps=1, bn="eval"),
        contrastive=ContrastiveConfig(air=air),
        optimizer=OPTIMIZER,
        runtime=RUNTIME,
    )
    pre = pretraining.run(cfg)
    assert pre["steps"] == 2 and np.isfinite(pre["final_train_metrics"]["loss"]), pre
    with open(os.path.join(pre["export"], "assets", "advss_export.json")) as f:
        info = json.load(f)
    assert info["data"]["labelled"] is False and info["data"]["image_shape"] == [SIZE, SIZE, 3]
    loaded = tf.saved_model.load(pre["export"])  # kept: the signatures' variables live as long as it does
    images = tf.random.uniform([2, SIZE, SIZE, 3], seed=1)
    for name in ("features", "features_clean"):
        (out,) = loaded.signatures[name](images=images).values()
        assert out.shape == (2, 128) and np.isfinite(out.numpy()).all(), name


@pytest.mark.slow
def test_unlabelled_pretraining_then_labelled_finetuning_then_evaluation(folders, tmp_path):
    unlabelled, pets = folders
    pre = pretraining.run(_pretrain_config(tmp_path / "pre", DataSource("folder", unlabelled)))
    with open(os.path.join(pre["export"], "assets", "advss_export.json")) as f:
        info = json.load(f)
    assert info["data"] == {
        "name": "folder:unlabelled",
        "num_classes": None,
        "image_shape": [96, 96, 3],
        "labelled": False,
    }

    ft = finetuning.run(_finetune_config(tmp_path / "ft", DataSource("folder", pets), pre["export"]))
    with open(tmp_path / "ft" / "config.json") as f:
        assert json.load(f)["data_info"]["num_classes"] == 3
    best = ft["exports"]["best_ra"]
    with open(os.path.join(best, "assets", "advss_export.json")) as f:
        ft_info = json.load(f)
    assert ft_info["num_classes"] == 3 and ft_info["data"]["class_names"] == ["cat", "dog", "frog"]
    _, logits = serving.logits_function(best)
    assert logits(np.zeros([2, SIZE, SIZE, 3], np.float32)).shape == (2, 3)

    results = evaluator.run(_evaluate_config(best, tmp_path / "eval", DataSource("folder", pets)))
    assert results["data"]["name"] == "folder:pets" and results["data"]["num_classes"] == 3
    assert results["num_examples"] == 8 and 0.0 <= results["robust_accuracy"]["fgsm"]["accuracy"] <= 1.0
    with open(tmp_path / "eval" / "report.md") as f:
        assert "Test set: image folder pets test" in f.read()
    # The DLR-based attacks need 4 classes, and --targets is bounded by the class count; refused before any output.
    with pytest.raises(UsageError, match="apgd_t .* needs at least 4 classes"):
        evaluator.run(_evaluate_config(best, tmp_path / "eval_t", DataSource("folder", pets), attacks=("apgd_t",)))
    with pytest.raises(UsageError, match="pass --targets=2"):
        evaluator.run(
            _evaluate_config(best, tmp_path / "eval_f", DataSource("folder", pets), attacks=("fab_t",), targets=3)
        )
    # CIFAR-10-C's corruptions are defined for 32x32 images.
    with pytest.raises(UsageError, match="defined for 32x32 images; image folder pets images are 96x96"):
        evaluator.run(
            _evaluate_config(best, tmp_path / "eval_c", DataSource("folder", pets), cifar10c_source="generate")
        )
    assert not any(os.path.exists(tmp_path / d) for d in ("eval_t", "eval_f", "eval_c"))


def test_labelled_runs_refuse_unlabelled_images_and_pretext_tasks_refuse_sizes_they_cannot_cut(folders, tmp_path):
    unlabelled, _ = folders
    with pytest.raises(UsageError, match="fine-tuning needs labelled images; --dataset=folder"):
        finetuning.run(_finetune_config(tmp_path / "ft", DataSource("folder", unlabelled)))
    with pytest.raises(UsageError, match="divisible by 4, got 30x30"):
        pretraining.run(_pretrain_config(tmp_path / "pre", DataSource("folder", unlabelled, image_size=30), "jigsaw"))
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def cifar100_model(tmp_path_factory):
    """A 100-class classifier export (untrained tiny ResNet) and a CIFAR-100 binary test file."""
    root = tmp_path_factory.mktemp("c100")
    model = ImageClassifier(BackboneConfig("tiny"), 100)
    path = str(root / "model")
    serving.save_classifier(path, lambda x: model(x, training=False), {"model": model}, info={"num_classes": 100})
    write_cifar100_binary(str(root / "cifar-100-binary"), 16, seed=2, name="test.bin")
    return path, str(root / "cifar-100-binary")


def test_evaluate_a_100_class_model_on_cifar100_and_cifar100c(cifar100_model, tmp_path):
    model, data_dir = cifar100_model
    images, _, fine = write_cifar100_binary(str(tmp_path / "c"), 16, seed=2, name="unused.bin")
    # An official-layout CIFAR-100-C folder: <corruption>.npy (5 severities one after the other) and labels.npy.
    c100c = tmp_path / "CIFAR-100-C"
    os.makedirs(c100c)
    np.save(c100c / "fog.npy", np.concatenate([images] * 5))
    np.save(c100c / "labels.npy", np.concatenate([fine.astype(np.int64)] * 5))
    cfg = _evaluate_config(
        model,
        tmp_path / "eval",
        DataSource("cifar100", data_dir),
        attacks=("none",),  # clean and CIFAR-100-C: the attacks ran on the 3-class model above
        cifar10c_source="npy",
        cifar10c_dir=str(tmp_path),
        corruptions=("fog",),
        severities=(2,),
    )
    results = evaluator.run(cfg)
    assert results["data"]["name"] == "cifar100" and results["data"]["num_classes"] == 100
    assert set(results["cifar10c"]["accuracy"]) and results["cifar10c"]["num_examples"] == 8
    with open(tmp_path / "eval" / "model_card.json") as f:
        card = json.load(f)
    assert card["dataset"] == "cifar100" and "CIFAR-100 test images" in card["footnote"]
    # The same model on CIFAR-10's 10 classes: one line, nothing written.
    with pytest.raises(UsageError, match="outputs 100 classes but the test data has 10"):
        evaluator.run(_evaluate_config(model, tmp_path / "eval10", DataSource()))
    assert not os.path.exists(tmp_path / "eval10")


def test_the_cli_refuses_an_empty_folder_with_one_line_and_exit_2(tmp_path):
    os.makedirs(tmp_path / "empty")
    model_dir = tmp_path / "run"
    command = ["--task=rotation", "--dataset=folder", f"--data_dir={tmp_path / 'empty'}", f"--model_dir={model_dir}"]
    done = run_binary("advss_tf.pretrain", *command, "--backbone=tiny", timeout=300)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'empty'} holds no images (.png, .jpg, .jpeg, .bmp)"
    )
    assert not os.path.exists(model_dir)
