"""Compare evaluations: the SA-vs-RA scatter (like the paper's Figure 1) and one Markdown table of several models.

    python tools/report.py runs/*_eval [more results.json, or folders holding one] [--output_dir=report]

Reads each results.json written by `python -m advss_tf.evaluate`, writes <output_dir>/sa_vs_ra.png and
<output_dir>/comparison.md (clean, every attack, AutoAttack — only a run with its version's settings; a custom-budget
one is its own column marked "(custom)" —, the worst case over every attack, the CIFAR-10-C mean
with the number of the 75 headline sets it averages when not all, masking), and prints the table. Bad input (a missing or malformed results.json, an unknown
attack for the x axis) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags

import advss_tf  # noqa: F401  (quiet TensorFlow import settings; matplotlib draws on the Agg canvas)
from advss_tf.errors import UsageError

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "report", "Where sa_vs_ra.png and comparison.md go (created if missing).")
flags.DEFINE_list("labels", [], "A label per results file, in order (default: each model's name).")
flags.DEFINE_string("attack", "pgd20", "Which robust accuracy goes on the x axis of the scatter.")
flags.DEFINE_bool("paper", False, "Also plot the paper's reported SA/RA points (grey squares) for comparison.")

SCATTER = "sa_vs_ra.png"
TABLE = "comparison.md"


def read_results(path: str) -> dict[str, Any]:
    """A results.json, given as the file or the folder holding it."""
    file_path = os.path.join(path, "results.json") if os.path.isdir(path) else path
    try:
        with open(file_path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{file_path} not found: give results.json files or folders evaluate wrote") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{file_path} is not readable JSON: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("standard_accuracy", "robust_accuracy", "gradient_masking", "data") if k not in results]
    if missing:
        raise UsageError(f"{file_path} is not an evaluate results.json (missing {', '.join(missing)})")
    return results


def write_report(paths: list[str], output_dir: str, labels: list[str], attack: str, paper: bool) -> str:
    """Writes the scatter and the table for the results at `paths`; returns the table."""
    from advss_tf.evaluation import report

    if not paths:
        raise UsageError("give at least one results.json (or a folder holding one)")
    all_results = [read_results(p) for p in paths]
    if labels and len(labels) != len(all_results):
        raise UsageError(f"--labels has {len(labels)} labels for {len(all_results)} results files")
    labels = labels or [report.model_label(r) for r in all_results]
    if not any(attack in r["robust_accuracy"] for r in all_results):
        raise UsageError(f"no results file has attack {attack!r}; pick one with --attack")
    os.makedirs(output_dir, exist_ok=True)
    report.plot_sa_vs_ra(all_results, labels, os.path.join(output_dir, SCATTER), attack=attack, paper=paper)
    table = report.combined_table(all_results, labels)
    with open(os.path.join(output_dir, TABLE), "w", encoding="utf-8") as f:
        f.write("# Standard and robust accuracy (%)\n\n" + table)
    return table


def main(argv: list[str]) -> None:
    from advss_tf.common_flags import fail

    try:
        print(write_report(argv[1:], FLAGS.output_dir, FLAGS.labels, FLAGS.attack, FLAGS.paper), end="")
    except UsageError as e:
        fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing with the project's exit contract: a bad flag is one line on stderr and status 2."""
    from advss_tf.common_flags import fail

    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
