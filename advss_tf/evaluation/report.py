"""What a person reads: the Markdown report of one evaluation, a table across several, and the figures.

Figures are matplotlib PNGs drawn on `matplotlib.figure.Figure` (the Agg canvas, no pyplot state, no display):
the SA-vs-RA scatter of several models (like the paper's Figure 1), the CIFAR-10-C corruption × severity heat map,
and the clean | adversarial | amplified perturbation grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from advss_tf.evaluation.worst_case import headline_autoattack, is_randomised

# SPEC §9: the paper's CIFAR-10 results (ResNet-50v2, adversarial full fine-tuning, PGD-20), in percent, with a
# label offset (points) each so the six close points stay readable.
PAPER_POINTS: tuple[tuple[str, float, float, tuple[int, int]], ...] = (
    ("end-to-end AT", 84.72, 47.22, (-66, -4)),
    ("Selfie", 86.02, 51.05, (-4, 7)),
    ("Rotation", 85.66, 50.05, (-40, 7)),
    ("Jigsaw", 83.74, 48.84, (-10, -12)),
    ("ens. pretrain", 83.00, 52.22, (4, -10)),
    ("ens. of 3", 86.04, 54.64, (5, 3)),
)
_NORM_NAMES = {"linf": "L∞", "l2": "L2"}


def norm_name(norm: str) -> str:
    return _NORM_NAMES.get(norm, norm)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def model_label(results: dict[str, Any]) -> str:
    return results.get("model", {}).get("name") or os.path.basename(results.get("model", {}).get("path", "model"))


def markdown_report(results: dict[str, Any]) -> str:
    """The report of one results.json: accuracy per attack, masking check, CIFAR-10-C table (accuracies in %)."""
    model, data = results["model"], results["data"]
    lines = [
        f"# Robustness of {model_label(results)}",
        "",
        f"- Model: `{model['path']}` (signature `{model['signature']}`, output `{model['output']}`: "
        f"{model['output_kind']}); saved_model.pb sha256 `{model['saved_model_pb_sha256'][:12]}`, "
        f"variables sha256 `{model['variables_sha256'][:12]}`",
        *(
            [f"- Trained by {model['trained_by']}; imported from {', '.join(model['imported_from'])}"]
            if model.get("trained_by")
            else []
        ),
        f"- Test set: {data.get('title', 'CIFAR-10')} test from `{data['dataset']}`, {data['num_examples']} examples; "
        f"seed {results['seed']}",
        f"- Wall time: {results['wall_time_sec']:.1f} s; TensorFlow {results['versions'].get('tensorflow')}, "
        f"Keras {results['versions'].get('keras')}",
        "",
        *_randomised_warning(results),
        "## Accuracy (%)",
        "",
        "Robust accuracy counts an example only if it is classified correctly clean and after every restart.",
        "",
        "| evaluation | norm | ε | step | steps | restarts | loss | accuracy | images/s |",
        "|---|---|---|---|---|---|---|---:|---:|",
        f"| clean | – | – | – | – | – | – | {_pct(results['standard_accuracy'])} | – |",
    ]
    for name, r in results["robust_accuracy"].items():
        lines += _attack_rows(name, r)
    worst = results.get("worst_case")
    if worst and worst["attacks"]:
        sections = worst.get("by_threat_model") or {worst.get("threat_model") or "every attack": worst}
        for label, w in sections.items():
            lines.append(
                f"| **worst case, {label}** ({', '.join(w['attacks'])}) | – | – | – | – | – | – | "
                f"**{_pct(w['accuracy'])}** | – |"
            )
        lines += [
            "",
            "Worst case: an example counts only if it is correct clean and survives every attack of one threat "
            "model (norm and radius; a larger radius or another norm is another question, so its own row).",
        ]
        for label, w in sections.items():
            only = ", ".join(f"{a} {k}" for a, k in w["only_broken_by"].items())
            lines.append(f"- {label}: {w['num_robust']}/{w['num_examples']}; examples only one attack broke: {only}.")
    masking = results["gradient_masking"]
    lines += ["", "## Gradient-masking check", ""]
    if masking["suspected"]:
        lines.append("**Possible gradient masking** — robust accuracies above may overstate robustness:")
        lines += [f"- {f['message']}" for f in masking["flags"]]
    else:
        lines.append(
            "No sign found (stronger attacks never scored higher than weaker ones beyond "
            f"tolerance; input gradients zero for {masking['zero_gradient_fraction']:.1%} and non-finite for "
            f"{masking['nonfinite_gradient_fraction']:.1%} of test images"
            + (
                f"; {masking['randomness']['passes']} forward passes of the same inputs agreed)."
                if masking.get("randomness")
                else ")."
            )
        )
    c10c = results.get("cifar10c")
    if c10c:
        lines += ["", "## CIFAR-10-C accuracy (%)", ""]
        lines.append(
            f"Source `{c10c['source']}`, {c10c['num_examples']} examples per set. {cifar10c_mean_label(c10c)}: "
            f"**{_pct(c10c['mean_accuracy'])}**; the 4 extra corruptions: {_pct(c10c['extra_mean_accuracy'])}."
        )
        lines.append("")
        severities = c10c["severities"]
        lines.append("| corruption | " + " | ".join(f"s{s}" for s in severities) + " | mean |")
        lines.append("|---|" + "---:|" * (len(severities) + 1))
        for name, row in c10c["accuracy"].items():
            cells = " | ".join(_pct(row[str(s)]) for s in severities)
            lines.append(f"| {name} | {cells} | {_pct(c10c['mean_accuracy_per_corruption'][name])} |")
        per_sev = c10c["mean_accuracy_per_severity"]
        if per_sev:
            cells = " | ".join(_pct(per_sev.get(str(s))) for s in severities)
            label = "mean (headline)" if c10c.get("headline_complete") else "mean (headline corruptions run)"
            lines.append(f"| **{label}** | {cells} | {_pct(c10c['mean_accuracy'])} |")
    lines.append("")
    return "\n".join(lines)


def _randomised_warning(results: dict[str, Any]) -> list[str]:
    if not is_randomised(results):
        return []
    check = results["gradient_masking"]["randomness"]
    aa = headline_autoattack(results)
    headline = (
        f"AutoAttack's rand version ({aa['name']}): **{_pct(aa['accuracy'])}**"
        if aa
        else "none: AutoAttack's rand version did not run (`--autoattack_version=rand`)"
    )
    return [
        f"**Randomised model**: {check['passes']} forward passes of the same inputs gave different outputs. The "
        "attacks below that assume a deterministic model (the standard AutoAttack among them) do not give its "
        f"robust accuracy; the number to report is {headline}.",
        "",
    ]


def cifar10c_mean_label(c10c: dict[str, Any]) -> str:
    """'Headline mean (all 75 sets)' only when all 15 × 5 were run; else how many of the 75 the mean averages."""
    k = c10c.get("headline_sets")
    if c10c.get("headline_complete"):
        return f"Headline mean (all {k} corruption × severity sets)"
    return f"Mean over {k} of the 75 headline sets (a partial mean, not the headline number)"


def _attack_rows(name: str, r: dict[str, Any]) -> list[str]:
    """The report's row of one attack; a composite's row, then its robust accuracy after each stage."""
    ips = "–" if r.get("images_per_sec") is None else f"{r['images_per_sec']:.1f}"
    if "stages" not in r:
        return [
            f"| {name} | {norm_name(r['norm'])} | {r['epsilon_label']} | {r['step_size']:.4g} | "
            f"{r['steps']} | {r['restarts']} | {r['loss']} | {_pct(r['accuracy'])} | {ips} |"
        ]
    label = r.get("description", "")
    label = f" — {label}" if label.startswith("AutoAttack") else ""
    rows = [
        f"| **{name}** ({' → '.join(r['components'])}){label} | {norm_name(r['norm'])} | {r['epsilon_label']} | – | – | "
        f"{r['restarts']} | – | **{_pct(r['accuracy'])}** | {ips} |"
    ]
    for st in r["stages"]:
        ips = "–" if st.get("images_per_sec") is None else f"{st['images_per_sec']:.1f}"
        rows.append(
            f"| &nbsp;&nbsp;after {st['name']} (on {st['num_attacked']}, broke {st['num_broken']}) | "
            f"{norm_name(st['norm'])} | {st['epsilon_label']} | {st['step_size']:.4g} | {st['steps']} | "
            f"{st['restarts']} | {st['loss']} | {_pct(st['accuracy'])} | {ips} |"
        )
    return rows


def combined_table(all_results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """One Markdown row per model: examples, clean, each attack, AutoAttack, the worst case, CIFAR-10-C mean (%).

    The AutoAttack column holds only an AutoAttack that ran its version's settings (`headline_autoattack`: the
    standard version, the rand one for a randomised model); a custom-budget one is its own column, "(custom)".
    The worst case is the headline threat model's (`worst_case.headline_threat_model`), named in the cell when it
    is not L∞ 8/255.

    The CIFAR-10-C column is the headline mean when all 75 sets ran; otherwise the partial mean with the number
    of sets it averages, e.g. "71.20 (12/75)".
    """
    attacks: list[str] = []
    headline = [headline_autoattack(r) for r in all_results]
    for r, aa in zip(all_results, headline):
        attacks.extend(a for a in r["robust_accuracy"] if a not in attacks and (aa is None or a != aa["name"]))
    header = ["model", "examples", "clean", *attacks, "AutoAttack", "worst case", "CIFAR-10-C mean", "masking?"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for label, r, aa in zip(labels, all_results, headline):
        robust = [_attack_cell(r, a, aa) for a in attacks]
        worst = r.get("worst_case")
        worst_cell = _pct(worst["accuracy"]) if worst and worst["attacks"] else "–"
        if worst and worst["attacks"] and worst.get("threat_model") not in (None, "Linf 8/255"):
            worst_cell += f" ({worst['threat_model']})"
        c10c = r.get("cifar10c") or {}
        c10c_cell = _pct(c10c.get("mean_accuracy"))
        if c10c and not c10c.get("headline_complete") and c10c.get("mean_accuracy") is not None:
            c10c_cell += f" ({c10c.get('headline_sets', '?')}/75)"
        masking = "yes" if r["gradient_masking"]["suspected"] else "no"
        cells = [
            label,
            str(r["data"]["num_examples"]),
            _pct(r["standard_accuracy"]),
            *robust,
            (_pct(aa["accuracy"]) + (f" ({aa['name']})" if aa["name"] != "autoattack" else "")) if aa else "–",
            worst_cell,
            c10c_cell,
            masking,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _attack_cell(results: dict[str, Any], attack: str, headline: dict[str, Any] | None) -> str:
    r = results["robust_accuracy"].get(attack)
    if r is None or (headline is not None and attack == headline["name"]):
        return "–"
    return _pct(r["accuracy"]) + (" (custom)" if r.get("version") == "custom" else "")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def plot_sa_vs_ra(
    all_results: Sequence[dict[str, Any]], labels: Sequence[str], path: str, attack: str = "pgd20", paper: bool = False
) -> str:
    """Standard vs robust accuracy, one labelled point per model (the paper's Figure 1); returns `path`.

    Args:
      all_results: results.json contents; a model without `attack` is left out.
      labels: a label per model.
      path: the PNG to write.
      attack: which robust accuracy goes on the x axis.
      paper: also draw the paper's reported points (grey) for comparison.
    """
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    points = [
        (label, 100 * r["robust_accuracy"][attack]["accuracy"], 100 * r["standard_accuracy"], r)
        for label, r in zip(labels, all_results)
        if attack in r["robust_accuracy"]
    ]
    ras, sas = [p[1] for p in points], [p[2] for p in points]
    middle = (min(ras, default=0.0) + max(ras, default=0.0)) / 2
    x_span = max(ras, default=0.0) - min(ras, default=0.0) or 1.0
    y_span = max(sas, default=0.0) - min(sas, default=0.0) or 1.0
    for i, (label, ra, sa, r) in enumerate(points):
        marker = "x" if r["gradient_masking"]["suspected"] else "o"
        ax.scatter([ra], [sa], marker=marker, s=50, zorder=3)
        # Labels right of the middle go to the left of their point, so none runs off the figure; a point just
        # below a close neighbour gets its label underneath, so the two labels do not overlap.
        right = ra > middle
        below = any(
            0 < sa2 - sa < 0.08 * y_span and abs(ra2 - ra) < 0.3 * x_span
            for k, (_, ra2, sa2, _) in enumerate(points)
            if k != i
        )
        ax.annotate(
            label,
            (ra, sa),
            textcoords="offset points",
            xytext=(-5 if right else 5, -12 if below else 4),
            ha="right" if right else "left",
            fontsize=8,
        )
    if paper:
        for i, (label, sa, ra, offset) in enumerate(PAPER_POINTS):
            legend = "paper (ResNet-50v2, PGD-20)" if i == 0 else None
            ax.scatter([ra], [sa], color="0.6", marker="s", s=20, zorder=2, label=legend)
            ax.annotate(label, (ra, sa), textcoords="offset points", xytext=offset, fontsize=6, color="0.4")
        ax.legend(loc="lower right", fontsize=7)
    spec = next((r["robust_accuracy"][attack] for r in all_results if attack in r["robust_accuracy"]), None)
    budget = f" ({norm_name(spec['norm'])} ε={spec['epsilon_label']})" if spec else ""
    ax.set_xlabel(f"robust accuracy under {attack}{budget} (%)")
    ax.set_ylabel("standard accuracy (%)")
    ax.set_title("Standard vs robust accuracy (× marks suspected gradient masking)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    return _save(fig, path)


def plot_cifar10c_heatmap(results: dict[str, Any], path: str) -> str:
    """CIFAR-10-C accuracy (%) as a corruption × severity heat map with the numbers written in; returns `path`."""
    c10c = results["cifar10c"]
    names, severities = list(c10c["accuracy"]), c10c["severities"]
    grid = np.array([[100 * c10c["accuracy"][n][str(s)] for s in severities] for n in names])
    fig = _figure(1.2 + 0.8 * len(severities), 1.2 + 0.32 * len(names))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    for i in range(len(names)):
        for j in range(len(severities)):
            ax.text(
                j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w" if grid[i, j] < 60 else "k"
            )
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    which = "headline mean" if c10c.get("headline_complete") else f"mean of {c10c.get('headline_sets', '?')}/75 sets"
    ax.set_title(f"CIFAR-10-C: {model_label(results)} ({which} {_pct(c10c['mean_accuracy'])}%)", fontsize=9)
    return _save(fig, path)


def amplified_perturbation(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The perturbation stretched per image to fill [0, 1] (0.5 = unchanged), so an 8/255 change is visible."""
    delta = adversarial - clean
    scale = np.abs(delta).reshape(len(delta), -1).max(axis=1).reshape(-1, 1, 1, 1)
    return np.clip(0.5 + delta / (2 * np.maximum(scale, 1e-12)), 0.0, 1.0)


def plot_adversarial_examples(
    clean: np.ndarray,
    adversarial: np.ndarray,
    path: str,
    *,
    title: str = "",
    clean_labels: Sequence[str] | None = None,
    adversarial_labels: Sequence[str] | None = None,
) -> str:
    """Rows of clean | adversarial | amplified perturbation for a few images in [0, 1]; returns `path`.

    Args:
      clean, adversarial: float [k, 32, 32, 3] in [0, 1].
      path: the PNG to write.
      title: the figure's title (attack and budget).
      clean_labels, adversarial_labels: the model's predicted class names, shown under the images.
    """
    k = len(clean)
    amplified = amplified_perturbation(clean, adversarial)
    fig = _figure(4.2, 1.35 * k + 0.4)
    axes = fig.subplots(k, 3, squeeze=False)
    for i in range(k):
        columns = ((clean[i], "clean", clean_labels), (adversarial[i], "adversarial", adversarial_labels))
        for j, (image, name, labels) in enumerate((*columns, (amplified[i], "perturbation (amplified)", None))):
            ax = axes[i, j]
            ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if labels is not None:
                ax.set_xlabel(labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
