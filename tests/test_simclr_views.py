"""SimCLR views (pretext/simclr_views.py): a pure function of (images, seed), torchvision's sampling, PIL's pixels."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from advss_tf.pretext import simclr_views as sv

SEED = tf.constant([3, 7], tf.int64)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Smooth-ish content (a gradient plus noise), so that crops and colour changes are visible and resampling errors
    # are not all at full contrast.
    ramp = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    base = ramp[None, :, None, None] * ramp[None, None, :, None] * rng.uniform(0.3, 1.0, (6, 1, 1, 3))
    return np.clip(base + rng.uniform(-0.15, 0.15, (6, 16, 16, 3)), 0.0, 1.0).astype(np.float32)


def _views(images, seed=SEED, **kwargs):
    return {k: v.numpy() for k, v in sv.simclr_views(tf.constant(images), seed, **kwargs).items()}


def test_views_have_the_input_shape_stay_in_range_and_differ(images):
    out = _views(images)
    assert set(out) == {"view1", "view2"}
    for v in out.values():
        assert v.shape == images.shape and v.dtype == np.float32
        assert v.min() >= 0.0 and v.max() <= 1.0
    assert all(not np.allclose(out["view1"][i], out["view2"][i]) for i in range(len(images)))
    assert all(not np.allclose(out["view1"][i], images[i]) for i in range(len(images)))


def test_views_are_a_pure_function_of_the_seed(images):
    a, b = _views(images), _views(images)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = _views(images, seed=tf.constant([3, 8], tf.int64))
    assert not np.allclose(a["view1"], c["view1"])


def test_strength_zero_leaves_only_the_flip(images):
    """DynACL's reload(0): crop scale (1, 1) is the whole image (PIL's resize at the same size copies), jitter and
    grayscale have probability 0, the flip keeps p = 0.5."""
    out = _views(images, strength=0.0)
    flipped = 0
    for v in out.values():
        for i in range(len(images)):
            same, mirror = np.array_equal(v[i], images[i]), np.array_equal(v[i], images[i, :, ::-1])
            assert same or mirror
            flipped += mirror
    assert 0 < flipped < 2 * len(images)


def test_traced_views_are_the_eager_ones_and_strength_does_not_retrace(images):
    traces = []

    @tf.function
    def views(x, strength):
        traces.append(1)
        return sv.simclr_views(x, SEED, strength=strength)["view1"]

    x = tf.constant(images)
    np.testing.assert_allclose(views(x, tf.constant(1.0)).numpy(), _views(images)["view1"], atol=1e-6)
    views(x, tf.constant(0.5))
    assert len(traces) == 1


def test_crop_boxes_follow_torchvision_sampling():
    n = 4000
    top, left, h, w = (t.numpy() for t in sv.crop_boxes(32, 32, n, 1.0, SEED))
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert (top >= 0).all() and (left >= 0).all()
    area = h * w / 1024.0
    assert area.min() >= 0.1 - 0.02 and area.max() <= 1.0  # scale (0.1, 1): ACL's, up to the rounding of h and w
    ratio = w / h
    assert ratio.min() >= 0.7 and ratio.max() <= 1.45  # (3/4, 4/3) up to the rounding of h and w
    assert np.abs(np.median(area) - 0.55) < 0.1  # area fraction ~ U(0.1, 1), where every try fits
    half = sv.crop_boxes(32, 32, n, 0.5, SEED)
    assert (half[2].numpy() * half[3].numpy() / 1024.0).min() >= 0.55 - 0.05  # scale (1 - 0.9·0.5, 1)


def test_fallback_is_the_central_crop_of_the_clamped_ratio():
    # A 32x8 image: no try with area fraction ≥ 0.8 and ratio ≤ 4/3 fits in width 8, so every box is the fallback.
    top, left, h, w = (t.numpy() for t in sv.crop_boxes(32, 8, 16, 0.2, SEED))
    np.testing.assert_array_equal(w, 8)
    np.testing.assert_array_equal(h, round(8 / 0.75))
    np.testing.assert_array_equal(top, (32 - 11) // 2)
    np.testing.assert_array_equal(left, 0)


@pytest.mark.parametrize("interpolation, resample", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
def test_resampling_matches_pil(images, interpolation, resample):
    """PIL's crop(box).resize(size, filter), on the 8-bit image, within its rounding."""
    x = np.round(images * 255.0) / 255.0
    n = len(x)
    top, left, h, w = sv.crop_boxes(16, 16, n, 1.0, SEED)
    ours = sv.resample_crops(tf.constant(x), top, left, h, w, interpolation).numpy()
    for i in range(n):
        t, l_, hh, ww = (int(v[i]) for v in (top, left, h, w))
        pil = Image.fromarray(np.round(x[i] * 255).astype(np.uint8)).crop((l_, t, l_ + ww, t + hh))
        theirs = np.asarray(pil.resize((16, 16), resample), np.float32) / 255.0
        assert np.abs(ours[i] - theirs).max() <= 1.5 / 255.0


