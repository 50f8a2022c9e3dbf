"""The cost of going multi-worker: N workers on loopback vs one process on N logical CPU devices, same global batch.

    python tools/benchmark_multi_worker.py --workers=2 -- --flagfile=flags/smoke/pretrain_rotation.flags

Runs `python -m advss_tf.launch --workers=N -- pretrain ...` and `python -m advss_tf.pretrain --strategy=mirrored
--num_cpu_devices=N ...` one after the other in fresh directories, then reads the chief's TensorBoard scalars
(train/step_time_sec, train/images_per_sec per host loop; the first loop, which traces, is left out) and prints
the medians, the wall times, the CPU model and the load average. The difference per step is the gRPC all-reduce
of the gradients and the per-loop signal agreement between processes, against in-process copies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from advss_tf.machine import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scalars(logdir: str, tag: str) -> list[float]:
    """Values of one scalar tag, in step order, from a TensorBoard log directory."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    values = []
    for name in sorted(os.listdir(logdir)):
        for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for v in event.summary.value:
                if v.tag == tag:
                    values.append((event.step, float(tf.make_ndarray(v.tensor))))
    return [v for _, v in sorted(values)]


def timed_run(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("flags", nargs="*", help="pretrain flags (after --)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="advss_tf-bench-mw-")
    common = [*args.flags, "--quiet"]
    runs = {
        f"{args.workers} workers (loopback gRPC)": (
            [sys.executable, "-m", "advss_tf.launch", f"--workers={args.workers}", "--", "pretrain"],
            os.path.join(root, "multi"),
        ),
        f"1 process, {args.workers} CPU devices": (
            [sys.executable, "-m", "advss_tf.pretrain", "--strategy=mirrored", f"--num_cpu_devices={args.workers}"],
            os.path.join(root, "single"),
        ),
    }
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load before: {os.getloadavg()}")
    for name, (command, model_dir) in runs.items():
        wall = timed_run([*command, f"--model_dir={model_dir}", *common])
        logdir = os.path.join(model_dir, "tensorboard", "train")
        step = scalars(logdir, "train/step_time_sec")[1:]
        ips = scalars(logdir, "train/images_per_sec")[1:]
        print(
            f"{name}: median step {statistics.median(step):.3f} s, median {statistics.median(ips):.1f} images/s "
            f"over {len(step)} host loops after the first; wall {wall:.1f} s; load after: {os.getloadavg()}"
        )
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
