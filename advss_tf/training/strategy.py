"""Choosing the tf.distribute strategy (SPEC §11)."""

from __future__ import annotations

import tensorflow as tf

from advss_tf.errors import UsageError


def configure_cpu_devices(num_cpu_devices: int) -> None:
    """Splits the CPU into `num_cpu_devices` logical devices (tests and CPU data-parallel runs).

    Must run before TensorFlow initialises its devices; a second call with the same number is a no-op.
    """
    if num_cpu_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == num_cpu_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    except RuntimeError as e:  # devices already initialised with another split
        raise UsageError(f"cannot split the CPU into {num_cpu_devices} devices after TensorFlow started: {e}") from e


def make_strategy(name: str, num_cpu_devices: int = 1) -> tf.distribute.Strategy:
    """auto: MirroredStrategy on ≥1 GPU, else the default strategy (or Mirrored over split CPU devices)."""
    configure_cpu_devices(num_cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if gpus or num_cpu_devices > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # On split CPU devices, reduce through one device instead of collective ops: collectives of two
        # MirroredStrategy objects in one process share instance keys and can pair up the wrong tensors.
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        # Reads the cluster from TF_CONFIG: how a run outgrows one machine.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise UsageError(f"unknown strategy {name!r}; valid: auto, mirrored, multi_worker, one_device")


def per_replica_batch(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(f"batch size {global_batch_size} is not divisible by the {replicas} replicas")
    return global_batch_size // replicas
