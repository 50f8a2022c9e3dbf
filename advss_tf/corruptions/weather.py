"""Weather corruptions of CIFAR-10-C: snow, frost, fog and brightness (spatter, an extra, has its own module)."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from PIL import Image

from advss_tf.corruptions.blur import clipped_zoom, magick_motion_blur
from advss_tf.corruptions.color import hsv_to_rgb, rgb_to_hsv

# (loc, scale, zoom, threshold, radius, sigma, blend)
_SNOW = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
# (image weight, frost weight) on the 0..255 scale
_FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
# The reference lists six textures but draws randint(5): frost6.jpg is never used.
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
# (strength, wibble decay)
_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)


@functools.lru_cache(maxsize=1)
def frost_textures() -> tuple[np.ndarray, ...]:
    """The five frost photographs shipped with the package, shrunk x0.2 as the reference does (uint8 RGB)."""
    folder = resources.files("advss_tf.corruptions") / "frost"
    textures = []
    for name in _FROST_FILES:
        with (folder / name).open("rb") as f:
            image = np.asarray(Image.open(f).convert("RGB"))  # drops the PNGs' alpha, as cv2.imread does
        height, width = image.shape[:2]
        # cv2.resize(fx=fy=0.2, INTER_LINEAR) maps output pixel i to input 5i + 2 exactly, so it samples every
        # fifth pixel without averaging; Pillow's resize would low-pass first and give another texture.
        textures.append(np.ascontiguousarray(image[2::5, 2::5][: round(height * 0.2), : round(width * 0.2)]))
    return tuple(textures)


def plasma_fractal(rngs: list[np.random.Generator], mapsize: int = 32, wibble_decay: float = 3.0) -> np.ndarray:
    """Diamond-square height maps, one per generator, normalised to [0, 1]: float [N, mapsize, mapsize]."""
    maps = np.empty((len(rngs), mapsize, mapsize))
    maps[:, 0, 0] = 0
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        # The reference scales U(-wibble, wibble) by wibble again: the noise amplitude is wibble squared.
        noise = np.stack([r.uniform(-wibble, wibble, total.shape[1:]) for r in rngs])
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibble_decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def snow(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Thresholded noise, zoomed and motion-blurred at U(-135, -45) degrees, added with its 180-degree rotation
    to the image pushed towards its brightened luma."""
    loc, scale, zoom, threshold, radius, sigma, blend = _SNOW[severity - 1]
    x = images.astype(np.float32) / 255.0
    layer = np.stack([r.normal(loc, scale, size=x.shape[1:3]) for r in rngs])
    layer = clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    angles = np.array([r.uniform(-135, -45) for r in rngs])
    layer = magick_motion_blur(layer[..., None].astype(np.float64), radius, sigma, angles) / 255.0
    luma = _luma(x)[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, luma * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, 2, axes=(1, 2)), 0, 1) * 255


def _luma(x: np.ndarray) -> np.ndarray:
    """cv2.cvtColor(RGB2GRAY) of float32 images: 0.299 R + 0.587 G + 0.114 B, summed in OpenCV's order with
    fused multiply-adds (its x86-64 SIMD path), so the float32 result matches it bit for bit."""
    r, g, b = (x[..., i].astype(np.float64) for i in range(3))
    weight_r, weight_g, weight_b = (np.float64(np.float32(w)) for w in (0.299, 0.587, 0.114))
    luma = (g * weight_g).astype(np.float32)
    luma = (r * weight_r + luma).astype(np.float32)
    return (b * weight_b + luma).astype(np.float32)


def frost(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """A weighted sum of the image and a random crop of a random frost texture."""
    image_weight, frost_weight = _FROST[severity - 1]
    textures = frost_textures()
    size = images.shape[1]
    crops = []
    for r in rngs:
        texture = textures[r.integers(len(textures))]
        top = r.integers(0, texture.shape[0] - size)
        left = r.integers(0, texture.shape[1] - size)
        crops.append(texture[top : top + size, left : left + size])
    return np.clip(image_weight * images + frost_weight * np.stack(crops), 0, 255)


def fog(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Adds a plasma fractal, then rescales so the image's maximum stays where it was."""
    strength, wibble_decay = _FOG[severity - 1]
    x = images / 255.0
    max_value = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * plasma_fractal(rngs, mapsize=32, wibble_decay=wibble_decay)[..., None]
    return np.clip(x * max_value / (max_value + strength), 0, 1) * 255


def brightness(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Adds a constant to the HSV value."""
    del rngs  # deterministic
    hsv = rgb_to_hsv(images / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + _BRIGHTNESS[severity - 1], 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255
