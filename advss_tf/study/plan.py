"""A study's runs: rows × seeds at a scale → run directories, the binaries' command lines, and their dependencies.

Every run is an ordinary run directory of `pretrain`, `finetune` or `evaluate` (or an ensemble export of
`tools/ensemble_export.py`) under <workdir>/runs/seed<k>/<kind>/<name>; its id is that relative path. A run is
finished when the binary's last write is there (results.json; the ensemble's saved_model.pb, renamed into place),
and re-running a binary's command resumes it, so the study resumes by construction.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from advss_tf.errors import UsageError
from advss_tf.study import catalogue
from advss_tf.study.catalogue import Row, Scale, Study

RUNS = "runs"
KINDS = ("pretrain", "finetune", "ensemble", "evaluate")
AUTOATTACK_WEIGHT = 10  # an evaluation with AutoAttack against one with PGD-20 alone, roughly (Run.weight)


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
    # Relative expected cost, for the runner's choice among ready runs only (not part of what the run is): an
    # evaluation with AutoAttack costs ~10× one without, an ensemble's ×its members.
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
                    )
                )
                model = where(head)
            else:
                deps: tuple[str, ...] = ()
                ft = row.finetuning
                args = [f"--flagfile={os.path.join(flagfiles, ft.flagfile(row.pretraining is not None))}"]
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
                                *common,
                                f"--model_dir={where(pid)}",
                            ),
                            (),
                        )
                    )
                    args.append(f"--pretrained={where(pid)}/export/pretrain")
                    deps = (pid,)
                else:
                    args += backbone
                args += [f"--objective={'adversarial' if ft.adversarial else 'standard'}", *scale.finetune, *common]
                fid = run_id(seed, "finetune", row.id)
                head = add(Run(fid, "finetune", seed, row.id, (*args, f"--model_dir={where(fid)}"), deps))
                model = f"{where(head)}/export/{row.export}"
            eid = run_id(seed, "evaluate", row.id)
            c10c = scale.cifar10c_source if cifar10c else "none"
            attacks = scale.attacks_for(row, autoattack)
            add(
                Run(
                    eid,
                    "evaluate",
                    seed,
                    row.id,
                    (
                        f"--flagfile={os.path.join(flagfiles, 'evaluate.flags')}",
                        f"--attacks={','.join(attacks)}",
                        f"--cifar10c_source={c10c}",
                        *scale.evaluate,
                        *common,
                        f"--model={model}",
                        f"--model_name={row.id}",
                        f"--output_dir={where(eid)}",
                    ),
                    (head,),
                    weight=len(row.members or (row.id,)) * (AUTOATTACK_WEIGHT if "autoattack" in attacks else 1),
                )
            )
    return order(list(runs.values()))


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


def priority(run: Run, position: int) -> tuple[int, int, int]:
    """Which ready run the runner starts first (smallest): the kind furthest down the pipeline (what is started
    gets finished before new pretrainings start, so results come seed by seed and little is half-done at any
    time), then the heaviest (the longest evaluations do not end up last, alone on one core), then `position`
    (the plan's order)."""
    return (-KINDS.index(run.kind), -run.weight, position)


def levels(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by dependency depth: level k needs only runs of levels < k (one SLURM array each)."""
    depth: dict[str, int] = {}
    for r in order(runs):
        depth[r.id] = 1 + max((depth[d] for d in r.deps if d in depth), default=-1)
    out: list[list[Run]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for r in runs:
        out[depth[r.id]].append(r)
    return out