@pytest.mark.parametrize(
    "adjust, enhance",
    [
        (sv.adjust_brightness, ImageEnhance.Brightness),
        (sv.adjust_contrast, ImageEnhance.Contrast),
        (sv.adjust_saturation, ImageEnhance.Color),
    ],
)
def test_colour_adjustments_match_pil(images, adjust, enhance):
    x = np.round(images * 255.0) / 255.0
    factors = np.array([0.6, 0.8, 1.0, 1.2, 1.4, 0.7], np.float32)
    ours = adjust(tf.constant(x), tf.constant(factors)).numpy()
    for i, f in enumerate(factors):
        pil = enhance(Image.fromarray(np.round(x[i] * 255).astype(np.uint8))).enhance(float(f))
        theirs = np.asarray(pil, np.float32) / 255.0
        assert np.abs(ours[i] - theirs).max() <= 1.5 / 255.0


def test_hue_rotation_and_grayscale():
    primaries = tf.constant([[[[1.0, 0.0, 0.0]]], [[[0.0, 1.0, 0.0]]]])
    np.testing.assert_allclose(sv.adjust_hue(primaries, tf.constant([1 / 3, -1 / 3])).numpy().reshape(2, 3),
                               [[0, 1, 0], [1, 0, 0]], atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(sv.grayscale(primaries).numpy().ravel(), [0.299, 0.587], atol=1e-6)


def test_jitter_applies_each_images_factors_in_its_own_order(images):
    x = tf.constant(images)
    factors, order = (t.numpy() for t in sv.jitter_parameters(len(images), 1.0, SEED))
    out = sv.color_jitter(x, 1.0, SEED).numpy()
    for i in range(len(images)):
        expected = x[i : i + 1]
        for k in order[i]:
            expected = sv.ADJUSTMENTS[k](expected, tf.constant(factors[i : i + 1, k]))
        np.testing.assert_allclose(out[i], expected[0].numpy(), atol=1e-6)
    many_factors, many_orders = (t.numpy() for t in sv.jitter_parameters(2000, 1.0, SEED))
    assert len({tuple(o) for o in many_orders}) == 24  # every order of the four occurs
    assert many_factors[:, :3].min() >= 0.6 and many_factors[:, :3].max() <= 1.4
    assert np.abs(many_factors[:, 3]).max() <= 0.1 and many_factors[:, 3].min() < -0.09
    half = sv.jitter_parameters(2000, 0.5, SEED)[0].numpy()
    assert half[:, :3].min() >= 0.8 and half[:, :3].max() <= 1.2 and np.abs(half[:, 3]).max() <= 0.05


def test_unknown_interpolation_is_refused(images):
    with pytest.raises(ValueError, match="bicubic, bilinear"):
        sv.simclr_views(tf.constant(images), SEED, interpolation="nearest")
