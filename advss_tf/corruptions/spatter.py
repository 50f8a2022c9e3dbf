"""Spatter (an extra CIFAR-10-C corruption): water drops at severities 1-3, mud at 4-5.

The water recipe runs through OpenCV in the reference (Canny edges, a chamfer distance transform, histogram
equalisation, 3x3 box filters); the functions below reproduce those OpenCV operations in NumPy, integer
arithmetic and rounding included, so the drop outlines come out as the published set's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from advss_tf.corruptions.blur import gaussian

# (loc, scale, sigma, threshold, intensity, mud)
_SPATTER = (
    (0.62, 0.1, 0.7, 0.7, 0.5, False),
    (0.65, 0.1, 0.8, 0.7, 0.5, False),
    (0.65, 0.3, 1, 0.69, 0.5, False),
    (0.65, 0.1, 0.7, 0.69, 0.6, True),
    (0.65, 0.1, 0.5, 0.68, 0.6, True),
)
_WATER = np.array([175, 238, 238], np.float32) / 255  # pale turquoise
_MUD = np.array([63, 42, 20], np.float32) / 255
# The reference's emboss-like kernel for the drop shading.
_SHADE = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
# cv2.distanceTransform(DIST_L2, 5): chamfer weights (axial, diagonal, knight's move) in 16-bit fixed point.
_CHAMFER = tuple(int(round(w * 65536)) for w in (1.0, 1.4, 2.1969))
_FAR = 1 << 40


def spatter(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Thresholded smoothed noise drawn on the image as shaded water drops or as opaque mud."""
    loc, scale, sigma, threshold, intensity, mud = _SPATTER[severity - 1]
    x = images.astype(np.float32) / 255.0
    liquid = gaussian(np.stack([r.normal(loc, scale, size=x.shape[1:3]) for r in rngs]), sigma)
    liquid[liquid < threshold] = 0
    if mud:
        mask = gaussian((liquid > threshold).astype(np.float32), intensity)
        mask[mask < 0.8] = 0
        mask = mask[..., None]
        return np.clip(x * (1 - mask) + _MUD * mask, 0, 1) * 255
    # The reference casts to uint8 unclipped; values above 1 wrap around (x86 behaviour, made explicit here).
    layer = (liquid * 255).astype(np.int64).astype(np.uint8)
    # The reference's OpenCV pipeline: distance to the drop outlines capped at 20, 3x3 mean truncated to uint8,
    # histogram equalisation, emboss saturated to uint8, 3x3 mean rounded; it shades the drops.
    dist = np.minimum(chamfer_distance(canny(layer, 50, 150)), 20)
    dist = (box3_sum(dist.astype(np.float64)) * (1.0 / 9)).astype(np.float32).astype(np.uint8)
    dist = equalize_hist(dist)
    dist = np.clip(correlate3(dist.astype(np.int64), _SHADE), 0, 255)
    dist = ((box3_sum(dist) + 4) // 9).astype(np.float32)  # cv2.blur on uint8 rounds
    drops = layer * dist
    peak = drops.max(axis=(1, 2), keepdims=True)
    # All-dry images (no value over the threshold) would divide 0 by 0 in the reference; they stay unchanged.
    drops = np.where(peak > 0, drops / np.where(peak > 0, peak, 1), 0).astype(np.float32) * np.float32(intensity)
    return np.clip(x + drops[..., None] * _WATER, 0, 1) * 255


def correlate3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """cv2.filter2D with a 3x3 kernel (a correlation, reflect-101 border) on each image of ``[N, H, W]``."""
    return ndimage.correlate(x, kernel[None], mode="mirror")


def box3_sum(x: np.ndarray) -> np.ndarray:
    """The 3x3 box sum of each image of ``[N, H, W]`` with a reflect-101 border (cv2.blur before its division)."""
    return correlate3(x, np.ones((3, 3), x.dtype))


def canny(images: np.ndarray, low: int, high: int) -> np.ndarray:
    """cv2.Canny(aperture 3, L1 gradient) on each uint8 image of ``[N, H, W]``: a boolean edge map.

    3x3 Sobel gradients (replicated border), non-maximum suppression along the gradient quantised to 0/45/90/135
    degrees with OpenCV's fixed-point tan(22.5) test and tie rules, then hysteresis: weak pixels (magnitude above
    ``low``) are kept when 8-connected to a strong one (above ``high``).
    """
    p = np.pad(images.astype(np.int64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    dy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    magnitude = np.abs(dx) + np.abs(dy)
    m = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))  # OpenCV pads the magnitude with zeros
    centre = m[:, 1:-1, 1:-1]
    up, down = m[:, :-2, 1:-1], m[:, 2:, 1:-1]
    left, right = m[:, 1:-1, :-2], m[:, 1:-1, 2:]
    tg22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    ax, ay = np.abs(dx), np.abs(dy) << 15
    tg22x = ax * tg22
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg22x + (ax << 16))
    same_sign = (dx ^ dy) >= 0  # gradient along the main diagonal: compare up-left and down-right
    diagonal_max = np.where(
        same_sign,
        (centre > m[:, :-2, :-2]) & (centre > m[:, 2:, 2:]),
        (centre > m[:, :-2, 2:]) & (centre > m[:, 2:, :-2]),
    )
    local_max = np.where(
        horizontal,
        (centre > left) & (centre >= right),
        np.where(vertical, (centre > up) & (centre >= down), diagonal_max),
    )
    weak = local_max & (magnitude > low)
    strong = weak & (magnitude > high)
    # One 3D labelling with no links across images: 8-connected components within each image.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    labels, count = ndimage.label(weak, structure=structure)
    keep = np.zeros(count + 1, bool)
    keep[labels[strong]] = True
    keep[0] = False
    return keep[labels]


