"""Images/s of AutoAttack's components and of the standard sequence: ours (TensorFlow) vs torchattacks (PyTorch) on
the same model with the same weights, same thread count, side by side in one run.

    python tools/benchmark_attacks.py --backbones=tiny,resnet18 --images=16 --threads=2

The labels are the model's own clean predictions and ε is tiny (default 1e-4), so almost no example is fooled and
every attack runs its whole budget on every image in both frameworks — the cost an attack has on a robust model,
where the survivors dominate the time. Budgets can be cut (--iterations, --targets, --queries) to fit a slow machine;
the table says which were used. Needs the `peer` extra (torch, torchattacks). Prints a Markdown table and one JSON
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advss_tf.attacks import registry  # noqa: E402
from advss_tf.models.classifier import ImageClassifier  # noqa: E402
from advss_tf.models.resnet import BackboneConfig  # noqa: E402

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")
_SIGNATURE = [tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)]


def our_specs(eps: float, iterations: int, targets: int, queries: int) -> dict[str, registry.AttackSpec]:
    """The registry's four attacks at radius eps with the given budgets."""
    specs = {}
    for name in STAGES:
        spec = registry.ATTACKS[name].with_budget(eps)
        budget = dict(steps=queries) if name == "square" else dict(steps=iterations)
        if spec.targets is not None:
            budget["targets"] = targets
        specs[name] = dataclasses.replace(spec, **budget)
    return specs


def torch_attacks(net, eps: float, iterations: int, targets: int, queries: int) -> dict:
    """torchattacks' four with the same budgets, and its standard AutoAttack with them."""
    import torchattacks

    attacks = {
        "apgd_ce": torchattacks.APGD(net, eps=eps, steps=iterations, loss="ce", seed=0),
        "apgd_t": torchattacks.APGDT(net, eps=eps, steps=iterations, n_classes=10, seed=0),
        "fab_t": torchattacks.FAB(net, eps=eps, steps=iterations, multi_targeted=True, n_classes=10, seed=0),
        "square": torchattacks.Square(net, eps=eps, n_queries=queries, seed=0),
    }
    standard = torchattacks.AutoAttack(net, eps=eps, version="standard", n_classes=10, seed=0)
    for attack in [*attacks.values(), *standard._autoattack.attacks]:
        if hasattr(attack, "n_target_classes"):
            attack.n_target_classes = targets
        if hasattr(attack, "steps"):
            attack.steps = iterations
        if hasattr(attack, "n_queries"):
            attack.n_queries = queries
    attacks["standard"] = standard
    return attacks


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_ours(model, x: np.ndarray, y: np.ndarray, specs: dict) -> dict[str, dict]:
    """Seconds and images/s of each of our attacks (traced first) and of the sequence on survivors."""
    model_fn = lambda z: model(z, training=False)  # noqa: E731
    traced = {
        name: tf.function(lambda a, b, s, spec=spec: spec(model_fn, a, b, s), input_signature=_SIGNATURE)
        for name, spec in specs.items()
    }
    rows = {}
    seed = tf.constant([0, 1], tf.int64)
    for name, fn in traced.items():
        trace_s, _ = _timed(fn.get_concrete_function)
        seconds, x_adv = _timed(lambda fn=fn: fn(x, y, seed).numpy())
        robust = float(np.mean(np.argmax(model_fn(x_adv), -1) == y))
        rows[name] = dict(seconds=seconds, trace_seconds=trace_s, robust_accuracy=robust)

    def sequence():
        standing = np.argmax(model_fn(x), -1) == y
        for name in STAGES:
            if not standing.any():
                break
            x_adv = traced[name](x[standing], y[standing], seed).numpy()
            still = np.argmax(model_fn(x_adv), -1) == y[standing]
            standing[np.flatnonzero(standing)[~still]] = False
        return standing

    seconds, standing = _timed(sequence)
    rows["standard"] = dict(seconds=seconds, trace_seconds=0.0, robust_accuracy=float(standing.mean()))
    return rows


def bench_torch(net, x: np.ndarray, y: np.ndarray, attacks: dict) -> dict[str, dict]:
    """Seconds and images/s of each torchattacks attack."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y)
    rows = {}
    for name, attack in attacks.items():
        seconds, x_adv = _timed(lambda attack=attack: attack(xt, yt))
        with torch.no_grad():
            robust = float((net(x_adv).argmax(1) == yt).float().mean())
        rows[name] = dict(seconds=seconds, trace_seconds=0.0, robust_accuracy=robust)
    return rows


def machine() -> dict:
    """CPU model and load, recorded with the numbers."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), uptime=uptime)


def main() -> None:
    """Runs the benchmark and prints the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny,resnet18")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-4, help="L-inf radius on the [0,1] pixel scale")
    parser.add_argument("--iterations", type=int, default=100, help="APGD / APGD-T / FAB-T iterations")
    parser.add_argument("--targets", type=int, default=9, help="target classes of APGD-T and FAB-T")
    parser.add_argument("--queries", type=int, default=5000, help="Square's queries")
    args = parser.parse_args()

    import torch

    from advss_tf.peer import torch_resnet

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.images, 32, 32, 3)).astype(np.float32)
    settings = dict(eps=args.eps, iterations=args.iterations, targets=args.targets, queries=args.queries)
    results = []
    for backbone in args.backbones.split(","):
        model = ImageClassifier(BackboneConfig(backbone), 10)
        net = torch_resnet.build_torch_classifier(BackboneConfig(backbone), 10)
        torch_resnet.copy_keras_weights(model, net)
        net.eval()
        y = np.argmax(model(x, training=False), -1).astype(np.int64)
        ours = bench_ours(model, x, y, our_specs(**settings))
        theirs = bench_torch(net, x, y, torch_attacks(net, **settings))
        for name in [*STAGES, "standard"]:
            results.append(
                dict(
                    backbone=backbone,
                    attack=name,
                    ours_images_per_sec=args.images / ours[name]["seconds"],
                    torchattacks_images_per_sec=args.images / theirs[name]["seconds"],
                    ours_seconds=ours[name]["seconds"],
                    ours_trace_seconds=ours[name]["trace_seconds"],
                    torchattacks_seconds=theirs[name]["seconds"],
                    ours_robust_accuracy=ours[name]["robust_accuracy"],
                    torchattacks_robust_accuracy=theirs[name]["robust_accuracy"],
                )
            )
    print(
        f"images={args.images} threads={args.threads} eps={args.eps:g} iterations={args.iterations} "
        f"targets={args.targets} queries={args.queries}"
    )
    print("| backbone | attack | ours img/s | torchattacks img/s | ours / theirs | ours trace s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        ratio = r["ours_images_per_sec"] / r["torchattacks_images_per_sec"]
        print(
            f"| {r['backbone']} | {r['attack']} | {r['ours_images_per_sec']:.2f} | "
            f"{r['torchattacks_images_per_sec']:.2f} | {ratio:.2f} | {r['ours_trace_seconds']:.1f} |"
        )
    print(json.dumps(dict(settings=dict(vars(args)), machine=machine(), results=results)))


if __name__ == "__main__":
    main()
