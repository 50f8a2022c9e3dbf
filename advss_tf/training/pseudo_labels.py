"""DynACL++'s pseudo-labels (Luo et al., ICLR 2023; PKU-ML/DYNACL `assign_label.py`): k-means cluster ids of the
training images' features through a pretraining export's clean route, in place of their labels.

As `assign_label.py`: the whole training split, unaugmented (`transforms.ToTensor()` only, :46-48), through the
clean BatchNorm route in inference mode (`model.eval()(x, 'normal', return_features=True)`, :70), the pooled
backbone features clustered into 10 groups (:79) by Euclidean k-means from randomly chosen samples as the initial
centres (kmeans_pytorch's `initialize`). Here the k-means is scikit-learn's `KMeans(init="random", n_init=1)` with
`random_state` = the run's seed, so the labels are a function of (export, images, seed).

The labels are kept, in the training split's own order, in the export such a run writes (assets/pseudo_labels.json),
so the next step of the recipe (the adversarial fine-tuning after the linear probe, `--pseudo_labels=pretrained`)
trains on the same labels whatever its split.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from advss_tf import export
from advss_tf.data import pipeline
from advss_tf.errors import UsageError

CLEAN_ROUTE = "features_clean"  # a dual-BatchNorm export's clean route (ACL/DynACL); `features` is the other one
FEATURES = "features"
NONE, KMEANS, PRETRAINED = "none", "kmeans", "pretrained"
ASSET = "pseudo_labels.json"


def feature_route(loaded) -> str:
    """The signature k-means reads: the clean route when the export has one, else its only route `features`."""
    names = set(loaded.signatures)
    if CLEAN_ROUTE in names:
        return CLEAN_ROUTE
    if FEATURES in names:
        return FEATURES
    raise UsageError(f"the export has no {FEATURES} signature (signatures: {', '.join(sorted(names))})")


def export_features(path: str, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, str]:
    """Pooled features [N, D] of uint8 `images` through the export's clean route (`feature_route`), and its name."""
    loaded = tf.saved_model.load(path)
    route = feature_route(loaded)
    fn = loaded.signatures[route]
    out = []
    for i in range(0, len(images), batch_size):
        result = fn(images=pipeline.to_float(tf.constant(images[i : i + batch_size])))
        out.append((result[FEATURES] if FEATURES in result else next(iter(result.values()))).numpy())
    return np.concatenate(out).astype(np.float32), route


def kmeans_labels(features: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Cluster ids (int32 [N]) of Euclidean k-means over `features`, from `clusters` random samples as centres."""
    from sklearn.cluster import KMeans

    if len(features) < clusters:
        raise UsageError(f"k-means into {clusters} clusters needs at least {clusters} images, got {len(features)}")
    km = KMeans(n_clusters=clusters, init="random", n_init=1, random_state=seed)
    return km.fit_predict(features.astype(np.float64)).astype(np.int32)


def labels_asset(labels: np.ndarray) -> dict[str, str]:
    """The export asset holding `labels` (what `read_labels` reads back)."""
    return {ASSET: json.dumps([int(v) for v in labels])}


def read_labels(export_path: str, num_images: int) -> np.ndarray:
    """The pseudo-labels an export was trained on (`labels_asset`): one int >= 0 per training image."""
    try:
        labels = np.asarray(json.loads(export.read_asset(export_path, ASSET)))
    except FileNotFoundError as e:
        raise UsageError(
            f"--pseudo_labels=pretrained: {export_path} holds no pseudo-labels (assets/{ASSET}); it is not the "
            "export of a --pseudo_labels run"
        ) from e
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UsageError(
            f"{export_path}'s pseudo-labels are {labels.dtype} {labels.shape}, not one label >= 0 for each of the "
            f"{num_images} training images (another dataset?)"
        )
    return labels.astype(np.int32)
