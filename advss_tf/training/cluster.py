"""Who does what in a multi-worker run (SPEC §11): the chief writes the run directory, the other workers write to
a private scratch directory; the chief's state is what every worker starts from; workers agree on when to stop.

Under a single-process strategy every function here is the identity (or a no-op), so the training code calls
them unconditionally.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from advss_tf.data import pipeline

_MAX_SIGNAL = 65  # signal numbers are < 65 on Linux
_SUM_FUNCTIONS: dict[int, Any] = {}
_SCRATCH_DIRS: list[str] = []


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes the run directory (every single-process run)."""
    if not is_multi_worker(strategy):
        return True
    return bool(strategy.extended.should_checkpoint)


def worker_model_dir(strategy: tf.distribute.Strategy, model_dir: str) -> str:
    """`model_dir` on the chief; on any other worker a private scratch directory, removed when the process exits.

    A non-chief worker runs the same code as the chief (it must: checkpoint saves and summaries take part in the
    same steps), but what it writes — its checkpoints, as TensorFlow's multi-worker guide prescribes, and its copies
    of the TensorBoard logs, config and exports — goes to a temporary place: the run directory holds the chief's
    files only, and may be on a disk only the chief sees. The state a non-chief resumes from is the chief's
    (`broadcast_from_chief`), so it never reads its scratch checkpoints back.
    """
    if is_chief(strategy):
        return model_dir
    task = strategy.cluster_resolver.task_id
    scratch = tempfile.mkdtemp(prefix=f"advss_tf-worker{task}-")
    _SCRATCH_DIRS.append(scratch)
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def _local_replicas(strategy: tf.distribute.Strategy) -> int:
    return len(strategy.extended.worker_devices)


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """A distributed dataset of global batches: replica r of every step gets rows [r·B/R, (r+1)·B/R) of the batch.

    That is how `experimental_distribute_dataset` splits a global batch over one process's replicas; across workers
    the split is made explicitly (each worker builds the stateless global batch and keeps its replicas' slices)
    instead of by tf.data auto-sharding, which would give each worker every other batch. So a step sees the same
    examples, pretext labels and attack seeds (`noise_seed` rows) whatever the number of workers.
    """
    if not is_multi_worker(strategy):
        return strategy.experimental_distribute_dataset(dataset)
    local = _local_replicas(strategy)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return pipeline.replica_slices(
            dataset, context.num_replicas_in_sync, first=context.input_pipeline_id * local, count=local
        )

    # Each worker's pipeline then yields `local` elements per step, handed to its replicas in order.
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def _sum_over_workers(strategy: tf.distribute.Strategy, values: Sequence[tf.Tensor], keep_this_worker: bool):
    """Sum over workers of `values`, counting each worker once (its first replica) and this one only if asked."""
    fn = _SUM_FUNCTIONS.get(id(strategy))
    if fn is None:
        local = _local_replicas(strategy)

        def replica_fn(values, keep_this_worker):
            ctx = tf.distribute.get_replica_context()
            keep = tf.logical_and(tf.equal(ctx.replica_id_in_sync_group % local, 0), keep_this_worker)
            masked = [tf.where(keep, v, tf.zeros_like(v)) for v in values]
            out = list(masked)
            # One all-reduce per dtype: an all-reduce packs its tensors into one buffer of one dtype.
            for dtype in {v.dtype for v in masked}:
                idx = [i for i, v in enumerate(masked) if v.dtype == dtype]
                for i, r in zip(idx, ctx.all_reduce(tf.distribute.ReduceOp.SUM, [masked[i] for i in idx])):
                    out[i] = r
            return out

        # One tf.function per strategy (traced once per signature): `agree_signal` runs after every host loop.
        fn = tf.function(lambda values, keep: strategy.run(replica_fn, args=(values, keep)))
        _SUM_FUNCTIONS[id(strategy)] = fn
    out = fn(list(values), tf.constant(keep_this_worker))
    return [strategy.experimental_local_results(v)[0] for v in out]


def create_save_counter(strategy: tf.distribute.Strategy, checkpoint: tf.train.Checkpoint) -> None:
    """Creates `checkpoint.save_counter` now, on every worker, before only the chief restores.

    A variable created under MultiWorkerMirroredStrategy is a collective (its initial value is broadcast from the
    chief); the counter would otherwise be created inside the chief's restore, in a collective the others never join.
    """
    if is_multi_worker(strategy):
        _ = checkpoint.save_counter


