"""Blur corruptions of CIFAR-10-C: defocus, glass, motion, zoom (headline) and gaussian (extra).

Also the filters the weather corruptions share: skimage-style Gaussian smoothing, ImageMagick's motion blur and
the centre zoom.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
# (sigma, max_delta, iterations)
_GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
# (radius, alias_blur)
_DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
# (radius, sigma) of ImageMagick's -motion-blur
_MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
# zoom factors are np.arange(1, end, 0.01)
_ZOOM_BLUR_END = (1.06, 1.11, 1.16, 1.21, 1.26)


def gaussian(x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian (same defaults) on each image of a batch ``[N, H, W(, C)]``: rows and columns only."""
    return ndimage.gaussian_filter(x, sigma, mode=mode, truncate=truncate, axes=(1, 2))


def magick_motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's MotionBlurImage on each 8-bit image of ``x [N, H, W, C]`` at its own angle in degrees.

    A one-sided Gaussian of ``2 * ceil(radius) + 1`` taps along the angle, pixel offsets rounded half down and the
    image edge repeated (ImageMagick's default virtual pixels). Returns the 8-bit PNG values the reference reads
    back, as floats.
    """
    width = int(2 * np.ceil(radius) + 1)
    taps = np.arange(width)
    kernel = np.exp(-(taps**2) / (2.0 * sigma * sigma)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    radians = np.pi * np.asarray(angles, np.float64)[:, None] / 180.0
    point_x, point_y = width * np.sin(radians), width * np.cos(radians)
    norm = np.hypot(point_x, point_y)
    offset_cols = np.ceil(taps * point_y / norm - 0.5).astype(np.int64)
    offset_rows = np.ceil(taps * point_x / norm - 0.5).astype(np.int64)
    n, n_rows, n_cols = x.shape[:3]
    pixels = x.reshape(n * n_rows * n_cols, -1)
    first_pixel = (np.arange(n) * (n_rows * n_cols))[:, None, None]
    out = np.zeros(x.shape, np.float64)
    for i in range(width):
        rows = np.clip(np.arange(n_rows) + offset_rows[:, i : i + 1], 0, n_rows - 1)
        cols = np.clip(np.arange(n_cols) + offset_cols[:, i : i + 1], 0, n_cols - 1)
        # One flat take is a few times faster than indexing with three arrays.
        index = first_pixel + rows[:, :, None] * n_cols + cols[:, None, :]
        out += kernel[i] * np.take(pixels, index, axis=0).reshape(x.shape)
    # ImageMagick Q16 rounds the sum to a 16-bit quantum (8-bit value x 257) and its PNG writer truncates that to
    # 8 bits: this matches ImageMagick 6.9 pixel for pixel, where plain rounding is off by one on half the pixels.
    return np.floor(np.floor(out * 257 + 0.5) / 257)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zooms each image of ``x [N, H, H, ...]`` into its centre by ``factor``, keeping its size.

    The reference's ``scipy.ndimage.zoom(crop, factor, order=1)`` (corner-aligned bilinear) done as one matrix per
    axis: the same weights in float64, several times faster than zoom on a 4-D batch.
    """
    size = x.shape[1]
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed_size = int(round(crop * factor))
    trim = (zoomed_size - size) // 2
    coords = np.arange(zoomed_size)[trim : trim + size] * ((crop - 1) / (zoomed_size - 1))
    lower = np.minimum(np.floor(coords).astype(np.int64), crop - 1)
    frac = coords - lower
    weights = np.zeros((size, crop))
    weights[np.arange(size), lower] = 1 - frac
    inside = lower + 1 < crop  # the last sample may land on the edge: no upper tap
    weights[np.arange(size)[inside], lower[inside] + 1] = frac[inside]
    region = np.moveaxis(x[:, top : top + crop, top : top + crop].astype(np.float64), (1, 2), (-2, -1))
    return np.moveaxis(weights @ region @ weights.T, (-2, -1), (1, 2)).astype(x.dtype)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a normalised disk on the grid -8..8, anti-aliased by a 3x3 Gaussian (float32 [17, 17])."""
    coords = np.arange(-8, 9)  # every CIFAR radius is <= 8, where the reference fixes this grid and a 3x3 blur
    xx, yy = np.meshgrid(coords, coords)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, np.float32)
    disk /= disk.sum()
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2.0 * alias_blur**2))
    taps = (taps / taps.sum()).astype(np.float32)
    # cv2.GaussianBlur(ksize=(3, 3)) is this separable 3-tap filter with a reflect-101 (scipy "mirror") border.
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, taps, axis=axis, mode="mirror")
    return disk


def gaussian_blur(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Gaussian smoothing of sigma pixels."""
    del rngs  # deterministic
    return np.clip(gaussian(images / 255.0, _GAUSSIAN_BLUR_SIGMA[severity - 1]), 0, 1) * 255


def glass_blur(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Blur, move pixels by up to one place, blur again.

    The reference walks rows and columns 31 -> 2 and "swaps" ``x[h, w]`` with ``x[h + dy, w + dx]`` where
    ``dx, dy = randint(-1, 1)`` lie in {-1, 0}; the NumPy tuple swap of two views copies the neighbour into
    ``x[h, w]`` and leaves the neighbour as it was. Every neighbour read lies up or left, not yet visited, so one
    pass is exactly a gather from the pass's input, done here for the whole batch at once.
    """
    sigma, max_delta, iterations = _GLASS_BLUR[severity - 1]
    x = (gaussian(images / 255.0, sigma) * 255).astype(np.uint8)
    size = x.shape[1]
    inner = np.arange(max_delta + 1, size - max_delta + 1)  # rows/columns 2..31 (max_delta is 1 at every severity)
    lo, hi = inner[0], inner[-1] + 1
    batch = np.arange(len(x))[:, None, None]
    for _ in range(iterations):
        shifts = np.stack([r.integers(-max_delta, max_delta, size=(2, len(inner), len(inner))) for r in rngs])
        rows = inner[:, None] + shifts[:, 0]
        cols = inner[None, :] + shifts[:, 1]
        x[:, lo:hi, lo:hi] = x[batch, rows, cols]
    return np.clip(gaussian(x / 255.0, sigma), 0, 1) * 255


def defocus_blur(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Convolution with an anti-aliased disk (cv2.filter2D, reflect-101 border)."""
    del rngs  # deterministic
    kernel = disk_kernel(*_DEFOCUS_BLUR[severity - 1])
    # The 17x17 kernel is zero outside a few central taps: cropping those zeros gives the same sums, faster.
    support = np.nonzero(kernel.any(axis=0))[0]
    kernel = kernel[support[0] : support[-1] + 1, support[0] : support[-1] + 1]
    blurred = ndimage.correlate(images / 255.0, kernel[None, :, :, None].astype(np.float64), mode="mirror")
    return np.clip(blurred, 0, 1) * 255


def motion_blur(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """ImageMagick motion blur at an angle drawn from U(-45, 45) degrees."""
    radius, sigma = _MOTION_BLUR[severity - 1]
    angles = np.array([r.uniform(-45, 45) for r in rngs])
    return magick_motion_blur(images.astype(np.float64), radius, sigma, angles)


def zoom_blur(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Mean of the image and its centre zooms by 1, 1.01, ... (float32, as the reference)."""
    del rngs  # deterministic
    x = (images / 255.0).astype(np.float32)
    factors = np.arange(1, _ZOOM_BLUR_END[severity - 1], 0.01)  # its float rounding adds the end point: kept
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255
