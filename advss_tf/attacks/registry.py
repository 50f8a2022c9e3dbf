"""The table of evaluation attacks (SPEC §6): PGD-20 (the paper's RA) and the "unforeseen" set, by name.

`--attacks` is validated against `ATTACKS`; an unknown name lists the valid ones. Every entry records what a
result must carry: norm, ε, step size, steps, restarts and the loss it ascends. ε and step sizes are on the [0, 1]
pixel scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

import tensorflow as tf

from advss_tf.attacks.apgd import apgd, apgd_targeted
from advss_tf.attacks.fab import fab_targeted
from advss_tf.attacks.l2 import l2_norm, pgd_l2
from advss_tf.attacks.losses import cw_margin, dlr
from advss_tf.attacks.pgd import ModelFn, cross_entropy, fgsm, pgd_linf
from advss_tf.attacks.square import square
from advss_tf.errors import UsageError

NORMS = ("linf", "l2")
LOSSES: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}
# Losses of the attacks that build their own from labels and targets (recorded, not passed): the targeted DLR of
# APGD-T, the targeted logit difference FAB linearises, Square's margin z_y − max_{i≠y} z_i.
OWN_LOSSES = ("dlr_targeted", "logit_difference", "margin")
# Which ε flag of the evaluate binary an attack's budget follows.
BUDGETS = ("linf", "linf_large", "l2")
# The largest L2 distance between two images in [0, 1]^(32·32·3): a larger ε constrains nothing.
MAX_L2_EPS = math.sqrt(32 * 32 * 3)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack: the function and its budget.

    Attributes:
      name: the key in `ATTACKS` (what `--attacks` takes and results.json uses).
      description: one line for the report.
      fn: an attack with the `advss_tf.attacks.pgd` contract.
      norm: "linf" or "l2".
      eps: radius on the [0, 1] pixel scale.
      step_size: step length on the same scale (APGD: the initial step, halved by its schedule).
      steps: gradient steps per restart (per target class for a targeted attack; Square: model queries).
      restarts: random restarts; an example is robust only if it survives every one.
      loss: key in `LOSSES`.
      random_start: whether each restart starts from a random point (FGSM: no, so it never restarts).
      budget: which ε the evaluate binary's flags set (`BUDGETS`).
      targets: target classes of a targeted attack (one run per class, the top non-true ones), else None.
      eot_samples: gradients averaged per step (Expectation over Transformation, for randomised models); 1: none.
    """

    name: str
    description: str
    fn: Callable[..., tf.Tensor]
    norm: str
    eps: float
    step_size: float
    steps: int
    restarts: int = 1
    loss: str = "ce"
    random_start: bool = True
    budget: str = "linf"
    targets: int | None = None
    eot_samples: int = 1

    def __call__(self, model_fn: ModelFn, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """One restart of the attack from stateless `seed` [2]; returns gradient-stopped adversarial images."""
        settings = {} if self.targets is None else {"targets": self.targets}
        if self.loss not in OWN_LOSSES:
            settings["loss_fn"] = LOSSES[self.loss]
        if self.eot_samples != 1:
            settings["eot_samples"] = self.eot_samples
        return self.fn(
            model_fn,
            x,
            y,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            seed=seed,
            random_start=self.random_start,
            **settings,
        )

    def with_budget(self, eps: float | None = None, restarts: int | None = None) -> AttackSpec:
        """The same attack at radius `eps` (step size scaled with it) and/or with `restarts` restarts."""
        spec = self
        if eps is not None:
            spec = dataclasses.replace(spec, eps=float(eps), step_size=self.step_size * float(eps) / self.eps)
        if restarts is not None and self.random_start:
            spec = dataclasses.replace(spec, restarts=int(restarts))
        return spec

    def to_dict(self) -> dict[str, Any]:
        """What results.json records about the attack."""
        return {
            "name": self.name,
            "description": self.description,
            "norm": self.norm,
            "epsilon": self.eps,
            "epsilon_label": epsilon_label(self.eps, self.norm),
            "step_size": self.step_size,
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "random_start": self.random_start,
            "targets": self.targets,
            "eot_samples": self.eot_samples,
        }


def epsilon_label(eps: float, norm: str) -> str:
    """'8/255' for L∞ radii that are whole 255ths, else the number ('0.5')."""
    frac = Fraction(eps).limit_denominator(255)
    if norm == "linf" and abs(float(frac) - eps) < 1e-9 and 255 % frac.denominator == 0:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


EOT_SAMPLES = 20  # AutoAttack's rand version: gradients averaged per APGD step
_APGD = functools.partial(apgd, norm="linf")
_APGD_L2 = functools.partial(apgd, norm="l2")
_APGD_T_L2 = functools.partial(apgd_targeted, norm="l2")
_FAB_T_L2 = functools.partial(fab_targeted, norm="l2")
_SQUARE = functools.partial(square, norm="linf")
_SQUARE_L2 = functools.partial(square, norm="l2")

ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(
            "fgsm", "FGSM: one signed-gradient step of ε", fgsm, "linf", 8 / 255, 8 / 255, 1, random_start=False
        ),
        AttackSpec("pgd20", "PGD-20 L∞ (the paper's RA)", pgd_linf, "linf", 8 / 255, 2 / 255, 20),
        AttackSpec("pgd100", "PGD-100 L∞", pgd_linf, "linf", 8 / 255, 2 / 255, 100),
        AttackSpec(
            "pgd20_eps16", "PGD-20 L∞ at twice the radius", pgd_linf, "linf", 16 / 255, 4 / 255, 20, budget="linf_large"
        ),
        AttackSpec("pgd_l2", "PGD-20 L2", pgd_l2, "l2", 0.5, 0.1, 20, budget="l2"),
        AttackSpec("cw_linf", "CW-L∞: PGD-20 on the CW margin loss", pgd_linf, "linf", 8 / 255, 2 / 255, 20, loss="cw"),
        AttackSpec("apgd_ce", "APGD-CE (AutoAttack's first component)", _APGD, "linf", 8 / 255, 16 / 255, 100),
        AttackSpec("apgd_dlr", "APGD-DLR (AutoAttack's second)", _APGD, "linf", 8 / 255, 16 / 255, 100, loss="dlr"),
        # AutoAttack's rand version (for randomised models): APGD-CE and APGD-DLR, 100 iterations, the gradient of
        # each step averaged over 20 forward passes (EOT).
        AttackSpec(
            "apgd_ce_eot",
            "APGD-CE with EOT (20 gradient samples)",
            _APGD,
            "linf",
            8 / 255,
            16 / 255,
            100,
            eot_samples=EOT_SAMPLES,
        ),
        AttackSpec(
            "apgd_dlr_eot",
            "APGD-DLR with EOT (20 gradient samples)",
            _APGD,
            "linf",
            8 / 255,
            16 / 255,
            100,
            loss="dlr",
            eot_samples=EOT_SAMPLES,
        ),
        AttackSpec(
            "apgd_ce_eot_l2",
            "APGD-CE L2 with EOT (20 gradient samples)",
            _APGD_L2,
            "l2",
            0.5,
            1.0,
            100,
            budget="l2",
            eot_samples=EOT_SAMPLES,
        ),
        AttackSpec(
            "apgd_dlr_eot_l2",
            "APGD-DLR L2 with EOT (20 gradient samples)",
            _APGD_L2,
            "l2",
            0.5,
            1.0,
            100,
            loss="dlr",
            budget="l2",
            eot_samples=EOT_SAMPLES,
        ),
        # AutoAttack's standard version (Croce & Hein 2020): 9 targets × 100 iterations, FAB parameter-free (no
        # step size; α_max, β, η in attacks/fab.py), Square 5,000 queries with p_init 0.8.
        AttackSpec(
            "apgd_t",
            "APGD-T: targeted APGD-DLR, 9 target classes",
            apgd_targeted,
            "linf",
            8 / 255,
            16 / 255,
            100,
            loss="dlr_targeted",
            targets=9,
        ),
        AttackSpec(
            "fab_t",
            "FAB-T: targeted fast adaptive boundary, 9 target classes",
            fab_targeted,
            "linf",
            8 / 255,
            0.0,
            100,
            loss="logit_difference",
            random_start=False,
            targets=9,
        ),
        AttackSpec(
            "square",
            "Square: gradient-free random search, 5,000 queries",
            _SQUARE,
            "linf",
            8 / 255,
            0.0,
            5000,
            loss="margin",
        ),
        # L2 AutoAttack's components (the same standard version, at the --l2_epsilon radius): APGD's initial step
        # is 2ε in L2 too; FAB's α_max, η, β and Square's p_init are those of L∞.
        AttackSpec("apgd_ce_l2", "APGD-CE L2", _APGD_L2, "l2", 0.5, 1.0, 100, budget="l2"),
        AttackSpec(
            "apgd_t_l2",
            "APGD-T L2: targeted APGD-DLR, 9 target classes",
            _APGD_T_L2,
            "l2",
            0.5,
            1.0,
            100,
            loss="dlr_targeted",
            budget="l2",
            targets=9,
        ),
        AttackSpec(
            "fab_t_l2",
            "FAB-T L2: targeted fast adaptive boundary, 9 target classes",
            _FAB_T_L2,
            "l2",
            0.5,
            0.0,
            100,
            loss="logit_difference",
            random_start=False,
            budget="l2",
            targets=9,
        ),
        AttackSpec(
            "square_l2",
            "Square L2: gradient-free random search, 5,000 queries",
            _SQUARE_L2,
            "l2",
            0.5,
            0.0,
            5000,
            loss="margin",
            budget="l2",
        ),
    )
}
DEFAULT_ATTACKS = ("pgd20",)
# Accuracy under the first may not exceed accuracy under the second (more steps, larger ε, iterative vs
# one step, a stronger optimiser): if it does, the gradients are probably lying (gradient masking).
MONOTONE_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("pgd100", "pgd20", "more PGD steps gave higher accuracy"),
    ("pgd20", "fgsm", "iterative PGD-20 gave higher accuracy than one-step FGSM"),
    ("pgd20_eps16", "pgd20", "a larger ε gave higher accuracy"),
    ("apgd_ce", "pgd20", "APGD-CE gave higher accuracy than PGD-20"),
    ("autoattack", "pgd20", "AutoAttack gave higher accuracy than PGD-20"),
    ("autoattack", "apgd_ce", "AutoAttack gave higher accuracy than APGD-CE alone"),
    # Gradient-free Square has no gradient to be fooled by: when it breaks clearly more than PGD-20, the
    # gradients PGD follows are masked.
    ("pgd20", "square", "gradient-free Square gave lower accuracy than PGD-20 (masked gradients)"),
    # L2 attacks are compared only with L2 attacks (an L2 ε = 0.5 and an L∞ ε = 8/255 are different threats).
    ("apgd_ce_l2", "pgd_l2", "APGD-CE L2 gave higher accuracy than PGD-20 L2"),
    ("autoattack_l2", "pgd_l2", "L2 AutoAttack gave higher accuracy than PGD-20 L2"),
    ("autoattack_l2", "apgd_ce_l2", "L2 AutoAttack gave higher accuracy than APGD-CE L2 alone"),
    ("pgd_l2", "square_l2", "gradient-free Square L2 gave lower accuracy than PGD-20 L2 (masked gradients)"),
)
# Attacks run one after another, each only on the examples every earlier one left standing (`--attacks` also
# takes any such chain written with CHAIN, e.g. fgsm+pgd20+apgd_ce). AutoAttack's standard version (Croce & Hein,
# ICML 2020) is the chain of its four components, in L∞ or in L2.
COMPOSITES: dict[str, tuple[str, ...]] = {
    "autoattack": ("apgd_ce", "apgd_t", "fab_t", "square"),
    "autoattack_l2": ("apgd_ce_l2", "apgd_t_l2", "fab_t_l2", "square_l2"),
    # The rand version, for randomised models (the reference's version='rand').
    "autoattack_rand": ("apgd_ce_eot", "apgd_dlr_eot"),
    "autoattack_rand_l2": ("apgd_ce_eot_l2", "apgd_dlr_eot_l2"),
}
# The composite `autoattack` names under each --autoattack_version and --autoattack_norm: results carry each under
# its own key, so an L2 (or rand) AutoAttack is never read (or compared) as the standard L∞ one.
AUTOATTACK_VERSIONS = {
    "standard": {"linf": "autoattack", "l2": "autoattack_l2"},
    "rand": {"linf": "autoattack_rand", "l2": "autoattack_rand_l2"},
}
AUTOATTACK = AUTOATTACK_VERSIONS["standard"]
# Every AutoAttack composite → its version.
AUTOATTACK_NAMES = {name: version for version, names in AUTOATTACK_VERSIONS.items() for name in names.values()}
CUSTOM = "custom"  # the version of an AutoAttack run with other budgets than its version's
# Only meaningful on randomised models (20 gradients per step): left out of 'all'.
EOT_ATTACKS = tuple(name for name, spec in ATTACKS.items() if spec.eot_samples > 1)
CHAIN = "+"
# Square's two versions: their steps are model queries (what --square_queries sets).
SQUARE = ("square", "square_l2")
# The attacks that see no gradient (for the masking checks).
GRADIENT_FREE = SQUARE


