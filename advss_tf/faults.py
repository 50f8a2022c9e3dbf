"""Test-only fault injection: with ADVSS_TF_TEST_PAUSE=<point>[@<n>] a binary stops at the n-th time (default the
first) it reaches <point>, writes the point's name into the file ADVSS_TF_TEST_PAUSE_FILE and sleeps until killed.

A test then kills it with SIGKILL at a known moment, deterministically whatever the machine's load: `train` (after
a loop of training steps, before anything is saved), `checkpoint` (inside a checkpoint write: its files are on disk,
the CheckpointManager has not recorded it yet), `export` (the SavedModel is complete in its temporary directory,
not yet renamed into place). Unset (always, outside tests), every function here does nothing.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

ENV = "ADVSS_TF_TEST_PAUSE"
POINTS = ("train", "checkpoint", "export")
_reached: dict[str, int] = {}


def pause(point: str) -> None:
    """Sleeps forever at `point` when ADVSS_TF_TEST_PAUSE names it (and this is its n-th arrival); else returns."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name not in POINTS:
        raise ValueError(f"{ENV}={wanted}: the points are {', '.join(POINTS)}")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != int(nth or 1):
        return
    with open(os.environ[f"{ENV}_FILE"], "w", encoding="utf-8") as f:
        f.write(point)
    while True:
        time.sleep(1)


def checkpoint_options() -> tf.train.CheckpointOptions | None:
    """Options for CheckpointManager.save: the `checkpoint` pause point as a write callback, when asked for."""
    if not os.environ.get(ENV, "").startswith("checkpoint"):
        return None
    return tf.train.CheckpointOptions(experimental_write_callbacks=[lambda save_path: pause("checkpoint")])
