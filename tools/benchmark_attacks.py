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
from advss_tf.models.backbones import BackboneConfig  # noqa: E402
from advss_tf.models.classifier import ImageClassifier  # noqa: E402

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
        if hasattr(attack, "rescale_schedule"):
            # torchattacks' Square rescales p's schedule by default; the official AutoAttack does not.
            attack.rescale_schedule = False
    attacks["standard"] = standard
    return attacks


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def our_attacks(model, specs: dict) -> dict:
    """Each of our attacks as a traced callable (x, y) → x_adv, and the standard sequence on survivors."""
    model_fn = lambda z: model(z, training=False)  # noqa: E731
    traced = {
        name: tf.function(lambda a, b, s, spec=spec: spec(model_fn, a, b, s), input_signature=_SIGNATURE)
        for name, spec in specs.items()
    }
    seed = tf.constant([0, 1], tf.int64)
    attacks = {name: (lambda x, y, fn=fn: fn(x, y, seed).numpy()) for name, fn in traced.items()}
    # The survivors' check between stages is a traced forward pass, as evaluate's (not an eager Keras call).
    predict = tf.function(lambda z: tf.argmax(model_fn(z), -1), input_signature=_SIGNATURE[:1])
    predict(tf.zeros([1, 32, 32, 3]))  # traced here, not inside the sequence's clock

    def sequence(x, y):
        x_out, standing = x.copy(), predict(x).numpy() == y
        for name in STAGES:
            if not standing.any():
                break
            rows = np.flatnonzero(standing)
            x_adv = attacks[name](x[rows], y[rows])
            x_out[rows] = x_adv
            standing[rows[predict(x_adv).numpy() != y[rows]]] = False
        return x_out

    attacks["standard"] = sequence
    return attacks, traced


def bench_side_by_side(model, net, x: np.ndarray, y: np.ndarray, settings: dict) -> dict[str, dict]:
    """Per attack: ours timed, then torchattacks' on the same images (the order alternating from one attack to the
    next, so that a change of load falls on both), with the robust accuracy each reached."""
    import torch

    ours, traced = our_attacks(model, our_specs(**settings))
    theirs = torch_attacks(net, **settings)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y)

    def run_ours(name):
        seconds, x_adv = _timed(lambda: ours[name](x, y))
        return seconds, float(np.mean(np.argmax(model(x_adv, training=False), -1) == y))

    def run_theirs(name):
        seconds, x_adv = _timed(lambda: theirs[name](xt, yt))
        with torch.no_grad():
            return seconds, float((net(x_adv).argmax(1) == yt).float().mean())

    rows = {}
    for i, name in enumerate([*STAGES, "standard"]):
        trace_s = 0.0
        if name in traced:
            # Tracing and the first call's graph optimisation, on one image with a wrong label (fooled from the
            # start, so the loops end at once): not part of the timed call.
            trace_s = _timed(lambda name=name: ours[name](x[:1], (y[:1] + 1) % 10))[0]
        first, second = (run_ours, run_theirs) if i % 2 == 0 else (run_theirs, run_ours)
        results = {first: first(name), second: second(name)}
        (ours_s, ours_acc), (theirs_s, theirs_acc) = results[run_ours], results[run_theirs]
        rows[name] = dict(
            ours_seconds=ours_s,
            ours_trace_seconds=trace_s,
            ours_robust_accuracy=ours_acc,
            torchattacks_seconds=theirs_s,
            torchattacks_robust_accuracy=theirs_acc,
        )
        print(json.dumps(dict(attack=name, **rows[name])), flush=True)
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
        for name, row in bench_side_by_side(model, net, x, y, settings).items():
            results.append(
                dict(
                    backbone=backbone,
                    attack=name,
                    ours_images_per_sec=args.images / row["ours_seconds"],
                    torchattacks_images_per_sec=args.images / row["torchattacks_seconds"],
                    **row,
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