def components(name: str) -> tuple[str, ...] | None:
    """The attacks a composite (`COMPOSITES` or an a+b+c chain) runs in order; None for a single attack."""
    if name in COMPOSITES:
        return COMPOSITES[name]
    if CHAIN in name:
        return tuple(part.strip() for part in name.split(CHAIN))
    return None


def autoattack_composite(version: str = "standard", norm: str = "linf") -> str:
    """The composite AutoAttack `version` ("standard" or "rand") runs in `norm` (`AUTOATTACK_VERSIONS`).

    Raises:
      UsageError: an unknown version or norm.
    """
    if version not in AUTOATTACK_VERSIONS:
        raise UsageError(f"unknown AutoAttack version {version!r}; valid: {', '.join(AUTOATTACK_VERSIONS)}")
    if norm not in AUTOATTACK:
        raise UsageError(f"unknown AutoAttack norm {norm!r}; valid: {', '.join(AUTOATTACK)}")
    return AUTOATTACK_VERSIONS[version][norm]


def autoattack_version(name: str, specs: Iterable[AttackSpec]) -> tuple[str, list[str]] | None:
    """(version, changes) of an AutoAttack composite as it ran: "standard" or "rand" when every stage ran its
    version's settings, else CUSTOM with what differs ("apgd_ce restarts 2 (standard: 1)"); None for another attack.

    ε is the threat model's, not the version's: a standard AutoAttack at 4/255 is still the standard version.
    """
    if name not in AUTOATTACK_NAMES:
        return None
    specs = list(specs)
    version, changes = AUTOATTACK_NAMES[name], []
    if tuple(s.name for s in specs) != COMPOSITES[name]:
        changes.append(f"stages {'+'.join(s.name for s in specs)} (standard: {'+'.join(COMPOSITES[name])})")
    for spec in specs:
        reference = ATTACKS.get(spec.name)
        if reference is None:
            continue
        steps = "queries" if spec.name in SQUARE else "iterations"
        for field, label in (("steps", steps), ("restarts", "restarts"), ("targets", "target classes"),
                             ("eot_samples", "EOT samples")):  # fmt: skip
            ours, theirs = getattr(spec, field), getattr(reference, field)
            if ours != theirs:
                changes.append(f"{spec.name} {label} {ours} ({version}: {theirs})")
    return (CUSTOM if changes else version), changes


