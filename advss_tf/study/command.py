"""What `python -m advss_tf.study` does, as Python: `run_study(...)`, `write_report(workdir)` and
`keep_finished(workdir, dest)` (the CLI maps its flags onto these; tests and notebooks call them directly). Bad input
raises UsageError before anything is written."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
from collections.abc import Callable

from advss_tf.errors import UsageError
from advss_tf.study import catalogue, plan, runner
from advss_tf.study import report as report_lib


def data_source(scale: catalogue.Scale, dataset: str | None, data_dir: str | None, tfds_data_dir: str | None):
    """The CIFAR-10 every run reads: the scale's default, or the given one (a data_dir implies binary files)."""
    dataset = dataset or ("binary" if data_dir else scale.dataset)
    if data_dir and dataset != "binary":
        raise UsageError(f"--data_dir reads the official binary files; it does not go with --dataset={dataset}")
    if data_dir and not os.path.exists(data_dir):
        raise UsageError(f"--data_dir {data_dir} does not exist")
    return plan.Data(
        dataset,
        os.path.abspath(data_dir) if data_dir else None,
        os.path.abspath(tfds_data_dir) if tfds_data_dir else None,
    )


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


def write_report(workdir: str, say: Callable[[str], None] = print) -> dict:
    """Writes <workdir>/report/ from what has finished; returns the report (report.json's content)."""
    ident, study, scale, excluded, runs = _planned(workdir)
    times = os.path.join(workdir, runner.LOGS, runner.TIMES)
    result = report_lib.write(workdir, study, ident, excluded, scale.description, times, {r.id for r in runs})
    if not result["rows"]:
        raise UsageError(f"no evaluation has finished in {workdir} yet: nothing to report")
    path = os.path.join(workdir, report_lib.REPORT, report_lib.MARKDOWN)
    with open(path, encoding="utf-8") as f:
        say(f.read())
    say(f"study: report in {path} (and {report_lib.JSON}, {report_lib.SCATTER}, {report_lib.DIFFERENCES})")
    return result


def _planned(workdir: str):
    """The study a folder holds, as its study.json names it: (identity, study, scale, rows not at this scale with
    why, every run of its rows at that scale and its seeds)."""
    ident = runner.read_identity(workdir)
    study = catalogue.STUDIES.get(ident.get("study"))
    if study is None or ident.get("scale") not in study.scales:
        raise UsageError(f"{workdir}/{runner.STUDY_FILE} names an unknown study or scale: {ident}")
    scale = study.scales[ident["scale"]]
    chosen, excluded = plan.select_rows(study, scale, None)
    data = plan.Data(**ident["data"])
    cifar10c, autoattack = ident.get("cifar10c", False), ident.get("autoattack")
    runs = plan.build(study, scale, ident["seeds"], workdir, data, chosen, cifar10c, autoattack)
    return ident, study, scale, excluded, runs


def keep_finished(workdir: str, dest: str, say: Callable[[str], None] = print) -> list[str]:
    """Copies into `dest` the results of every finished run whose dependants have all finished too (a finished
    chain), with study.json and logs/times.jsonl: the study's numbers without its checkpoints and exports, small
    enough to commit or mail, from which `report` makes the same report and the same `run` command resumes (a
    finished run is skipped; a run not kept re-runs, with whatever it needs). Returns the kept run ids.

    A run is kept only with all its dependants because `dest` holds no export: a kept pretraining whose
    fine-tuning still had to run would leave that fine-tuning nothing to start from. An ensemble's export is a
    SavedModel, not a result: its evaluation is kept, the export itself re-made if a resumed study needs it (so a
    kept folder's ensemble export is "not needed", `plan.states`, and keeping that folder again keeps its members).
    """
    workdir, dest = os.path.abspath(workdir), os.path.abspath(dest)
    if dest == workdir or dest.startswith(workdir + os.sep):
        raise UsageError(f"--to {dest} is inside the study folder {workdir}: give a folder outside it")
    runs = _planned(workdir)[-1]
    state = plan.states(runs, workdir)
    done = {r.id for r in runs if state[r.id] in (plan.FINISHED, plan.REMAKE)}  # what states found finished
    needed_by = plan.dependants(runs)
    # finished (or not needed: a kept folder's ensemble export, whose evaluation finished), and so is every run that
    # needs it, directly or not
    complete: dict[str, bool] = {}
    for r in reversed(plan.order(runs)):
        here = r.id in done or state[r.id] == plan.NOT_NEEDED
        complete[r.id] = here and all(complete[c] for c in needed_by[r.id])
    kept = [r for r in runs if complete[r.id] and r.id in done and r.kind != "ensemble"]
    runner.prepare(dest, runner.read_identity(workdir), overwrite=False)
    for r in kept:
        out = r.directory(dest)
        os.makedirs(out, exist_ok=True)
        shutil.copy2(os.path.join(r.directory(workdir), "results.json"), out)
    times = os.path.join(workdir, runner.LOGS, runner.TIMES)
    if os.path.exists(times):
        os.makedirs(os.path.join(dest, runner.LOGS), exist_ok=True)
        shutil.copy2(times, os.path.join(dest, runner.LOGS, runner.TIMES))
    waiting = sorted(done - {r.id for r in kept} - {r.id for r in runs if r.kind == "ensemble"})
    say(f"study: kept {len(kept)} of {len(done)} finished runs in {dest} ({len(runs)} in the study)")
    if waiting:
        say(f"study: not kept, finished but a dependant is not: {', '.join(waiting)}")
    return [r.id for r in kept]


