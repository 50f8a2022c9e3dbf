"""Seconds per stage of the standard AutoAttack (APGD-CE → APGD-T → FAB-T → Square, each on the survivors of the
previous): ours (the evaluation core `advss_tf.autoattack` and `evaluate` run) against the official code
(fra31/auto-attack) run on the same SavedModel through its TF2 adapter, in one process, with the same images, labels,
ε, thread count and budgets; and whether the two leave the same examples robust.

    git clone https://github.com/fra31/auto-attack /tmp/official_aa
    git -C /tmp/official_aa checkout a39220048b3c9f2cca9a4d3a54604793c68eca7e   # the version this tool was read against
    python tools/benchmark_official_autoattack.py --official_dir=/tmp/official_aa --case=tiny --labels=predicted \
        --eps=1e-4 --images=16 --threads=1 --budget=cut

The official code is imported from --official_dir (its `autoattack` package); nothing is downloaded or installed. It
needs torch (the `peer` extra). The model is a classifier SavedModel (--model; any that `advss_tf.serving` opens),
or a case built here and exported to a temporary SavedModel: `tiny` / `resnet18`, randomly initialised (seed --seed),
or `at_tiny`, the adversarially trained tiny classifier of tools/benchmark_attacks.py (its builder and weights
cache). Both frameworks attack the one object `serving.load_classifier` returned. Images: the first --images of the
bundled CIFAR-10 test sample, labelled with their true labels or (--labels=predicted) with the model's own clean
predictions, so that every image is attacked — with a tiny --eps nothing is fooled and every stage spends its whole
budget on every image, the cost of a robust model's survivors (the `tiny` case of tools/benchmark_attacks.py).
--budget=full is the standard version's (100 iterations, 9 targets, 5,000 queries); --budget=cut is CI-sized (10
iterations, 2 targets, 200 queries: a check that the tool runs, not a benchmark).

The official side, at commit a39220048b3c of fra31/auto-attack:
- `AutoAttack(ModelAdapter(...), norm='Linf', eps, version='standard', is_tf_model=True, seed, device)`. With
  is_tf_model the attacks are its torch code (autopgd_base.APGDAttack / APGDAttack_targeted, fab_tf.FABAttack_TF,
  square.SquareAttack on `adapter.predict`); every model call goes through utils_tf2.ModelAdapter: torch NCHW →
  NumPy → TF NHWC, logits and the loss gradient computed by the adapter's `tf.function`s (cross-entropy, targeted
  DLR, the logit difference FAB-T needs), and back. The adapter wants a Keras model without softmax: it reads
  `.layers` for a Conv2D to learn the data format (a SavedModel has none, so it takes channels-last from
  `input_shape`, and prints that it did) and calls `model(x, training=False)`; here that is the loaded signature.
- One change to the adapter: it moves every output to CUDA (`utils_tf2.py` line 26, `.cuda()`), which fails with a
  CPU-only torch; the subclass below moves them to the attack's device instead (the same thing where that is CUDA).
- Each stage is timed by running the official attacks on the survivors as `AutoAttack.run_standard_evaluation` does
  (autoattack.py lines 110-240: the checks, the clean pass in batches, then per attack in `attacks_to_run` the
  survivors in batches of `bs` with the attack's seed and settings of lines 183-216, and the check of its output,
  all under `torch.no_grad()` as there — the adapter reads tensors with `.numpy()`, which a tensor that requires
  grad refuses outside no_grad). --official_whole also runs `run_standard_evaluation` itself, untouched, on the same
  images, and reports its seconds and whether it left the same examples robust as the per-stage run.
- --budget=cut rebuilds the two APGD attacks with AutoAttack's own constructor arguments (autoattack.py lines
  51-54, 64-67) but 10 iterations, because APGD fixes its step-size checkpoints from n_iter in its constructor
  (autopgd_base.py lines 153-155); FAB-T's iterations, both target counts and Square's queries are attributes.

Reported per stage: the images each side attacked, the robust count after it, our seconds (tracing included; the
tracing also alone) and the official's (its adapter traces its `tf.function`s for each new batch shape inside the
stage: that cannot be taken apart), and official / ours; then the checks and clean pass, the total of each side, and
the per-example comparison: the examples one side left robust and the other broke, with the stage that broke them.
The two use different random streams (ours: stateless TF seeds; theirs: torch.manual_seed), so exact agreement is
not guaranteed on examples near the boundary: the tool reports, it does not assert. Ours runs first, then the
official; prints a Markdown table, the CPU model and load, and writes everything to --json_out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

import advss_tf  # noqa: F401  (quiet TensorFlow import settings, set before TensorFlow is imported)
from advss_tf import common_flags
from advss_tf.errors import UsageError

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")
BUDGETS = {
    "full": dict(iterations=100, targets=9, queries=5000),  # the standard version's (autoattack.py set_version)
    "cut": dict(iterations=10, targets=2, queries=200),  # CI-sized, as tests/test_peer_autoattack.py cuts them
}
CASES = ("tiny", "resnet18", "at_tiny")
OFFICIAL_FILES = ("autoattack/autoattack.py", "autoattack/utils_tf2.py")
OFFICIAL_COMMIT = "a39220048b3c9f2cca9a4d3a54604793c68eca7e"

FLAGS = flags.FLAGS
flags.DEFINE_string("official_dir", None, "A checkout of fra31/auto-attack (the folder holding autoattack/).")
flags.DEFINE_string("model", "", "A classifier SavedModel to attack; empty: build and export --case.")
flags.DEFINE_enum("case", "tiny", CASES, "The model when --model is empty (tools/benchmark_attacks.py's cases).")
flags.DEFINE_integer("images", 16, "The first N images of the bundled CIFAR-10 test sample.", lower_bound=1)
flags.DEFINE_enum("labels", "true", ["true", "predicted"], "True labels, or the model's own clean predictions.")
common_flags.define_fraction("eps", "8/255", "L∞ radius on the [0, 1] pixel scale (e.g. 8/255, 1e-4).")
flags.DEFINE_enum("budget", "full", list(BUDGETS), "full: 100 iterations, 9 targets, 5,000 queries; cut: 10, 2, 200.")
flags.DEFINE_integer("threads", 1, "Threads of each framework (torch, TF intra-op; TF inter-op 1).", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Images per attack call, both sides (the official's `bs`).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of both sides' attacks and of the tiny / resnet18 case's weights.")
flags.DEFINE_string("at_weights", "/tmp/advss_tf_benchmark_at_tiny.npz", "The at_tiny model's weights cache.")
flags.DEFINE_integer(
    "at_epochs", 30, "Adversarial training epochs of the at_tiny model (when not cached).", lower_bound=1
)
flags.DEFINE_bool("official_whole", False, "Also run the official run_standard_evaluation untouched (twice the time).")
flags.DEFINE_string("json_out", "", "Write the settings, machine, per-stage rows and per-example results here.")
flags.mark_flag_as_required("official_dir")
flags.register_validator("eps", lambda eps: 0 < eps <= 1, message="must be in (0, 1] (the [0, 1] pixel scale)")
FLAGS_RECORDED = (  # the settings the JSON records
    "official_dir model case images labels eps budget threads batch_size seed at_weights at_epochs official_whole"
).split()


@flags.validator("official_dir", message="is not a checkout of fra31/auto-attack (no autoattack/utils_tf2.py)")
def _is_official_checkout(path: str | None) -> bool:
    if path is None:
        return True  # mark_flag_as_required says so
    if not os.path.isdir(path):
        raise flags.ValidationError(f"{path} is not a folder (git clone https://github.com/fra31/auto-attack there)")
    return all(os.path.isfile(os.path.join(path, f)) for f in OFFICIAL_FILES)


def import_official(path: str):
    """(torch, the official `autoattack` package) with `autoattack` imported from the checkout at `path`."""
    try:
        import torch
    except ImportError:
        raise UsageError("the official AutoAttack needs torch: pip install -e '.[peer]'") from None
    sys.path.insert(0, os.path.abspath(path))
    import autoattack

    where = os.path.dirname(os.path.abspath(autoattack.__file__))
    if where != os.path.join(os.path.abspath(path), "autoattack"):
        raise UsageError(f"autoattack was imported from {where}, not from --official_dir={path}")
    return torch, autoattack


def checkout_commit(path: str) -> str | None:
    """The checkout's commit (None: not a git checkout)."""
    try:
        done = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:  # no git here
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def case_model(case: str, seed: int, at_weights: str, at_epochs: int):
    """The Keras model of a case: tiny / resnet18 randomly initialised from `seed`; at_tiny as
    tools/benchmark_attacks.py trains (and caches) it."""
    import keras

    if case == "at_tiny":
        import benchmark_attacks  # tools/ is the script's folder, first on sys.path

        return benchmark_attacks.adversarially_trained_tiny(at_weights, at_epochs)
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.classifier import ImageClassifier

    keras.utils.set_random_seed(seed)
    return ImageClassifier(BackboneConfig(case), 10)


