"""The task table: what `--task` accepts, each task's augmentation, and `build_task`.

A task is the only place that knows what its inputs and labels are; `advss_tf.training.loop` runs any of them
under a distribution strategy (the protocol: `advss_tf.tasks.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from advss_tf import patches
from advss_tf.config import PretrainConfig
from advss_tf.errors import UsageError
from advss_tf.pretext import rotation
from advss_tf.tasks.base import PretrainingTask
from advss_tf.tasks.classification import jigsaw_task, rotation_task
from advss_tf.tasks.contrastive import acl_task, dynacl_task
from advss_tf.tasks.ensemble import EnsembleTask
from advss_tf.tasks.selfie import SelfieTask

# --task name → (how the task is made from the config, the augmentation of the clean batch the task transforms).
# Selfie's augmentation: 2-pixel padding crop, no flip (SPEC §3). The ensemble uses the reference ensemble script's
# crop 4 + flip for the clean batch all three task inputs come from.
TABLE: dict[str, tuple[Callable[[PretrainConfig], PretrainingTask], dict[str, Any]]] = {
    "rotation": (rotation_task, dict(pad=4, flip=True)),
    "jigsaw": (jigsaw_task, dict(pad=4, flip=True)),
    "selfie": (SelfieTask, dict(pad=2, flip=False)),
    "ensemble": (EnsembleTask, dict(pad=4, flip=True)),
    # The contrastive tasks draw their own SimCLR views from the image as it is (AIR also uses the image itself).
    "acl": (acl_task, dict(pad=0, flip=False)),
    "dynacl": (dynacl_task, dict(pad=0, flip=False)),
}
# What each task needs of the images: rotation turns them (square), the patch tasks cut them into the 4x4 grid.
IMAGE_CHECKS: dict[str, tuple[Callable[[Any, str], None], ...]] = {
    "rotation": (rotation.check_image_shape,),
    "jigsaw": (patches.check_image_shape,),
    "selfie": (patches.check_image_shape,),
    "ensemble": (patches.check_image_shape, rotation.check_image_shape),
}
TASKS: dict[str, Callable[[PretrainConfig], PretrainingTask]] = {name: make for name, (make, _) in TABLE.items()}
AUGMENTATION: dict[str, dict[str, Any]] = {name: augmentation for name, (_, augmentation) in TABLE.items()}


def build_task(config: PretrainConfig) -> PretrainingTask:
    """The task `config.task` names; UsageError listing the valid names for any other."""
    if config.task not in TASKS:
        raise UsageError(f"unknown task {config.task!r}; valid: {', '.join(TASKS)}")
    return TASKS[config.task](config)


def check_image_shape(task: str, image_shape) -> None:
    """UsageError with one line unless `task` can use images of `image_shape` (H, W, C)."""
    for check in IMAGE_CHECKS.get(task, ()):
        try:
            check(image_shape, task)
        except ValueError as e:
            raise UsageError(str(e)) from None
