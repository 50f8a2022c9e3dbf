"""Architecture versions on disk: a run directory of the old block definition is never resumed into the new one."""

import dataclasses
import json

import pytest

from advss_tf import workspace
from advss_tf.errors import UsageError
from advss_tf.models.backbones import BackboneConfig
from advss_tf.training.finetuning import FinetuneConfig


def _write_old_config(model_dir, cfg) -> None:
    """config.json as a build before architecture versions wrote it: the backbone entry has no arch_version."""
    workspace.prepare(str(model_dir), cfg, overwrite=False)
    path = model_dir / workspace.CONFIG
    old = json.loads(path.read_text())
    del old["backbone"]["arch_version"]
    path.write_text(json.dumps(old))


def test_a_version_1_run_is_refused_by_a_version_2_build(tmp_path):
    cfg = FinetuneConfig(model_dir=str(tmp_path), backbone=BackboneConfig("tiny"))
    _write_old_config(tmp_path, cfg)
    with pytest.raises(UsageError, match="architecture version 1 and this one builds version 2"):
        workspace.prepare(str(tmp_path), cfg, overwrite=False)
    # --overwrite starts the new run there.
    assert workspace.prepare(str(tmp_path), cfg, overwrite=True) is False


def test_a_version_1_run_resumes_as_it_was(tmp_path):
    cfg = FinetuneConfig(model_dir=str(tmp_path), backbone=BackboneConfig("tiny", arch_version=1))
    _write_old_config(tmp_path, cfg)
    (tmp_path / workspace.CHECKPOINTS).mkdir()
    assert workspace.prepare(str(tmp_path), cfg, overwrite=False) is True
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    with pytest.raises(UsageError, match="holds a different run"):
        workspace.prepare(str(tmp_path), other, overwrite=False)
