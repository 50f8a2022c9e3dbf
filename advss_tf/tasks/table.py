"""The task table: what `--task` accepts, each task's augmentation, and `build_task`.

A task is the only place that knows what its inputs and labels are; `advss_tf.training.loop` runs any of them
under a distribution strategy (the protocol: `advss_tf.tasks.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from advss_tf.config import PretrainConfig
from advss_tf.errors import UsageError
from advss_tf.tasks.classification import _jigsaw, _rotation
from advss_tf.tasks.ensemble import EnsembleTask
from advss_tf.tasks.selfie import SelfieTask

TASKS: dict[str, Callable[[PretrainConfig], Any]] = {
    "rotation": _rotation,
    "jigsaw": _jigsaw,
    "selfie": SelfieTask,
    "ensemble": EnsembleTask,
}

# Selfie's augmentation: 2-pixel padding crop, no flip (SPEC §3). The ensemble uses the reference ensemble script's
# crop 4 + flip for the clean batch all three task inputs come from.
AUGMENTATION = {
    "rotation": dict(pad=4, flip=True),
    "jigsaw": dict(pad=4, flip=True),
    "selfie": dict(pad=2, flip=False),
    "ensemble": dict(pad=4, flip=True),
}


def build_task(config: PretrainConfig):
    if config.task not in TASKS:
        raise UsageError(f"unknown task {config.task!r}; valid: {', '.join(TASKS)}")
    return TASKS[config.task](config)
