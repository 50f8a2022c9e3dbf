"""What AutoAttack cost in a study: each stage's seconds per image-iteration over a study's evaluations, split by CPU
and by when each evaluation ended, so a change to the attacks is measured on the study's own models.

    python tools/study_attack_costs.py --workdir=runs/robustssl_tiny --split=2026-12-07T16:13:39+00:00

Reads every `runs/seed*/evaluate/*/results.json` of a study folder (or of its `study keep` copy) that ran AutoAttack
(each stage's attacked images, seconds and tracing seconds are in its `robust_accuracy.autoattack.stages`) and
`logs/times.jsonl` (the CPU, --jobs and end time of each run's finished attempt). A stage's work is its
image-iterations: attacked images × iterations × targets (APGD-CE: 100, APGD-T and FAB-T: 100 × 9, Square: 5,000
queries at the standard budgets); its cost is (seconds − tracing seconds) / work. Models differ in how many images
reach each stage, so seconds alone do not compare across models; the cost per image-iteration does, up to what
drops out early (an APGD example once fooled, a FAB example once it has a point within ε: the work counted is the
budget's, an upper bound). `--split` (an ISO time) puts the evaluations that ended before it in one group and the
rest in another: the code the study ran changed between them (the study folder's README says how). Medians over
evaluations, with their count; the study's AutoAttack seconds beside the run time of every finished attempt.
Timings compare only within one CPU model (and one --jobs).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from datetime import datetime

from advss_tf.study import report, runner

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")


def attempts_of(workdir: str) -> list[dict]:
    """Every attempt in the study's logs/times.jsonl (none if it has none)."""
    return (report.read_attempts(os.path.join(workdir, runner.LOGS, runner.TIMES)) or ([], 0))[0]


def stage_rows(workdir: str, attempts: list[dict]) -> list[dict]:
    """One row per (evaluation, AutoAttack stage): run, stage, attacked, seconds, work, ms per image-iteration, and
    the cpu, jobs and end time of the run's last finished attempt (of `attempts`)."""
    finished = {a["run"]: a for a in attempts if a.get("outcome") == "done"}
    rows = []
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "seed*", "evaluate", "*", "results.json"))):
        run = os.path.relpath(os.path.dirname(path), os.path.join(workdir, "runs"))
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        autoattack = (results.get("robust_accuracy") or {}).get("autoattack")
        if not autoattack:
            continue
        attempt = finished.get(run, {})
        for stage in autoattack.get("stages", []):
            work = stage["num_attacked"] * stage["steps"] * (stage.get("targets") or 1)
            seconds = stage["seconds"] - stage.get("trace_seconds", 0.0)
            rows.append(
                {
                    "run": run,
                    "stage": stage["name"],
                    "attacked": stage["num_attacked"],
                    "broken": stage.get("num_broken"),
                    "seconds": stage["seconds"],
                    "work": work,
                    "ms_per_image_iteration": 1e3 * seconds / work if work else None,
                    "cpu": attempt.get("cpu", "unknown CPU"),
                    "jobs": attempt.get("jobs"),
                    "ended": attempt.get("ended"),
                }
            )
    return rows


def group_of(row: dict, split: datetime | None) -> str:
    label = f"{row['cpu']}, --jobs={row['jobs']}"
    if split is None:
        return label
    if row["ended"] is None:
        return f"{label}, end unknown"
    return f"{label}, {'before' if datetime.fromisoformat(row['ended']) < split else 'after'} {split.isoformat()}"


def summary(rows: list[dict], split: datetime | None) -> list[dict]:
    """Per (group, stage): evaluations, images attacked, seconds, and the median ms per image-iteration."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((group_of(row, split), row["stage"]), []).append(row)
    out = []
    for (group, stage), members in sorted(groups.items(), key=lambda kv: (kv[0][0], STAGES.index(kv[0][1]))):
        costs = [m["ms_per_image_iteration"] for m in members if m["ms_per_image_iteration"] is not None]
        out.append(
            {
                "group": group,
                "stage": stage,
                "evaluations": len(members),
                "attacked": sum(m["attacked"] for m in members),
                "seconds": sum(m["seconds"] for m in members),
                "median_ms_per_image_iteration": statistics.median(costs) if costs else None,
            }
        )
    return out


def markdown(table: list[dict], rows: list[dict], attempts: list[dict]) -> str:
    lines = [
        "| group | stage | evaluations | images attacked | seconds | ms per image-iteration (median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in table:
        cost = "–" if t["median_ms_per_image_iteration"] is None else f"{t['median_ms_per_image_iteration']:.3f}"
        lines.append(
            f"| {t['group']} | {t['stage']} | {t['evaluations']} | {t['attacked']} | {t['seconds']:.0f} | {cost} |"
        )
    attack_seconds = sum(r["seconds"] for r in rows)
    every = sum(a["seconds"] for a in attempts)
    lines.append("")
    lines.append(
        f"AutoAttack in these evaluations: {attack_seconds / 3600:.2f} h of the study's {every / 3600:.2f} h of "
        "run time (every attempt in logs/times.jsonl)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a study folder or its `study keep` copy")
    parser.add_argument("--split", default=None, help="ISO time: evaluations ended before it vs after it")
    parser.add_argument("--json_out", default="", help="also write every stage row and the summary here")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.workdir, "runs")):
        print(f"error: {args.workdir} has no runs/: not a study folder", file=sys.stderr)
        return 2
    try:
        split = datetime.fromisoformat(args.split) if args.split else None
    except ValueError:
        print(f"error: --split={args.split} is not an ISO time (e.g. 2026-12-07T16:13:39+00:00)", file=sys.stderr)
        return 2
    if split is not None and split.tzinfo is None:
        print("error: --split needs a UTC offset (e.g. +00:00): times.jsonl's times carry one", file=sys.stderr)
        return 2
    attempts = attempts_of(args.workdir)
    rows = stage_rows(args.workdir, attempts)
    if not rows:
        print(f"error: no evaluation in {args.workdir} ran AutoAttack", file=sys.stderr)
        return 2
    table = summary(rows, split)
    print(markdown(table, rows, attempts))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "summary": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
