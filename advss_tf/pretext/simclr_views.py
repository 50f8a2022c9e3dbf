"""SimCLR's two views of each image, as ACL / DynACL / AIR draw them with torchvision, in stateless per-image TF ops.

One view of an image is, in this order (ACL `train_simCLR.py:73-82`; DynACL `train_DynACL.py:452-465`):

1. `RandomResizedCrop(size, scale=(1 - 0.9·s, 1), ratio=(3/4, 4/3))` back to the input size — torchvision's
   sampling (ten tries of an area fraction and a log-uniform aspect ratio, then the central fallback), resampled as
   PIL does (`crop(box).resize(size, BICUBIC)` for ACL and AIR, BILINEAR for DynACL: `interpolation`);
2. `RandomHorizontalFlip(p=0.5)` — not scaled by the strength (DynACL: "No need to decay horizontal flip");
3. with probability 0.8·s, `ColorJitter(0.4·s, 0.4·s, 0.4·s, 0.1·s)`: brightness, contrast, saturation and hue
   factors drawn uniformly, applied in a random order per image, as torchvision;
4. with probability 0.2·s, `RandomGrayscale` (ITU-R 601 luma, three channels).

`s` is DynACL's augmentation strength in [0, 1] (1: ACL's views; 0: the crop is the whole image and only the flip is
left). Each image's draws come from the seed alone, so a resumed run sees the same views. The arithmetic is float
where PIL rounds to 8 bits after every operation: the two differ by at most a few 1/255 steps.
"""

from __future__ import annotations

import math

import tensorflow as tf

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop default (ACL and DynACL leave it)
MAX_CROP_SCALE = 1.0
CROP_SCALE_SPAN = 0.9  # scale=(1.0 - 0.9 * strength, 1.0): ACL train_simCLR.py:77, DynACL train_DynACL.py:459
CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params
FLIP_PROB = 0.5
JITTER_PROB = 0.8  # RandomApply(..., p=0.8 * strength)
JITTER = (0.4, 0.4, 0.4, 0.1)  # ColorJitter(brightness, contrast, saturation, hue), each times the strength
GRAY_PROB = 0.2  # RandomGrayscale(p=0.2 * strength)
LUMA = (0.299, 0.587, 0.114)  # PIL's convert("L")
INTERPOLATIONS = ("bicubic", "bilinear")


def _bicubic(x: tf.Tensor) -> tf.Tensor:
    """PIL's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _triangle(x: tf.Tensor) -> tf.Tensor:
    """PIL's bilinear kernel, support 1."""
    return tf.maximum(1.0 - tf.abs(x), 0.0)


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


def _resample_axis(images: tf.Tensor, start: tf.Tensor, length: tf.Tensor, axis: int, interpolation: str):
    """Resamples each image's window [start, start + length) along `axis` (1 rows, 2 columns) to the axis' full
    size, as PIL's `resize` does when it enlarges (or keeps) a crop: output pixel k samples the window at
    (k + 0.5)·length/size, taps outside the window are dropped and the weights renormalised."""
    kernel, support = _FILTERS[interpolation]
    size = images.shape[axis]
    scale = length / size  # [N], ≤ 1: a crop never exceeds the image, which is also the output size
    center = (tf.range(size, dtype=tf.float32)[None, :] + 0.5) * scale[:, None]  # [N, size], window coordinates
    first = tf.maximum(tf.math.floor(center - support + 0.5), 0.0)  # C's (int) truncation, then clamped at 0
    last = tf.minimum(tf.math.floor(center + support + 0.5), length[:, None])  # exclusive
    taps = int(2 * support) + 1
    x = first[..., None] + tf.range(taps, dtype=tf.float32)  # [N, size, taps]
    weights = kernel(x + 0.5 - center[..., None]) * tf.cast(x < last[..., None], tf.float32)
    weights /= tf.reduce_sum(weights, axis=-1, keepdims=True)
    index = tf.cast(start[:, None, None] + tf.minimum(x, length[:, None, None] - 1.0), tf.int32)
    out = 0.0
    for t in range(taps):
        picked = tf.gather(images, index[..., t], axis=axis, batch_dims=1)
        w = weights[..., t]
        out += picked * (w[:, :, None, None] if axis == 1 else w[:, None, :, None])
    return out


