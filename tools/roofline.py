"""How far a step is from the machine's limit: a large matmul's and a 3x3 convolution's GFLOP/s, measured here.

    python tools/roofline.py                        # the two ceilings alone, one JSON line
    python tools/benchmark_step.py --roofline ...   # the training step's GFLOP/s beside them, in the same run

FLOPs are counted by TensorFlow's graph profiler (2 per multiply-add of every op it has a cost for: convolutions,
matmuls, element-wise ops) on a concrete function at the real shapes, so nothing is hand-counted. A training step's
FLOPs are its model's forward FLOPs times (3 + 2K) for K PGD steps: the update is a forward pass and a backward
pass that costs two (gradients of the activations and of the weights); each attack step is a forward pass and a
backward pass to the input (the activations' gradients only, one forward's worth). That is the usual estimate;
it leaves out what the profiler has no cost for (gather, random numbers) and the optimizer's few FLOPs a weight.
"""

from __future__ import annotations

import json
import time

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)

# isort: split
import tensorflow as tf
from tensorflow.python.profiler import model_analyzer, option_builder

from advss_tf.machine import cpu_model

MATMUL_SIZE = 2048  # float32 [n, n] @ [n, n]: large enough that the kernel, not the call, is timed
CONV_SHAPE = (64, 32, 32, 128)  # a ResNet-18 stage-2-like 3x3 convolution: batch, height, width, channels in = out


def graph_flops(function, *specs: tf.TensorSpec) -> int:
    """FLOPs of one call of `function` at `specs` (TF's graph profiler: 2 per multiply-add)."""
    graph = tf.function(function).get_concrete_function(*specs).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def step_flops(forward_flops: int, attack_steps: int, adversarial: bool = True) -> int:
    """FLOPs of one training step from its model's forward FLOPs (module docstring: forward × (3 + 2K))."""
    return forward_flops * (3 + (2 * attack_steps if adversarial else 0))


def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up: tracing, oneDNN's kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of a float32 [size, size] @ [size, size] matmul, best of `repeats`."""
    a = tf.random.stateless_normal([size, size], seed=[0, 1])
    b = tf.random.stateless_normal([size, size], seed=[0, 2])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    seconds = _best_seconds(lambda: matmul().numpy(), repeats)
    return 2 * size**3 / seconds / 1e9


def conv_gflops(shape: tuple[int, int, int, int] = CONV_SHAPE, repeats: int = 5) -> float:
    """GFLOP/s of a float32 3x3 stride-1 'same' convolution, channels in = channels out, best of `repeats`."""
    n, h, w, c = shape
    x = tf.random.stateless_uniform(shape, seed=[0, 3])
    kernel = tf.random.stateless_normal([3, 3, c, c], seed=[0, 4])
    conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME")))
    seconds = _best_seconds(lambda: conv().numpy(), repeats)
    return 2 * n * h * w * 9 * c * c / seconds / 1e9


def ceilings() -> dict[str, float]:
    """The two reference speeds of this machine, measured now."""
    return {"matmul_gflops": round(matmul_gflops(), 1), "conv3x3_gflops": round(conv_gflops(), 1)}


if __name__ == "__main__":
    print(json.dumps({"cpu": cpu_model(), **ceilings()}))
