"""The post-activation ResNet with dual BatchNorm (models/post_resnet.py): routes, shapes, separate statistics."""

import keras
import numpy as np
import pytest

from advss_tf.models import post_resnet
from advss_tf.models.post_resnet import ADVERSARIAL, CLEAN, DualBatchNormalization

TINY = dict(blocks=(1, 1, 1, 1), planes=(8, 16, 32, 64), stem=8)


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return post_resnet.build_post_resnet(**TINY, name="tiny_post_resnet")


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def _norms(model, route):
    return [v for v in model.weights if f"_{route}/moving_" in v.path]


def test_shapes_parts_and_parameters(tiny):
    x = _images()
    assert tiny(x, route=CLEAN).shape == (4, 64) and tiny(x).dtype == "float32"
    assert tiny.features(x, route=ADVERSARIAL).shape == (4, 64)
    assert tiny.trunk(x, route=CLEAN).shape == (4, 8, 8, 32)  # stages 1-3 at strides 1, 2, 2
    assert set(tiny.checkpoint_items) == {"trunk", "stage4", "projection"}
    # Every BatchNorm has two routes: the routes' weights are the same set, duplicated.
    clean, adversarial = _norms(tiny, CLEAN), _norms(tiny, ADVERSARIAL)
    assert len(clean) == len(adversarial) > 0
    single = post_resnet.build_post_resnet(**TINY, routes=(CLEAN,), name="single")
    bn_params = sum(int(np.prod(v.shape)) for v in tiny.weights if f"_{ADVERSARIAL}/" in v.path)
    assert tiny.count_params() == single.count_params() + bn_params


def test_routes_differ_in_eval_mode_only_by_their_statistics(tiny):
    x = _images()
    np.testing.assert_array_equal(tiny(x, route=CLEAN).numpy(), tiny(x, route=ADVERSARIAL).numpy())  # both fresh
    adv = [v for v in tiny.weights if f"_{ADVERSARIAL}/moving_mean" in v.path]
    adv[0].assign(adv[0].numpy() + 0.5)
    try:
        assert not np.allclose(tiny(x, route=CLEAN).numpy(), tiny(x, route=ADVERSARIAL).numpy())
    finally:
        adv[0].assign(adv[0].numpy() - 0.5)


def test_training_moves_only_the_named_routes_statistics():
    keras.utils.set_random_seed(1)
    model = post_resnet.build_post_resnet(**TINY, name="stats")
    before = {r: [v.numpy().copy() for v in _norms(model, r)] for r in (CLEAN, ADVERSARIAL)}
    model(_images(8, seed=1), training=True, route=CLEAN)
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before[CLEAN], _norms(model, CLEAN), strict=True)]
    assert all(moved)  # every clean BatchNorm, in the backbone and the projection head
    for b, v in zip(before[ADVERSARIAL], _norms(model, ADVERSARIAL), strict=True):
        np.testing.assert_array_equal(b, v.numpy())
    model(_images(8, seed=2), training=True, route=ADVERSARIAL)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before[ADVERSARIAL], _norms(model, ADVERSARIAL)))


def test_training_mode_normalises_with_the_batch_statistics_of_the_route():
    layer = DualBatchNormalization(name="dual")
    x = np.random.default_rng(3).normal(2.0, 3.0, (16, 5)).astype(np.float32)
    out = layer(x, training=True, route=ADVERSARIAL).numpy()
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-3)
    assert DualBatchNormalization.from_config(layer.get_config()).routes == (CLEAN, ADVERSARIAL)


def test_an_unknown_route_is_refused(tiny):
    with pytest.raises(ValueError, match="unknown BatchNorm route 'pgd'; this model has: clean, adversarial"):
        tiny(_images(1), route="pgd")
    with pytest.raises(ValueError, match="4 stages"):
        post_resnet.build_post_resnet(blocks=(1, 1, 1), planes=(8, 16, 32), stem=8)
