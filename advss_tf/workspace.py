"""The run directory (WORKSPACE.md): where config, checkpoints, TensorBoard logs, exports and results live."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from advss_tf import config as config_lib
from advss_tf.errors import UsageError

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
        same = config_lib.identity(old) == config_lib.identity(new)
        if same and not overwrite:
            return os.path.isdir(path(model_dir, CHECKPOINTS))
        if not overwrite:
            old_id, new_id = config_lib.identity(old), config_lib.identity(new)
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


def write_json(file_path: str, obj: Any) -> None:
    """Writes JSON atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, file_path)