def export_case(model, images, folder: str) -> str:
    """Writes `model` as a classifier SavedModel (serving_default: images → logits) under `folder`."""
    import tensorflow as tf
    from absl import logging

    from advss_tf import serving

    model(images[:1], training=False)  # built before its variables are tracked
    path = os.path.join(folder, "classifier")
    verbosity, tf_level = logging.get_verbosity(), tf.get_logger().level
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer's INFO lines (the core's own lines stay)
    tf.get_logger().setLevel("WARNING")
    try:
        serving.save_classifier(path, lambda x: model(x, training=False), {"model": model}, info={})
    finally:
        logging.set_verbosity(verbosity)
        tf.get_logger().setLevel(tf_level)
    return path


def our_plan(eps: float, iterations: int, targets: int, queries: int):
    """The standard composite from the one plan builder at radius `eps`, its gradient stages at `iterations`."""
    import dataclasses

    from advss_tf.attacks.registry import SQUARE
    from advss_tf.config import attack_plan

    plan = attack_plan(["autoattack"], epsilons={"linf": eps}, targets=targets, square_queries=queries)
    return [
        (n, [s if s.name in SQUARE else dataclasses.replace(s, steps=iterations) for s in specs]) for n, specs in plan
    ]


def run_ours(classifier, images, labels, eps: float, budget: dict, seed: int, batch_size: int) -> dict[str, Any]:
    """The standard AutoAttack through the evaluation core (`evaluation.core.evaluate`, as `advss_tf.autoattack`
    calls it, with the plan's iterations set): per stage the images attacked, the robust count, seconds."""
    from advss_tf.evaluation import core

    opened = core.open_model(classifier.loaded, images[: core.PROBE_IMAGES])
    plan = our_plan(eps, **budget)
    start = time.perf_counter()
    run = core.evaluate(
        opened, images, labels, plan, door=core.PYTHON, seed=seed, batch_size=batch_size, progress=False
    )
    total = time.perf_counter() - start
    (outcome,) = run.outcomes
    stages = [
        dict(
            stage=stage.spec.name,
            attacked=int(stage.num_attacked if stage.num_attacked is not None else len(labels)),
            robust=int(stage.robust.sum()),
            seconds=stage.seconds + stage.trace_seconds,
            trace_seconds=stage.trace_seconds,
            steps=stage.spec.steps,
            targets=stage.spec.targets,
        )
        for stage in outcome.stages
    ]
    breaking = outcome.breaking_stage()
    return dict(
        clean=run.clean["correct"].copy(),
        robust=outcome.robust.copy(),
        broken_by=breaking,
        stages=stages,
        total_seconds=total,
        checks_seconds=total - sum(s["seconds"] for s in stages),
    )


