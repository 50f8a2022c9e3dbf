"""RGB <-> HSV on [0, 1] floats with skimage.color's conventions, which the reference brightness/saturate use."""

from __future__ import annotations

import numpy as np

_SECTOR_CHANNELS = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in [0, 1] -> HSV in [0, 1]; hue and saturation are 0 where the pixel is grey."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    grey = delta == 0
    safe_delta = np.where(grey, 1.0, delta)
    saturation = np.where(grey, 0.0, delta / np.where(value == 0, 1.0, value))
    # skimage assigns red, then green, then blue: where two channels tie for the maximum the later one wins.
    hue = np.where(r == value, (g - b) / safe_delta, 0.0)
    hue = np.where(g == value, 2.0 + (b - r) / safe_delta, hue)
    hue = np.where(b == value, 4.0 + (r - g) / safe_delta, hue)
    hue = np.where(grey, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``[..., 3]`` HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = sector.astype(np.uint8) % 6
    # Which of (v, t, p, q) each of R, G, B takes in each of the six hue sectors.
    return np.take_along_axis(np.stack([v, t, p, q], axis=-1), _SECTOR_CHANNELS[sector], axis=-1)