def broadcast_from_chief(strategy: tf.distribute.Strategy, variables: Sequence[tf.Variable]) -> None:
    """Gives every worker the chief's values of `variables` (restored from the chief's checkpoint, or fresh)."""
    if not is_multi_worker(strategy) or not variables:
        return
    # Collectives reduce floating tensors; integers (the step counter) travel as float64, exact below 2**53.
    tensors = [tf.convert_to_tensor(v) for v in variables]
    values = [tf.cast(t, tf.float64) if t.dtype.is_integer else t for t in tensors]
    chief = _sum_over_workers(strategy, values, is_chief(strategy))
    for v, value in zip(variables, chief):
        v.assign(tf.cast(value, v.dtype))


def agree_signal(strategy: tf.distribute.Strategy, signum: int | None) -> int | None:
    """The signal any worker received (the lowest number if several), so that all of them stop at the same step."""
    if not is_multi_worker(strategy):
        return signum
    flags = np.zeros(_MAX_SIGNAL, np.float32)
    if signum is not None:
        flags[signum] = 1.0
    (total,) = _sum_over_workers(strategy, [tf.constant(flags)], True)
    hit = np.flatnonzero(total.numpy())
    return int(hit[0]) if len(hit) else None


class AgreedSignal:
    """`SignalGuard`'s signal as all workers see it: `check()` is true on every worker once any got one."""

    def __init__(self, strategy: tf.distribute.Strategy, guard):
        self.strategy = strategy
        self.guard = guard
        self.signum: int | None = None

    def check(self) -> bool:
        self.signum = agree_signal(self.strategy, self.guard.signum)
        return self.signum is not None


def chief_decides(strategy: tf.distribute.Strategy, answer: bool) -> bool:
    """The chief's `answer` on every worker (for choices that read the run directory, which only the chief has)."""
    if not is_multi_worker(strategy):
        return answer
    (value,) = _sum_over_workers(strategy, [tf.constant(float(answer))], is_chief(strategy))
    return bool(value.numpy() > 0.5)


def _cluster_tasks() -> tuple[list[tuple[str, int, str]], tuple[str, int] | None]:
    """([(job, index, 'host:port')] of every task in TF_CONFIG, (this task's job, index)); ([], None) without one."""
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        tasks = [
            (job, i, address) for job, addresses in config["cluster"].items() for i, address in enumerate(addresses)
        ]
        me = (config["task"]["type"], int(config["task"]["index"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return [], None
    return tasks, me


def _unreachable_peer(timeout: float = 2.0) -> str | None:
    """'worker 1 (127.0.0.1:1234)': the first other task of TF_CONFIG whose gRPC port refuses a connection.

    Used when TensorFlow's error names no task (a collective that timed out says only that): a killed peer's port
    is closed, so connecting tells which one is gone. A peer that hangs with its port open is not found (None).
    """
    tasks, me = _cluster_tasks()
    for job, index, address in tasks:
        if (job, index) == me:
            continue
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError):
            return f"{job} {index} ({address})"
    return None


def _lost_worker_name(message: str) -> str:
    """'worker 1 (127.0.0.1:1234)' from TensorFlow's error text and TF_CONFIG, or from a probe of the peers' ports."""
    tasks = re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", message)
    if not tasks:
        return _unreachable_peer() or "a worker"
    job, index = tasks[-1]
    addresses = {(j, i): a for j, i, a in _cluster_tasks()[0]}
    address = addresses.get((job, int(index)))
    return f"{job} {index}" + (f" ({address})" if address else "")


def _reason(message: str) -> str:
    """The informative part of a collective's error text (which also holds a Python traceback of the graph)."""
    patterns = (
        r"Failed to connect to remote host: [\w ]+",
        r"Socket closed",
        r"[Hh]eartbeat[^.;:\n]*",
        r"[Dd]eadline [Ee]xceeded[^.;:\n]*",
        r"timed out[^.;:\n]*",
    )
    for pattern in patterns:
        found = re.search(pattern, message)
        if found:
            return " ".join(found.group(0).split())
    return " ".join(message.split("\n")[0].split())[:200]


@contextlib.contextmanager
def lost_worker_errors(multi_worker: bool) -> Iterator[None]:
    """On a lost peer (unavailable, deadline exceeded, aborted collectives): one line naming it, exit status 1, now.

    The process exits at once (`os._exit`) instead of unwinding: TensorFlow's shutdown of the coordination agent
    and collective executors waits on the dead peer. Only this worker's scratch directory is cleaned up; the run
    directory holds the last checkpoint and no half-written export (exports are written atomically at the end).
    """
    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
        tf.errors.InternalError,
    ) as e:
        if not multi_worker:
            raise
        message = str(e.message)
        sys.stdout.flush()
        sys.stderr.write(
            f"error: lost {_lost_worker_name(message)} ({type(e).__name__}: {_reason(message)}); the last "
            "checkpoint is kept, re-run every worker's command to resume\n"
        )
        sys.stderr.flush()
        for scratch in _SCRATCH_DIRS:
            shutil.rmtree(scratch, ignore_errors=True)
        os._exit(1)
