"""The contrastive tasks on the functional families (a pre-activation ResNet and a WideResNet): their BatchNorm routes
(backbones.build_routed: convolutions shared, one BatchNorm per route), an export's routes restored into the one-route
classifier, and the binaries' ACL run on `tiny` exporting both signatures and fine-tuned from each route."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import run_command
from test_contrastive import FAST, SMOKE, _finetune, _images

from advss_tf import export
from advss_tf.models import post_resnet
from advss_tf.models.backbones import BackboneConfig, build_routed, build_stage4, build_trunk
from advss_tf.models.classifier import ImageClassifier
from advss_tf.models.contrastive import build_contrastive_model
from advss_tf.models.layers import RoutedPart
from advss_tf.models.post_resnet import ADVERSARIAL, CLEAN, ROUTES, route_variables
from advss_tf.training.finetuning import restore_pretrained

# The smallest of each functional family: a pre-activation ResNet (`tiny`) and a WideResNet (`wrn10_2`).
BACKBONES = ("tiny", "wrn10_2")
PARTS = ("trunk", "stage4", "projection")
SIGNATURES = {ADVERSARIAL: "features", CLEAN: "features_clean"}  # the export's signature of each route


@pytest.fixture(scope="module", params=BACKBONES)
def built(request):
    """(backbone config, ACL's network on it); tests that change its variables set what they read first."""
    keras.utils.set_random_seed(0)
    cfg = BackboneConfig(request.param)
    return cfg, build_contrastive_model(cfg)


def _is_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _norm_variables(network, route) -> list:
    """`route`'s own variables (its BatchNorms' weights and statistics), part by part: what the routes do not share."""
    others = [r for r in ROUTES if r != route]
    shared = {id(v) for part in PARTS for r in others for v in route_variables(getattr(network, part), r)}
    return [v for part in PARTS for v in route_variables(getattr(network, part), route) if id(v) not in shared]


def _statistics(network, route) -> list[np.ndarray]:
    return [v.numpy().copy() for v in _norm_variables(network, route) if "moving_" in v.path]


def test_each_route_is_the_one_route_part_with_its_own_batchnorms_and_shared_convolutions(built):
    cfg, network = built
    for part, one_route in (("trunk", build_trunk(cfg)), ("stage4", build_stage4(cfg))):
        routed = getattr(network, part)
        assert isinstance(routed, RoutedPart) and routed.routes == ROUTES
        models = [routed.route_model(route) for route in ROUTES]
        for route, model in zip(ROUTES, models, strict=True):  # the one-route graph, its BatchNorms renamed per route
            names = [f"{layer.name}_{route}" if _is_norm(layer) else layer.name for layer in one_route.layers]
            assert [layer.name for layer in model.layers] == names
            for mine, its in zip(model.layers, one_route.layers, strict=True):  # BatchNorms of the same class, settings
                if _is_norm(its):
                    assert type(mine) is type(its) and mine.get_config() == {**its.get_config(), "name": mine.name}
        for a, b in zip(*(model.layers[1:] for model in models), strict=True):  # after each model's own input
            assert (a is not b) if _is_norm(a) else (a is b), a.name  # every layer shared but the BatchNorms
        # Parameters: the one-route part's, plus one more set of BatchNorm weights and statistics per BatchNorm.
        norms = sum(layer.count_params() for layer in one_route.layers if _is_norm(layer))
        assert norms > 0 and routed.count_params() == one_route.count_params() + norms
    assert network.projection.units == cfg.feature_dim  # ACL's head, as wide as the backbone's features


def test_the_routes_differ_in_eval_mode_only_by_their_batchnorms(built):
    _, network = built
    x = _images(4)
    rng = np.random.default_rng(1)
    for v in _norm_variables(network, ADVERSARIAL):  # statistics and affine weights of the adversarial route
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    assert not np.allclose(network(x, route=CLEAN).numpy(), network(x, route=ADVERSARIAL).numpy(), atol=1e-3)
    for c, a in zip(_norm_variables(network, CLEAN), _norm_variables(network, ADVERSARIAL), strict=True):
        c.assign(a)
    for fn in (network, network.features):  # the same convolutions: equal once the BatchNorms are
        np.testing.assert_array_equal(fn(x, route=CLEAN).numpy(), fn(x, route=ADVERSARIAL).numpy())


def test_training_on_a_route_moves_only_its_statistics(built):
    _, network = built
    for route in ROUTES:
        (other,) = [r for r in ROUTES if r != route]
        before = {r: _statistics(network, r) for r in ROUTES}
        network(_images(8, seed=2), training=True, route=route)
        after = {r: _statistics(network, r) for r in ROUTES}
        assert all(not np.array_equal(b, a) for b, a in zip(before[route], after[route], strict=True)), route
        assert all(np.array_equal(b, a) for b, a in zip(before[other], after[other], strict=True)), route


def test_finetuning_restores_either_route_into_the_one_route_classifier(built, tmp_path):
    cfg, network = built
    rng = np.random.default_rng(3)
    for v in _norm_variables(network, CLEAN) + _norm_variables(network, ADVERSARIAL):  # distinct per route
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    # What `restore_pretrained` reads of an export: its variables, under the parts' names (no signatures to trace).
    path = str(tmp_path / "export")
    tf.train.Checkpoint(**network.checkpoint_items).write(os.path.join(path, "variables", "variables"))
    info = {"parts": list(PARTS), "routes": list(ROUTES)}
    x = _images(2)
    for route in ROUTES:
        classifier = ImageClassifier(cfg, 10)
        assert restore_pretrained(path, info, classifier, route) == ["stage4", "trunk"]
        np.testing.assert_array_equal(classifier.features(x).numpy(), network.features(x, route=route).numpy())
    # A route copied into a part of another network is refused.
    other = ImageClassifier(BackboneConfig("micro"), 10).trunk
    with pytest.raises(ValueError, match="not the same network"):
        post_resnet.copy_route(build_routed(cfg, "trunk", ROUTES), other, CLEAN)


def test_acl_on_a_preactivation_resnet_exports_both_routes_and_finetunes_from_each(tmp_path):
    model_dir = tmp_path / "acl"
    command = [sys.executable, "-m", "advss_tf.pretrain", f"--flagfile={SMOKE}", *FAST, "--backbone=tiny"]
    done = run_command([*command, "--train_steps=2", f"--model_dir={model_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    exported = str(model_dir / "export" / "pretrain")
    info = export.read_info(exported)
    assert info["backbone"]["name"] == "tiny" and info["routes"] == list(ROUTES)
    loaded = tf.saved_model.load(exported)
    x = _images(2)
    served = {route: loaded.signatures[name](images=x)["features"].numpy() for route, name in SIGNATURES.items()}
    assert served[ADVERSARIAL].shape == (2, BackboneConfig("tiny").feature_dim)
    assert not np.allclose(served[CLEAN], served[ADVERSARIAL])  # the routes' statistics differ
    # Each route restored into the one-route classifier gives what the export serves for it ...
    for route in ROUTES:
        classifier = ImageClassifier(BackboneConfig.from_dict(info["backbone"]), 10)
        restore_pretrained(exported, info, classifier, route)
        np.testing.assert_allclose(classifier.features(x).numpy(), served[route], rtol=1e-5, atol=1e-6)
    # ... and the binary fine-tunes from the one it is told (the default, adversarial, is test_contrastive's).
    done = _finetune(exported, tmp_path / "ft", f"--pretrained_route={CLEAN}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"its {CLEAN} BatchNorm route" in done.stderr