def parse_attacks(
    names: Iterable[str], autoattack_norm: str = "linf", autoattack_version: str = "standard"
) -> list[str]:
    """Validates attack names ('all' = every single attack but the EOT ones, 'none' or nothing = no attack,
    composites and a+b chains kept as one name each); keeps order, drops repeats. `autoattack` becomes the
    composite of `autoattack_version` and `autoattack_norm` (`autoattack_composite`).

    Raises:
      UsageError: an unknown name (the message lists the valid ones), version or norm.
    """
    chosen = autoattack_composite(autoattack_version, autoattack_norm)
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        if name == AUTOATTACK["linf"]:
            name = chosen
        if name == "all":
            out.extend(n for n in ATTACKS if n not in out and n not in EOT_ATTACKS)
            continue
        parts = components(name)
        if parts is not None:
            missing = [p for p in parts if p not in ATTACKS]
            if missing or len(set(parts)) != len(parts) or len(parts) < 2:
                what = f"unknown attack(s) {', '.join(map(repr, missing))}" if missing else "repeats or one part"
                raise UsageError(f"composite attack {raw!r}: {what}; valid parts: {', '.join(ATTACKS)}")
            name = name if name in COMPOSITES else CHAIN.join(parts)
        elif name not in ATTACKS:
            valid = ", ".join((*ATTACKS, *COMPOSITES))
            raise UsageError(f"unknown attack {raw!r}; valid: {valid}, all, none, or a chain a{CHAIN}b{CHAIN}...")
        if name not in out:
            out.append(name)
    return out


