"""The study's answers: per row the metrics over seeds (mean ± 95 % t interval), the reference's numbers (the paper's,
the benchmark's) beside them, the paired differences that answer its questions with a verdict each, and two figures;
Markdown + JSON in <workdir>/report/.

Reads only what the binaries wrote: each evaluation's results.json and each fine-tuning's results.json (the epoch
of the best validation RA, which finetune took from its validation_history.json). The JSON holds no times and no
absolute paths, so an interrupted-and-resumed study and an uninterrupted one give the same report. What the study
cost — each attempt's time and machine, which the runner appends to logs/times.jsonl — goes to time.json and the
Markdown's last section instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

from advss_tf.errors import UsageError
from advss_tf.study import catalogue, statistics
from advss_tf.study.catalogue import CIFAR10C, UNFORESEEN_ATTACKS, UNFORESEEN_WORST, Study

REPORT = "report"
MARKDOWN = "report.md"
JSON = "report.json"
SCATTER = "sa_vs_ra.png"
DIFFERENCES = "questions.png"
TIME = "time.json"
KINDS = ("pretrain", "finetune", "ensemble", "evaluate")  # plan.Run.kind, in the study's order

# metric → (column title, unit); accuracies in % of the test images, epochs as finetune counts them. The main
# table has the first six; the unforeseen attacks' table the rest (with CIFAR-10-C), for the rows that ran them.
METRICS = {
    "standard": ("SA", "points"),
    "pgd20": ("PGD-20", "points"),
    "autoattack": ("AutoAttack", "points"),
    "worst_case": ("worst case", "points"),
    CIFAR10C: ("CIFAR-10-C", "points"),
    "epochs_to_best": ("epochs to best RA", "epochs"),
    "fgsm": ("FGSM", "points"),
    "pgd100": ("PGD-100", "points"),
    "pgd20_eps16": ("PGD-20 at 16/255", "points"),
    "pgd_l2": ("L2 PGD-20 at 0.5", "points"),
    "cw_linf": ("CW-L∞", "points"),
    UNFORESEEN_WORST: ("worst unforeseen attack", "points"),
}
MAIN_TABLE = ("standard", "pgd20", "autoattack", "worst_case", CIFAR10C, "epochs_to_best")
UNFORESEEN_TABLE = (*UNFORESEEN_ATTACKS, UNFORESEEN_WORST, CIFAR10C)
# The reference's number a comparison's metric is set beside; the worst case's is the study's
# `reference_robust_metric` (the paper's RA is PGD-20's, the RobustSSL benchmark's AutoAttack's).
PAPER_METRIC = {"standard": "standard", "pgd20": "pgd20", "autoattack": "autoattack"}


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None


def record(evaluation: dict[str, Any], finetuning: dict[str, Any] | None) -> dict[str, Any]:
    """One (row, seed): the metrics of an evaluate results.json (in %) and a finetune results.json's best-RA epoch."""
    robust = evaluation.get("robust_accuracy", {})
    c10c = evaluation.get("cifar10c") or {}
    best = (finetuning or {}).get("best_robust_accuracy") or {}
    worst = evaluation.get("worst_case") or {}

    def pct(x):
        return None if x is None else 100.0 * float(x)

    unforeseen = {a: pct(robust[a]["accuracy"]) for a in UNFORESEEN_ATTACKS if a in robust}
    return {
        "metrics": {
            "standard": pct(evaluation["standard_accuracy"]),
            "pgd20": pct(robust.get("pgd20", {}).get("accuracy")),
            "autoattack": pct(robust.get("autoattack", {}).get("accuracy")),
            "worst_case": pct(worst.get("accuracy")),
            CIFAR10C: pct(c10c.get("mean_accuracy")),
            "epochs_to_best": best.get("epoch"),
            **{a: unforeseen.get(a) for a in UNFORESEEN_ATTACKS},
            # each attack judged on its own (evaluate keeps threat models apart): the one that hurts the model most
            UNFORESEEN_WORST: min(unforeseen.values()) if unforeseen else None,
        },
        "attacks": sorted(robust),
        "worst_case_threat_model": worst.get("threat_model"),
        "num_examples": evaluation.get("num_examples"),
        "cifar10c_complete": c10c.get("headline_complete") if c10c else None,
    }


