"""The floor under a query-bound attack: one classifier's inference forward passes, ours vs PyTorch, side by side.

    python tools/forward_floor.py --backbone=resnet18 --batch_size=8 --forwards=200 --threads=1 --rounds=3

Square spends its 5,000 queries on one forward pass each of the examples still standing, and nothing else of
consequence (the windows and signs of a query are a few element-wise ops on [N, 32, 32, 3]). So its time can be no
less than `queries` forward passes of the model at the survivors' batch size, in either framework: this tool times
exactly that, for the same weights (advss_tf/peer/torch_resnet.py copies them), the same batch, the same threads,
in interleaved rounds, and prints each variant's milliseconds per forward, its GFLOP/s (FLOPs from TensorFlow's
graph profiler, tools/roofline.py) and a 3x3 convolution's GFLOP/s at the same threads, measured in the same run.

Variants: `tf_graph` (the forward inside one traced `tf.while_loop`, how our attacks call the model), `tf_xla`
(the same loop with `jit_compile=True`; shown for information — it is not what the attacks run), `torch` (eager,
`no_grad`, NCHW, torchattacks' way) and `torch_channels_last`. Each forward adds i·1e-6 to the images so that no
call can be skipped or cached. Timings are only comparable within one run (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)

# isort: split
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402  (tools/roofline.py, beside this file)

from advss_tf.machine import cpu_model  # noqa: E402
from advss_tf.models.backbones import BackboneConfig  # noqa: E402
from advss_tf.models.classifier import ImageClassifier  # noqa: E402


def tf_loops(model, x: np.ndarray, forwards: int) -> dict:
    """Our two loops of `forwards` inference forward passes: graph, and the same under XLA."""

    def loop(images):
        def body(i, total):
            shifted = images + tf.cast(i, tf.float32) * 1e-6
            return i + 1, total + tf.reduce_sum(model(shifted, training=False))

        return tf.while_loop(lambda i, _: i < forwards, body, (tf.constant(0), tf.constant(0.0)))[1]

    graph, xla = tf.function(loop), tf.function(loop, jit_compile=True)
    xt = tf.constant(x)
    return {"tf_graph": lambda: float(graph(xt)), "tf_xla": lambda: float(xla(xt))}


def torch_loops(model, x: np.ndarray, forwards: int, torch) -> dict:
    """PyTorch's loops over the same weights: NCHW eager, and channels-last."""
    from advss_tf.peer import torch_resnet

    loops = {}
    for name, memory_format in (("torch", torch.contiguous_format), ("torch_channels_last", torch.channels_last)):
        net = torch_resnet.build_torch_classifier(model.backbone, model.num_classes)
        torch_resnet.copy_keras_weights(model, net)
        net = net.eval().to(memory_format=memory_format)
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(memory_format=memory_format)

        def run(net=net, images=images):
            total = 0.0
            with torch.no_grad():
                for i in range(forwards):
                    total += float(net(images + i * 1e-6).sum())
            return total

        loops[name] = run
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=8, help="the survivors' batch of a query")
    parser.add_argument("--forwards", type=int, default=200, help="forward passes per timed round and variant")
    parser.add_argument("--threads", type=int, default=1, help="for both frameworks (TF intra-op; inter-op 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json_out", default="")
    args = parser.parse_args()

    import torch

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)

    model = ImageClassifier(BackboneConfig(args.backbone), 10)
    x = np.random.default_rng(0).uniform(0, 1, (args.batch_size, 32, 32, 3)).astype(np.float32)
    model(x, training=False)
    flops = roofline.graph_flops(lambda z: model(z, training=False), tf.TensorSpec(x.shape, tf.float32))
    variants = {**tf_loops(model, x, args.forwards), **torch_loops(model, x, args.forwards, torch)}
    for run in variants.values():
        run()  # warm-up: tracing, XLA compilation, oneDNN's kernel choice
    seconds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    conv = roofline.conv_gflops()
    rows = []
    for name, values in seconds.items():
        ms = 1e3 * statistics.median(values) / args.forwards
        rows.append(
            dict(
                variant=name,
                ms_per_forward=round(ms, 2),
                rounds_s=[round(v, 2) for v in values],
                gflops=round(flops / (ms / 1e3) / 1e9, 1),
            )
        )
    base = rows[0]["ms_per_forward"]
    print(f"{cpu_model()}, {os.cpu_count()} vCPUs, {args.threads} thread(s); {os.getloadavg()[0]:.2f} load (1 min)")
    print(f"{args.backbone}, batch {args.batch_size}: {flops / 1e9:.2f} GFLOP a forward; 3x3 conv {conv:.1f} GFLOP/s")
    print("| variant | ms a forward (median) | rounds (s) | GFLOP/s | its ms / tf_graph ms |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ms_per_forward']} | {', '.join(map(str, r['rounds_s']))} | {r['gflops']} | "
            f"{r['ms_per_forward'] / base:.2f} |"
        )
    result = dict(
        settings=vars(args),
        cpu=cpu_model(),
        load=os.getloadavg()[0],
        forward_gflop=flops / 1e9,
        conv3x3_gflops=conv,
        rows=rows,
    )
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
