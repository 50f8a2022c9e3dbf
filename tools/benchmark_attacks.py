"""Seconds per stage of the standard AutoAttack (APGD-CE → APGD-T → FAB-T → Square, each on the survivors of the
previous): ours on its fast path, ours on its plain path and torchattacks (PyTorch), on the same model with the same
weights, the same thread count and the same images, side by side in one run.

    python tools/benchmark_attacks.py --cases=tiny,resnet18,at_tiny --images=16 --threads=2

Cases: `tiny` and `resnet18` are randomly initialised classifiers on random images labelled with the model's own
predictions at ε = 1e-4 (--eps), so almost no example is fooled and every stage spends its whole budget on every image
in every framework — the cost of the survivors of a robust model. `at_tiny` is a tiny classifier adversarially trained
here (PGD-5 at 8/255 on the bundled sample's 1,500 training images, --at_epochs; its weights cached in --at_weights)
and attacked at 8/255 on the first --at_images real test images with their true labels: most fall early, a few survive
every stage, the common case of an evaluation. Budgets default to the standard version's (100 iterations, 9 targets,
5,000 queries) and can be cut (--iterations, --targets, --queries); the table says which ran. Per stage the three run
one after another on their own survivors, the order rotating from stage to stage so that a change of load falls on all
of them. Needs the `peer` extra (torch, torchattacks). Prints a Markdown table and one JSON line with the CPU and load.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
FRAMEWORKS = ("ours", "ours_plain", "torchattacks")
_SIGNATURE = [tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)]
AT_EPS = 8 / 255


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


def our_stages(model, specs: dict, fast: bool) -> dict:
    """Per stage a callable (x, y) → robust bool [n]: the attack and the check of its output in one traced call, as
    `evaluate` runs them (`fast`: the attacks' default path; False: their plain path)."""
    model_fn = lambda z: model(z, training=False)  # noqa: E731
    seed = tf.constant([0, 1], tf.int64)
    stages = {}
    for name, spec in specs.items():
        spec = dataclasses.replace(spec, fn=functools.partial(spec.fn, fast=fast))

        @tf.function(input_signature=_SIGNATURE)
        def attack(x, y, s, spec=spec):
            return tf.argmax(model_fn(spec(model_fn, x, y, s)), -1) == y

        stages[name] = lambda x, y, attack=attack: attack(x, y, seed).numpy()
        # Tracing and the first call's graph optimisation, on one image with a wrong label (fooled from the start,
        # so the loops end at once): not part of the timed calls.
        stages[name](
            x=np.zeros([1, 32, 32, 3], np.float32), y=(np.argmax(model_fn(np.zeros([1, 32, 32, 3])), -1) + 1) % 10
        )
    return stages


def torch_stages(net, settings: dict) -> dict:
    """Per stage a callable (x NHWC, y) → robust bool [n], torchattacks' attack on the PyTorch twin."""
    import torch

    attacks = torch_attacks(net, **settings)

    def stage(attack, x, y):
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        yt = torch.from_numpy(y)
        x_adv = attack(xt, yt)
        with torch.no_grad():
            return (net(x_adv).argmax(1) == yt).numpy()

    stages = {name: functools.partial(stage, attacks[name]) for name in STAGES}
    # The first call's set-up, as ours' tracing: on one image with a wrong label (nothing to attack).
    with torch.no_grad():
        wrong = (net(torch.zeros([1, 3, 32, 32])).argmax(1).numpy() + 1) % 10
    for run in stages.values():
        run(np.zeros([1, 32, 32, 3], np.float32), wrong)
    return stages


def side_by_side(runners: dict[str, dict], x: np.ndarray, y: np.ndarray) -> list[dict]:
    """The chain of stages in every framework at once: per stage, each framework attacks its own survivors of the
    previous stages, one framework after another in a rotating order. Returns one row per stage."""
    standing = {name: np.ones(len(x), bool) for name in runners}
    rows = []
    for i, stage in enumerate(STAGES):
        row = dict(stage=stage)
        names = list(runners)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            idx = np.flatnonzero(standing[name])
            row[f"{name}_attacked"] = len(idx)
            start = time.perf_counter()
            robust = runners[name][stage](x[idx], y[idx]) if len(idx) else np.zeros([0], bool)
            row[f"{name}_seconds"] = time.perf_counter() - start
            standing[name][idx[~robust]] = False
            row[f"{name}_robust"] = int(standing[name].sum())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def adversarially_trained_tiny(path: str, epochs: int):
    """The `at_tiny` case's model: tiny, PGD-5 adversarial training at 8/255 (step 2/255, Adam 2e-3, batch 64, random
    flips, seed 0) on the bundled sample's training images; loaded from `path` when it holds its weights."""
    import keras

    from advss_tf.attacks.pgd import pgd_linf
    from advss_tf.data import cifar10

    keras.utils.set_random_seed(0)
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    if os.path.exists(path):
        with np.load(path) as weights:
            model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
        return model
    x, y = cifar10.load_arrays(cifar10.DataSource(), "train")
    x = x.astype(np.float32) / 255.0
    optimizer = keras.optimizers.Adam(2e-3)
    model_fn = lambda z: model(z, training=False)  # noqa: E731

    @tf.function
    def step(images, labels, seed):
        x_adv = pgd_linf(model_fn, images, labels, eps=AT_EPS, step_size=2 / 255, steps=5, seed=seed)
        with tf.GradientTape() as tape:
            logits = model(x_adv, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    k = 0
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(x))
        for start in range(0, len(x) - 63, 64):
            idx = order[start : start + 64]
            flip = np.random.default_rng(k).random((len(idx), 1, 1, 1)) < 0.5
            images = np.where(flip, x[idx][:, :, ::-1], x[idx])
            step(tf.constant(images), tf.constant(y[idx].astype(np.int64)), tf.constant([0, k], tf.int64))
            k += 1
    np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    return model


def machine() -> dict:
    """CPU model and load, recorded with the numbers."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), uptime=uptime)


def case_inputs(case: str, args) -> tuple:
    """(Keras model, images, labels, ε) of a case."""
    if case == "at_tiny":
        from advss_tf.data import cifar10

        model = adversarially_trained_tiny(args.at_weights, args.at_epochs)
        xt, yt = cifar10.load_arrays(cifar10.DataSource(), "test")
        return model, xt[: args.at_images].astype(np.float32) / 255.0, yt[: args.at_images].astype(np.int64), AT_EPS
    model = ImageClassifier(BackboneConfig(case), 10)
    x = np.random.default_rng(0).uniform(0, 1, (args.images, 32, 32, 3)).astype(np.float32)
    return model, x, np.argmax(model(x, training=False), -1).astype(np.int64), args.eps


def main() -> None:
    """Runs the benchmark and prints the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="tiny,resnet18,at_tiny", help="tiny, resnet18 and/or at_tiny")
    parser.add_argument("--images", type=int, default=16, help="random images of the tiny and resnet18 cases")
    parser.add_argument("--at_images", type=int, default=128, help="real test images of the at_tiny case")
    parser.add_argument("--at_epochs", type=int, default=30, help="adversarial training epochs of the at_tiny model")
    parser.add_argument("--at_weights", default="/tmp/advss_tf_benchmark_at_tiny.npz", help="its weights' cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-4, help="L-inf radius of tiny/resnet18 on the [0,1] scale")
    parser.add_argument("--iterations", type=int, default=100, help="APGD / APGD-T / FAB-T iterations")
    parser.add_argument("--targets", type=int, default=9, help="target classes of APGD-T and FAB-T")
    parser.add_argument("--queries", type=int, default=5000, help="Square's queries")
    parser.add_argument(
        "--versions",
        default=",".join(FRAMEWORKS),
        help="which of ours, ours_plain, torchattacks run (ours always: the ratios are to it); leaving ours_plain out "
        "halves our share of a long run (ResNet-18 at full budgets)",
    )
    args = parser.parse_args()
    versions = [v for v in FRAMEWORKS if v in args.versions.split(",")]
    unknown = set(args.versions.split(",")) - set(FRAMEWORKS)
    if unknown or "ours" not in versions:
        parser.error(f"--versions: a comma list of {', '.join(FRAMEWORKS)} with ours in it, got {args.versions}")

    import torch

    from advss_tf.peer import torch_resnet

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    budget = dict(iterations=args.iterations, targets=args.targets, queries=args.queries)
    results = []
    for case in args.cases.split(","):
        model, x, y, eps = case_inputs(case, args)
        net = torch_resnet.build_torch_classifier(model.backbone, 10)
        torch_resnet.copy_keras_weights(model, net)
        net.eval()
        clean = np.argmax(model(x, training=False), -1) == y
        specs = our_specs(eps, **budget)
        runners = {}
        for name in versions:  # each built (and traced or set up) only if it runs
            if name == "torchattacks":
                runners[name] = torch_stages(net, dict(eps=eps, **budget))
            else:
                runners[name] = our_stages(model, specs, fast=name == "ours")
        for row in side_by_side(runners, x[clean], y[clean]):
            results.append(dict(case=case, images=len(x), clean=int(clean.sum()), eps=eps, **row))
    print(" ".join(f"{k}={v}" for k, v in vars(args).items()))
    others = [v for v in versions if v != "ours"]
    print(
        "| case | stage | attacked (ours) | "
        + " | ".join(f"{v} s" for v in versions)
        + " | "
        + " | ".join(f"{v} / ours" for v in others)
        + " |"
    )
    print("|---|---|---:|" + "---:|" * (len(versions) + len(others)))
    for case in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == case]
        total = {f"{f}_seconds": sum(r[f"{f}_seconds"] for r in rows) for f in versions}
        robust = {f: rows[-1][f"{f}_robust"] for f in versions}
        for r in [*rows, dict(stage=f"all four (robust: {robust})", ours_attacked=rows[0]["ours_attacked"], **total)]:
            seconds = {f: r[f"{f}_seconds"] for f in versions}
            cells = [f"{seconds[f]:.1f}" for f in versions] + [f"{seconds[f] / seconds['ours']:.2f}" for f in others]
            print(f"| {case} | {r['stage']} | {r['ours_attacked']} | " + " | ".join(cells) + " |")
    print(json.dumps(dict(settings=vars(args), machine=machine(), results=results)))


if __name__ == "__main__":
    main()