def official_adapter(torch, classifier, image_shape, device: str):
    """utils_tf2.ModelAdapter over the loaded classifier, its outputs on `device` instead of always on CUDA."""
    from autoattack import utils_tf2

    class LoadedClassifier:
        """The part of a Keras model the adapter reads: `layers` (none: no Conv2D to take the data format from, so
        it takes channels-last from `input_shape`) and `model(x, training=False)` → logits."""

        layers = ()
        input_shape = (None, *image_shape)

        def __call__(self, images, training=False):
            return classifier(images)

    class Adapter(utils_tf2.ModelAdapter):
        def _ModelAdapter__tf_to_pt(self, tensor):  # the adapter's private TF → torch conversion (line 26: .cuda())
            return torch.from_numpy(tensor.numpy()).to(device)

    return Adapter(LoadedClassifier(), num_classes=classifier.num_classes)


def official_adversary(autoattack, adapter, eps: float, budget: dict, seed: int, device: str):
    """AutoAttack(version='standard') on the adapter, at `budget` (module docstring: how a cut budget is set)."""
    from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    adversary = autoattack.AutoAttack(
        adapter, norm="Linf", eps=eps, seed=seed, verbose=False, version="standard", is_tf_model=True, device=device
    )
    if budget != BUDGETS["full"]:
        common = dict(
            n_restarts=1,
            n_iter=budget["iterations"],
            verbose=False,
            eps=eps,
            norm="Linf",
            eot_iter=1,
            rho=0.75,
            seed=seed,
            device=device,
            is_tf_model=True,
            logger=adversary.logger,
        )
        adversary.apgd = APGDAttack(adapter, **common)
        adversary.apgd_targeted = APGDAttack_targeted(adapter, **common)
        adversary.apgd_targeted.n_target_classes = budget["targets"]
        adversary.fab.n_iter = budget["iterations"]
        adversary.fab.n_target_classes = budget["targets"]
        adversary.square.n_queries = budget["queries"]
    return adversary


