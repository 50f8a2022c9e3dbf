"""Attacks in sequence (AutoAttack's standard version), the worst case over every attack, and the model card.

A composite runs its attacks one after another, each only on the examples every earlier one left standing
(gathered across batches and re-batched, so later stages cost less): `--attacks=autoattack` is
APGD-CE → APGD-T → FAB-T → Square (Croce & Hein, ICML 2020; `autoattack_l2` the same in L2), `--attacks=a+b+c` any
such chain. The worst case counts an example robust only if it is correct clean and survives every attack that ran.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from advss_tf.attacks.registry import (
    AUTOATTACK_NAMES,
    AUTOATTACK_VERSIONS,
    CUSTOM,
    GRADIENT_FREE,
    AttackSpec,
    autoattack_version,
    epsilon_label,
)
from advss_tf.evaluation.robustness import AttackOutcome, ModelFn, run_attack

PER_EXAMPLE = "per_example.npz"
MODEL_CARD = "model_card.json"
CLEAN_MISTAKE = "clean"  # the breaking attack of an example the model gets wrong without any attack
NOT_BROKEN = ""


@dataclasses.dataclass
class CompositeOutcome:
    """A composite over the test set: each stage's outcome (robust after it), and which stage broke what."""

    name: str
    stages: list[AttackOutcome]
    clean_correct: np.ndarray  # bool [N]

    @property
    def robust(self) -> np.ndarray:
        return self.stages[-1].robust

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.robust)) if len(self.robust) else 0.0

    @property
    def spec(self) -> AttackSpec:
        return self.stages[0].spec

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def norm(self) -> str:
        """The stages' norm, or "mixed" for a chain of L∞ and L2 attacks."""
        norms = {s.spec.norm for s in self.stages}
        return norms.pop() if len(norms) == 1 else "mixed"

    @property
    def shown_adversarial(self) -> np.ndarray:
        return self.stages[0].shown_adversarial

    def breaking_stage(self) -> np.ndarray:
        """str [N]: the stage that broke each example first; "" when none did (or it was wrong clean)."""
        out = np.full(len(self.robust), NOT_BROKEN, dtype=object)
        before = self.clean_correct
        for stage in self.stages:
            out[before & ~stage.robust] = stage.spec.name
            before = stage.robust
        return out.astype(str)

    def gradient_free_breaks(self) -> dict[str, int]:
        """'composite/stage' → examples a gradient-free stage broke after at least one gradient stage."""
        out = {}
        before = self.clean_correct
        for i, stage in enumerate(self.stages):
            if stage.spec.name in GRADIENT_FREE and i > 0:
                out[f"{self.name}/{stage.spec.name}"] = int(np.sum(before & ~stage.robust))
            before = stage.robust
        return out

    def version(self) -> tuple[str, list[str]] | None:
        """An AutoAttack composite's version as it ran ("standard", "rand" or "custom") and what differs from
        its version's settings; None for another chain."""
        return autoattack_version(self.name, [s.spec for s in self.stages])

    def description(self) -> str:
        """'AutoAttack (standard version)', 'AutoAttack (custom: apgd_ce restarts 2 (standard: 1))', ..."""
        version = self.version()
        if version is None:
            return "attacks in sequence"
        label, changes = version
        return f"AutoAttack (custom: {'; '.join(changes)})" if label == CUSTOM else f"AutoAttack ({label} version)"

    def to_dict(self) -> dict[str, Any]:
        """What results.json records: the composite's accuracy, and robust accuracy after each stage."""
        n = len(self.robust)
        first = self.stages[0].spec
        stages = []
        before = self.clean_correct
        for s in self.stages:
            d = s.to_dict()
            d["num_broken"] = int(np.sum(before & ~s.robust))
            stages.append(d)
            before = s.robust
        seconds = self.seconds
        version, changes = self.version() or (None, [])
        return {
            "name": self.name,
            "description": self.description(),
            "version": version,
            "changes": changes,
            "components": [s.spec.name for s in self.stages],
            "norm": self.norm,
            "epsilon": first.eps,
            "epsilon_label": epsilon_label(first.eps, first.norm),
            "restarts": first.restarts,
            "accuracy": self.accuracy,
            "num_robust": int(np.sum(self.robust)),
            "num_examples": n,
            "accuracy_after_stage": {s.spec.name: s.accuracy for s in self.stages},
            "stages": stages,
            "max_perturbation": max(s.max_perturbation for s in self.stages),
            "seconds": seconds,
            "cpu_seconds": sum(s.cpu_seconds for s in self.stages),
            "trace_seconds": sum(s.trace_seconds for s in self.stages),
            "images_per_sec": n / seconds if seconds > 0 else None,
        }


