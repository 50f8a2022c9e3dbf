"""advss_tf's adversarial training step vs the same step in PyTorch (eager, channels_last, torch.compile), side by side.

    pip install -e ".[bench]"      # torch==2.13.0, only for this tool
    python tools/benchmark_vs_torch.py --backbone=resnet18 --batch_size=128 --rounds=5

Each variant runs in its own worker process (so each one's peak memory is its own), built and warmed up once
(tracing, torch.compile), then the workers take turns: every round times one call of each part in each variant,
the variants' order rotating from round to round, so load from other users of the machine falls on all of them
alike. Reported: the median and the spread (min-max) over the rounds, images/s, and the peak resident memory
(RSS) of the worker during each timed call.

Parts:
  adv_step    one adversarial training step: PGD-10 (8/255, step 2/255, random start, train-mode BatchNorm while
              crafting), loss 0.5·(clean CE + adversarial CE), SGD momentum 0.9 with coupled weight decay 5e-4.
              advss_tf: the real `Trainer` of the pretrain binary on the Jigsaw task (31 classes, its input
              pipeline included); PyTorch: the same model (advss_tf.peer.torch_resnet, equal parameter count,
              the same initial weights) on the same Jigsaw-shuffled batch.
  clean_step  the same without the attack (one forward + backward + update).
  pgd20_eval  the PGD-20 evaluation pass of a 10-class classifier in inference mode + the final prediction, in
              images/s: advss_tf's `evaluation.robustness.run_attack` (what `evaluate` runs), PyTorch's loop.

Both frameworks get the same number of threads (--threads, default: all CPUs). Prints a table, then one JSON line
(`{"benchmark": "advss_tf_vs_torch", ...}`) with every timing and the ratios (PyTorch seconds / advss_tf seconds:
above 1 means advss_tf is faster).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags
from bench_processes import Worker, peak_rss_gib, reply, reset_peak_rss, summary, write_json

PARTS = ("adv_step", "clean_step", "pgd20_eval")
VARIANTS = ("advss_tf", "torch_eager", "torch_channels_last", "torch_compile")
# Not run by default: advss_tf with Keras' own (unfused) BatchNormalization, the reference the fused layer replaced;
# advss_tf with one inter-op thread instead of TensorFlow's default (one per CPU), the threading experiment of
# docs/benchmarks.md.
EXTRA_VARIANTS = ("advss_tf_keras_bn", "advss_tf_interop1")

flags.DEFINE_string("backbone", "resnet18", "Backbone (tiny | resnet18 | resnet50v2).")
flags.DEFINE_integer("batch_size", 128, "Images per step, for every variant.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; each times one call of every part in every variant.")
flags.DEFINE_integer("attack_steps", 10, "PGD steps inside the adversarial training step.")
flags.DEFINE_integer("eval_steps", 20, "PGD steps of the evaluation pass.")
flags.DEFINE_integer("threads", 0, "Threads for both frameworks (intra-op / torch.set_num_threads); 0: all CPUs.")
flags.DEFINE_list("variants", list(VARIANTS), f"Which of {', '.join(VARIANTS + EXTRA_VARIANTS)}.")
flags.DEFINE_list("parts", list(PARTS), f"Which of {', '.join(PARTS)}.")
flags.DEFINE_string("json_out", "", "Also write the JSON line to this file.")
flags.DEFINE_bool(
    "profile",
    False,
    "After the rounds, profile one adversarial step per variant (tf.profiler / torch.profiler) and print the share "
    "of op time in the convolutions and the largest op types.",
)
flags.DEFINE_string("worker", "", "Internal: run as the worker of this variant.")
flags.DEFINE_string("workdir", "", "Internal: the coordinator's folder with the shared weights and batch.")
FLAGS = flags.FLAGS

JIGSAW_CLASSES = 31
EVAL_CLASSES = 10


# -- the coordinator's shared inputs ------------------------------------------------------------------------------
def prepare_inputs(workdir: str, backbone: str, batch_size: int) -> dict:
    """Writes the initial weights (Keras and PyTorch layout) and one real Jigsaw batch; returns their parameter counts."""
    import keras
    import numpy as np
    import tensorflow as tf
    import torch

    from advss_tf.data import cifar10, pipeline
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.classifier import ImageClassifier
    from advss_tf.peer import torch_resnet
    from advss_tf.pretext import jigsaw

    counts = {}
    keras.utils.set_random_seed(0)
    for name, classes in (("jigsaw", JIGSAW_CLASSES), ("eval", EVAL_CLASSES)):
        model = ImageClassifier(BackboneConfig(backbone), classes)
        net = torch_resnet.build_torch_classifier(backbone, classes)
        torch_resnet.copy_keras_weights(model, net)
        np.savez(os.path.join(workdir, f"{name}_keras.npz"), *model.get_weights())
        torch.save(net.state_dict(), os.path.join(workdir, f"{name}_torch.pt"))
        counts[name] = {"keras": int(model.count_params()), "torch": torch_resnet.parameter_count(net)}
    images, labels = cifar10.load_arrays(cifar10.DataSource(), "train")
    x = pipeline.to_float(tf.constant(images[:batch_size]))
    batch = jigsaw.jigsaw_transform(x, tf.constant([0, 1], tf.int64), jigsaw.make_permutations())
    test_images, test_labels = cifar10.load_arrays(cifar10.DataSource(), "test")
    np.savez(
        os.path.join(workdir, "batch.npz"),
        jigsaw_inputs=batch["inputs"].numpy(),
        jigsaw_labels=batch["labels"].numpy(),
        test_images=test_images[:batch_size],
        test_labels=test_labels[:batch_size].astype(np.int64),
    )
    return counts


# -- profiles -----------------------------------------------------------------------------------------------------
CONTAINER_OPS = ("StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If", "StatelessIf")


def tf_op_seconds(fn) -> dict[str, float]:
    """Seconds per TensorFlow op type while `fn()` runs, summed over the host's executor threads (tf.profiler).

    The host plane's op events are named "<op name>:<op type>"; function calls and loops (`CONTAINER_OPS`)
    contain other ops and are left out so that nothing is counted twice.
    """
    import glob

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="advss_profile_")
    tf.profiler.experimental.start(logdir)
    try:
        fn()
    finally:
        tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    seconds: dict[str, float] = {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name.split("#")[0]
                if ":" not in name or "::" in name:  # runtime events (ExecutorState::Process, ...)
                    continue
                op_type = name.rsplit(":", 1)[1].strip()
                if not op_type or " " in op_type or op_type.startswith("__") or op_type in CONTAINER_OPS:
                    continue
                seconds[op_type] = seconds.get(op_type, 0.0) + event.duration_ps * 1e-12
    return seconds


def torch_op_seconds(fn) -> dict[str, float]:
    """Self CPU seconds per PyTorch operator while `fn()` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages()}