def official_budget(adversary) -> dict[str, Any]:
    """The budgets the official objects hold, read back (what ran)."""
    return dict(
        apgd_ce=dict(n_iter=adversary.apgd.n_iter, n_restarts=adversary.apgd.n_restarts),
        apgd_t=dict(n_iter=adversary.apgd_targeted.n_iter, n_target_classes=adversary.apgd_targeted.n_target_classes),
        fab_t=dict(n_iter=adversary.fab.n_iter, n_target_classes=adversary.fab.n_target_classes),
        square=dict(n_queries=adversary.square.n_queries, p_init=adversary.square.p_init),
        attacks_to_run=list(adversary.attacks_to_run),
    )


def official_stage_batch(adversary, attack: str, x, y):
    """One batch of one stage, with the seed and settings autoattack.py lines 183-216 give it."""
    if attack == "apgd-ce":
        adversary.apgd.loss = "ce"
        adversary.apgd.seed = adversary.get_seed()
        return adversary.apgd.perturb(x, y)
    if attack == "apgd-t":
        adversary.apgd_targeted.seed = adversary.get_seed()
        return adversary.apgd_targeted.perturb(x, y)
    if attack == "fab-t":
        adversary.fab.targeted = True
        adversary.fab.n_restarts = 1
        adversary.fab.seed = adversary.get_seed()
        return adversary.fab.perturb(x, y)
    if attack == "square":
        adversary.square.seed = adversary.get_seed()
        return adversary.square.perturb(x, y)
    raise ValueError(f"not a stage of the standard version: {attack}")


def run_official(torch, adversary, images, labels, batch_size: int) -> dict[str, Any]:
    """The official standard AutoAttack, stage by stage as run_standard_evaluation runs it (lines 110-240), each
    stage timed: per stage the images attacked, the robust count, seconds."""
    import numpy as np
    from autoattack import checks

    device, bs = adversary.device, batch_size
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels).to(device)
    start = time.perf_counter()
    checks.check_randomized(adversary.get_logits, x[:bs], y[:bs], bs=bs, logger=adversary.logger)
    n_classes = checks.check_range_output(adversary.get_logits, x[:bs], logger=adversary.logger)
    checks.check_dynamic(adversary.model, x[:bs], adversary.is_tf_model, logger=adversary.logger)
    checks.check_n_classes(
        n_classes,
        adversary.attacks_to_run,
        adversary.apgd_targeted.n_target_classes,
        adversary.fab.n_target_classes,
        logger=adversary.logger,
    )
    broken_by = np.full(len(labels), "", dtype=object)
    stages = []
    with torch.no_grad():
        robust = np.zeros(len(labels), bool)
        for s in range(0, len(labels), bs):
            robust[s : s + bs] = (adversary.get_logits(x[s : s + bs]).max(dim=1)[1] == y[s : s + bs]).cpu().numpy()
        clean = robust.copy()
        checks_seconds = time.perf_counter() - start
        for attack in adversary.attacks_to_run:
            survivors = np.flatnonzero(robust)
            stage_start = time.perf_counter()
            for s in range(0, len(survivors), bs):  # none left: the official loop stops; the stage takes 0 s
                idx = survivors[s : s + bs]
                xb, yb = x[torch.from_numpy(idx)].clone(), y[torch.from_numpy(idx)].clone()
                adv = official_stage_batch(adversary, attack, xb, yb)
                fooled = (adversary.get_logits(adv).max(dim=1)[1] != yb).cpu().numpy()
                robust[idx[fooled]] = False
                broken_by[idx[fooled]] = attack.replace("-", "_")
            seconds = time.perf_counter() - stage_start
            print(f"  official {attack}: {len(survivors)} attacked, {robust.sum()} robust, {seconds:.1f} s", flush=True)
            stages.append(
                dict(stage=attack.replace("-", "_"), attacked=len(survivors), robust=int(robust.sum()), seconds=seconds)
            )
    total = time.perf_counter() - start
    return dict(
        clean=clean,
        robust=robust,
        broken_by=broken_by.astype(str),
        stages=stages,
        total_seconds=total,
        checks_seconds=checks_seconds,
    )


