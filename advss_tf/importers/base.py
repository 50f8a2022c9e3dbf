"""What a format is (`Format`: its name, description, converter and the options it takes) and what its converter
returns (`Imported`), with the provenance every export records. The table of formats is `formats.FORMATS`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from advss_tf.config import PretrainConfig
from advss_tf.importers.checkpoint import sha256
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.layers import MEAN, STD

REFERENCE = "Adv-SS-Pretraining (Chen et al., CVPR 2020), the paper's PyTorch code"


@dataclasses.dataclass(frozen=True)
class Imported:
    """A reference checkpoint as our Keras model(s), its export description, and the writer of its SavedModel.

    `models`: "classifier" (finetune), "model" (the pretext model: rotation / jigsaw / selfie), or "branch1".."branch3"
    (the ensembles).
    """

    format: str
    backbone: BackboneConfig
    models: dict[str, Any]
    info: dict[str, Any]
    write: Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Format:
    """One checkpoint layout: `convert(paths, format, options)` reads the file(s) into an `Imported` (or raises one
    UsageError). `options` is every keyword option of `formats.load` (permutations, selfie_heads), None where not
    given; the format's own `options` are those it takes (`load` refuses the others)."""

    name: str
    description: str
    convert: Callable[[list[str], Format, dict[str, Any]], Imported]
    options: tuple[str, ...] = ()


def provenance(
    paths: list[str], fmt: Format, meta: dict, normaliser: dict, trained_by: str = REFERENCE
) -> dict[str, Any]:
    """The export's `imported` entry: who trained it (the reference code unless said), the format, the source files,
    their metadata and normaliser."""
    return {
        "trained_by": trained_by,
        "format": fmt.name,
        "format_description": fmt.description,
        "sources": [{"file": os.path.basename(p), "sha256": sha256(p)} for p in paths],
        "checkpoint_metadata": meta,
        "normalization": normaliser or {"mean": list(MEAN), "std": list(STD), "note": "hard-coded in the reference"},
        "architecture_version": 2,
    }


def pretrain_config(backbone: BackboneConfig, task: str, **overrides) -> PretrainConfig:
    """The pretraining config a pretraining export records, for an imported model of `task`."""
    # model_dir is required by the config and unused here: an import has no run directory.
    return PretrainConfig(task=task, model_dir="", backbone=backbone, **overrides)
