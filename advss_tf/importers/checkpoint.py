"""Reading a PyTorch checkpoint: `torch.load(weights_only=True)`, its state dicts and metadata, as NumPy.

A checkpoint is a pickle, and a pickle that needs more than tensors and plain containers could run code, so it is
refused. PyTorch is imported lazily (inside `load_checkpoint`): importing this module works without it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any

import numpy as np

from advss_tf.errors import UsageError

# Entries of the reference scripts' checkpoint dicts besides the weights: recorded (numbers) or left (optimizer
# state). A format whose code saves other entries passes its own to `read_state_dicts`.
NUMBER_KEYS = ("epoch", "best_prec1", "best_ata")
TRAINING_STATE_KEYS = ("optimizer",)


def load_checkpoint(path: str) -> Any:
    """torch.load(path, weights_only=True) with every refusal as one UsageError; tensors become float32/int NumPy."""
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path} is not a file")
    try:
        import torch
    except ImportError as e:
        raise UsageError("importing a PyTorch checkpoint needs torch: pip install -e '.[peer]'") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported" in str(e):
            raise UsageError(
                f"{path} needs full unpickling (it holds Python objects, not only tensors and containers), which can "
                "run code; refused — re-save its state_dict with torch.save({'state_dict': model.state_dict()}, ...)"
            ) from e
        raise UsageError(f"{path} is not a PyTorch checkpoint ({str(e).splitlines()[0][:120]})") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise UsageError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {str(e)[:120]})") from e
    return _to_numpy(obj, torch)


def _to_numpy(obj: Any, torch) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v, torch) for v in obj)
    return obj


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def one_file(paths: list[str], fmt: str) -> str:
    """The one --checkpoint file a format takes."""
    if len(paths) != 1:
        raise UsageError(f"--format={fmt} takes one --checkpoint file, got {len(paths)}")
    return paths[0]


def _without_module_prefix(state: dict) -> dict:
    """A model saved from inside nn.DataParallel has every key under `module.`: the model's own keys without it."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dicts(
    path: str,
    fmt: str,
    names: tuple[str, ...],
    numbers: tuple[str, ...] = NUMBER_KEYS,
    training_state: tuple[str, ...] = TRAINING_STATE_KEYS,
) -> tuple[list[dict], dict]:
    """The state dicts under `names` of the checkpoint file at `path` (a bare state dict counts as the first), and
    its metadata: the entries `numbers` (epoch, accuracies) recorded, and whether it holds `training_state` (an
    optimizer's). Any other top-level entry is refused."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict (--format={fmt})")
    obj = {k: _without_module_prefix(v) if isinstance(v, dict) else v for k, v in obj.items()}
    obj = _without_module_prefix(obj)
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        if len(names) > 1:
            raise UsageError(f"{path} is a bare state_dict; --format={fmt} expects the keys {', '.join(names)}")
        return [obj], {}
    unexpected = sorted(k for k in obj if k not in names and k not in numbers and k not in training_state)
    missing = [n for n in names if n not in obj]
    if missing or unexpected:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(map(str, unexpected))}"] if unexpected else []
        raise UsageError(f"{path} is not a --format={fmt} checkpoint: {'; '.join(parts)} (top-level keys)")
    dicts = []
    for n in names:
        if not isinstance(obj[n], dict) or not all(isinstance(v, np.ndarray) for v in obj[n].values()):
            raise UsageError(f"{path}: {n!r} is not a state_dict of tensors")
        dicts.append(obj[n])
    meta = {}
    for k in numbers:
        if k in obj:
            v = obj[k]
            meta[k] = float(np.asarray(v)) if isinstance(v, (np.ndarray, float, int)) else str(v)
    for k in training_state:
        if k in obj:
            meta[k] = "present in the file, not imported (training state)"
    return dicts, meta