def run_composite(
    model_fn: ModelFn,
    name: str,
    specs: Sequence[AttackSpec],
    images: np.ndarray,
    labels: np.ndarray,
    clean_correct: np.ndarray,
    *,
    say: Callable[[str], None] = print,
    **run: Any,
) -> CompositeOutcome:
    """Runs `specs` in order, each on the examples still robust after the previous ones (re-batched).

    Args:
      model_fn, images, labels, clean_correct: as `run_attack`.
      name: the composite's name (results key, seeds and records derive from it).
      specs: its attacks in order.
      say: where the one line per stage goes.
      **run: `run_attack`'s keyword arguments (batch_size, seed, fixed_batch, progress, store, strategy).

    Returns:
      The outcome; robust accuracy never rises from one stage to the next (checked).
    """
    stages: list[AttackOutcome] = []
    robust = clean_correct.copy()
    for i, spec in enumerate(specs):
        survivors = np.flatnonzero(robust)
        say(f"  {name} stage {i + 1}/{len(specs)}: {spec.name} on the {len(survivors)} examples still standing")
        outcome = run_attack(
            model_fn,
            spec,
            images,
            labels,
            robust,
            indices=survivors,
            seed_name=f"{name}/{spec.name}",
            key=f"attack/{name}/{i}_{spec.name}",
            **run,
        )
        # The honesty invariant: a later stage only removes examples; nothing it reports robust was broken before.
        if np.any(outcome.robust & ~robust):
            raise AssertionError(f"{name}: stage {spec.name} made broken examples robust again")
        stages.append(outcome)
        robust = outcome.robust
    result = CompositeOutcome(name, stages, clean_correct)
    accuracies = [s.accuracy for s in stages]
    if any(result.accuracy > a for a in accuracies):
        raise AssertionError(f"{name}: accuracy {result.accuracy} above a stage's {accuracies}")
    return result


MIXED = "mixed"  # the threat model of a chain whose stages bound different norms or radii


def threat_model(outcome: AttackOutcome | CompositeOutcome) -> str:
    """'Linf 8/255', 'L2 0.5': the norm and radius an attack bounds; MIXED for a chain over several."""
    specs = [s.spec for s in outcome.stages] if isinstance(outcome, CompositeOutcome) else [outcome.spec]
    labels = {f"{'Linf' if s.norm == 'linf' else 'L2'} {epsilon_label(s.eps, s.norm)}" for s in specs}
    return labels.pop() if len(labels) == 1 else MIXED


def headline_threat_model(outcomes: Sequence[AttackOutcome | CompositeOutcome]) -> str | None:
    """The threat model the headline worst case is taken in: AutoAttack's (the L∞ one first) if it ran, else
    PGD-20's, else the first attack's that bounds one norm and radius (MIXED only if nothing else ran)."""
    by_name = {outcome_name(o): o for o in outcomes}
    for name in (*AUTOATTACK_NAMES, "pgd20"):
        if name in by_name and threat_model(by_name[name]) != MIXED:
            return threat_model(by_name[name])
    models = [threat_model(o) for o in outcomes]
    return next((m for m in models if m != MIXED), models[0] if models else None)


def _slug(label: str) -> str:
    """'linf_8_255' for 'Linf 8/255': a per_example.npz key suffix."""
    return label.lower().replace(" ", "_").replace("/", "_")


