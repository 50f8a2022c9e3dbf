"""The partial results of a long evaluation, one file per finished batch, so a stopped run continues exactly.

`<output_dir>/partial/` holds `identity.json` (the model's hashes and every setting that changes a number) and one
`.npz` per finished unit of work (a clean batch, an attack batch, a stage batch of a composite, a CIFAR-10-C
set), each written atomically. The same command after SIGTERM, Ctrl-C or a crash reads the finished units back
instead of recomputing them: every unit is a pure function of (model, settings, seed, unit), so the finished run
has exactly the numbers of an uninterrupted one. Another model's or configuration's partial results are refused
unless --overwrite. The folder is removed once results.json is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from advss_tf import workspace
from advss_tf.errors import UsageError

PARTIAL = "partial"
IDENTITY = "identity.json"


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


class PartialStore:
    """Finished units of one evaluation under `<output_dir>/partial/`, keyed by 'kind/name/00003'-like strings."""

    def __init__(self, output_dir: str, identity: dict[str, Any]):
        self.folder = os.path.join(output_dir, PARTIAL)
        # Through JSON so tuples and lists compare equal to what a previous run wrote.
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        self.resumed_units = 0

    def check(self, overwrite: bool) -> bool:
        """Whether finished units of this very evaluation are there to resume from.

        Raises:
          UsageError: the folder holds another model's or configuration's partial results (and not `overwrite`),
            or an unreadable identity.
        """
        path = os.path.join(self.folder, IDENTITY)
        if overwrite or not os.path.exists(path):
            return False  # units are only written after the identity: without it there is nothing to resume
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is unreadable ({e}); pass --overwrite to start over") from e
        diff = _differences(old, self.identity)
        if diff:
            raise UsageError(
                f"{self.folder} holds partial results of another model or configuration (differs in: "
                f"{', '.join(diff[:6])}{', ...' if len(diff) > 6 else ''}); use another --output_dir or pass --overwrite"
            )
        return True

    def open(self, overwrite: bool) -> None:
        """Starts (or, with `overwrite`, restarts) the store on disk; call after every input check passed."""
        if overwrite and os.path.isdir(self.folder):
            shutil.rmtree(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        workspace.write_json(os.path.join(self.folder, IDENTITY), self.identity)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, *key.split("/")) + ".npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of a finished unit, or None when it has not finished."""
        path = self._path(key)
        if not os.path.exists(path):
            return None
        with np.load(path) as f:
            record = {k: f[k] for k in f.files}
        self.resumed_units += 1
        return record

    def save(self, key: str, **arrays: Any) -> None:
        """Records a finished unit atomically (temp file + rename: a kill leaves it whole or absent)."""
        path = self._path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)

    def remove(self) -> None:
        """Drops the partial results (after results.json is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Writes a text file atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
