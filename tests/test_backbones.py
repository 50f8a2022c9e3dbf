"""The backbone registry (models/backbones.py): it knows every family, and the families know only the shared layers."""

import os

import pytest
import tensorflow as tf
from conftest import REPO
from test_import_layers import imports_of, module_sources

from advss_tf.models.backbones import BACKBONES, FAMILIES, BackboneConfig, build_stage4, build_trunk

PACKAGE = os.path.join(REPO, "advss_tf")
REGISTRY = "advss_tf.models.backbones"
SHARED = "advss_tf.models.layers"


def _defines_build_trunk(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return any(line.startswith("def build_trunk(") for line in f)


def test_the_registry_lists_every_family_module_and_every_family_has_a_backbone():
    modules = module_sources(PACKAGE)
    # A family is a module of models/ named as its FAMILIES key that builds a trunk of its own.
    families = {
        m.rsplit(".", 1)[1]
        for m, path in modules.items()
        if m.startswith("advss_tf.models.") and m != REGISTRY and _defines_build_trunk(path)
    }
    assert families == set(FAMILIES)
    assert {spec.family for spec in BACKBONES.values()} == set(FAMILIES)
    registry_imports = {target for _, target, _ in imports_of(REGISTRY, modules[REGISTRY], modules)}
    assert {f"advss_tf.models.{family}" for family in FAMILIES} <= registry_imports


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_imports_only_the_shared_layers(family):
    modules = module_sources(PACKAGE)
    module = f"advss_tf.models.{family}"
    imported = {target for _, target, _ in imports_of(module, modules[module], modules)}
    assert imported == {SHARED}, f"{module} imports {sorted(imported - {SHARED})}: only {SHARED} is allowed"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_builds_through_the_registry_with_the_widths_it_reports(family):
    # The smallest backbone of the family: the registry's widths are what its parts output.
    name = min((n for n, s in BACKBONES.items() if s.family == family), key=lambda n: sum(BACKBONES[n].planes))
    cfg = BackboneConfig(name)
    assert cfg.family == family
    trunk, stage4 = build_trunk(cfg), build_stage4(cfg, name="head_stage4")
    features = trunk(tf.zeros([1, 32, 32, 3]))
    assert features.shape[-1] == cfg.trunk_channels
    assert stage4(features).shape[-1] == cfg.feature_dim
    assert (trunk.name, stage4.name) == ("trunk", "head_stage4")
