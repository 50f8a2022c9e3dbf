"""CIFAR-10-C generator: the 15 headline + 4 extra corruptions at 5 severities, with the CIFAR constants (SPEC §7).

A NumPy/SciPy/Pillow re-implementation of hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``, which
made the published CIFAR-10-C with skimage, OpenCV and ImageMagick. Each corruption computes a float image on the
0..255 scale that becomes uint8 by clipping and truncation, as the published set was made.

Randomness: every image gets its own ``np.random.Generator`` seeded from ``(seed, corruption, severity, a hash of
the image's pixels)``, so an image's corrupted copy depends on nothing else: not on the batch it came in, its
position or the chunking. (Two identical images therefore get identical noise.)
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable

import numpy as np

from advss_tf.corruptions import blur, digital, noise, spatter, weather
from advss_tf.errors import UsageError

HEADLINE_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = HEADLINE_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CORRUPTION_GROUPS = {"headline": HEADLINE_CORRUPTIONS, "all": ALL_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS}


def parse_corruptions(names: Iterable[str]) -> tuple[str, ...]:
    """Corruption names from `--corruptions`: names and/or the groups headline (15), extra (4), all (19).

    Raises:
      UsageError: an unknown name (the message lists the valid ones), or none given.
    """
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in CORRUPTION_GROUPS:
            out.extend(c for c in CORRUPTION_GROUPS[name] if c not in out)
        elif name in ALL_CORRUPTIONS:
            if name not in out:
                out.append(name)
        else:
            raise UsageError(
                f"unknown corruption {raw!r}; valid: {', '.join(ALL_CORRUPTIONS)}, or {', '.join(CORRUPTION_GROUPS)}"
            )
    if not out:
        raise UsageError("--corruptions is empty; give corruption names, headline, extra or all")
    return tuple(out)


def parse_severities(values: Iterable[str | int]) -> tuple[int, ...]:
    """Severities from `--severities` (1..5), sorted, without repeats.

    Raises:
      UsageError: a value that is not 1..5, or none given.
    """
    out = set()
    for raw in values:
        text = str(raw).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in SEVERITIES:
            raise UsageError(f"unknown severity {text!r}; valid: {', '.join(map(str, SEVERITIES))}")
        out.add(int(text))
    if not out:
        raise UsageError("--severities is empty; give some of 1,2,3,4,5")
    return tuple(sorted(out))


# (images uint8 [N, 32, 32, 3], severity, one generator per image) -> float [N, 32, 32, 3] on the 0..255 scale
Corruption = Callable[[np.ndarray, int, list[np.random.Generator]], np.ndarray]

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": weather.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": spatter.spatter,
    "saturate": digital.saturate,
}
# Images per call to a corruption: bounds the float temporaries (elastic_transform's coordinates are the largest).
_CHUNK = 256


def check_corruption(name: str, severity: int) -> None:
    """Raises UsageError, with the valid values, unless ``name`` and ``severity`` name a CIFAR-10-C set."""
    if name not in CORRUPTIONS:
        raise UsageError(f"unknown corruption {name!r}; valid: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise UsageError(f"unknown severity {severity!r}; valid: {', '.join(map(str, SEVERITIES))}")


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Applies one CIFAR-10-C corruption at one severity.

    Args:
      images: uint8 ``[N, 32, 32, 3]``.
      name: one of ``ALL_CORRUPTIONS``.
      severity: 1..5.
      seed: a non-negative integer; with the image's pixels it fixes every random draw.

    Returns:
      uint8 ``[N, 32, 32, 3]``.

    Raises:
      UsageError: unknown name or severity, a negative seed, or images that are not uint8 ``[N, 32, 32, 3]``.
    """
    check_corruption(name, severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise UsageError(f"CIFAR-10-C corrupts uint8 [N, 32, 32, 3] images, got {images.dtype} {list(images.shape)}")
    corruption = CORRUPTIONS[name]
    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK]
        values = corruption(chunk, int(severity), image_generators(chunk, name, int(severity), int(seed)))
        out[start : start + len(chunk)] = np.clip(values, 0, 255).astype(np.uint8)  # truncation, as published
    return out


def image_generators(images: np.ndarray, name: str, severity: int, seed: int) -> list[np.random.Generator]:
    """One generator per image, seeded from the seed, the corruption, the severity and the image's pixels."""
    name_key = zlib.crc32(name.encode())
    return [
        np.random.default_rng([seed, name_key, severity, int.from_bytes(_digest(image), "little")]) for image in images
    ]


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest()