def check_epsilon(eps: float, norm: str) -> None:
    """Raises UsageError unless 0 < ε ≤ 1 (L∞) or 0 < ε ≤ √3072 (L2), on the [0, 1] pixel scale."""
    upper = 1.0 if norm == "linf" else MAX_L2_EPS
    if not (0.0 < eps <= upper):
        raise UsageError(f"{norm} epsilon must be in (0, {upper:g}] on the [0,1] pixel scale, got {eps}")


def configure(
    names: Iterable[str],
    *,
    restarts: int = 1,
    epsilons: Mapping[str, float] | None = None,
    autoattack_norm: str = "linf",
    autoattack_version: str = "standard",
) -> list[AttackSpec]:
    """The specs for `names` with the given restarts and per-budget radii (`BUDGETS` → ε; missing: the default).

    Raises:
      UsageError: unknown attack, budget or AutoAttack norm, ε out of range, restarts < 1.
    """
    if restarts < 1:
        raise UsageError(f"--restarts must be >= 1, got {restarts}")
    epsilons = dict(epsilons or {})
    for budget, eps in epsilons.items():
        if budget not in BUDGETS:
            raise UsageError(f"unknown attack budget {budget!r}; valid: {', '.join(BUDGETS)}")
        check_epsilon(eps, "l2" if budget == "l2" else "linf")
    specs = []
    for name in parse_attacks(names, autoattack_norm, autoattack_version):
        spec = ATTACKS[name]
        specs.append(spec.with_budget(epsilons.get(spec.budget), restarts))
    return specs


