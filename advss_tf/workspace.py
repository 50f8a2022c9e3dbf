"""The run directory (WORKSPACE.md): where config, checkpoints, TensorBoard logs, exports and results live."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from advss_tf import config as config_lib
from advss_tf.errors import UsageError
from advss_tf.models.backbones import LEGACY_ARCH_VERSION

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
EXPORT = "export"
RESULTS = "results.json"


def path(model_dir: str, *parts: str) -> str:
    return os.path.join(model_dir, *parts)


def prepare(model_dir: str, config, overwrite: bool, data_info: dict[str, Any] | None = None) -> bool:
    """Creates or re-opens a run directory for `config`; returns True when it resumes an existing run.

    `data_info` (what the training data holds: name, class count, image shape) is recorded in config.json.

    A directory holding a different run's config is refused (exit 2) unless `overwrite`, which clears the run's
    own files (config, checkpoints, tensorboard, export, results) and nothing else.
    """
    new = json.loads(config_lib.dumps(config, data_info))
    cfg_path = path(model_dir, CONFIG)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UsageError(f"--model_dir {model_dir} exists and is not a directory")
    if os.path.exists(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"{cfg_path} is unreadable ({e}); pass --overwrite to start a new run there") from e
        _check_architecture(model_dir, old, new, overwrite)
        old = config_lib.with_added_defaults(_with_arch_version(old), config)
        old_id, new_id = config_lib.identity(old), config_lib.identity(new)
        if old_id == new_id and not overwrite:
            return os.path.isdir(path(model_dir, CHECKPOINTS))
        if not overwrite:
            diff = sorted(k for k in set(old_id) | set(new_id) if old_id.get(k) != new_id.get(k))
            raise UsageError(
                f"{model_dir} holds a different run (differs in: {', '.join(diff)}); "
                "use another --model_dir or pass --overwrite"
            )
        for name in (CONFIG, CHECKPOINTS, TENSORBOARD, EXPORT, RESULTS):
            p = path(model_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    elif os.path.isdir(path(model_dir, CHECKPOINTS)) and not overwrite:
        raise UsageError(f"{model_dir} has checkpoints but no {CONFIG}; use another --model_dir or pass --overwrite")
    os.makedirs(model_dir, exist_ok=True)
    write_json(cfg_path, new)
    return False


def _with_arch_version(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config.json written before architecture versions existed describes version 1 with the stem BN/ReLU
    (models/resnet.py)."""
    backbone = cfg.get("backbone")
    if isinstance(backbone, dict):
        defaults = {"arch_version": LEGACY_ARCH_VERSION, "stem_norm": True}
        return {**cfg, "backbone": {**defaults, **backbone}}
    return cfg


def _check_architecture(model_dir: str, old: dict[str, Any], new: dict[str, Any], overwrite: bool) -> None:
    """A run is never resumed into another block definition: one line naming both versions instead."""
    old_backbone, new_backbone = _with_arch_version(old).get("backbone"), new.get("backbone")
    if overwrite or not isinstance(old_backbone, dict) or not isinstance(new_backbone, dict):
        return
    if old_backbone["arch_version"] != new_backbone.get("arch_version"):
        raise UsageError(
            f"{model_dir} holds a run of architecture version {old_backbone['arch_version']} and this one builds "
            f"version {new_backbone.get('arch_version')} (WORKSPACE.md); it is not resumed into another "
            "architecture: use another --model_dir or pass --overwrite"
        )


def write_json(file_path: str, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, file_path)