def collect(workdir: str, study: Study, seeds: int) -> dict[str, dict[int, dict[str, Any]]]:
    """row id → seed → record, for every evaluation that has finished."""
    from advss_tf import workspace
    from advss_tf.study import plan

    out: dict[str, dict[int, dict[str, Any]]] = {}
    runs = os.path.join(workdir, plan.RUNS)
    for row in study.rows:
        for seed in range(seeds):
            ev = _read(os.path.join(runs, f"seed{seed}", "evaluate", row.id, workspace.RESULTS))
            if ev is None:
                continue
            ft = _read(os.path.join(runs, f"seed{seed}", "finetune", row.id, workspace.RESULTS))
            out.setdefault(row.id, {})[seed] = record(ev, ft)
    return out


def build(
    study: Study,
    identity: dict[str, Any],
    records: dict[str, dict[int, dict[str, Any]]],
    excluded,
    planned_rows: set[str] | None = None,
) -> dict:
    """The report as one JSON-able dict (see the module docstring). `planned_rows`: the rows the study's plan runs
    (those with no finished evaluation are listed as not run yet)."""
    rows = []
    for row in study.rows:
        per_seed = records.get(row.id)
        if not per_seed:
            continue
        metrics = {}
        for m in METRICS:
            values = {s: r["metrics"][m] for s, r in per_seed.items() if r["metrics"].get(m) is not None}
            metrics[m] = {
                "per_seed": {str(s): v for s, v in values.items()},
                "interval": statistics.t_interval(list(values.values())).to_dict() if values else None,
            }
        rows.append(
            {
                "id": row.id,
                "label": row.label,
                "seeds": sorted(per_seed),
                "metrics": metrics,
                "paper": dict(row.paper),
                "attacks": sorted({a for r in per_seed.values() for a in r["attacks"]}),
                "num_examples": sorted({r["num_examples"] for r in per_seed.values()}),
            }
        )
    excluded_ids = {r.id for r, _ in excluded}
    scale = study.scales.get(identity.get("scale"))
    questions = [
        {
            "id": qid,
            "question": text,
            "comparisons": [
                _comparison(study, c, records, excluded_ids, scale) for c in study.comparisons if c.question == qid
            ],
        }
        for qid, text in study.questions
    ]
    return {
        "identity": identity,
        "confidence": statistics.CONFIDENCE,
        "rows": rows,
        "excluded": [{"id": r.id, "reason": why} for r, why in excluded],
        "not_run_yet": [r.id for r in study.rows if r.id in (planned_rows or set()) and not records.get(r.id)],
        "unforeseen": list(scale.unforeseen) if scale else None,
        "questions": questions,
    }


def _comparison(study: Study, c, records, excluded_ids: set[str], scale) -> dict[str, Any]:
    """One comparison's entry: per-seed differences, interval, verdict and the seeds it needs."""
    unit = METRICS[c.metric][1]
    entry = {"a": c.a, "b": c.b, "metric": c.metric, "unit": unit, "claim": c.claim}
    a, b = records.get(c.a, {}), records.get(c.b, {})
    va = {s: r["metrics"][c.metric] for s, r in a.items() if r["metrics"].get(c.metric) is not None}
    vb = {s: r["metrics"][c.metric] for s, r in b.items() if r["metrics"].get(c.metric) is not None}
    diffs = statistics.paired_differences(va, vb)
    interval = statistics.t_interval(list(diffs.values())) if diffs else None
    if interval is None:
        missing = [x for x, v in ((c.a, va), (c.b, vb)) if not v]
        left_out = [x for x in missing if x in excluded_ids]
        if scale is not None and c.metric in (*UNFORESEEN_ATTACKS, CIFAR10C) and c.metric not in scale.unforeseen:
            verdict = f"not run at this scale: {METRICS[c.metric][0]} is not among its unforeseen attacks"
        elif left_out:
            verdict = f"not run at this scale: {' / '.join(left_out)} (rows left out, below)"
        else:
            no_run = [x for x in missing if not records.get(x)]
            without = [x for x in missing if records.get(x)]
            parts = [f"no finished {' / '.join(no_run)}"] if no_run else []
            what = "any unforeseen attack" if c.metric == UNFORESEEN_WORST else METRICS[c.metric][0]
            parts += [f"{' / '.join(without)} ran without {what}"] if without else []
            verdict = f"not available: {'; '.join(parts)}"
        entry.update(per_seed={}, interval=None, verdict=verdict)
    else:
        attacks_a = sorted({t for r in a.values() for t in r["attacks"]})
        attacks_b = sorted({t for r in b.values() for t in r["attacks"]})
        differ = attacks_a != attacks_b and c.metric in ("worst_case", UNFORESEEN_WORST)
        entry.update(
            per_seed={str(s): d for s, d in diffs.items()},
            interval=interval.to_dict(),
            verdict=statistics.verdict(interval, c.claim, unit)
            + (" (the two rows ran different attacks)" if differ else ""),
        )
    entry["seeds_needed"] = _seeds_needed(study, c, interval)
    return entry