def estimate(runs: list[plan.Run], jobs: int, state: dict[str, str]) -> str:
    """One line: the expected run time and wall time of the runs still to run by `state` (`plan.states`;
    `plan.simulate` on Run.weight, the tiny scale's costs measured on the 2-core Xeon: at other scales only the
    proportions hold)."""
    todo = [r for r in runs if state[r.id] in (plan.TO_RUN, plan.REMAKE)]
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731
    return (
        f"study: {len(todo)} of {len(runs)} runs to run: expected {hours(sum(r.weight for r in todo))} of run time, "
        f"{hours(plan.simulate(todo, jobs))} of wall time with --jobs={jobs} (at the tiny scale's measured costs on "
        "the 2-core Xeon; other scales: in proportion)"
    )


def run_study(
    workdir: str,
    scale: str,
    study: str = "paper",
    seeds: int = 3,
    rows: list[str] | None = None,
    jobs: int = 1,
    only: str | None = None,
    emit: str = "none",
    slurm_options: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    overwrite: bool = False,
    cifar10c: bool = False,
    autoattack: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    say: Callable[[str], None] = print,
    start: runner.StartRun | None = None,
) -> int:
    """Runs (or resumes, or emits as SLURM jobs) the study; returns the exit status (0, 1, or 128+signal).

    `start` starts each run's process (`runner.StartRun`; default: a subprocess of its binary's command, with
    the machine's cores shared out between the `jobs` runs, `runner.job_environment`).
    """
    if study not in catalogue.STUDIES:
        raise UsageError(f"unknown study {study!r}; valid: {', '.join(catalogue.STUDIES)}")
    if seeds < 1 or jobs < 1:
        raise UsageError(f"--seeds and --jobs must be >= 1, got {seeds} and {jobs}")
    if autoattack is not None and autoattack not in catalogue.AUTOATTACK_POLICIES:
        raise UsageError(f"--autoattack must be one of {', '.join(catalogue.AUTOATTACK_POLICIES)}")
    the_study = catalogue.STUDIES[study]
    the_scale = the_study.scale(scale)
    data = data_source(the_scale, dataset, data_dir, tfds_data_dir)
    chosen_rows, excluded = plan.select_rows(the_study, the_scale, rows or None)
    workdir = os.path.abspath(workdir)
    autoattack = autoattack or the_scale.autoattack
    runs = plan.build(the_study, the_scale, seeds, workdir, data, chosen_rows, cifar10c, autoattack)
    if only is not None:
        chosen = [r for r in runs if r.id == only]
        if not chosen:
            raise UsageError(f"--only={only} is not a run of this study (--dry_run lists them)")
        missing = [d for d in chosen[0].deps if not next(r for r in runs if r.id == d).finished(workdir)]
        if missing:
            raise UsageError(f"{only} needs {', '.join(missing)} finished first")
        runs = chosen
    if dry_run:
        state = plan.states(runs, workdir)
        for r in runs:
            say(f"{r.id}  [{state[r.id]}]  {shlex.join(r.command())}")
        say(estimate(runs, jobs, state))
        return 0
    runner.prepare(workdir, identity(study, scale, seeds, data, cifar10c, autoattack), overwrite)
    reasons: dict[str, list[str]] = {}
    for r, why in excluded if only is None else ():
        reasons.setdefault(why, []).append(r.id)
    for why, ids in reasons.items():
        say(f"study: not at scale {scale} ({why}): {', '.join(ids)}")
    if emit == "slurm":
        base = [sys.executable, "-m", "advss_tf.study", f"--study={study}", f"--scale={scale}", f"--seeds={seeds}"]
        base += [f"--workdir={workdir}", *data.flags(), f"--autoattack={autoattack}"]
        base += ["--cifar10c"] if cifar10c else []
        state = runner.set_aside_remakes(workdir, runs, lambda m: say(f"study: {m}"))
        runner.emit_slurm(workdir, [r for r in runs if state[r.id] == plan.TO_RUN], base, list(slurm_options), say)
        return 0
    if start is None:
        start = functools.partial(runner.start_subprocess, env=runner.job_environment(jobs))
    status = runner.Executor(workdir, runs, jobs, say, start).run()
    if only is None and status < 128:
        try:
            write_report(workdir, say)
        except UsageError as e:
            say(f"study: no report: {e}")
    return status
