"""Digital corruptions of CIFAR-10-C: contrast, elastic transform, pixelate, JPEG (headline) and saturate (extra)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from advss_tf.corruptions.blur import gaussian
from advss_tf.corruptions.color import hsv_to_rgb, rgb_to_hsv

_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
# (alpha, sigma, affine jitter) in pixels: 32 times the reference's fractions of the image size
_ELASTIC = tuple(
    (32 * a, 32 * s, 32 * j)
    for a, s, j in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
)
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
_JPEG_QUALITY = (80, 65, 58, 50, 40)
# (scale, shift) of the HSV saturation
_SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))


def contrast(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Pulls every pixel towards its image's per-channel mean: (x - mean) * c + mean."""
    del rngs  # deterministic
    x = images / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * _CONTRAST[severity - 1] + means, 0, 1) * 255


def saturate(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Scales and shifts the HSV saturation."""
    del rngs  # deterministic
    scale, shift = _SATURATE[severity - 1]
    hsv = rgb_to_hsv(images / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def pixelate(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Box-downsamples to ``int(32 * scale)`` pixels a side and box-upsamples back (Pillow, as the reference)."""
    del rngs  # deterministic
    size = images.shape[1]
    small = int(size * _PIXELATE[severity - 1])
    box = Image.Resampling.BOX
    return np.stack(
        [np.asarray(Image.fromarray(image).resize((small, small), box).resize((size, size), box)) for image in images]
    )


def jpeg_compression(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """A JPEG round trip at the severity's quality (Pillow's encoder and defaults, as the reference)."""
    del rngs  # deterministic
    decoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY[severity - 1])
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(decoded)


def elastic_transform(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """A random affine warp (three control points jittered by up to ``jitter`` px, reflect-101 border), then a
    displacement field of uniform noise smoothed by ``sigma`` and scaled by ``alpha`` (reflect border).

    Severity 1 has no displacement field but the largest affine jitter (2.56 px): it moves pixels more than
    severity 5 does, as in the published set.
    """
    alpha, sigma, jitter = _ELASTIC[severity - 1]
    x = images.astype(np.float32) / 255.0
    n, size, _, channels = x.shape
    centre, half = size // 2, size // 3
    # (column, row) control points, as cv2.getAffineTransform takes them
    source = np.float32([[centre + half, centre + half], [centre + half, centre - half], [centre - half] * 2])
    targets, fields = [], []
    for r in rngs:
        targets.append(source + r.uniform(-jitter, jitter, size=source.shape).astype(np.float32))
        fields.append(r.uniform(-1, 1, size=(2, size, size)))
    # The affine map A with A [col, row, 1] = target at each control point; cv2.warpAffine samples the source at
    # the inverse map of each output pixel.
    homogeneous = np.concatenate([source, np.ones((3, 1), np.float32)], axis=1).astype(np.float64)
    forward = np.linalg.solve(homogeneous[None], np.stack(targets).astype(np.float64)).transpose(0, 2, 1)
    forward = np.concatenate([forward, np.tile([[[0.0, 0.0, 1.0]]], (n, 1, 1))], axis=1)
    inverse = np.linalg.inv(forward)[:, :2]
    index, rows, cols, chans = np.meshgrid(
        np.arange(n), np.arange(size), np.arange(size), np.arange(channels), indexing="ij"
    )
    src_cols = inverse[:, 0, 0, None, None, None] * cols + inverse[:, 0, 1, None, None, None] * rows
    src_rows = inverse[:, 1, 0, None, None, None] * cols + inverse[:, 1, 1, None, None, None] * rows
    src_cols += inverse[:, 0, 2, None, None, None]
    src_rows += inverse[:, 1, 2, None, None, None]
    warped = ndimage.map_coordinates(x, [index, src_rows, src_cols, chans], order=1, mode="mirror")
    fields = np.stack(fields)
    dx = (gaussian(fields[:, 0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)[..., None]
    dy = (gaussian(fields[:, 1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)[..., None]
    out = ndimage.map_coordinates(warped, [index, rows + dy, cols + dx, chans], order=1, mode="reflect")
    return np.clip(out, 0, 1) * 255
