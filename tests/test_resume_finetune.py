"""Exact resume of fine-tuning runs (adversarial, TRADES, the rotation auxiliary): interrupted after the first
checkpoint and resumed, every checkpointed variable ends bitwise equal to an uninterrupted run's (the method and
the pretraining cases: tests/test_resume.py). The adversarial run is stopped by SIGTERM in this process (the
fine-tuning loop's stop); TRADES and the rotation auxiliary resume a copy of the uninterrupted run's directory taken
at its first checkpoint (what a kill -9 there leaves: two runs instead of three)."""

import functools

import pytest
from test_resume import RUNTIME, STEPS, straight_and_resumed, straight_and_resumed_from_its_copy

from advss_tf.config import AttackConfig, OptimizerConfig, RuntimeConfig
from advss_tf.models.backbones import BackboneConfig
from advss_tf.training import finetuning


def _finetune(objective, model_dir, aux=0.0, **runtime):
    return finetuning.run(
        finetuning.FinetuneConfig(
            model_dir=str(model_dir),
            backbone=BackboneConfig("tiny"),
            objective=objective,
            aux_rotation_weight=aux,
            batch_size=8,
            train_steps=STEPS,
            attack=AttackConfig(steps=2),
            val_attack_steps=2,
            val_examples=8,
            val_batch_size=8,
            optimizer=OptimizerConfig(learning_rate=0.02, weight_decay=3e-4, warmup_steps=2, schedule="constant"),
            runtime=RuntimeConfig(**{**RUNTIME, **runtime}),
        )
    )


RUNS = {
    "finetune_adversarial": functools.partial(_finetune, "adversarial"),
    "finetune_trades": functools.partial(_finetune, "trades"),
    "finetune_rotation_aux": functools.partial(_finetune, "adversarial", aux=0.5),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_interrupted_then_resumed_finetuning_ends_bitwise_equal(name, tmp_path, monkeypatch, deterministic_ops):
    resume = straight_and_resumed if name == "finetune_adversarial" else straight_and_resumed_from_its_copy
    values = resume(RUNS[name], tmp_path, monkeypatch)
    assert not [n for n in values if n.startswith("random_state/")]  # no dropout in a classifier
