"""CIFAR-10-C: the generator's invariants and hand-checked formulas, the three sources, the writer tool, metrics."""

import functools
import importlib.util
import io
import os

import numpy as np
import pytest
from binaries import run_script
from conftest import REPO
from PIL import Image
from scipy import ndimage

from advss_tf.corruptions import blur, cifar10c
from advss_tf.corruptions.cifar10c import ALL_CORRUPTIONS, SEVERITIES, corrupt
from advss_tf.corruptions.sources import CIFAR10C_SOURCES, aggregate_cifar10c, load_cifar10c
from advss_tf.errors import UsageError

# No random draw at all: the seed must not matter.
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
}


@pytest.fixture(scope="module")
def images(sample_arrays):
    return sample_arrays[2][:16]


@pytest.fixture(scope="module")
def corrupted(images):
    """corrupted(name, severity, seed): the 16 images corrupted, computed once for the whole module."""

    @functools.cache
    def run(name: str, severity: int, seed: int = 0) -> np.ndarray:
        return corrupt(images, name, severity, seed)

    return run


def _mean_change(corrupted, images, name: str, severity: int) -> float:
    return float(np.abs(corrupted(name, severity).astype(np.float64) - images).mean())


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_shape_dtype_determinism_and_per_image_randomness(images, corrupted, name):
    for severity in (1, 5):
        out = corrupted(name, severity)
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, corrupt(images, name, severity, seed=0))
        # An image's corruption depends on its pixels, not on the batch around it: the writer can chunk freely.
        np.testing.assert_array_equal(out[5:9], corrupt(images[5:9], name, severity, seed=0))
    other_seed = corrupt(images, name, 5, seed=1)
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(other_seed, corrupted(name, 5))
    else:
        assert not np.array_equal(other_seed, corrupted(name, 5))


@pytest.mark.parametrize("name", [n for n in ALL_CORRUPTIONS if n != "elastic_transform"])
def test_severity_5_changes_the_image_more_than_severity_1(images, corrupted, name):
    assert _mean_change(corrupted, images, name, 5) > _mean_change(corrupted, images, name, 1) > 0


def test_elastic_severity_1_moves_pixels_more_than_severity_5(images, corrupted):
    # Severity 1's affine jitter (2.56 px) is the largest: the published set is non-monotone here, on purpose.
    change = functools.partial(_mean_change, corrupted, images, "elastic_transform")
    assert change(1) > change(5) > 0


