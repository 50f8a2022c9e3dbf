"""Every row of a study, over seeds, at a scale — trained, evaluated and compared by one resumable command.

    python -m advss_tf.study --study=paper --scale=tiny --seeds=3 --workdir=runs/study_tiny \\
        --data_dir=../shared/data/cifar10-subset [--rows=at_e2e,...] [--jobs=2]
    python -m advss_tf.study report --workdir=runs/study_tiny

Each run is `python -m advss_tf.pretrain|finetune|evaluate` (or tools/ensemble_export.py) in its own run directory
under <workdir>/runs/; re-running the command skips what has finished and resumes what has not. --emit=slurm writes
SLURM array jobs instead of running; --only=<run id> runs one run (what each array task does). Exit status: 0 done,
1 a run failed, 2 bad input (one line on stderr), 128+signal when stopped. See docs/study.md.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from advss_tf import common_flags
from advss_tf.errors import UsageError
from advss_tf.study import catalogue, plan, runner
from advss_tf.study import report as report_lib

FLAGS = flags.FLAGS
COMMANDS = ("run", "report")

flags.DEFINE_enum("study", "paper", sorted(catalogue.STUDIES), "Which study (a declared table of rows).")
flags.DEFINE_enum(
    "scale", None, list(catalogue.SCALES), "Backbone, epochs, data and attacks: smoke, tiny, resnet18 or paper."
)
flags.DEFINE_integer("seeds", 3, "Seeds 0 .. N-1 of every row (each run's --seed).")
flags.DEFINE_string("workdir", None, "The study folder: study.json, runs/, logs/, report/ (created if missing).")
flags.DEFINE_list("rows", [], "Row ids to run (default: every row of the study that runs at this scale).")
flags.DEFINE_integer("jobs", 1, "Runs at once on this machine (independent runs only; dependencies are kept).")
flags.DEFINE_enum(
    "emit", "none", ("none", "slurm"), "slurm: write SLURM array jobs (one task per run) instead of running."
)
flags.DEFINE_list("slurm_options", [], "Extra #SBATCH lines for --emit=slurm, e.g. --gres=gpu:1,--time=24:00:00.")
flags.DEFINE_string(
    "only", None, "Run only this run (an id such as seed0/pretrain/rotation_adv; --dry_run lists them)."
)
flags.DEFINE_bool("dry_run", False, "Print every run's id, state and command line; run nothing.")
flags.DEFINE_bool("overwrite", False, "Replace another study's runs in --workdir instead of refusing.")
flags.DEFINE_bool(
    "cifar10c", False, "Also evaluate CIFAR-10-C (the scale's source: generated at smoke/tiny, TFDS above)."
)
flags.DEFINE_enum(
    "autoattack",
    None,
    catalogue.AUTOATTACK_POLICIES,
    "Which rows AutoAttack evaluates (default: the scale's; smoke none, tiny headline, resnet18/paper all).",
)
flags.DEFINE_enum("dataset", None, ("sample", "binary", "tfds"), "CIFAR-10 source of every run (default: the scale's).")
flags.DEFINE_string(
    "data_dir", None, "Official binary CIFAR-10 folder (e.g. ../shared/data/cifar10-subset); implies binary."
)
flags.DEFINE_string("tfds_data_dir", None, "With --dataset=tfds: the TFDS data directory.")
flags.register_validator("seeds", lambda v: v >= 1, "--seeds must be >= 1")
flags.register_validator("jobs", lambda v: v >= 1, "--jobs must be >= 1")


def data_of(scale: catalogue.Scale) -> plan.Data:
    dataset = FLAGS.dataset or ("binary" if FLAGS.data_dir else scale.dataset)
    if FLAGS.data_dir and dataset != "binary":
        raise UsageError(f"--data_dir reads the official binary files; it does not go with --dataset={dataset}")
    data_dir = os.path.abspath(FLAGS.data_dir) if FLAGS.data_dir else None
    if data_dir and not os.path.exists(data_dir):
        raise UsageError(f"--data_dir {FLAGS.data_dir} does not exist")
    tfds_dir = os.path.abspath(FLAGS.tfds_data_dir) if FLAGS.tfds_data_dir else None
    return plan.Data(dataset, data_dir, tfds_dir)


def identity(study: str, scale: str, seeds: int, data: plan.Data, cifar10c: bool, autoattack: str) -> dict:
    """What makes a study folder this study: another identity in the same folder is refused."""
    return {
        "study": study,
        "scale": scale,
        "seeds": seeds,
        "data": {"dataset": data.dataset, "data_dir": data.data_dir, "tfds_data_dir": data.tfds_data_dir},
        "cifar10c": cifar10c,
        "autoattack": autoattack,
    }


def write_report(workdir: str) -> str:
    ident = runner.read_identity(workdir)
    if ident.get("study") not in catalogue.STUDIES or ident.get("scale") not in catalogue.SCALES:
        raise UsageError(f"{workdir}/{runner.STUDY_FILE} names an unknown study or scale: {ident}")
    study, scale = catalogue.STUDIES[ident["study"]], catalogue.SCALES[ident["scale"]]
    _, excluded = plan.select_rows(study, scale, None)
    result = report_lib.write(workdir, study, ident, excluded, scale.description)
    if not result["rows"]:
        raise UsageError(f"no evaluation has finished in {workdir} yet: nothing to report")
    path = os.path.join(workdir, report_lib.REPORT, report_lib.MARKDOWN)
    with open(path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"\nstudy: report in {path} (and {report_lib.JSON}, {report_lib.SCATTER}, {report_lib.DIFFERENCES})")
    return path


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "run"
    if command not in COMMANDS or len(argv) > 2:
        common_flags.fail(
            f"usage: python -m advss_tf.study [{'|'.join(COMMANDS)}] --workdir=DIR [flags]; got {argv[1:]}"
        )
    try:
        if not FLAGS.workdir:
            raise UsageError("give --workdir (the study folder)")
        if command == "report":
            write_report(FLAGS.workdir)
            return
        status = run_study()
    except UsageError as e:
        common_flags.fail(str(e))
    if status:
        why = "stopped by a signal; re-run the same command to resume" if status > 128 else "a run failed (logs above)"
        common_flags.fail(why, status=status)


def run_study() -> int:
    if FLAGS.scale is None:
        raise UsageError("give --scale (smoke, tiny, resnet18 or paper)")
    study, scale = catalogue.STUDIES[FLAGS.study], catalogue.SCALES[FLAGS.scale]
    data = data_of(scale)
    rows, excluded = plan.select_rows(study, scale, FLAGS.rows or None)
    workdir = os.path.abspath(FLAGS.workdir)
    autoattack = FLAGS.autoattack or scale.autoattack
    runs = plan.build(study, scale, FLAGS.seeds, workdir, data, rows, cifar10c=FLAGS.cifar10c, autoattack=autoattack)
    if FLAGS.only is not None:
        chosen = [r for r in runs if r.id == FLAGS.only]
        if not chosen:
            raise UsageError(f"--only={FLAGS.only} is not a run of this study (--dry_run lists them)")
        missing = [d for d in chosen[0].deps if not next(r for r in runs if r.id == d).finished(workdir)]
        if missing:
            raise UsageError(f"{FLAGS.only} needs {', '.join(missing)} finished first")
        runs = chosen
    ident = identity(study.name, scale.name, FLAGS.seeds, data, FLAGS.cifar10c, autoattack)
    if FLAGS.dry_run:
        for r in runs:
            print(f"{r.id}  [{'finished' if r.finished(workdir) else 'to run'}]  {shlex.join(r.command())}")
        return 0
    runner.prepare(workdir, ident, FLAGS.overwrite)
    for r, why in excluded:
        print(f"study: row {r.id} does not run at scale {scale.name}: {why}")
    if FLAGS.emit == "slurm":
        base = [sys.executable, "-m", "advss_tf.study", f"--study={study.name}", f"--scale={scale.name}"]
        base += [f"--seeds={FLAGS.seeds}", f"--workdir={workdir}", *data.flags()]
        base += [f"--autoattack={autoattack}"] + (["--cifar10c"] if FLAGS.cifar10c else [])
        runner.emit_slurm(workdir, runs, base, FLAGS.slurm_options, print)
        return 0
    status = runner.Executor(workdir, runs, FLAGS.jobs).run()
    if FLAGS.only is None and status < 128:
        try:
            write_report(workdir)
        except UsageError as e:
            print(f"study: no report: {e}")
    return status


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        common_flags.fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