def op_profile(seconds: dict[str, float]) -> dict:
    """The convolutions' share of op time and the ten largest op types."""
    total = sum(seconds.values())
    conv = sum(t for op, t in seconds.items() if "conv" in op.lower())
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[:10]
    return {
        "op_seconds": round(total, 3),
        "conv_seconds": round(conv, 3),
        "conv_share": conv / total if total else 0.0,
        "top": [[op, round(t, 3)] for op, t in top],
    }


# -- workers ------------------------------------------------------------------------------------------------------
def _tf_worker(workdir: str, threads: int, batch_norm: str, inter_op_threads: int = 0):
    """advss_tf: the real Trainer (adversarial and standard) and the real evaluation attack loop."""
    import dataclasses

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)  # 0: TensorFlow's default
    from pretrain_step import build_step

    from advss_tf.attacks.registry import ATTACKS
    from advss_tf.evaluation import robustness
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.classifier import ImageClassifier
    from advss_tf.models.layers import batch_norm_layer
    from advss_tf.training import loop

    B = FLAGS.batch_size
    step = build_step(
        "jigsaw", FLAGS.backbone, B, adversarial=True, attack_steps=FLAGS.attack_steps, batch_norm=batch_norm
    )
    weights = np.load(os.path.join(workdir, "jigsaw_keras.npz"))
    step.model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
    t = step.trainer
    clean = loop.Trainer(
        t.strategy,
        t.task,
        t.model,
        t.optimizer,
        global_batch_size=B,
        weight_decay=t.weight_decay,
        adversarial=False,
        attack_bn_train=True,
    )
    with batch_norm_layer(batch_norm):
        classifier = ImageClassifier(BackboneConfig(FLAGS.backbone), EVAL_CLASSES)
    weights = np.load(os.path.join(workdir, "eval_keras.npz"))
    classifier.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
    spec = dataclasses.replace(ATTACKS["pgd20"], steps=FLAGS.eval_steps)
    data = np.load(os.path.join(workdir, "batch.npz"))
    test_images, test_labels = data["test_images"], data["test_labels"]

    def evaluate() -> float:
        outcome = robustness.run_attack(
            lambda x: classifier(x, training=False),
            spec,
            test_images,
            test_labels,
            np.ones(len(test_images), bool),
            batch_size=B,
            seed=0,
        )
        return outcome.seconds  # the attack loop only: run_attack traces before its clock starts

    parts = {
        "adv_step": lambda: t.train(step.iterator, 1),
        "clean_step": lambda: clean.train(step.iterator, 1),
        "pgd20_eval": evaluate,
    }
    return parts, int(step.model.count_params()), int(classifier.count_params())