def test_contrast_by_hand_and_by_formula(images):
    two_level = np.zeros((1, 32, 32, 3), np.uint8)
    two_level[:, :, 16:] = 200  # per-channel mean 100
    out = corrupt(two_level, "contrast", 2)  # c = 0.5: 0 -> 50, 200 -> 150
    assert np.abs(out[0, :, :16].astype(int) - 50).max() <= 1 and np.abs(out[0, :, 16:].astype(int) - 150).max() <= 1
    for severity, c in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15), strict=True):
        x = images / 255.0
        means = x.mean(axis=(1, 2), keepdims=True)
        expected = (np.clip((x - means) * c + means, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(corrupt(images, "contrast", severity), expected)


def test_brightness_and_saturate_by_hand():
    pixel = np.zeros((1, 32, 32, 3), np.uint8)
    pixel[:] = (200, 100, 50)  # HSV: v = 200/255, s = 0.75, hue in the red-to-yellow sector at f = 1/3
    grey = np.full((1, 32, 32, 3), 100, np.uint8)

    def close(out, rgb):
        return np.abs(out[0, 0, 0].astype(int) - np.array(rgb)).max() <= 1 and (out == out[0, 0, 0]).all()

    # brightness adds to v with h and s fixed: every channel scales by (v + c) / v
    assert close(corrupt(pixel, "brightness", 1), (212, 106, 53))  # v + 0.05
    assert close(corrupt(grey, "brightness", 5), (176, 176, 176))  # 100 + 0.3 * 255
    # saturate: max stays v, min = v (1 - s'), middle = v (1 - (1 - f) s')
    assert close(corrupt(pixel, "saturate", 1), (200, 170, 155))  # s' = 0.75 * 0.3
    assert close(corrupt(pixel, "saturate", 5), (200, 66, 0))  # s' = min(0.75 * 2.5 + 0.2, 1)
    assert close(corrupt(grey, "saturate", 2), (100, 100, 100))  # grey has no saturation to scale


def test_brightness_scales_rgb_by_the_value_ratio(images):
    value = images.max(axis=-1, keepdims=True) / 255.0
    for severity, c in ((1, 0.05), (5, 0.3)):
        ratio = np.minimum(value + c, 1) / np.where(value > 0, value, 1)
        expected = np.where(value > 0, images * ratio, c * 255)
        diff = np.abs(corrupt(images, "brightness", severity) - np.floor(expected + 1e-9))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def _box_matrix(src: int, dst: int) -> np.ndarray:
    """Pillow's BOX resampling src -> dst pixels: each output pixel averages the input pixels whose centres fall in
    its cell (at least one pixel wide, so enlarging picks the nearest pixel)."""
    scale = src / dst
    half = max(scale, 1) / 2
    centres = (np.arange(dst)[:, None] + 0.5) * scale
    pixels = np.arange(src)[None, :] + 0.5
    weights = ((pixels > centres - half) & (pixels <= centres + half)).astype(np.float64)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("severity, scale", list(zip(SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65), strict=True)))
def test_pixelate_is_box_down_then_box_up(images, severity, scale):
    small = int(32 * scale)
    down, up = _box_matrix(32, small), _box_matrix(small, 32)
    x = np.moveaxis(images.astype(np.float64), -1, 1)

    # Pillow resizes columns, then rows, storing uint8 (rounded half up) after each pass.
    def store(v):
        return np.floor(v + 0.5)

    reduced = store(down @ store(x @ down.T))
    expected = np.moveaxis(store(up @ store(reduced @ up.T)), 1, -1)
    np.testing.assert_array_equal(corrupt(images, "pixelate", severity), expected)


def test_jpeg_is_a_pillow_round_trip_at_the_spec_quality(images):
    for severity, quality in zip(SEVERITIES, (80, 65, 58, 50, 40), strict=True):
        buffer = io.BytesIO()
        Image.fromarray(images[3]).save(buffer, format="JPEG", quality=quality)
        np.testing.assert_array_equal(corrupt(images[3:4], "jpeg_compression", severity)[0], Image.open(buffer))


def _correlate_reflect101(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    k = kernel.shape[0] // 2
    padded = np.pad(image, ((k, k), (k, k), (0, 0)), mode="reflect")  # NumPy "reflect" is OpenCV reflect-101
    out = np.zeros(image.shape)
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            out += kernel[a, b] * padded[a : a + 32, b : b + 32]
    return out


def _gauss3(sigma: float) -> np.ndarray:
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma**2))
    return taps / taps.sum()


