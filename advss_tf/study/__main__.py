"""Every row of a study, over seeds, at a scale — trained, evaluated and compared by one resumable command.

    python -m advss_tf.study --study=paper --scale=tiny --seeds=3 --workdir=runs/study_tiny \\
        --data_dir=../shared/data/cifar10-subset [--rows=at_e2e,...] [--jobs=2]
    python -m advss_tf.study --study=robustssl --scale=tiny --seeds=3 --workdir=runs/robustssl_tiny \\
        --data_dir=../shared/data/cifar10-subset
    python -m advss_tf.study report --workdir=runs/study_tiny
    python -m advss_tf.study keep --workdir=runs/study_tiny --to=docs/study_tiny

Each run is `python -m advss_tf.pretrain|finetune|evaluate` (or tools/ensemble_export.py) in its own run directory
under <workdir>/runs/; re-running the command skips what has finished and resumes what has not. --emit=slurm writes
SLURM array jobs instead of running; --only=<run id> runs one run (what each array task does). `keep` copies the
results of the finished chains (no checkpoints or exports) to --to, a folder that `report` and `run` work on as on
the study's own. Exit status: 0 done, 1 a run failed, 2 bad input (one line on stderr), 128+signal when stopped. See
docs/study.md.
"""

from __future__ import annotations

from absl import app, flags

from advss_tf import common_flags
from advss_tf.errors import UsageError
from advss_tf.study import catalogue
from advss_tf.study import command as command_lib

FLAGS = flags.FLAGS
COMMANDS = ("run", "report", "keep")

flags.DEFINE_enum("study", "paper", sorted(catalogue.STUDIES), "Which study (a declared table of rows).")
flags.DEFINE_enum(
    "scale",
    None,
    list(dict.fromkeys(name for study in catalogue.STUDIES.values() for name in study.scales)),
    "Backbone, epochs, data and attacks: paper study smoke, tiny, resnet18 or paper; robustssl smoke, tiny or "
    "benchmark.",
)
flags.DEFINE_integer("seeds", 3, "Seeds 0 .. N-1 of every row (each run's --seed).")
flags.DEFINE_string("workdir", None, "The study folder: study.json, runs/, logs/, report/ (created if missing).")
flags.DEFINE_string("to", None, "keep: the folder the finished chains' results go to (made if missing).")
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
    "Which rows AutoAttack evaluates (default: the scale's; smoke none, tiny compared, resnet18/paper/benchmark all).",
)
flags.DEFINE_enum("dataset", None, ("sample", "binary", "tfds"), "CIFAR-10 source of every run (default: the scale's).")
flags.DEFINE_string(
    "data_dir", None, "Official binary CIFAR-10 folder (e.g. ../shared/data/cifar10-subset); implies binary."
)
flags.DEFINE_string("tfds_data_dir", None, "With --dataset=tfds: the TFDS data directory.")
flags.register_validator("seeds", lambda v: v >= 1, "--seeds must be >= 1")
flags.register_validator("jobs", lambda v: v >= 1, "--jobs must be >= 1")


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
            command_lib.write_report(FLAGS.workdir)
            return
        if command == "keep":
            if not FLAGS.to:
                raise UsageError("keep needs --to (the folder the results go to)")
            if command_lib.keep_finished(FLAGS.workdir, FLAGS.to):
                try:
                    command_lib.write_report(FLAGS.to)
                except UsageError as e:  # chains kept, none of them evaluated yet
                    print(f"study: no report: {e}")
            return
        status = command_lib.run_study(
            FLAGS.workdir,
            FLAGS.scale,
            study=FLAGS.study,
            seeds=FLAGS.seeds,
            rows=FLAGS.rows,
            jobs=FLAGS.jobs,
            only=FLAGS.only,
            emit=FLAGS.emit,
            slurm_options=FLAGS.slurm_options,
            dry_run=FLAGS.dry_run,
            overwrite=FLAGS.overwrite,
            cifar10c=FLAGS.cifar10c,
            autoattack=FLAGS.autoattack,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            tfds_data_dir=FLAGS.tfds_data_dir,
        )
    except UsageError as e:
        common_flags.fail(str(e))
    if status:
        why = "stopped by a signal; re-run the same command to resume" if status > 128 else "a run failed (logs above)"
        common_flags.fail(why, status=status)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        common_flags.fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