# Attacks whose loss ranks the logits need enough classes: DLR reads the 3rd largest logit, its targeted form the
# 4th; AutoAttack's DLR-based attacks are asked for at least 4 classes (issues 19 and 20), so both need 4.
DLR_LOSSES = ("dlr", "dlr_targeted")
DLR_MIN_CLASSES = 4


def check_classes(spec: AttackSpec, num_classes: int, context: str = "the data") -> None:
    """UsageError unless `spec` is defined for `num_classes` classes (DLR-based attacks: at least 4)."""
    if spec.loss in DLR_LOSSES and num_classes < DLR_MIN_CLASSES:
        raise UsageError(
            f"{spec.name} uses the DLR loss, which needs at least {DLR_MIN_CLASSES} classes; {context} has "
            f"{num_classes}"
        )


def with_budgets(spec: AttackSpec, *, targets: int | None = None, square_queries: int | None = None) -> AttackSpec:
    """`spec` with the evaluate binary's --targets (a targeted attack's target classes) and --square_queries
    (Square's iterations, L∞ and L2) where they apply; None keeps the registry's."""
    if spec.name in SQUARE and square_queries is not None:
        spec = dataclasses.replace(spec, steps=int(square_queries))
    if spec.targets is not None and targets is not None:
        spec = dataclasses.replace(spec, targets=int(targets))
    return spec


def perturbation_norm(x_adv: tf.Tensor, x: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example ‖x_adv − x‖ in `norm` [N]."""
    delta = tf.convert_to_tensor(x_adv) - x
    if norm == "linf":
        return tf.reduce_max(tf.abs(delta), axis=tf.range(1, tf.rank(delta)))
    return l2_norm(delta)