def test_defocus_by_hand(images):
    x = images[0] / 255.0
    # severity 1: radius 0.3 keeps only the centre of the disk, so the kernel is the 3x3 anti-aliasing Gaussian.
    t = _gauss3(0.4)
    expected_1 = np.clip(_correlate_reflect101(x, np.outer(t, t)), 0, 1) * 255
    # severity 4: radius 1 is the centre and its 4 neighbours (1/5 each), smoothed by the sigma 0.2 Gaussian.
    plus = np.zeros((5, 5))
    plus[2, 1:4] = plus[1:4, 2] = 0.2
    t = _gauss3(0.2)
    kernel = sum(plus[i, j] * np.pad(np.outer(t, t), ((i - 1, 3 - i), (j - 1, 3 - j))) for i, j in zip(*plus.nonzero()))
    expected_4 = np.clip(_correlate_reflect101(x, kernel), 0, 1) * 255
    for severity, expected in ((1, expected_1), (4, expected_4)):
        diff = np.abs(corrupt(images[:1], "defocus_blur", severity)[0] - np.floor(expected))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_zoom_blur_is_the_mean_of_scipy_centre_zooms(images):
    x = (images[0] / 255.0).astype(np.float32)
    total = x.copy()
    factors = np.arange(1, 1.11, 0.01)  # severity 2
    for f in factors:
        crop = int(np.ceil(32 / f))
        top = (32 - crop) // 2
        zoomed = ndimage.zoom(x[top : top + crop, top : top + crop], (f, f, 1), order=1)
        trim = (zoomed.shape[0] - 32) // 2
        total += zoomed[trim : trim + 32, trim : trim + 32]
    expected = np.floor(np.clip(total / (len(factors) + 1), 0, 1) * 255)
    diff = np.abs(corrupt(images[:1], "zoom_blur", 2)[0] - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_gaussian_blur_is_skimage_gaussian(images):
    x = images[2] / 255.0
    expected = np.floor(np.clip(ndimage.gaussian_filter(x, (0.8, 0.8, 0), mode="nearest", truncate=4.0), 0, 1) * 255)
    diff = np.abs(corrupt(images[2:3], "gaussian_blur", 4)[0] - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_motion_blur_kernel_trails_along_the_angle():
    impulse = np.zeros((1, 32, 32, 1))
    impulse[0, 16, 20] = 255
    out = blur.magick_motion_blur(impulse, radius=6, sigma=2, angles=np.array([0.0]))[0, ..., 0]
    weights = np.exp(-(np.arange(13) ** 2) / 8.0)
    expected = np.floor(np.floor(255 * weights / weights.sum() * 257 + 0.5) / 257)
    # Pixel (16, c) averages pixels c .. c + 12 of its row, so the impulse shows up at columns 20, 19, ... 8.
    np.testing.assert_array_equal(out[16, 8:21][::-1], expected)
    assert out.sum() == out[16].sum()


def test_unknown_names_severities_and_inputs_raise_usage_error(images):
    with pytest.raises(UsageError, match="unknown corruption 'rain'; valid: gaussian_noise, shot_noise"):
        corrupt(images, "rain", 1)
    for severity in (0, 6, True, 2.5):
        with pytest.raises(UsageError, match="valid: 1, 2, 3, 4, 5"):
            corrupt(images, "fog", severity)
    with pytest.raises(UsageError, match="seed"):
        corrupt(images, "fog", 1, seed=-1)
    with pytest.raises(UsageError, match=r"uint8 \[N, 32, 32, 3\]"):
        corrupt(images.astype(np.float32), "fog", 1)
    with pytest.raises(UsageError, match="valid: generate, npy, tfds"):
        load_cifar10c("hdf5", "fog", 1)
    assert CIFAR10C_SOURCES == ("generate", "npy", "tfds")
    assert len(cifar10c.HEADLINE_CORRUPTIONS) == 15 and len(cifar10c.EXTRA_CORRUPTIONS) == 4


def _writer_module():
    spec = importlib.util.spec_from_file_location("write_cifar10c", os.path.join(REPO, "tools", "write_cifar10c.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_npy_source_round_trips_the_writer(tmp_path, sample_arrays):
    x, y = sample_arrays[2][:20], sample_arrays[3][:20]
    writer = _writer_module()
    folder = tmp_path / "CIFAR-10-C"
    paths = writer.write_cifar10c(x, y, str(folder), ["fog", "jpeg_compression"], seed=7, progress=False)
    assert sorted(os.listdir(folder)) == ["fog.npy", "jpeg_compression.npy", "labels.npy"]
    assert paths[-1].endswith("labels.npy") and np.load(folder / "fog.npy").shape == (100, 32, 32, 3)
    for severity in SEVERITIES:
        # data_dir may be the folder itself or its parent holding CIFAR-10-C/
        got, labels = load_cifar10c("npy", "fog", severity, data_dir=str(tmp_path))
        np.testing.assert_array_equal(got, corrupt(x, "fog", severity, seed=7))
        np.testing.assert_array_equal(labels, y)
        assert labels.dtype == np.int64
    generated, _ = load_cifar10c("generate", "jpeg_compression", 3, clean_images=x, clean_labels=y, seed=7)
    stored, labels = load_cifar10c("npy", "jpeg_compression", 3, data_dir=str(folder), max_examples=5)
    np.testing.assert_array_equal(stored, generated[:5])
    np.testing.assert_array_equal(labels, y[:5])
    with pytest.raises(UsageError, match="not empty"):
        writer.write_cifar10c(x, y, str(folder), ["fog"], progress=False)
    writer.write_cifar10c(x[:10], y[:10], str(folder), ["fog"], overwrite=True, progress=False)
    assert np.load(folder / "fog.npy").shape == (50, 32, 32, 3)
    assert not [f for f in os.listdir(folder) if f.startswith(".")]  # no temporary files left


def test_npy_source_errors_name_what_was_looked_for(tmp_path):
    with pytest.raises(UsageError, match=r"snow\.npy not found"):
        load_cifar10c("npy", "snow", 1, data_dir=str(tmp_path))
    (tmp_path / "snow.npy").write_text("not an array")
    np.save(tmp_path / "labels.npy", np.zeros(10, np.uint8))
    with pytest.raises(UsageError, match=r"snow\.npy is not a readable \.npy file"):
        load_cifar10c("npy", "snow", 1, data_dir=str(tmp_path))
    np.save(tmp_path / "snow.npy", np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(UsageError, match=r"expected uint8 \[5 \* N, 32, 32, 3\]"):
        load_cifar10c("npy", "snow", 1, data_dir=str(tmp_path))
    np.save(tmp_path / "snow.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(UsageError, match=r"labels\.npy holds"):
        load_cifar10c("npy", "snow", 1, data_dir=str(tmp_path))
    with pytest.raises(UsageError, match="needs data_dir"):
        load_cifar10c("npy", "snow", 1)
    with pytest.raises(UsageError, match="needs clean_images"):
        load_cifar10c("generate", "snow", 1)


def test_tfds_source_refuses_an_unprepared_dataset_without_downloading(tmp_path):
    with pytest.raises(UsageError, match="cifar10_corrupted/frosted_glass_blur_2 is not prepared"):
        load_cifar10c("tfds", "glass_blur", 2, tfds_data_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


def test_writer_cli_unknown_corruption_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "c"
    result = run_script("tools/write_cifar10c.py", "--corruptions=fog,rain", f"--output_dir={out}", timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown corruption rain; valid: gaussian_noise" in lines[0], result.stderr
    assert not out.exists()


def test_aggregate_cifar10c_by_hand():
    metrics = aggregate_cifar10c({("fog", 1): 0.9, ("fog", 5): 0.5, ("snow", 1): 0.8, ("saturate", 2): 0.7})
    expected = {
        "corrupt/snow_1/accuracy": 0.8,
        "corrupt/fog_1/accuracy": 0.9,
        "corrupt/fog_5/accuracy": 0.5,
        "corrupt/saturate_2/accuracy": 0.7,
        "corrupt/snow/accuracy": 0.8,
        "corrupt/fog/accuracy": 0.7,
        "corrupt/saturate/accuracy": 0.7,
        "corrupt/severity_1/accuracy": 0.85,
        "corrupt/severity_5/accuracy": 0.5,  # no severity_2: saturate is an extra, not a headline corruption
        "corrupt/mean_accuracy": (0.9 + 0.5 + 0.8) / 3,
        "corrupt/extra_mean_accuracy": 0.7,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    full = aggregate_cifar10c(
        {(n, s): 0.5 + 0.1 * (n in cifar10c.EXTRA_CORRUPTIONS) for n in ALL_CORRUPTIONS for s in SEVERITIES}
    )
    assert len(full) == 95 + 19 + 5 + 2
    assert full["corrupt/mean_accuracy"] == pytest.approx(0.5) and full["corrupt/extra_mean_accuracy"] == pytest.approx(
        0.6
    )
    with pytest.raises(UsageError, match="unknown corruption"):
        aggregate_cifar10c({("rain", 1): 0.5})
