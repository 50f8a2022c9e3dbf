"""TensorBoard content beyond scalars: image grids and the run's config (as text and as hparams)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow as tf


def image_grid(columns: list[tf.Tensor], max_rows: int = 8) -> tf.Tensor:
    """Side-by-side columns of images [N, H, W, C] in [0, 1] → one image [1, rows·H, len(columns)·W, C]."""
    cols = [tf.clip_by_value(tf.cast(c[:max_rows], tf.float32), 0.0, 1.0) for c in columns]
    rows = tf.concat(cols, axis=2)  # [n, H, k·W, C]
    n, h, w, c = rows.shape
    return tf.reshape(rows, [1, n * h, w, c])


def adversarial_grid(clean: tf.Tensor, adv: tf.Tensor, eps: float, max_rows: int = 8) -> tf.Tensor:
    """clean | adversarial | perturbation amplified to the full range (0.5 = unchanged)."""
    amplified = 0.5 + (adv - clean) * (0.5 / eps)
    return image_grid([clean, adv, amplified], max_rows)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        elif v is None:
            out[key] = "none"
        else:
            out[key] = v
    return out


def write_config(config_dict: dict[str, Any], step: int = 0) -> None:
    """The config as a text summary and as TensorBoard hparams (under the current default writer)."""
    from tensorboard.plugins.hparams import api as hp

    text = "```json\n" + json.dumps(config_dict, indent=2, sort_keys=True) + "\n```"
    tf.summary.text("config", text, step=step)
    hparams = {k: v for k, v in flatten(config_dict).items() if isinstance(v, (bool, int, float, str, np.number))}
    hp.hparams(hparams)