def _seeds_needed(study: Study, c, interval: statistics.Interval | None) -> dict[str, Any]:
    """How many seeds would resolve (t interval excluding 0) the observed mean difference, and the paper's, at the
    observed spread of the per-seed differences (`statistics.seeds_to_resolve`)."""
    paper_metric = study.reference_robust_metric if c.metric == "worst_case" else PAPER_METRIC.get(c.metric)
    pa, pb = (dict(study.row(x).paper).get(paper_metric) for x in (c.a, c.b))
    paper = None if pa is None or pb is None else pa - pb
    out = {"sd": None, "observed": None, "paper_difference": paper, "paper_metric": paper_metric, "paper": None}
    if interval is None or interval.sd is None:
        return out
    out.update(sd=interval.sd, observed=statistics.seeds_to_resolve(interval.mean, interval.sd))
    if paper is not None:
        out["paper"] = statistics.seeds_to_resolve(paper, interval.sd)
    return out


def read_attempts(path: str) -> tuple[list[dict[str, Any]], int] | None:
    """The attempts of a study's logs/times.jsonl (`path`; `runner.record_attempt` writes them) and the count of torn
    lines skipped (the last line of a killed write); None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    entries, torn = [], 0
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            torn += 1
    return entries, torn


def timing(path: str, planned: set[str] | None = None) -> dict | None:
    """What the study's runs cost, from the runner's record of attempts (`path`: <workdir>/logs/times.jsonl;
    None if there is none).

    Per kind, the run time of the attempts that finished runs of the plan (`planned`: run ids; None: every run);
    the time of attempts that were stopped or failed (a resumed run's earlier attempts) and of runs no longer in the
    plan (rows since left out) apart; the machines and --jobs values seen; when the first and last attempt ended.
    Times are each run's own wall time: with --jobs=K, K ran at once (each on cores ÷ K threads).
    """
    attempts = read_attempts(path)
    if attempts is None:
        return None
    entries, torn = attempts
    finished = {k: {"runs": 0, "seconds": 0.0} for k in KINDS}
    other = {"stopped_or_failed": 0.0, "not_in_plan": 0.0}
    for e in entries:
        if planned is not None and e["run"] not in planned:
            other["not_in_plan"] += e["seconds"]
        elif e["outcome"] == "done":
            finished[e["kind"]]["runs"] += 1
            finished[e["kind"]]["seconds"] += e["seconds"]
        else:
            other["stopped_or_failed"] += e["seconds"]
    ended = sorted(e["ended"] for e in entries if e.get("ended"))
    return {
        "finished": finished,
        "finished_seconds": sum(v["seconds"] for v in finished.values()),
        **other,
        "machines": sorted({f"{e['cpu']} ({e['cores']} cores)" for e in entries}),
        "jobs": sorted({e["jobs"] for e in entries}),
        "first_ended": ended[0] if ended else None,
        "last_ended": ended[-1] if ended else None,
        "unreadable_lines": torn,
    }


def time_markdown(time: dict | None) -> list[str]:
    if time is None:
        return ["## Time", "", "Not recorded (no logs/times.jsonl: the runs predate it).", ""]
    hours = lambda s: f"{s / 3600:.2f} h"  # noqa: E731
    count = lambda n: f"{n} run" if n == 1 else f"{n} runs"  # noqa: E731
    parts = [f"{kind} {hours(v['seconds'])} ({count(v['runs'])})" for kind, v in time["finished"].items() if v["runs"]]
    lines = [
        "## Time",
        "",
        f"Run time of the finished runs, each run's own wall time summed: {hours(time['finished_seconds'])} — "
        + ", ".join(parts)
        + f". Attempts stopped or failed before a resume: {hours(time['stopped_or_failed'])}; runs no longer in "
        f"the plan: {hours(time['not_in_plan'])}. On {', '.join(time['machines'])} with --jobs="
        f"{', '.join(map(str, time['jobs']))} (K runs at once, each on cores ÷ K threads); attempts ended "
        f"{time['first_ended'] or '?'} … {time['last_ended'] or '?'} (UTC).",
        "",
    ]
    return lines


def _cell(interval: dict | None, digits: int = 2) -> str:
    if not interval:
        return "–"
    if interval["half_width"] is None:
        return f"{interval['mean']:.{digits}f} (n=1)"
    return f"{interval['mean']:.{digits}f} ± {interval['half_width']:.{digits}f}"


def _reference_ra(study: Study, paper: dict[str, float]) -> tuple[str, str]:
    """The reference's robust-accuracy column, (header, cell): the benchmark's AutoAttack alone, or the paper's PGD-20
    with its AutoAttack in brackets where it gives one."""
    if study.reference_robust_metric == "autoattack":
        return "AutoAttack", f"{paper['autoattack']:.2f}" if "autoattack" in paper else "–"
    cell = f"{paper['pgd20']:.2f}" if "pgd20" in paper else "–"
    return "PGD-20 (AA)", cell + (f" ({paper['autoattack']:.2f})" if "autoattack" in paper else "")


def markdown(report: dict, scale_description: str, time: dict | None = None, study: Study | None = None) -> str:
    """report.md from `report` (`build`'s); `study` (default: the one the identity names) gives the reference's
    label and description, whether it asks about unforeseen attacks, and its scale's caveat."""
    ident = report["identity"]
    study = study or catalogue.STUDIES[ident["study"]]
    label = study.reference_label
    scale = study.scales.get(ident["scale"])
    caveat = [scale.caveat, ""] if scale is not None and scale.caveat else []
    seeds = f"{ident['seeds']} seed{'s' if ident['seeds'] != 1 else ''}"
    evaluated = sum(len(r["seeds"]) for r in report["rows"])
    planned = ident["seeds"] * (len(report["rows"]) + len(report.get("not_run_yet") or []))
    if any(len(r["seeds"]) < ident["seeds"] for r in report["rows"]):  # a study still running, or resumed later
        seeds += f"; in progress: {evaluated} of {planned} row-seed evaluations finished"
    lines = [
        f"# Study `{ident['study']}` at scale `{ident['scale']}` ({seeds})",
        "",
        *caveat,
        f"Scale: {scale_description}.",
        "",
        f"Each cell: mean ± half-width of the {100 * report['confidence']:.0f} % Student-t interval over the seeds "
        "that finished (n per row in the second column). Accuracies in % of the test images; the worst case counts "
        "an image only if it survives every attack run on that row (L∞ 8/255); epochs to best = the fine-tuning "
        f"epoch of the best validation robust accuracy (the exported best-RA model). {label.capitalize()}: "
        f"{study.reference}."
        + (
            " A row fine-tuned under a RobustSSL protocol is evaluated as its final model (the benchmark's choice), "
            "not its best-RA one."
            if any(r.export == "last" for r in study.rows)
            else ""
        ),
        "",
        "| row | n | "
        + " | ".join(METRICS[m][0] for m in MAIN_TABLE)
        + f" | {label} SA | {label} {_reference_ra(study, {})[0]} |",
        "|---|---:|" + "---:|" * len(MAIN_TABLE) + "---:|---:|",
    ]
    for r in report["rows"]:
        paper = r["paper"]
        ra = _reference_ra(study, paper)[1]
        sa = f"{paper['standard']:.2f}" if "standard" in paper else "–"
        cells = [_cell(r["metrics"][m]["interval"]) for m in MAIN_TABLE]
        lines.append(f"| {r['label']} (`{r['id']}`) | {len(r['seeds'])} | " + " | ".join(cells) + f" | {sa} | {ra} |")
    if study.grid:
        lines += _grid_markdown(report, study)
    if any(c.metric in (*UNFORESEEN_ATTACKS, CIFAR10C, UNFORESEEN_WORST) for c in study.comparisons):
        lines += _unforeseen_markdown(report)
    lines += ["", "## The questions (paired differences per seed: a − b)", ""]
    for q in report["questions"]:
        lines.append(f"**{q['id']}. {q['question']}**")
        lines.append("")
        for c in q["comparisons"]:
            seeds = ", ".join(f"{d:+.2f}" for d in c["per_seed"].values()) or "–"
            lines.append(f"- `{c['a']}` − `{c['b']}`, {METRICS[c['metric']][0]} (per seed: {seeds}): {c['verdict']}")
            lines.append(f"  - {_seeds_needed_line(c, report['confidence'], label)}")
        lines.append("")
    if report.get("not_run_yet"):
        lines += [
            "## Rows not run yet",
            "",
            "This scale runs them, but no evaluation of theirs has finished (the study command runs them; with "
            "--rows, name them): " + ", ".join(f"`{x}`" for x in report["not_run_yet"]) + ".",
            "",
        ]
    if report["excluded"]:
        lines += ["## Rows not run at this scale", ""]
        by_reason: dict[str, list[str]] = {}
        for e in report["excluded"]:
            by_reason.setdefault(e["reason"], []).append(f"`{e['id']}`")
        lines += [f"- {why[0].upper()}{why[1:]}: {', '.join(ids)}" for why, ids in by_reason.items()]
        lines.append("")
    lines += [f"![SA vs RA]({SCATTER})", "", f"![differences]({DIFFERENCES})", ""]
    lines += time_markdown(time)
    return "\n".join(lines)


def _grid_markdown(report: dict, study: Study) -> list[str]:
    """The study's grid (`Study.grid`: pretraining × protocol) as one table: per cell the worst case and SA, mean ±
    half-width over the seeds, and the reference's robust accuracy and SA where it has that row."""
    columns, grid = study.grid
    rows = {r["id"]: r for r in report["rows"]}
    robust = study.reference_robust_metric

    def cell(row_id: str | None) -> str:
        if row_id is None:
            return "(not a row)"
        r = rows.get(row_id)
        ours = (
            f"{_cell(r['metrics']['worst_case']['interval'])} / {_cell(r['metrics']['standard']['interval'])}"
            if r
            else "not run yet"
        )
        ref = dict(study.row(row_id).paper)
        if robust in ref and "standard" in ref:
            ours += f" ({ref[robust]:.2f} / {ref['standard']:.2f})"
        return ours

    lines = [
        "",
        f"By protocol: worst case / SA in % (mean ± half-width over the seeds; the {study.reference_label}'s "
        f"{METRICS[robust][0]} / SA in brackets where it has the row).",
        "",
        "| pretraining | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {label} | " + " | ".join(cell(x) for x in ids) + " |" for label, ids in grid]
    in_grid = {x for _, ids in grid for x in ids}
    outside = [r for r in study.rows if r.id not in in_grid]
    if outside:
        lines += ["", "Outside the grid: " + "; ".join(f"`{r.id}` {cell(r.id)}" for r in outside) + "."]
    return lines


def _unforeseen_markdown(report: dict) -> list[str]:
    """The unforeseen attacks' table (the rows that ran any), and which of them this scale runs."""
    rows = [r for r in report["rows"] if any(r["metrics"][m]["interval"] for m in UNFORESEEN_TABLE[:-1])]
    ran = report.get("unforeseen")
    which = (
        "this scale runs " + (", ".join(METRICS[m][0] for m in ran) if ran else "none of them")
        if ran is not None
        else "the scale is unknown"
    )
    lines = [
        "",
        f"Unforeseen attacks (Q5; {which}), on the rows Q5 judges by them: accuracy under each, and the worst "
        "unforeseen attack (per seed, the lowest of them; L∞ 8/255 and 16/255 and L2 0.5 are different threat "
        "models, so no image-by-image union).",
    ]
    if not rows:
        return [*lines, "", "No row has run them yet."]
    return [
        *lines,
        "",
        "| row | n | " + " | ".join(METRICS[m][0] for m in UNFORESEEN_TABLE) + " |",
        "|---|---:|" + "---:|" * len(UNFORESEEN_TABLE),
        *(
            f"| `{r['id']}` | {len(r['seeds'])} | "
            + " | ".join(_cell(r["metrics"][m]["interval"]) for m in UNFORESEEN_TABLE)
            + " |"
            for r in rows
        ),
    ]


def _seeds_needed_line(c: dict, confidence: float, label: str = "paper") -> str:
    """The seeds-needed sub-line of a comparison (`_seeds_needed`)."""
    need = c["seeds_needed"]
    unit = c["unit"]

    def seeds(n, difference):
        if difference == 0:
            return "never (a difference of 0)"
        return f"more than {statistics.MAX_SEEDS:,}" if n is None else f"{n} seeds"

    head = f"seeds to resolve at {100 * confidence:.0f} % (paired t interval excluding 0)"
    paper = ""
    if need["paper_difference"] is not None:
        name = "PGD-20 RA" if need["paper_metric"] == "pgd20" else METRICS[need["paper_metric"]][0]
        paper = f"({need['paper_difference']:+.2f}, {name})"
    if need["sd"] is None:
        why = "no seed of both rows yet" if c["interval"] is None else "one seed: a second measures the spread"
        return f"{head}: {why}" + (f"; the {label}'s difference {paper}" if paper else "")
    text = (
        f"{head}, at the seeds' spread (sd {need['sd']:.2f} {unit}): this difference ({c['interval']['mean']:+.2f}) "
        f"{seeds(need['observed'], c['interval']['mean'])}"
    )
    return text + (f"; the {label}'s {paper} {seeds(need['paper'], need['paper_difference'])}" if paper else "")


def plot(report: dict, folder: str) -> None:
    """SA vs worst-case RA with interval bars, marker area ∝ epochs to best (the paper's Figure 1), and the
    per-question differences with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_hw(interval):
        if not interval:
            return None, 0.0
        return interval["mean"], interval["half_width"] or 0.0

    # Left: this study's rows on their own scale; right: the same beside the reference's models (squares: the paper's
    # or the benchmark's), whose numbers at their scale would otherwise squeeze a small-scale study's points into one
    # corner.
    study = catalogue.STUDIES[report["identity"]["study"]]
    robust = study.reference_robust_metric
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for panel, ax in enumerate(axes):
        for i, r in enumerate(report["rows"]):
            x, xe = mean_hw(r["metrics"]["worst_case"]["interval"])
            y, ye = mean_hw(r["metrics"]["standard"]["interval"])
            if x is None or y is None:
                continue
            epochs, _ = mean_hw(r["metrics"]["epochs_to_best"]["interval"])
            size = 20.0 + 40.0 * (epochs if epochs is not None else 0.0)
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="none", ecolor="0.6", lw=1)
            ax.scatter([x], [y], s=size, alpha=0.7, marker="o" if epochs is not None else "D", color=f"C{i % 10}")
            if panel == 0:
                ax.annotate(r["id"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if panel == 1 and "standard" in r["paper"] and robust in r["paper"]:
                ax.scatter([r["paper"][robust]], [r["paper"]["standard"]], s=25, marker="s", color=f"C{i % 10}")
        ax.set_xlabel("robust accuracy, worst case at L∞ 8/255 (%)")
        ax.set_ylabel("standard accuracy (%)")
    axes[1].set_xlim(0, 100)
    axes[1].set_ylim(0, 100)
    ident = report["identity"]
    axes[0].set_title(
        f"{ident['study']} at {ident['scale']}: mean ± 95% interval; marker area ∝ epochs to best RA", fontsize=8
    )
    axes[1].set_title(
        f"beside the {study.reference_label}'s models (squares: {METRICS[robust][0]} RA, same colour = same row)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(folder, SCATTER), dpi=120)
    plt.close(fig)

    comps = [(q["id"], c) for q in report["questions"] for c in q["comparisons"]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(comps), 1) + 1.2))
    for i, (_, c) in enumerate(comps):
        if c["interval"]:
            m, hw = mean_hw(c["interval"])
            ax.errorbar([m], [i], xerr=[[hw], [hw]], fmt="o", color="C0" if c["unit"] == "points" else "C1")
            ax.scatter(list(c["per_seed"].values()), [i] * len(c["per_seed"]), s=8, color="0.4", zorder=3)
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels([f"{q}: {c['a']} − {c['b']} ({METRICS[c['metric']][0]})" for q, c in comps], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("a − b (points: blue; epochs: orange; grey dots: seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, DIFFERENCES), dpi=120)
    plt.close(fig)


def write(
    workdir: str,
    study: Study,
    identity: dict[str, Any],
    excluded,
    scale_description: str,
    times: str | None = None,
    planned: set[str] | None = None,
) -> dict:
    """Collects, writes report.json, report.md, time.json and the figures into <workdir>/report/, returns the
    report (`times`, `planned`: the runner's record of attempts and the plan's run ids, for `timing`)."""
    from advss_tf import workspace

    planned_rows = {rid.split("/")[2] for rid in planned or () if rid.split("/")[1] == "evaluate"}
    report = build(study, identity, collect(workdir, study, identity["seeds"]), excluded, planned_rows)
    folder = os.path.join(workdir, REPORT)
    os.makedirs(folder, exist_ok=True)
    plot(report, folder)
    time = timing(times, planned) if times else None
    text = markdown(report, scale_description, time, study)
    with open(os.path.join(folder, MARKDOWN), "w", encoding="utf-8") as f:
        f.write(text)
    workspace.write_json(os.path.join(folder, JSON), report)
    if time is not None:
        workspace.write_json(os.path.join(folder, TIME), time)
    return report
