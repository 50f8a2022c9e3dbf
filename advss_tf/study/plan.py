"""A study's runs: rows × seeds at a scale → run directories, the binaries' command lines, and their dependencies.

Every run is an ordinary run directory of `pretrain`, `finetune` or `evaluate` (or an ensemble export of
`tools/ensemble_export.py`) under <workdir>/runs/seed<k>/<kind>/<name>; its id is that relative path. A run is
finished when the binary's last write is there (results.json; the ensemble's saved_model.pb, renamed into place),
and re-running a binary's command resumes it, so the study resumes by construction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable

from advss_tf.errors import UsageError
from advss_tf.study import catalogue
from advss_tf.study.catalogue import Row, Scale, Study

RUNS = "runs"
KINDS = ("pretrain", "finetune", "ensemble", "evaluate")

# What a run is expected to cost (Run.weight): its seconds at the tiny scale on the 2-core Intel Xeon with --jobs=2,
# one thread per run, as docs/study.md measured them (2026-12-04) — at other scales only their ratios matter. A
# factor marked "not measured" is an estimate from what the run does more per step.
PRETRAIN_SECONDS = {True: 240, False: 50}  # adversarial (190-275 s) / standard (48 s) pretraining, one task
# measured 2026-12-07 (tiny study, Xeon, --jobs=2): ~17.5 s a step against adversarial Rotation's ~1.7 — joint PGD
# through three heads and the diversity term's second-order backprop
ENSEMBLE_PRETRAIN_FACTOR = 10
# Not measured: a contrastive pretraining per epoch against an adversarial Rotation one (PGD-10 on B images, then
# the clean and adversarial passes on B: ~12 forward-backward passes of B per step) — ACL's PGD-5 on both views
# (2B) then the clean and adversarial views (4B): ~14; DynACL adds the key encoder's forward passes; AIR the
# regularisers' passes on a third view through both routes (~+2).
CONTRASTIVE_PRETRAIN_FACTOR = {"acl": 1.2, "dynacl": 1.25}
AIR_FACTOR = 1.15
FINETUNE_SECONDS = {"adversarial": 300, "trades": 330, "standard": 90}  # 268-329 s, 87-88 s; TRADES not measured
AUX_ROTATION_FACTOR = 1.5  # not measured: the rotation head's loss (and its attack term) on rotated copies
EXPORT_SECONDS = 10  # an ensemble export (the three took 22 s)
EVALUATE_SECONDS = 15  # PGD-20 alone on the 508 test images
AUTOATTACK_WEIGHT = 400  # AutoAttack on one model (267-547 s); an ensemble's ×its members (1,286-1,518 s)
UNFORESEEN_SECONDS = 60  # not measured: FGSM, PGD-100, PGD-20 at 16/255, L2 PGD-20, CW-L∞ ≈ 8× PGD-20's steps
CIFAR10C_SECONDS = 60  # not measured: generating 95 sets of 508 images (~10 s, docs/cifar10c.md) and their passes


@dataclasses.dataclass(frozen=True)
class Data:
    """Where every run of the study reads CIFAR-10 (the binaries' --dataset, --data_dir, --tfds_data_dir)."""

    dataset: str
    data_dir: str | None = None
    tfds_data_dir: str | None = None

    def flags(self) -> tuple[str, ...]:
        out = [f"--dataset={self.dataset}"]
        if self.data_dir:
            out.append(f"--data_dir={self.data_dir}")
        if self.tfds_data_dir:
            out.append(f"--tfds_data_dir={self.tfds_data_dir}")
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: its id (= path under <workdir>/runs), what makes it, and the runs it needs finished first."""

    id: str
    kind: str  # pretrain, finetune, ensemble, evaluate
    seed: int
    row: str | None  # the row it belongs to (None for a pretraining shared by several rows)
    args: tuple[str, ...]  # the binary's arguments
    deps: tuple[str, ...]
    # Expected cost (seconds at the tiny scale, PRETRAIN_SECONDS and below), for the runner's choice among ready
    # runs (`bottom_levels`) and the plan's time estimate (`simulate`) only: not part of what the run is.
    weight: int = 1

    def directory(self, workdir: str) -> str:
        return os.path.join(workdir, RUNS, *self.id.split("/"))

    def command(self) -> list[str]:
        """The command line that makes (or resumes) this run."""
        if self.kind == "ensemble":
            return [sys.executable, os.path.join(catalogue.tools_dir(), "ensemble_export.py"), *self.args]
        return [sys.executable, "-m", f"advss_tf.{self.kind}", *self.args]

    def finished(self, workdir: str) -> bool:
        marker = "saved_model.pb" if self.kind == "ensemble" else "results.json"
        return os.path.exists(os.path.join(self.directory(workdir), marker))

    def made_otherwise(self, workdir: str) -> bool:
        """Whether a finished evaluation's results.json records other arguments than the plan's (an attack added to
        the row since, a scale's AutoAttack policy): its numbers are not what the study now asks for. Paths compare
        from their run id on (a kept copy of a study is elsewhere); pretraining and fine-tuning record no command."""
        if self.kind != "evaluate":
            return False
        try:
            with open(os.path.join(self.directory(workdir), "results.json"), encoding="utf-8") as f:
                recorded = json.load(f).get("command")
        except (OSError, ValueError):
            return False
        return isinstance(recorded, list) and _comparable(recorded[1:]) != _comparable(self.args)

    def exported(self, workdir: str) -> bool:
        """Whether what its dependants read is there: a `study keep` folder holds results without exports."""
        if self.kind == "pretrain":
            return os.path.exists(os.path.join(self.directory(workdir), "export", "pretrain", "saved_model.pb"))
        if self.kind == "finetune":
            return os.path.isdir(os.path.join(self.directory(workdir), "export"))
        return self.finished(workdir)


def _comparable(args: list[str] | tuple[str, ...]) -> list[str]:
    """Command-line arguments with their paths cut to what identifies them: a flagfile's name, a run's id."""
    out = []
    for a in args:
        name, _, value = a.partition("=")
        if name == "--flagfile":
            value = os.path.basename(value)
        elif f"{os.sep}{RUNS}{os.sep}seed" in value:
            value = value[value.rindex(f"{os.sep}{RUNS}{os.sep}seed") + 1 :]
        out.append(f"{name}={value}" if _ else name)
    return out


def run_id(seed: int, kind: str, name: str) -> str:
    return f"seed{seed}/{kind}/{name}"


def select_rows(study: Study, scale: Scale, names: list[str] | None) -> tuple[list[Row], list[tuple[Row, str]]]:
    """The rows to run (in the study's order) and the excluded ones with why. Unknown names are a UsageError;
    an ensemble row brings its members along."""
    wanted = set(names or [r.id for r in study.rows])
    for name in sorted(wanted):
        study.row(name)  # raises with the list of rows
    for r in study.rows:
        if r.id in wanted:
            wanted.update(r.members)
    chosen, excluded = [], []
    for r in study.rows:
        if r.id not in wanted:
            continue
        why = scale.exclusion_in(study, r) or next(
            (f"its member {m} is excluded" for m in r.members if scale.exclusion_in(study, study.row(m))), None
        )
        (excluded.append((r, why)) if why else chosen.append(r))
    if not chosen:
        raise UsageError(
            f"no row of --rows runs at --scale={scale.name}: " + "; ".join(f"{r.id}: {why}" for r, why in excluded)
        )
    return chosen, excluded


def build(
    study: Study,
    scale: Scale,
    seeds: int,
    workdir: str,
    data: Data,
    rows: list[Row],
    cifar10c: bool = False,
    autoattack: str | None = None,
) -> list[Run]:
    """Every run of `rows` × seeds 0..seeds-1, dependencies before dependants."""
    flagfiles = catalogue.flags_dir()
    runs: dict[str, Run] = {}

    def add(run: Run) -> str:
        runs.setdefault(run.id, run)
        return run.id

    def where(rid: str) -> str:
        return os.path.join(workdir, RUNS, *rid.split("/"))

    backbone = (f"--backbone={scale.backbone}",) if scale.backbone else ()
    for seed in range(seeds):
        common = (f"--seed={seed}", *data.flags(), "--quiet")
        for row in rows:
            if row.members:
                members = [where(run_id(seed, "finetune", m)) + "/export/best_ra" for m in row.members]
                head = add(
                    Run(
                        run_id(seed, "ensemble", row.id),
                        "ensemble",
                        seed,
                        row.id,
                        (f"--members={','.join(members)}", f"--output={where(run_id(seed, 'ensemble', row.id))}"),
                        tuple(run_id(seed, "finetune", m) for m in row.members),
                        EXPORT_SECONDS,
                    )
                )
                model = where(head)
            else:
                deps: tuple[str, ...] = ()
                ft = row.finetuning
                flagfile = ft.flagfile(row.pretraining is not None)
                args = [f"--flagfile={os.path.join(flagfiles, flagfile)}", *_unless_set(ft.recipe, scale.finetune)]
                if row.pretraining is not None:
                    pre = row.pretraining
                    pid = run_id(seed, "pretrain", pre.name)
                    add(
                        Run(
                            pid,
                            "pretrain",
                            seed,
                            None,
                            (
                                f"--flagfile={os.path.join(flagfiles, f'pretrain_{pre.task}.flags')}",
                                *backbone,
                                "--adversarial" if pre.adversarial else "--noadversarial",
                                *scale.pretrain,
                                *scale.task_flags(pre.task),
                                *pre.flags(),
                                *row.size_flags(),
                                *common,
                                f"--model_dir={where(pid)}",
                            ),
                            (),
                            weight=_cost(PRETRAIN_SECONDS[pre.adversarial] * pre.fraction * _factor(pre), row),
                        )
                    )
                    args.append(f"--pretrained={where(pid)}/export/pretrain")
                    deps = (pid,)
                else:
                    args += backbone
                args += [f"--objective={ft.objective}", *scale.finetune, *scale.flagfile_flags(flagfile)]
                args += [*row.size_flags(), *common]
                fid = run_id(seed, "finetune", row.id)
                cost = FINETUNE_SECONDS[ft.objective] * (AUX_ROTATION_FACTOR if ft.aux_rotation_weight else 1)
                head = add(
                    Run(fid, "finetune", seed, row.id, (*args, f"--model_dir={where(fid)}"), deps, _cost(cost, row))
                )
                model = f"{where(head)}/export/{row.export}"
            eid = run_id(seed, "evaluate", row.id)
            c10c = scale.cifar10c_for(study, row, cifar10c)
            attacks = scale.attacks_for(study, row, autoattack)
            add(
                Run(
                    eid,
                    "evaluate",
                    seed,
                    row.id,
                    (
                        f"--flagfile={os.path.join(flagfiles, study.evaluate_flagfile)}",
                        f"--attacks={','.join(attacks)}",
                        f"--cifar10c_source={c10c}",
                        *scale.evaluate,
                        *row.size_flags(),
                        *common,
                        f"--model={model}",
                        f"--model_name={row.id}",
                        f"--output_dir={where(eid)}",
                    ),
                    (head,),
                    weight=_cost(_evaluation_seconds(attacks, c10c != "none") * len(row.members or (row.id,)), row),
                )
            )
    return order(list(runs.values()))


def _unless_set(recipe: tuple[str, ...], scale_flags: tuple[str, ...]) -> tuple[str, ...]:
    """A row's recipe flags but those the scale sets (its lengths replace the recipe's: DynACL-AIR's 5-epoch SLF
    runs the tiny scale's 6 epochs), so a run's command line names each setting once."""
    names = {f.split("=")[0] for f in scale_flags}
    return tuple(f for f in recipe if f.split("=")[0] not in names)


def _factor(pre: catalogue.Pretraining) -> float:
    """A pretraining's cost against a pretext task's (ENSEMBLE_PRETRAIN_FACTOR and below)."""
    factor = ENSEMBLE_PRETRAIN_FACTOR if pre.task == "ensemble" else CONTRASTIVE_PRETRAIN_FACTOR.get(pre.task, 1.0)
    return factor * (AIR_FACTOR if pre.air else 1.0)


def _cost(seconds: float, row: Row) -> int:
    """`seconds` at 32×32 scaled to the row's input size (compute grows with the pixels), at least 1."""
    scale = (row.image_size / 32) ** 2 if row.image_size else 1.0
    return max(1, round(seconds * scale))


def _evaluation_seconds(attacks: tuple[str, ...], cifar10c: bool) -> float:
    """An evaluation's expected seconds on one model from its attacks (see EVALUATE_SECONDS and below)."""
    seconds = EVALUATE_SECONDS + (AUTOATTACK_WEIGHT if "autoattack" in attacks else 0)
    seconds += (
        UNFORESEEN_SECONDS * sum(a in catalogue.UNFORESEEN_ATTACKS for a in attacks) / len(catalogue.UNFORESEEN_ATTACKS)
    )
    return seconds + (CIFAR10C_SECONDS if cifar10c else 0)


def order(runs: list[Run]) -> list[Run]:
    """Runs sorted so that each comes after the runs it needs (stable: kinds in KINDS order, then as declared)."""
    by_id = {r.id: r for r in runs}
    done: set[str] = set()
    out: list[Run] = []
    pending = sorted(runs, key=lambda r: KINDS.index(r.kind))
    while pending:
        ready = [r for r in pending if all(d in done or d not in by_id for d in r.deps)]
        if not ready:
            raise ValueError(f"dependency cycle among {[r.id for r in pending]}")
        for r in ready:
            done.add(r.id)
            out.append(r)
        pending = [r for r in pending if r.id not in done]
    return out


def dependants(runs: list[Run]) -> dict[str, list[str]]:
    """Each run's id → the ids of the runs in `runs` that need it directly."""
    out: dict[str, list[str]] = {r.id: [] for r in runs}
    for r in runs:
        for d in r.deps:
            if d in out:
                out[d].append(r.id)
    return out


# A run's state in a study folder (`states`).
FINISHED, NOT_NEEDED, TO_RUN, REMAKE = "finished", "not needed", "to run", "to re-make"


def states(runs: list[Run], workdir: str) -> dict[str, str]:
    """Each run's id → FINISHED, TO_RUN, NOT_NEEDED (not finished, but every run in `runs` that needs it, directly
    or not, has finished: a `study keep` folder, or a study to which rows were added, holds results without the
    exports they came from — the pretraining need not run again for them) or REMAKE (finished, but an evaluation
    made with other arguments than the plan's, `Run.made_otherwise`, or a run whose export is not in the folder
    while a run that has to run needs it: made again from its command, the old results.json kept beside as
    results.kept.json). A run nothing in `runs` needs (an evaluation) runs unless finished."""
    needed_by = dependants(runs)
    state: dict[str, str] = {}
    for r in reversed(order(runs)):
        users = needed_by[r.id]
        wanted = not users or any(state[c] in (TO_RUN, REMAKE) for c in users)
        if r.finished(workdir):
            stale = r.made_otherwise(workdir) or (users and wanted and not r.exported(workdir))
            state[r.id] = REMAKE if stale else FINISHED
        else:
            state[r.id] = TO_RUN if wanted else NOT_NEEDED
    return state


def bottom_levels(runs: list[Run]) -> dict[str, int]:
    """Each run's bottom level: its weight plus the heaviest chain of runs that need it, directly or not — the
    longest weighted path from the run to the end of the study (dependencies outside `runs` count as finished)."""
    needed_by = dependants(runs)
    level: dict[str, int] = {}
    for r in reversed(order(runs)):
        level[r.id] = r.weight + max((level[c] for c in needed_by[r.id]), default=0)
    return level


# Which ready run starts first: (run, its position in the plan) → a key, smallest first.
Priority = Callable[[Run, int], tuple]


def priority(run: Run, position: int, bottom_level: int) -> tuple[int, int, int, int]:
    """The runner's key among ready runs (smallest first): the longest weighted path to the end of the study first
    (`bottom_levels`: critical-path list scheduling, so the study ends as early as its dependencies allow), then the
    kind furthest down the pipeline (what has started gets finished), the heaviest, the plan's order."""
    return (-bottom_level, -KINDS.index(run.kind), -run.weight, position)


def critical_path(runs: list[Run]) -> Priority:
    """`priority` with the bottom levels of `runs`."""
    level = bottom_levels(runs)
    return lambda run, position: priority(run, position, level[run.id])


def simulate(runs: list[Run], jobs: int, key: Priority | None = None) -> float:
    """When a study of `runs` would end with `jobs` at once if each took its weight: list scheduling — whenever a
    slot is free, the ready run first by `key` (default `critical_path`) starts. In weight units (seconds at the
    tiny scale); the time the runner itself will take, on the measured costs."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    key = key or critical_path(runs)
    ids = {r.id for r in runs}
    done: set[str] = set()
    todo = list(enumerate(runs))
    running: list[tuple[float, str]] = []
    now = 0.0
    while todo or running:
        ready = [(i, r) for i, r in todo if all(d in done or d not in ids for d in r.deps)]
        while ready and len(running) < jobs:
            i, r = min(ready, key=lambda ir: key(ir[1], ir[0]))
            ready.remove((i, r))
            todo.remove((i, r))
            running.append((now + r.weight, r.id))
        if not running:
            raise ValueError(f"dependency cycle among {[r.id for _, r in todo]}")
        running.sort()
        now, finished = running.pop(0)
        done.add(finished)
    return now


def levels(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by dependency depth: level k needs only runs of levels < k (one SLURM array each)."""
    depth: dict[str, int] = {}
    for r in order(runs):
        depth[r.id] = 1 + max((depth[d] for d in r.deps if d in depth), default=-1)
    out: list[list[Run]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for r in runs:
        out[depth[r.id]].append(r)
    return out
