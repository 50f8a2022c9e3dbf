"""Learning-rate rules: the fine-tuning recipe (epoch-0 warm-up, ×0.1 at epochs 60 and 80) and the cosine one."""

import math

import numpy as np
import pytest

from advss_tf.training.schedules import LearningRate, cosine_lr, step_decay_lr, warmup_lr


def reference_warmup(i: int) -> float:
    """finetune/main.py's warmup_lr(step, optimizer, speed=200), applied at every step i of epoch 0."""
    return min(0.01 + i * (0.1 - 0.01) / 200, 0.1)


def reference_multistep(epoch: int) -> float:
    """torch MultiStepLR(milestones=[60, 80], gamma=0.1) with lr 0.1, stepped once per epoch."""
    return 0.1 * 0.1 ** sum(epoch >= m for m in (60, 80))


@pytest.mark.parametrize("step", [0, 1, 50, 199, 200, 201, 350])
def test_warmup_matches_the_reference_formula(step):
    assert float(warmup_lr(step, 200, 0.01, 0.1)) == pytest.approx(reference_warmup(step), rel=1e-6)


def test_warmup_starts_at_start_lr_and_holds_the_peak():
    values = [float(warmup_lr(s, 10, 0.01, 0.1)) for s in range(15)]
    assert values[0] == pytest.approx(0.01)
    assert np.all(np.diff(values[:11]) > 0)  # strictly rising until the peak
    assert values[10:] == pytest.approx([0.1] * 5)


@pytest.mark.parametrize("epoch", [0, 1, 59, 60, 61, 79, 80, 99])
def test_step_decay_matches_multistep_lr(epoch):
    steps_per_epoch = 351  # 45k / 128
    for step in (epoch * steps_per_epoch, epoch * steps_per_epoch + steps_per_epoch - 1):
        lr = float(step_decay_lr(step, steps_per_epoch, 0.1, (60, 80), 0.1))
        assert lr == pytest.approx(reference_multistep(epoch), rel=1e-5)


def test_step_decay_without_boundaries_is_constant():
    assert float(step_decay_lr(10_000, 10, 0.1, (), 0.1)) == pytest.approx(0.1)


def test_finetune_schedule_is_warmup_in_epoch_0_then_step_decay():
    spe = 351
    lr = LearningRate("step", 0.1, 100 * spe, spe, warmup_steps=200, warmup_start_lr=0.01, boundaries_epochs=(60, 80))
    for step in (0, 100, 199):
        assert float(lr(step)) == pytest.approx(reference_warmup(step), rel=1e-6)
    for step in (200, 300, spe - 1, spe, 59 * spe):
        assert float(lr(step)) == pytest.approx(0.1, rel=1e-6)
    assert float(lr(60 * spe)) == pytest.approx(0.01, rel=1e-5)
    assert float(lr(80 * spe)) == pytest.approx(0.001, rel=1e-5)


def test_short_epoch_ends_the_warmup_at_the_epoch_boundary():
    # With fewer steps per epoch than warm-up steps, epoch 1 starts at the base lr (see docs/finetune.md).
    lr = LearningRate("step", 0.1, 100, 10, warmup_steps=200, warmup_start_lr=0.01, boundaries_epochs=(6, 8))
    assert float(lr(9)) == pytest.approx(reference_warmup(9), rel=1e-6)
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(60)) == pytest.approx(0.01, rel=1e-5)


def test_cosine_endpoints_and_midpoint():
    assert float(cosine_lr(0, 100, 0.1, 1e-6)) == pytest.approx(0.1)
    assert float(cosine_lr(50, 100, 0.1, 1e-6)) == pytest.approx(1e-6 + (0.1 - 1e-6) * 0.5, rel=1e-5)
    assert float(cosine_lr(100, 100, 0.1, 1e-6)) == pytest.approx(1e-6, abs=1e-9)
    assert float(cosine_lr(150, 100, 0.1, 1e-6)) == pytest.approx(1e-6, abs=1e-9)  # held after the end
    assert float(cosine_lr(25, 100, 1.0, 0.0)) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=1e-5)


def test_config_round_trip():
    lr = LearningRate("step", 0.1, 1000, 10, warmup_steps=5, boundaries_epochs=(60, 80))
    again = LearningRate.from_config(lr.get_config())
    assert again.get_config() == lr.get_config()
    assert [float(again(s)) for s in (0, 3, 10, 600, 800)] == pytest.approx(
        [float(lr(s)) for s in (0, 3, 10, 600, 800)]
    )


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="valid"):
        LearningRate("linear", 0.1, 10, 1)
