"""One ACL pretraining step: advss_tf's `--task=acl` step beside ACL's own PyTorch step, on the same CPU.

    pip install -e ".[bench]"      # torch, for this tool only
    python tools/benchmark_acl_step.py --backbone=resnet18_post --batch_size=512 --rounds=5 --json_out=acl_step.json
    python tools/benchmark_acl_step.py --backbone=tiny_post --batch_size=16 --rounds=2          # a quick check

The two sides, each in its own worker process (its threads and peak memory its own):
  advss_tf   the pretrain binary's own `Trainer` step of `--task=acl` configured as flags/paper/pretrain_acl.flags
             (tools/pretrain_step.py `acl_paper_fields`): contrastive PGD through the adversarial BatchNorm route in
             inference mode, NT-Xent of the clean and of the adversarial views over the batch through the two routes,
             (clean + adversarial) / 2, LARS with its warm-up/cosine schedule.
  acl_torch  one iteration of ACL's train loop (`train_simCLR.py --ACL_DS` at 399eabd), written from their code in
             advss_tf/peer/torch_acl_step.py (file:line for every part there) on their network
             (advss_tf/peer/torch_acl_resnet.py); their attack's backward also fills the weights' gradients, as
             their loop does.

The same on both sides: the weights (ACL's initialisation in PyTorch with the BatchNorms moved off 1/0 differently per
route, so that the loss check tells the routes apart; copied into the Keras model with `copy_torch_weights`,
parameter counts checked equal); the batch (the first --batch_size real CIFAR-10 training images, two SimCLR views of
each made once by the acl task's transform before anything is timed: data augmentation is excluded on both sides,
both step on the same pre-made views, in ACL's layout for PyTorch — image i's views at rows 2i and 2i+1); the attack
(--pgd_steps steps at ε = 8/255, step 2/255, uniform random start), τ = 0.5 and LARS 5.0 / 0.9 / 1e-6 / 1e-3 (each
side reports its settings and the tool stops if they differ); the threads (--threads, default 1: TensorFlow's
intra-op threads with one inter-op thread, and torch.set_num_threads).

With --check_loss (default), each side first computes its step's loss on the shared weights and views with the attack
left out (adversarial views = the clean views; BatchNorm in training mode through each route): the clean, the
adversarial and the total NT-Xent must agree within --loss_tolerance, else the tool stops — the two steps would not be
the same computation. Then each side runs --warmup steps (tracing) and the rounds alternate the two sides, the first
of each round rotating, so load from other users falls on both alike. Reported: per-round seconds, median and spread
(min-max), images/s (images, not views: each image is two views through the attack and the loss), the peak resident
memory of each worker during its timed steps and what it keeps after one, the CPU model and its vector flags, the load average; a Markdown table
and one JSON line (`{"benchmark": "acl_step", ...}`, also to --json_out).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

from absl import flags
from bench_processes import Worker, peak_rss_gib, reply, reset_peak_rss, rss_gib, summary, write_json

import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)
from advss_tf import common_flags
from advss_tf.errors import UsageError
from advss_tf.machine import cpu_flags, cpu_model
from advss_tf.models.backbones import BACKBONES

SIDES = ("advss_tf", "acl_torch")
POST_BACKBONES = sorted(name for name, spec in BACKBONES.items() if spec.family == "post_resnet")
# The CPU features that decide how fast a float32 convolution can run (printed beside the timings).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
CIFAR10_TRAIN_IMAGES = 50_000  # ACL's len(train_loader) = ceil(50,000 / batch) sizes its schedule

flags.DEFINE_enum(
    "backbone", "resnet18_post", POST_BACKBONES, "ACL's post-activation ResNet (tiny_post: a quick check)."
)
flags.DEFINE_integer("batch_size", 512, "Images per step (two views each): ACL's default 512.", lower_bound=2)
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; each times one step of each side.", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed steps per side before the rounds (the first traces).", lower_bound=1)
flags.DEFINE_integer(
    "threads",
    1,
    "Threads per framework: TensorFlow's intra-op (one inter-op thread) and torch.set_num_threads.",
    lower_bound=1,
)
flags.DEFINE_integer("pgd_steps", 5, "Contrastive PGD steps in each step (ACL's --pgd_iter, 5).", lower_bound=1)
flags.DEFINE_bool("check_loss", True, "Check that both sides compute the same loss without the attack first.")
flags.DEFINE_float("loss_tolerance", 1e-4, "Largest |Δ| allowed between the two sides' losses (--check_loss).")
flags.DEFINE_string("json_out", "", "Also write the JSON line to this file.")
flags.DEFINE_string("worker", "", "Internal: run as the worker of this side.")
flags.DEFINE_string("workdir", "", "Internal: the coordinator's folder with the shared weights and views.")
FLAGS = flags.FLAGS


# -- the coordinator's shared inputs ------------------------------------------------------------------------------
def prepare_inputs(workdir: str, backbone: str, batch_size: int) -> dict[str, int]:
    """Writes ACL's initial weights (PyTorch, and copied into the Keras model) and the pre-made views of the first
    `batch_size` CIFAR-10 training images; returns each side's parameter count."""
    import keras
    import numpy as np
    import tensorflow as tf
    import torch

    from advss_tf.config import PretrainConfig
    from advss_tf.data import cifar10, pipeline
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.contrastive import build_contrastive_model
    from advss_tf.peer import torch_acl_resnet
    from advss_tf.tasks.contrastive import acl_task

    images, labels = cifar10.load_arrays(cifar10.DataSource(), "train")
    if batch_size > len(images):
        raise UsageError(f"--batch_size={batch_size} is more than the {len(images)} CIFAR-10 training images here")
    config = BackboneConfig(backbone)
    torch.manual_seed(0)
    spec = config.spec
    net = torch_acl_resnet.AclResNet(spec.blocks, spec.planes, spec.stem)
    # Per-route BatchNorm parameters: at ACL's 1/0 start both routes compute the same thing and the loss check could
    # not tell a swapped route; a step costs the same whatever their values.
    torch_acl_resnet.move_batch_norms(net)
    keras.utils.set_random_seed(0)
    model = build_contrastive_model(config)  # what the acl task builds
    torch_acl_resnet.copy_torch_weights(net, model)
    np.savez(os.path.join(workdir, "keras_weights.npz"), *model.get_weights())
    torch.save(net.state_dict(), os.path.join(workdir, "torch_weights.pt"))
    # The acl task's own transform (its views at strength 1 and its loss weights), as its input pipeline applies it
    # (the task table gives acl no pad or flip before it); made once, here, for both sides.
    task = acl_task(PretrainConfig(task="acl", model_dir=workdir, backbone=config, batch_size=batch_size))
    x = pipeline.to_float(tf.constant(images[:batch_size]))
    batch = task.transform(x, tf.constant(labels[:batch_size]), tf.constant([0, 1], tf.int64))
    np.savez(os.path.join(workdir, "batch.npz"), **{k: v.numpy() for k, v in batch.items()})
    return {"advss_tf": int(model.count_params()), "acl_torch": torch_acl_resnet.parameter_count(net)}