def _torch_worker(workdir: str, threads: int, variant: str):
    """PyTorch: the same model, attack and update, eager / channels_last / torch.compile + channels_last."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from advss_tf.config import AttackConfig, OptimizerConfig
    from advss_tf.peer import torch_resnet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    channels_last = variant in ("torch_channels_last", "torch_compile")
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def load(name: str, classes: int):
        net = torch_resnet.build_torch_classifier(FLAGS.backbone, classes)
        net.load_state_dict(torch.load(os.path.join(workdir, f"{name}_torch.pt")))
        net = net.to(memory_format=fmt)
        return net, (torch.compile(net) if variant == "torch_compile" else net)

    def nchw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).contiguous(memory_format=fmt)

    data = np.load(os.path.join(workdir, "batch.npz"))
    x, y = nchw(data["jigsaw_inputs"]), torch.from_numpy(data["jigsaw_labels"].astype(np.int64))
    x_test = nchw(data["test_images"].astype(np.float32) / 255.0)
    y_test = torch.from_numpy(data["test_labels"])
    attack, opt_cfg = AttackConfig(), OptimizerConfig()
    eps, alpha = attack.eps, attack.step_size

    def pgd(model, images, labels, steps: int) -> torch.Tensor:
        x_adv = (images + torch.empty_like(images).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), images - eps), images + eps).clamp(0, 1)
        return x_adv.detach()

    net, model = load("jigsaw", JIGSAW_CLASSES)
    eval_net, eval_model = load("eval", EVAL_CLASSES)
    eval_net.eval()
    opt = torch.optim.SGD(
        net.parameters(), lr=opt_cfg.learning_rate, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay
    )

    def adv_step():
        model.train()  # train-mode BatchNorm while crafting, as advss_tf's --attack_bn=train
        x_adv = pgd(model, x, y, FLAGS.attack_steps)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * (F.cross_entropy(model(x), y) + F.cross_entropy(model(x_adv), y))
        loss.backward()
        opt.step()

    def clean_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def evaluate() -> float:
        start = time.perf_counter()
        x_adv = pgd(eval_model, x_test, y_test, FLAGS.eval_steps)
        with torch.no_grad():
            (eval_model(x_adv).argmax(1) == y_test).numpy()
        return time.perf_counter() - start

    parts = {"adv_step": adv_step, "clean_step": clean_step, "pgd20_eval": evaluate}
    return parts, torch_resnet.parameter_count(net), torch_resnet.parameter_count(eval_net)


def worker_main() -> None:
    """Builds one variant, warms every part up (twice: tracing / compilation), then times parts on request."""
    import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)

    threads = FLAGS.threads or os.cpu_count()
    start = time.perf_counter()
    if FLAGS.worker.startswith("advss_tf"):
        batch_norm = "keras" if FLAGS.worker == "advss_tf_keras_bn" else "fused"
        inter_op = 1 if FLAGS.worker == "advss_tf_interop1" else 0
        parts, params, eval_params = _tf_worker(FLAGS.workdir, threads, batch_norm, inter_op)
    else:
        parts, params, eval_params = _torch_worker(FLAGS.workdir, threads, FLAGS.worker)
    for name in FLAGS.parts:
        for _ in range(2):
            parts[name]()
    reply({"ready": True, "params": params, "eval_params": eval_params, "warmup_sec": time.perf_counter() - start})
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        if name.startswith("profile:"):
            part = name.split(":", 1)[1]
            profiler = tf_op_seconds if FLAGS.worker.startswith("advss_tf") else torch_op_seconds
            reply(op_profile(profiler(parts[part])))
            continue
        reset_peak_rss()
        t0 = time.perf_counter()
        inner = parts[name]()
        seconds = time.perf_counter() - t0
        if name == "pgd20_eval":
            seconds = float(inner)  # the attack loop's own clock (advss_tf excludes its retracing there)
        reply({"seconds": seconds, "peak_rss_gib": peak_rss_gib()})


def table(results: dict, batch_size: int) -> str:
    """The Markdown table: one row per (part, variant)."""
    rows = [
        "| part | variant | median s | spread (min-max) s | images/s | peak RSS GiB | its s / advss_tf s |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, by_variant in results["timings"].items():
        for variant, t in by_variant.items():
            ratio = results["ratios"].get(part, {}).get(variant)
            rows.append(
                f"| {part} | {variant} | {t['median']:.2f} | {t['min']:.2f}-{t['max']:.2f} | "
                f"{batch_size / t['median']:.1f} | {t['peak_rss_gib']:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} |"
            )
    return "\n".join(rows)


def coordinator_main() -> None:
    """Starts the workers, checks the parameter counts, runs the interleaved rounds, prints table + JSON."""
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS + EXTRA_VARIANTS)) + sorted(set(FLAGS.parts) - set(PARTS))
    if unknown:
        raise app.UsageError(f"unknown variants/parts {unknown}; valid: {', '.join(VARIANTS + EXTRA_VARIANTS + PARTS)}")
    import advss_tf  # noqa: F401  (TF_ENABLE_ONEDNN_OPTS before TensorFlow)

    threads = FLAGS.threads or os.cpu_count()
    argv = [
        f"--backbone={FLAGS.backbone}",
        f"--batch_size={FLAGS.batch_size}",
        f"--attack_steps={FLAGS.attack_steps}",
        f"--eval_steps={FLAGS.eval_steps}",
        f"--threads={threads}",
        f"--parts={','.join(FLAGS.parts)}",
    ]
    with tempfile.TemporaryDirectory(prefix="advss_bench_") as workdir:
        counts = prepare_inputs(workdir, FLAGS.backbone, FLAGS.batch_size)
        for name, c in counts.items():
            print(f"parameters ({name} model): advss_tf {c['keras']:,}  PyTorch {c['torch']:,}", flush=True)
            if c["keras"] != c["torch"]:
                raise RuntimeError(f"the two {name} models differ in size: {c}")
        # Workers build and warm up at the same time (nothing is timed yet); then they take turns.
        workers = [Worker(v, os.path.abspath(__file__), workdir, argv) for v in FLAGS.variants]
        try:
            ready = {w.variant: w.read() for w in workers}
            for v, r in ready.items():
                print(f"{v}: ready after {r['warmup_sec']:.0f} s (build + 2 warm-up calls per part)", flush=True)
            raw = {p: {v: [] for v in FLAGS.variants} for p in FLAGS.parts}
            for r in range(FLAGS.rounds):
                order = workers[r % len(workers) :] + workers[: r % len(workers)]
                for part in FLAGS.parts:
                    for w in order:
                        raw[part][w.variant].append(w.time(part))
                        seconds = raw[part][w.variant][-1]["seconds"]
                        print(f"round {r + 1} {part} {w.variant}: {seconds:.2f} s", flush=True)
                if FLAGS.json_out:  # a run cut short still leaves the rounds it finished
                    write_json(FLAGS.json_out, {"partial": True, "rounds_done": r + 1, "raw": raw, "params": counts})
            profiles = {}
            if FLAGS.profile:
                for w in workers:
                    profiles[w.variant] = w.time("profile:adv_step")
                    p = profiles[w.variant]
                    print(
                        f"profile adv_step {w.variant}: {p['op_seconds']:.2f} s of op time, convolutions "
                        f"{100 * p['conv_share']:.1f} %; largest: {p['top'][:5]}",
                        flush=True,
                    )
        finally:
            for w in workers:
                w.close()
    timings = {
        p: {
            v: {
                **summary([x["seconds"] for x in runs]),
                "seconds": [round(x["seconds"], 3) for x in runs],
                "peak_rss_gib": max(x["peak_rss_gib"] for x in runs),
            }
            for v, runs in by_v.items()
        }
        for p, by_v in raw.items()
    }
    ratios = {}
    for p, by_v in timings.items():
        if "advss_tf" not in by_v:
            continue
        ours = by_v["advss_tf"]["median"]
        ratios[p] = {v: t["median"] / ours for v, t in by_v.items() if v != "advss_tf"}
        torch_ratios = [r for v, r in ratios[p].items() if v.startswith("torch")]
        if torch_ratios:
            ratios[p]["vs_fastest_torch"] = min(torch_ratios)
    import torch

    results = {
        "benchmark": "advss_tf_vs_torch",
        "backbone": FLAGS.backbone,
        "batch_size": FLAGS.batch_size,
        "attack_steps": FLAGS.attack_steps,
        "eval_steps": FLAGS.eval_steps,
        "threads": threads,
        "rounds": FLAGS.rounds,
        "params": counts,
        "warmup_sec": {v: round(r["warmup_sec"], 1) for v, r in ready.items()},
        "timings": timings,
        "ratios": ratios,
        "profiles": profiles,
        "versions": {"tensorflow": __import__("tensorflow").__version__, "torch": torch.__version__},
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(table(results, FLAGS.batch_size))
    print(json.dumps(results))
    if FLAGS.json_out:
        write_json(FLAGS.json_out, results)


def main(argv):
    del argv
    if FLAGS.worker:
        worker_main()
    else:
        coordinator_main()


if __name__ == "__main__":
    app.run(main)
