"""Noise corruptions of CIFAR-10-C: gaussian, shot, impulse (headline) and speckle (extra).

Every corruption here and in the sibling modules has the signature ``(images uint8 [N, H, W, 3], severity,
rngs) -> float [N, H, W, 3] on the 0..255 scale``; ``rngs`` holds one generator per image and
``advss_tf.corruptions.cifar10c.corrupt`` clips and truncates the result to uint8.
"""

from __future__ import annotations

import numpy as np

_GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
_SHOT_PHOTONS = (500, 250, 100, 75, 50)
_IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
_SPECKLE_SIGMA = (0.06, 0.10, 0.12, 0.16, 0.20)


def gaussian_noise(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """x + N(0, sigma) on the [0, 1] scale."""
    sigma = _GAUSSIAN_SIGMA[severity - 1]
    x = images / 255.0
    noise = np.stack([r.normal(scale=sigma, size=x.shape[1:]) for r in rngs])
    return np.clip(x + noise, 0, 1) * 255


def shot_noise(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Poisson(x * c) / c: photon noise with c photons at full intensity."""
    photons = _SHOT_PHOTONS[severity - 1]
    x = images / 255.0
    counts = np.stack([r.poisson(image * photons) for r, image in zip(rngs, x, strict=True)])
    return np.clip(counts / photons, 0, 1) * 255


def impulse_noise(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """Salt and pepper as skimage's ``random_noise(mode="s&p")``: each value (channels apart) flips with
    probability ``amount``, to 1 or 0 with equal odds."""
    amount = _IMPULSE_AMOUNT[severity - 1]
    x = images / 255.0
    draws = np.stack([r.random((2,) + x.shape[1:]) for r in rngs])
    flipped, salted = draws[:, 0] < amount, draws[:, 1] < 0.5
    x = np.where(flipped, salted.astype(x.dtype), x)
    return np.clip(x, 0, 1) * 255


def speckle_noise(images: np.ndarray, severity: int, rngs: list[np.random.Generator]) -> np.ndarray:
    """x + x * N(0, sigma): noise proportional to intensity."""
    sigma = _SPECKLE_SIGMA[severity - 1]
    x = images / 255.0
    noise = np.stack([r.normal(scale=sigma, size=x.shape[1:]) for r in rngs])
    return np.clip(x + x * noise, 0, 1) * 255