# -- workers ------------------------------------------------------------------------------------------------------
def _tf_worker(workdir: str, threads: int):
    """advss_tf: the pretrain binary's Trainer step of --task=acl on the pre-made views."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pretrain_step import acl_paper_fields, build_step, repeating_iterator

    B = FLAGS.batch_size
    step = build_step(
        "acl", FLAGS.backbone, B, attack_steps=FLAGS.pgd_steps, input_pipeline=False, **acl_paper_fields()
    )
    weights = np.load(os.path.join(workdir, "keras_weights.npz"))
    step.model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
    batch = dict(np.load(os.path.join(workdir, "batch.npz")))
    # Row i's attack seed, as the input pipeline lays it out (data/pipeline.py): (step seed, i).
    batch["noise_seed"] = np.stack([np.zeros(B, np.int64), np.arange(B, dtype=np.int64)], axis=1)
    check = None
    if FLAGS.check_loss:
        tensors = {k: tf.constant(v) for k, v in batch.items()}
        no_attack = (tensors["view1"], tensors["view2"])
        per_image, metrics = step.task.losses(step.model, tensors, no_attack)
        # Per image → the batch mean, as the loop reduces them (compute_average_loss over the global batch).
        means = {"loss": per_image, "clean": metrics["clean_loss"], "adv": metrics["adv_loss"]}
        check = {k: float(tf.reduce_mean(v)) for k, v in means.items()}
    cfg = step.config
    settings = dict(
        eps=cfg.attack.eps,
        step_size=cfg.attack.step_size,
        pgd_steps=cfg.attack.steps,
        temperature=cfg.contrastive.temperature,
        learning_rate=cfg.optimizer.learning_rate,
        momentum=cfg.optimizer.momentum,
        weight_decay=cfg.optimizer.weight_decay,
        trust=cfg.optimizer.trust_coefficient,
        attack_bn=cfg.attack.bn,
        optimizer=cfg.optimizer.optimizer,
    )
    iterator = repeating_iterator(step, batch)
    return lambda: step.trainer.train(iterator, 1), int(step.model.count_params()), check, settings


def _torch_worker(workdir: str, threads: int):
    """ACL's step in PyTorch on the same weights and views, ACL's batch layout."""
    import numpy as np
    import torch

    from advss_tf.peer import torch_acl_resnet, torch_acl_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = BACKBONES[FLAGS.backbone]
    net = torch_acl_resnet.AclResNet(spec.blocks, spec.planes, spec.stem)
    net.load_state_dict(torch.load(os.path.join(workdir, "torch_weights.pt")))
    data = np.load(os.path.join(workdir, "batch.npz"))

    def nchw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    inputs = torch_acl_step.stack_views(nchw(data["view1"]), nchw(data["view2"])).contiguous()
    steps_per_epoch = math.ceil(CIFAR10_TRAIN_IMAGES / FLAGS.batch_size)
    step = torch_acl_step.AclStep(net, steps_per_epoch=steps_per_epoch, pgd_steps=FLAGS.pgd_steps)
    check = None
    if FLAGS.check_loss:
        with torch.no_grad():
            loss, clean, adv = step.losses(inputs, inputs)
        check = {"loss": float(loss), "clean": float(clean), "adv": float(adv)}
    settings = dict(
        eps=torch_acl_step.EPSILON,
        step_size=torch_acl_step.STEP_SIZE,
        pgd_steps=FLAGS.pgd_steps,
        temperature=torch_acl_step.TEMPERATURE,
        learning_rate=torch_acl_step.LEARNING_RATE,
        momentum=torch_acl_step.MOMENTUM,
        weight_decay=torch_acl_step.WEIGHT_DECAY,
        trust=torch_acl_step.TRUST_COEFFICIENT,
        attack_bn="eval",  # train_simCLR.py:366, model.eval() while crafting
        optimizer="lars",
    )
    return lambda: step(inputs), torch_acl_resnet.parameter_count(net), check, settings


def worker_main() -> None:
    """Builds one side and reports its check; on "warmup" runs the untimed steps, on "step" times one step."""
    start = time.perf_counter()
    build = _tf_worker if FLAGS.worker == "advss_tf" else _torch_worker
    step_fn, params, check, settings = build(FLAGS.workdir, FLAGS.threads)
    reply({"params": params, "check": check, "settings": settings, "build_sec": time.perf_counter() - start})
    for line in sys.stdin:
        command = line.strip()
        if command == "warmup":
            t0 = time.perf_counter()
            for _ in range(FLAGS.warmup):
                step_fn()
            reply({"warmup_sec": time.perf_counter() - t0})
        elif command == "step":
            reset_peak_rss()
            t0 = time.perf_counter()
            step_fn()
            seconds = time.perf_counter() - t0
            reply({"seconds": seconds, "peak_rss_gib": peak_rss_gib(), "rss_after_gib": rss_gib()})


# -- the coordinator ----------------------------------------------------------------------------------------------
def compare_settings(settings: dict[str, dict]) -> list[str]:
    """The settings on which the two sides differ (floats to 1e-12), as 'name: advss_tf x vs acl_torch y'."""
    ours, theirs = settings["advss_tf"], settings["acl_torch"]
    differ = []
    for name in ours:
        a, b = ours[name], theirs[name]
        same = math.isclose(a, b, rel_tol=1e-12) if isinstance(a, float) or isinstance(b, float) else a == b
        if not same:
            differ.append(f"{name}: advss_tf {a} vs acl_torch {b}")
    return differ


def table(results: dict) -> str:
    """The Markdown table: one row per side."""
    rows = [
        "| side | median s | spread (min-max) s | images/s | peak RSS GiB | RSS after step GiB | its s / advss_tf s |",
        "|---|---|---|---|---|---|---|",
    ]
    ours = results["timings"]["advss_tf"]["median"]
    for side, t in results["timings"].items():
        kept = "" if t["rss_after_step_gib"] is None else f"{t['rss_after_step_gib']:.2f}"
        rows.append(
            f"| {side} | {t['median']:.2f} | {t['min']:.2f}-{t['max']:.2f} | {results['batch_size'] / t['median']:.1f} "
            f"| {t['peak_rss_gib']:.2f} | {kept} | {t['median'] / ours:.2f}x |"
        )
    return "\n".join(rows)


def coordinator_main() -> None:
    import tensorflow as tf
    import torch

    threads = FLAGS.threads
    vector = [f for f in VECTOR_FLAGS if f in cpu_flags()]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs; {', '.join(vector) or 'no AVX2 or wider'})", flush=True)
    print(
        f"ACL step: {FLAGS.backbone}, batch {FLAGS.batch_size} (x2 views), PGD-{FLAGS.pgd_steps}, {threads} thread(s) "
        f"per framework (TensorFlow {tf.__version__}, torch {torch.__version__}); augmentation excluded: both sides "
        "step on the same pre-made views",
        flush=True,
    )
    argv = [
        f"--backbone={FLAGS.backbone}",
        f"--batch_size={FLAGS.batch_size}",
        f"--pgd_steps={FLAGS.pgd_steps}",
        f"--threads={threads}",
        f"--warmup={FLAGS.warmup}",
        f"--check_loss={FLAGS.check_loss}",
    ]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="advss_acl_bench_") as workdir:
        counts = prepare_inputs(workdir, FLAGS.backbone, FLAGS.batch_size)
        print(f"parameters: advss_tf {counts['advss_tf']:,}  acl_torch {counts['acl_torch']:,}", flush=True)
        if counts["advss_tf"] != counts["acl_torch"]:
            raise RuntimeError(f"the two networks differ in size: {counts}")
        workers = [Worker(side, os.path.abspath(__file__), workdir, argv) for side in SIDES]
        try:
            built = {w.variant: w.read() for w in workers}
            settings = {side: b["settings"] for side, b in built.items()}
            differ = compare_settings(settings)
            if differ:
                common_flags.fail(f"the two steps are set up differently: {'; '.join(differ)}", status=1)
            print(f"settings (both): {settings['advss_tf']}", flush=True)
            check = None
            if FLAGS.check_loss:
                check = {side: b["check"] for side, b in built.items()}
                delta = max(abs(check["advss_tf"][k] - check["acl_torch"][k]) for k in check["advss_tf"])
                check["max_abs_diff"] = delta
                for side in SIDES:
                    c = check[side]
                    print(
                        f"loss without the attack, {side}: clean NT-Xent {c['clean']:.6f}, adversarial route "
                        f"{c['adv']:.6f}, loss {c['loss']:.6f}",
                        flush=True,
                    )
                verdict = "agree" if delta <= FLAGS.loss_tolerance else "DIFFER"
                print(f"the two sides {verdict}: max |Δ| {delta:.2e} (tolerance {FLAGS.loss_tolerance:g})", flush=True)
                if delta > FLAGS.loss_tolerance:
                    common_flags.fail(
                        f"the two steps' losses differ by {delta:.2e} > --loss_tolerance={FLAGS.loss_tolerance:g} on "
                        "the same weights and views: they are not the same computation",
                        status=1,
                    )
            # One after the other, as the rounds: at ACL's batch each step's activations take gigabytes, and two at
            # once need twice that.
            ready = {w.variant: w.time("warmup") for w in workers}
            for side, r in ready.items():
                print(
                    f"{side}: built in {built[side]['build_sec']:.0f} s, {FLAGS.warmup} warm-up step(s) in "
                    f"{r['warmup_sec']:.0f} s",
                    flush=True,
                )
            raw = {side: [] for side in SIDES}
            for r in range(FLAGS.rounds):
                order = workers[r % len(workers) :] + workers[: r % len(workers)]
                for w in order:
                    raw[w.variant].append(w.time("step"))
                    print(f"round {r + 1} {w.variant}: {raw[w.variant][-1]['seconds']:.2f} s", flush=True)
                if FLAGS.json_out:  # a run cut short still leaves the rounds it finished
                    write_json(FLAGS.json_out, {"partial": True, "rounds_done": r + 1, "raw": raw, "params": counts})
        finally:
            for w in workers:
                w.close()
    timings = {
        side: {
            **summary([x["seconds"] for x in runs]),
            "seconds": [round(x["seconds"], 3) for x in runs],
            "peak_rss_gib": max(x["peak_rss_gib"] for x in runs),
            # What the worker keeps while the other side steps (freed activations may stay with the allocator).
            "rss_after_step_gib": runs[-1]["rss_after_gib"],
        }
        for side, runs in raw.items()
    }
    results = {
        "benchmark": "acl_step",
        "backbone": FLAGS.backbone,
        "batch_size": FLAGS.batch_size,
        "views_per_image": 2,
        "pgd_steps": FLAGS.pgd_steps,
        "threads": threads,
        "inter_op_threads_tf": 1,
        "rounds": FLAGS.rounds,
        "warmup_steps": FLAGS.warmup,
        "augmentation": "excluded: both sides step on the same pre-made views",
        "params": counts,
        "settings": settings["advss_tf"],
        "loss_check": check,
        "build_sec": {side: round(b["build_sec"], 1) for side, b in built.items()},
        "warmup_sec": {side: round(r["warmup_sec"], 1) for side, r in ready.items()},
        "timings": timings,
        "ratio_torch_over_ours": timings["acl_torch"]["median"] / timings["advss_tf"]["median"],
        "versions": {"tensorflow": tf.__version__, "torch": torch.__version__},
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "cpu": cpu_model(),
        "cpu_vector_flags": vector,
        "cpus": os.cpu_count(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
    }
    print(table(results))
    print(json.dumps(results))
    if FLAGS.json_out:
        write_json(FLAGS.json_out, results)


def main() -> None:
    if FLAGS.worker:
        worker_main()
    else:
        coordinator_main()


if __name__ == "__main__":
    common_flags.run_binary(main)