def crop_boxes(height: int, width: int, batch: tf.Tensor, strength, seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """torchvision's `RandomResizedCrop.get_params` per image: float (top, left, crop height, crop width), each [N].

    Ten tries of (area fraction ~ U(1 - 0.9·strength, 1), log aspect ratio ~ U(log 3/4, log 4/3)); the first whose
    rounded size fits is taken, at a uniform position; if none fits, the central crop of the clamped ratio.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    min_scale = MAX_CROP_SCALE - CROP_SCALE_SPAN * strength
    shape = tf.stack([batch, CROP_TRIES])
    area = float(height * width) * tf.random.stateless_uniform(shape, seeds[0], min_scale, MAX_CROP_SCALE)
    log_ratio = tf.random.stateless_uniform(shape, seeds[1], math.log(RATIO[0]), math.log(RATIO[1]))
    ratio = tf.exp(log_ratio)
    w = tf.round(tf.sqrt(area * ratio))  # round half to even, as Python's round
    h = tf.round(tf.sqrt(area / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    h, w = tf.gather(h, first, batch_dims=1), tf.gather(w, first, batch_dims=1)
    offsets = tf.random.stateless_uniform(tf.stack([batch, 2]), seeds[2])
    top = tf.math.floor(offsets[:, 0] * (height - h + 1.0))  # randint(0, height - h + 1)
    left = tf.math.floor(offsets[:, 1] * (width - w + 1.0))
    # The fallback: the whole image unless its ratio lies outside RATIO (then the central crop of the nearest one).
    in_ratio = width / height
    fallback_w = float(width) if in_ratio <= RATIO[1] else float(round(height * RATIO[1]))
    fallback_h = float(height) if in_ratio >= RATIO[0] else float(round(width / RATIO[0]))
    found = tf.reduce_any(fits, axis=1)
    h = tf.where(found, h, fallback_h)
    w = tf.where(found, w, fallback_w)
    top = tf.where(found, top, float((height - int(fallback_h)) // 2))
    left = tf.where(found, left, float((width - int(fallback_w)) // 2))
    return top, left, h, w


def random_resized_crop(images: tf.Tensor, strength, seed: tf.Tensor, interpolation: str = "bicubic") -> tf.Tensor:
    """Each image's `crop_boxes` window resampled back to the image size (PIL's resampling, in float)."""
    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    height, width = images.shape[1], images.shape[2]
    top, left, h, w = crop_boxes(height, width, tf.shape(images)[0], strength, seed)
    return resample_crops(images, top, left, h, w, interpolation)


def resample_crops(images: tf.Tensor, top, left, height, width, interpolation: str = "bicubic") -> tf.Tensor:
    """Each image's window (top, left, height, width) (float [N] each) resampled to the image size as PIL's
    `crop(box).resize(size)`: columns first, clipped (PIL's 8-bit intermediate), then rows."""
    columns = tf.clip_by_value(_resample_axis(images, left, width, 2, interpolation), 0.0, 1.0)
    return tf.clip_by_value(_resample_axis(columns, top, height, 1, interpolation), 0.0, 1.0)


def grayscale(images: tf.Tensor) -> tf.Tensor:
    """Luma [N, H, W, 1]."""
    return tf.reduce_sum(images * tf.constant(LUMA, images.dtype), axis=-1, keepdims=True)


def _blend(images: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's `Image.blend(other, images, factor)` per image, clipped to [0, 1]."""
    f = factor[:, None, None, None]
    return tf.clip_by_value(other + f * (images - other), 0.0, 1.0)


def adjust_brightness(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return _blend(images, tf.zeros_like(images), factor)


def adjust_contrast(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blend with the image's mean luma (one grey level per image, as PIL's ImageEnhance.Contrast)."""
    return _blend(images, tf.reduce_mean(grayscale(images), axis=[1, 2, 3], keepdims=True), factor)


def adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blend with the image's own grey version (PIL's ImageEnhance.Color)."""
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Rotates each image's hue by `shift` turns (torchvision's hue_factor, in [-0.5, 0.5])."""
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., :1] + shift[:, None, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1)), 0.0, 1.0)


def jitter_parameters(batch: tf.Tensor, strength, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """torchvision `ColorJitter.get_params` per image: factors [N, 4] (brightness, contrast, saturation ~
    U(max(0, 1 - j), 1 + j); hue ~ U(-j, j)) and the order [N, 4] of the four adjustments (a uniform permutation,
    as `torch.randperm(4)`; 0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform(tf.stack([batch, 4]), seeds[0])
    factors = []
    for k, j in enumerate(JITTER[:3]):
        low = tf.maximum(0.0, 1.0 - j * strength)
        factors.append(low + u[:, k] * (1.0 + j * strength - low))
    hue = JITTER[3] * strength
    factors.append(-hue + u[:, 3] * 2.0 * hue)
    order = tf.argsort(tf.random.stateless_uniform(tf.stack([batch, 4]), seeds[1]), axis=1)
    return tf.stack(factors, axis=1), order


ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images: tf.Tensor, strength, seed: tf.Tensor) -> tf.Tensor:
    """`ColorJitter(0.4·s, 0.4·s, 0.4·s, 0.1·s)` on every image, with `jitter_parameters`' factors and order."""
    factors, order = jitter_parameters(tf.shape(images)[0], strength, seed)
    for position in range(4):
        # Every adjustment on the whole batch, then each image keeps the one its order puts here.
        options = tf.stack([adjust(images, factors[:, k]) for k, adjust in enumerate(ADJUSTMENTS)], axis=1)
        images = tf.gather(options, order[:, position], axis=1, batch_dims=1)
    return images


def _where(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.where(mask[:, None, None, None], a, b)


def simclr_view(images: tf.Tensor, seed: tf.Tensor, strength=1.0, interpolation: str = "bicubic") -> tf.Tensor:
    """One SimCLR view of each image [N, H, W, 3] in [0, 1] (see the module docstring); strength: float or scalar
    tensor in [0, 1] (a tensor does not retrace when a schedule changes it)."""
    images = tf.convert_to_tensor(images, tf.float32)
    strength = tf.cast(strength, tf.float32)
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    x = random_resized_crop(images, strength, seeds[0], interpolation)
    u = tf.random.stateless_uniform(tf.stack([n, 3]), seeds[1])
    x = _where(u[:, 0] < FLIP_PROB, tf.reverse(x, axis=[2]), x)
    x = _where(u[:, 1] < JITTER_PROB * strength, color_jitter(x, strength, seeds[2]), x)
    return _where(u[:, 2] < GRAY_PROB * strength, tf.tile(grayscale(x), [1, 1, 1, 3]), x)


def simclr_views(images: tf.Tensor, seed: tf.Tensor, strength=1.0, interpolation: str = "bicubic") -> dict:
    """Pure TF: images [N, H, W, 3] in [0, 1], seed [2] → {'view1', 'view2'}: two independent views of each image
    (row i of both is image i), each `simclr_view` with its own split of the seed."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    return {
        "view1": simclr_view(images, seeds[0], strength, interpolation),
        "view2": simclr_view(images, seeds[1], strength, interpolation),
    }
