"""The task protocol (advss_tf/tasks/base.py): every task in the table and the fine-tuning task implement it, with
the protocol's argument names; and a fifth task is one new class and one table entry (docs/architecture.md)."""

import inspect

import pytest
import tensorflow as tf

from advss_tf.config import AttackConfig, OptimizerConfig, PretrainConfig, RuntimeConfig
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.tasks import table
from advss_tf.tasks.base import FinetuningTask, PretrainingTask, Task
from advss_tf.tasks.classification import ClassificationPretextTask
from advss_tf.tasks.finetune import FinetuneTask
from advss_tf.training import finetuning, pretraining


def tiny_config(task: str, model_dir: str = "unused", **kw) -> PretrainConfig:
    return PretrainConfig(
        task=task,
        model_dir=model_dir,
        backbone=BackboneConfig("tiny"),
        batch_size=16,
        train_steps=2,
        attack=AttackConfig(steps=1),
        optimizer=OptimizerConfig(learning_rate=0.05, warmup_steps=1),
        selfie_layers=1,
        selfie_heads=2,
        selfie_ff_dim=16,
        runtime=RuntimeConfig(steps_per_loop=1, checkpoint_every=2, image_summary_every=100, quiet=True),
        **kw,
    )


def protocol_methods(protocol) -> dict[str, inspect.Signature]:
    """Method name → signature of everything the protocol (and its bases) declares."""
    out = {}
    for cls in reversed(protocol.__mro__):
        if cls in (Task, PretrainingTask, FinetuningTask):
            out.update({k: inspect.signature(v) for k, v in vars(cls).items() if inspect.isfunction(v) and k[0] != "_"})
    return out


def assert_implements(task, protocol) -> None:
    assert isinstance(task, protocol), f"{type(task).__name__} lacks part of {protocol.__name__}"
    for name, signature in protocol_methods(protocol).items():
        mine = list(inspect.signature(getattr(task, name)).parameters)
        assert mine == [p for p in signature.parameters if p != "self"], f"{type(task).__name__}.{name}{mine}"


@pytest.mark.parametrize("name", sorted(table.TASKS))
def test_every_pretraining_task_implements_the_protocol(name):
    task = table.build_task(tiny_config(name))
    assert_implements(task, PretrainingTask)
    assert task.name == name
    assert set(table.AUGMENTATION[name]) == {"pad", "flip"}


@pytest.mark.parametrize("objective, aux", [("standard", 0.0), ("adversarial", 0.5), ("trades", 0.0)])
def test_the_finetuning_task_implements_its_protocol(objective, aux):
    assert_implements(FinetuneTask(objective, AttackConfig(), aux_rotation_weight=aux, feature_dim=8), FinetuningTask)


def test_a_task_missing_a_method_or_renaming_an_argument_is_caught():
    task = table.build_task(tiny_config("rotation"))
    with pytest.raises(AssertionError, match="lacks part of PretrainingTask"):
        assert_implements(FinetuneTask("standard", AttackConfig()), PretrainingTask)
    task.transform = lambda images, labels, key: {}  # 'key' where the protocol says 'seed'
    with pytest.raises(AssertionError, match="transform"):
        assert_implements(task, PretrainingTask)


def test_unknown_task_lists_the_table():
    with pytest.raises(UsageError, match="valid: rotation, jigsaw, selfie, ensemble"):
        table.build_task(tiny_config("contrastive"))


def flip_task(config: PretrainConfig) -> ClassificationPretextTask:
    """A made-up fifth task: was the image mirrored left-right? (Labels from the seed, half of each.)"""

    def transform(images, seed):
        labels = tf.cast(tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5, tf.int32)
        flipped = tf.where(labels[:, None, None, None] > 0, tf.image.flip_left_right(images), images)
        return {"inputs": flipped, "labels": labels}

    return ClassificationPretextTask(config, "flip", 2, transform)


def test_a_fifth_task_is_one_table_entry_and_runs_exports_and_finetunes(tmp_path, monkeypatch):
    # What docs/architecture.md says a new task touches: its module (here flip_task) and one line of the table.
    monkeypatch.setitem(table.TABLE, "flip", (flip_task, dict(pad=4, flip=False)))
    monkeypatch.setattr(table, "TASKS", {name: make for name, (make, _) in table.TABLE.items()})
    monkeypatch.setattr(table, "AUGMENTATION", {name: aug for name, (_, aug) in table.TABLE.items()})
    monkeypatch.setattr(pretraining, "AUGMENTATION", table.AUGMENTATION)
    results = pretraining.run(tiny_config("flip", str(tmp_path / "flip")))
    assert results["steps"] == 2
    cfg, info = finetuning.resolve_backbone(
        finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=results["export"])
    )
    assert info["task"] == "flip" and info["num_classes"] == 2
    from advss_tf.models.classifier import ImageClassifier

    assert finetuning.restore_pretrained(results["export"], info, ImageClassifier(cfg.backbone, 10)) == [
        "stage4",
        "trunk",
    ]
