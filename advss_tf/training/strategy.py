"""Choosing the tf.distribute strategy (SPEC §11)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from advss_tf.errors import UsageError

CLUSTER_RESOLVERS = ("tf_config", "slurm")
# Jobs whose tasks train under MultiWorkerMirroredStrategy (an "evaluator" task would not take part in collectives).
TRAINING_JOBS = ("chief", "worker")


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


def _tf_config_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """TF_CONFIG, checked here so that a mistake is one line instead of a hang or a traceback deep in TensorFlow."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UsageError(
            "--strategy=multi_worker needs the cluster: set TF_CONFIG (python -m advss_tf.launch does) "
            "or pass --cluster_resolver=slurm inside a SLURM job"
        )
    try:
        tf_config = json.loads(raw)
        cluster = tf_config["cluster"]
        task_type, task_index = str(tf_config["task"]["type"]), tf_config["task"]["index"]
        jobs = {job: list(addresses) for job, addresses in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(
            f"malformed TF_CONFIG ({type(e).__name__}: {e}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from e
    if not any(jobs.get(job) for job in TRAINING_JOBS):
        raise UsageError(f"TF_CONFIG's cluster has no chief or worker addresses (jobs: {', '.join(jobs) or 'none'})")
    if task_type not in jobs:
        raise UsageError(f"TF_CONFIG's task type {task_type!r} is not a job of its cluster ({', '.join(jobs)})")
    if not isinstance(task_index, int) or not 0 <= task_index < len(jobs[task_type]):
        raise UsageError(
            f"TF_CONFIG's task index {task_index!r} is outside the cluster: job {task_type!r} has "
            f"{len(jobs[task_type])} tasks (indices 0-{len(jobs[task_type]) - 1})"
        )
    if task_type not in TRAINING_JOBS:
        raise UsageError(f"TF_CONFIG's task type {task_type!r} does not train; use 'chief' or 'worker'")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _slurm_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """SLURM's own resolver (one task per process, ports from 8888 per node, GPUs split over a node's tasks)."""
    if "SLURM_PROCID" not in os.environ:
        raise UsageError("--cluster_resolver=slurm needs a SLURM job step (SLURM_PROCID is not set; run under srun)")
    gpu = tf.config.list_physical_devices("GPU")  # does not start the runtime
    try:
        if gpu:
            return tf.distribute.cluster_resolver.SlurmClusterResolver()
        # Without GPUs SlurmClusterResolver divides zero GPUs among the tasks (range step 0): give each task a
        # nominal one to get the cluster, and hand the strategy that cluster with no accelerators.
        slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
            gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False
        )
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            slurm.cluster_spec(), task_type=slurm.task_type, task_id=slurm.task_id, rpc_layer=slurm.rpc_layer
        )
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"cannot build the cluster from the SLURM environment: {e}") from e


def cluster_resolver(name: str) -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of a multi-worker run, from TF_CONFIG or from SLURM's environment variables."""
    if name == "tf_config":
        return _tf_config_resolver()
    if name == "slurm":
        return _slurm_resolver()
    raise UsageError(f"unknown cluster resolver {name!r}; valid: {', '.join(CLUSTER_RESOLVERS)}")


def make_multi_worker_strategy(resolver_name: str, worker_timeout: int) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the cluster; a lost worker ends the run within about `worker_timeout` s.

    Must run before anything starts TensorFlow's runtime (collective ops and the coordination service are configured
    at start-up). Lost workers are detected by the coordination service's heartbeat (`heartbeat_timeout_in_ms`):
    the service, on the chief, marks a task that missed heartbeats for that long as failed and every other task's
    pending and later collectives then fail. Collectives also time out after the same bound
    (`CommunicationOptions(timeout_seconds)`) so that no step can wait on a dead peer forever. The workers wait as
    long again for each other at start-up.
    """
    resolver = cluster_resolver(resolver_name)
    spec = resolver.cluster_spec()
    jobs = [job for job in TRAINING_JOBS if job in spec.jobs]
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    ms = int(worker_timeout * 1000)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        heartbeat_timeout_in_ms=ms,
        cluster_register_timeout_in_ms=ms,
        shutdown_barrier_timeout_in_ms=ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=j, num_tasks=spec.num_tasks(j)) for j in jobs],
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver,
            communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout),
        )
    except RuntimeError as e:  # "must be configured at program startup": a bug of ours, not the user's input
        raise RuntimeError(f"MultiWorkerMirroredStrategy could not start: {e}") from e


def make_strategy(
    name: str, num_cpu_devices: int = 1, cluster_resolver_name: str = "tf_config", worker_timeout: int = 300
) -> tf.distribute.Strategy:
    """auto: MirroredStrategy on ≥1 GPU, else the default strategy (or Mirrored over split CPU devices).

    multi_worker: MultiWorkerMirroredStrategy over the cluster `cluster_resolver_name` finds (each worker's GPUs
    are its replicas; a worker without GPUs is one CPU replica).
    """
    if name == "multi_worker":
        if num_cpu_devices > 1:
            raise UsageError(
                "--num_cpu_devices > 1 does not apply to --strategy=multi_worker (one CPU replica a worker)"
            )
        # Before anything below: listing logical devices starts TensorFlow's runtime.
        return make_multi_worker_strategy(cluster_resolver_name, worker_timeout)
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
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise UsageError(f"unknown strategy {name!r}; valid: auto, mirrored, multi_worker, one_device")


def per_replica_batch(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(f"batch size {global_batch_size} is not divisible by the {replicas} replicas")
    return global_batch_size // replicas