def chamfer_distance(edges: np.ndarray) -> np.ndarray:
    """cv2.distanceTransform(255 - edges, DIST_L2, 5) for boolean edge maps ``[N, H, W]``: float32 distances.

    OpenCV's two passes with the 5x5 chamfer mask in 16-bit fixed point. Each row's left (right) neighbour term is a
    running minimum, ``d[j] = min_k (e[k] + a (j - k))``, so a row is one cumulative minimum, exact in integers.
    """
    axial, diagonal, knight = _CHAMFER
    n, height, width = edges.shape
    d = np.full((n, height + 4, width + 4), _FAR, np.int64)  # two rows/columns of "far" border each side
    steps = axial * np.arange(width)
    # Forward pass: top to bottom, neighbours above and to the left.
    for i in range(2, height + 2):
        best = np.minimum.reduce(
            [
                d[:, i - 2, 1:-3] + knight,
                d[:, i - 2, 3:-1] + knight,
                d[:, i - 1, :-4] + knight,
                d[:, i - 1, 1:-3] + diagonal,
                d[:, i - 1, 2:-2] + axial,
                d[:, i - 1, 3:-1] + diagonal,
                d[:, i - 1, 4:] + knight,
            ]
        )
        best = np.where(edges[:, i - 2], 0, best)
        d[:, i, 2:-2] = np.minimum.accumulate(best - steps, axis=1) + steps
    # Backward pass: bottom to top, neighbours below and to the right.
    for i in range(height + 1, 1, -1):
        best = np.minimum.reduce(
            [
                d[:, i, 2:-2],
                d[:, i + 2, 3:-1] + knight,
                d[:, i + 2, 1:-3] + knight,
                d[:, i + 1, 4:] + knight,
                d[:, i + 1, 3:-1] + diagonal,
                d[:, i + 1, 2:-2] + axial,
                d[:, i + 1, 1:-3] + diagonal,
                d[:, i + 1, :-4] + knight,
            ]
        )
        reverse = best[:, ::-1]
        d[:, i, 2:-2] = (np.minimum.accumulate(reverse - steps, axis=1) + steps)[:, ::-1]
    return (d[:, 2:-2, 2:-2] / 65536).astype(np.float32)


def equalize_hist(images: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist on each uint8 image of ``[N, H, W]``."""
    n = len(images)
    flat = images.reshape(n, -1)
    total = flat.shape[1]
    hist = np.stack([np.bincount(row, minlength=256) for row in flat])
    first = np.argmax(hist > 0, axis=1)
    first_count = hist[np.arange(n), first]
    cumulative = np.cumsum(hist, axis=1) - first_count[:, None]  # counts after the first occupied bin
    # OpenCV scales in float32 and rounds half to even; one-valued images map to their value.
    scale = np.float32(255) / np.maximum(total - first_count, 1).astype(np.float32)
    lut = np.clip(np.rint(cumulative.astype(np.float32) * scale[:, None]), 0, 255).astype(np.uint8)
    lut[np.arange(256)[None, :] < first[:, None]] = 0
    constant = first_count == total
    lut[constant] = first[constant, None].astype(np.uint8)
    return np.take_along_axis(lut, flat.astype(np.intp), axis=1).reshape(images.shape)
