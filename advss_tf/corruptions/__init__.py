"""CIFAR-10-C: the corruption generator (``cifar10c``), its three sources and the metric aggregation (``sources``)."""

from advss_tf.corruptions.cifar10c import (
    ALL_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    HEADLINE_CORRUPTIONS,
    SEVERITIES,
    corrupt,
)
from advss_tf.corruptions.sources import CIFAR10C_SOURCES, aggregate_cifar10c, load_cifar10c

__all__ = [
    "ALL_CORRUPTIONS",
    "CIFAR10C_SOURCES",
    "EXTRA_CORRUPTIONS",
    "HEADLINE_CORRUPTIONS",
    "SEVERITIES",
    "aggregate_cifar10c",
    "corrupt",
    "load_cifar10c",
]