def worst_case(
    clean_correct: np.ndarray, outcomes: Sequence[AttackOutcome | CompositeOutcome]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The worst case per threat model over the attacks that ran, and the per-example arrays of per_example.npz.

    An attack at 16/255 answers another question than one at 8/255, and an L2 attack another than an L∞ one: the
    worst case is taken over the attacks of one threat model (norm, radius) at a time. The headline one
    (`headline_threat_model`) is the section's top level; every threat model's is under `by_threat_model`.

    Returns:
      (the `worst_case` section of results.json, {array name: array}). An example is robust only if it is correct
      clean and survives every attack of the threat model; `only_broken_by.<attack>` counts the examples that attack
      alone broke.
    """
    groups: dict[str, list[AttackOutcome | CompositeOutcome]] = {}
    for o in outcomes:
        groups.setdefault(threat_model(o), []).append(o)
    headline = headline_threat_model(outcomes)
    by_model, arrays = {}, {"clean_correct": clean_correct}
    for label, members in groups.items():
        section, robust, breaking = _worst_case_of(clean_correct, members)
        by_model[label] = {"threat_model": label, **section}
        arrays[f"worst_case_robust_{_slug(label)}"] = robust
        arrays[f"breaking_attack_{_slug(label)}"] = breaking
        if label == headline:
            arrays["worst_case_robust"], arrays["breaking_attack"] = robust, breaking
    if headline is None:  # no attack ran: every correct example stands
        top, robust, breaking = _worst_case_of(clean_correct, [])
        arrays["worst_case_robust"], arrays["breaking_attack"] = robust, breaking
    else:
        top = {k: v for k, v in by_model[headline].items() if k != "threat_model"}
    names = [outcome_name(o) for o in outcomes]
    arrays["attacks"] = np.array(names, dtype=str)
    for o, name in zip(outcomes, names):
        arrays[f"robust_{name}"] = o.robust
        if isinstance(o, CompositeOutcome):
            for s in o.stages:
                arrays[f"robust_{name}_after_{s.spec.name}"] = s.robust
    return {"threat_model": headline, **top, "by_threat_model": by_model}, arrays


def _worst_case_of(
    clean_correct: np.ndarray, outcomes: Sequence[AttackOutcome | CompositeOutcome]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(section, robust mask, breaking attack per example) over `outcomes` taken together."""
    n = len(clean_correct)
    names = [outcome_name(o) for o in outcomes]
    masks = np.stack([o.robust for o in outcomes]) if outcomes else np.ones([0, n], bool)
    robust = clean_correct & masks.all(axis=0)
    only = {}
    for i, name in enumerate(names):
        others = np.delete(masks, i, axis=0).all(axis=0)
        only[name] = int(np.sum(clean_correct & ~masks[i] & others))
    breaking = np.where(clean_correct, NOT_BROKEN, CLEAN_MISTAKE).astype(object)
    for o, name in zip(outcomes, names):
        first = (breaking == NOT_BROKEN) & ~o.robust
        if isinstance(o, CompositeOutcome):
            stage = o.breaking_stage()
            breaking[first] = [f"{name}/{s}" for s in stage[first]]
        else:
            breaking[first] = name
    breaking = breaking.astype(str)
    section = {
        "accuracy": float(np.mean(robust)) if n else 0.0,
        "num_robust": int(np.sum(robust)),
        "num_examples": n,
        "attacks": names,
        "only_broken_by": only,
        "broken_first_by": {
            k: int(v) for k, v in zip(*np.unique(breaking[breaking != NOT_BROKEN], return_counts=True))
        },
    }
    return section, robust, breaking


def outcome_name(outcome: AttackOutcome | CompositeOutcome) -> str:
    """The results key of an outcome: a composite's name, or its single attack's."""
    return outcome.name if isinstance(outcome, CompositeOutcome) else outcome.spec.name


def write_per_example(path: str, labels: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    """per_example.npz (atomically): labels, clean_correct, robust_<attack>, worst_case_robust, breaking_attack."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp-" + os.path.basename(path))
    with open(tmp, "wb") as f:
        np.savez_compressed(f, labels=labels, **arrays)
    os.replace(tmp, path)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def model_card(results: dict[str, Any], export_info: dict[str, Any] | None) -> dict[str, Any]:
    """The RobustBench-style model_info of an evaluation (their JSON fields; percents as "51.56" strings).

    `autoattack_acc` only when AutoAttack ran with its version's settings (not "custom"): the standard version, or
    the rand version (the only one for a model the randomness check found randomised: its standard number is left
    out); the L∞ one first; `threat_model` and `eps` are its norm and radius. `corruptions_acc` only when all
    15 × 5 CIFAR-10-C sets were evaluated;
    `number_forward_passes` is the model's forward passes per prediction (its ensemble size).
    """
    info = export_info or {}
    members = info.get("ensemble") or []
    backbone = info.get("backbone")
    architecture = backbone.get("name") if isinstance(backbone, dict) else backbone
    if members:
        architecture = f"ensemble of {len(members)}"
    aa = headline_autoattack(results)
    c10c = results.get("cifar10c") or {}
    complete = bool(c10c.get("headline_complete"))
    n = results["num_examples"]
    worst = results["worst_case"]
    data = results.get("data") or {}
    notes = [f"Evaluated with advss_tf on {n} {data.get('title', 'CIFAR-10')} test images"]
    imported = info.get("imported")
    if isinstance(imported, dict):  # advss_tf.import_torch: someone else's training, our evaluation
        files = ", ".join(s.get("file", "?") for s in imported.get("sources", []))
        notes.append(f"model trained by the reference code ({imported.get('trained_by')}), imported from {files}")
    if n < 10_000 and data.get("name", "cifar10") in ("cifar10", "cifar100"):
        notes.append("a subset: not comparable with the 10,000-image leaderboard")
    where = f" ({worst['threat_model']})" if worst.get("threat_model") else ""
    notes.append(f"worst case{where} over {', '.join(worst['attacks']) or 'no attack'}: {_percent(worst['accuracy'])}%")
    if results["gradient_masking"]["suspected"]:
        notes.append("possible gradient masking flagged")
    if is_randomised(results):
        notes.append("a randomised model (outputs differ between passes): only AutoAttack's rand version counts")
    for name, r in results["robust_accuracy"].items():
        if r.get("version") == CUSTOM:
            notes.append(f"{name} ran with custom settings ({'; '.join(r['changes'])}), not AutoAttack's")
    # The threat model is AutoAttack's when its number is on the card, else the first attack's.
    first = aa or next(iter(results["robust_accuracy"].values()), None) or {}
    eps = first.get("epsilon_label")
    return {
        "name": results["model"]["name"],
        "architecture": architecture or "unknown",
        "dataset": data.get("name", "cifar10"),
        "threat_model": "L2" if first.get("norm") == "l2" else "Linf",
        "eps": eps,
        "clean_acc": _percent(results["standard_accuracy"]),
        "autoattack_acc": _percent(aa["accuracy"]) if aa else None,
        "corruptions_acc": _percent(c10c.get("mean_accuracy")) if complete else None,
        "number_forward_passes": max(1, len(members)),
        "footnote": "; ".join(notes) + ".",
    }


def is_randomised(results: dict[str, Any]) -> bool:
    """Whether the evaluation's randomness check found the model randomised."""
    return bool(((results.get("gradient_masking") or {}).get("randomness") or {}).get("randomised"))


def headline_autoattack(results: dict[str, Any]) -> dict[str, Any] | None:
    """The AutoAttack result that may be reported as *the* AutoAttack number: one that ran its version's settings
    (never a "custom" one), the rand version for a randomised model and the standard one otherwise (L∞ first)."""
    version = "rand" if is_randomised(results) else "standard"
    for norm in ("linf", "l2"):
        r = results["robust_accuracy"].get(AUTOATTACK_VERSIONS[version][norm])
        # Results written before versions were recorded ran the standard settings only if nothing was changed.
        if r is not None and r.get("version", version) == version:
            return r
    return None
