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
    # The affine map A with A [col, row, 1] = target at each control point (cv2.getAffineTransform).
    homogeneous = np.concatenate([source, np.ones((3, 1), np.float32)], axis=1).astype(np.float64)
    forward = np.linalg.solve(homogeneous[None], np.stack(targets).astype(np.float64)).transpose(0, 2, 1)
    warped = warp_affine(x, forward)
    fields = np.stack(fields)
    dx = (gaussian(fields[:, 0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(fields[:, 1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    # Channels become batch entries: the field is the same for all three, and 3-D interpolation reads 8 taps where
    # 4-D (image, row, column, channel) reads 16; the extra taps carry zero weight, so the values are the same.
    planes = warped.transpose(0, 3, 1, 2).reshape(n * channels, size, size)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    coords = np.broadcast_arrays(
        np.arange(n * channels)[:, None, None],
        rows + np.repeat(dy, channels, axis=0),
        cols + np.repeat(dx, channels, axis=0),
    )
    out = ndimage.map_coordinates(planes, coords, order=1, mode="reflect")
    out = out.reshape(n, channels, size, size).transpose(0, 2, 3, 1)
    return np.clip(out, 0, 1) * 255


def warp_affine(x: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(INTER_LINEAR, BORDER_REFLECT_101) of each float32 image ``[N, H, W, C]`` by its forward
    ``[N, 2, 3]`` map, with OpenCV's arithmetic: the inverse map in 1/1024 px fixed point, rounded to 1/32 px for
    the bilinear weights, each of the four taps reflected about the edge pixel on its own.
    """
    m = forward.astype(np.float64)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    inv_det = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a12 = m[:, 1, 1] * inv_det, -m[:, 0, 1] * inv_det
    a21, a22 = -m[:, 1, 0] * inv_det, m[:, 0, 0] * inv_det
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    n, height, width = x.shape[:3]
    cols, rows = np.arange(width), np.arange(height)

    def fixed(v: np.ndarray) -> np.ndarray:
        return np.rint(v * 1024).astype(np.int64)  # cvRound: half to even

    # Positions in 1/32 px: (1/1024 px sums + half a 1/32 step) >> 5.
    fx = (fixed(a12[:, None] * rows + b1[:, None])[:, :, None] + 16 + fixed(a11[:, None] * cols)[:, None, :]) >> 5
    fy = (fixed(a22[:, None] * rows + b2[:, None])[:, :, None] + 16 + fixed(a21[:, None] * cols)[:, None, :]) >> 5
    ix, iy = fx >> 5, fy >> 5
    wx1 = ((fx & 31) / 32).astype(np.float32)[..., None]
    wy1 = ((fy & 31) / 32).astype(np.float32)[..., None]
    wx0, wy0 = 1 - wx1, 1 - wy1
    batch = np.arange(n)[:, None, None]

    def tap(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return x[batch, _reflect101(r, height), _reflect101(c, width)]

    return (
        tap(iy, ix) * (wy0 * wx0)
        + tap(iy, ix + 1) * (wy0 * wx1)
        + tap(iy + 1, ix) * (wy1 * wx0)
        + tap(iy + 1, ix + 1) * (wy1 * wx1)
    )


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Reflects indices about the first and last pixel (OpenCV BORDER_REFLECT_101), for overshoots below n."""
    i = np.abs(i)
    return np.where(i >= n, 2 * n - 2 - i, i)