def run_official_whole(torch, adversary, images, labels, batch_size: int) -> dict[str, Any]:
    """The official `run_standard_evaluation` itself, untouched: its seconds and robust examples."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(adversary.device)
    y = torch.from_numpy(labels).to(adversary.device)
    start = time.perf_counter()
    _, y_adv = adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    seconds = time.perf_counter() - start
    # y_adv holds the clean prediction where no attack broke an example, the fooled one where one did.
    return dict(robust=(y_adv.cpu().numpy() == labels), total_seconds=seconds)


def status(clean: bool, robust: bool, broken_by: str) -> str:
    return "robust" if robust else ("wrong clean" if not clean else f"broken by {broken_by}")


def disagreements(ours: dict, official: dict, labels) -> list[dict[str, Any]]:
    """The examples the two sides end on differently (robust in one, broken or wrong clean in the other)."""
    import numpy as np

    return [
        dict(
            index=int(i),
            label=int(labels[i]),
            ours=status(ours["clean"][i], ours["robust"][i], ours["broken_by"][i]),
            official=status(official["clean"][i], official["robust"][i], official["broken_by"][i]),
        )
        for i in np.flatnonzero(ours["robust"] != official["robust"])
    ]


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def table(ours: dict, official: dict) -> list[str]:
    """The Markdown table: per stage, then the checks and clean pass, then the total."""
    fmt = lambda r: "–" if r is None else f"{r:.2f}"  # noqa: E731
    lines = [
        "| stage | attacked ours | attacked official | robust ours | robust official | ours s | of which tracing "
        "| official s | official / ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o, t in zip(ours["stages"], official["stages"]):
        lines.append(
            f"| {o['stage']} | {o['attacked']} | {t['attacked']} | {o['robust']} | {t['robust']} | {o['seconds']:.1f} "
            f"| {o['trace_seconds']:.1f} | {t['seconds']:.1f} | {fmt(ratio(t['seconds'], o['seconds']))} |"
        )
    lines.append(
        f"| checks + clean pass | | | {int(ours['clean'].sum())} | {int(official['clean'].sum())} "
        f"| {ours['checks_seconds']:.1f} | | {official['checks_seconds']:.1f} "
        f"| {fmt(ratio(official['checks_seconds'], ours['checks_seconds']))} |"
    )
    trace = sum(s["trace_seconds"] for s in ours["stages"])
    lines.append(
        f"| **total** | | | {int(ours['robust'].sum())} | {int(official['robust'].sum())} "
        f"| {ours['total_seconds']:.1f} | {trace:.1f} | {official['total_seconds']:.1f} "
        f"| **{fmt(ratio(official['total_seconds'], ours['total_seconds']))}** |"
    )
    return lines


def open_inputs(args, folder: str):
    """(the classifier both sides attack, images, labels): --model or the case exported under `folder`, opened by
    `serving.load_classifier` (the Classifier holds the loaded SavedModel); the first --images test images."""
    import numpy as np
    import tensorflow as tf

    from advss_tf import serving
    from advss_tf.data import cifar10

    test_images, test_labels = cifar10.load_arrays(cifar10.DataSource(), "test")
    if args.images > len(test_images):
        raise UsageError(f"--images={args.images} but the bundled test sample holds {len(test_images)}")
    images = test_images[: args.images].astype(np.float32) / 255.0
    if args.model:
        path = args.model
    else:
        path = export_case(case_model(args.case, args.seed, args.at_weights, args.at_epochs), images, folder)
    classifier = serving.load_classifier(path, images[:2], num_classes=None)
    if classifier.batch_size is not None:
        raise UsageError(f"{path} takes batches of {classifier.batch_size} only; the official adapter sends any size")
    if args.labels == "predicted":
        labels = np.argmax(classifier(tf.constant(images)).numpy(), -1).astype(np.int64)
    else:
        labels = test_labels[: args.images].astype(np.int64)
    return classifier, images, labels


def benchmark(args) -> dict[str, Any]:
    """Runs both sides on the same model and images, prints the table; returns everything the JSON holds."""
    import numpy as np
    import tensorflow as tf

    from advss_tf import machine

    torch, autoattack = import_official(args.official_dir)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = BUDGETS[args.budget]
    with tempfile.TemporaryDirectory() as folder:
        classifier, images, labels = open_inputs(args, folder)
        print(
            f"model: {args.model or 'case ' + args.case}, {len(images)} images, labels {args.labels}, ε={args.eps:g}, "
            f"budget {args.budget} {budget}, {args.threads} thread(s), official on {device}",
            flush=True,
        )
        ours = run_ours(classifier, images, labels, args.eps, budget, args.seed, args.batch_size)
        print(f"ours: {ours['total_seconds']:.1f} s, {int(ours['robust'].sum())} robust", flush=True)
        adapter = official_adapter(torch, classifier, images.shape[1:], device)
        adversary = official_adversary(autoattack, adapter, args.eps, budget, args.seed, device)
        official = run_official(torch, adversary, images, labels, args.batch_size)
        print(f"official: {official['total_seconds']:.1f} s, {int(official['robust'].sum())} robust", flush=True)
        whole = run_official_whole(torch, adversary, images, labels, args.batch_size) if args.official_whole else None
    for side in (ours, official):  # the rows are paired by position: the two chains must be the one standard order
        assert tuple(s["stage"] for s in side["stages"]) == STAGES, side["stages"]

    differ = disagreements(ours, official, labels)
    print("\n".join(table(ours, official)))
    if whole is not None:
        whole["same_examples_as_per_stage"] = bool(np.array_equal(whole["robust"], official["robust"]))
        print(
            f"official run_standard_evaluation untouched: {whole['total_seconds']:.1f} s, {int(whole['robust'].sum())} "
            f"robust, {'the same' if whole['same_examples_as_per_stage'] else 'NOT the same'} examples as per stage"
        )
    print(f"per-example: {'the same examples robust' if not differ else f'{len(differ)} differ'}")
    for d in differ:
        print(f"  image {d['index']} (label {d['label']}): ours {d['ours']}, official {d['official']}")
    cpu = machine.cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    trace = sum(s["trace_seconds"] for s in ours["stages"])
    per_example = lambda side: {k: side[k].tolist() for k in ("clean", "robust", "broken_by")}  # noqa: E731
    return dict(
        settings={k: getattr(args, k) for k in FLAGS_RECORDED},
        budget=budget,
        machine=dict(cpu=cpu, cores=os.cpu_count(), load_average=os.getloadavg(), device=device),
        versions=dict(tensorflow=tf.__version__, torch=torch.__version__),
        official_checkout=dict(
            path=os.path.abspath(args.official_dir),
            commit=checkout_commit(args.official_dir),
            read_against=OFFICIAL_COMMIT,
            budget=official_budget(adversary),
        ),
        stages=[dict(stage=o["stage"], ours=o, official=t) for o, t in zip(ours["stages"], official["stages"])],
        total=dict(
            ours_seconds=ours["total_seconds"],
            ours_trace_seconds=trace,
            official_seconds=official["total_seconds"],
            official_over_ours=ratio(official["total_seconds"], ours["total_seconds"]),
            official_over_ours_untraced=ratio(official["total_seconds"], ours["total_seconds"] - trace),
            ours_checks_seconds=ours["checks_seconds"],
            official_checks_seconds=official["checks_seconds"],
        ),
        official_whole=None if whole is None else dict(whole, robust=whole["robust"].tolist()),
        labels=labels.tolist(),
        ours=per_example(ours),
        official=per_example(official),
        disagreements=differ,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common_flags.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        results = benchmark(FLAGS)
    except UsageError as e:
        common_flags.fail(str(e))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        print(f"results: {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main, flags_parser=common_flags.parse_flags)
