"""What a study is: a declared table of rows (one model each), the scales they run at, and the questions they answer.

A row is one model: how its backbone is pretrained (or not), how it is fine-tuned, or which other rows' fine-tuned
models it averages. Two studies: `paper` (the grid of Chen et al. 2020) and `robustssl` (the robust contrastive
methods and the paper's pretext tasks under the RobustSSL benchmark's three fine-tuning protocols). Adding a row is
one entry in a study's table; adding a study is one entry in `STUDIES`, with its own scales. Nothing here runs
anything: `plan.py` turns rows × seeds × a scale into run directories and the binaries' command lines.
"""

from __future__ import annotations

import dataclasses
import os

from advss_tf.errors import UsageError

TASKS = ("selfie", "rotation", "jigsaw")
# The robust contrastive pretraining tasks (pretrain's --task=acl / dynacl; --air adds AIR's regularisers): always
# adversarial, pretrained from flags/paper/pretrain_<task>.flags like the pretext tasks.
CONTRASTIVE_TASKS = ("acl", "dynacl")
# The RobustSSL benchmark's fine-tuning protocols as finetune flagfiles (flags/paper/finetune_<protocol>.flags;
# docs/finetune.md): protocol → (mode, adversarial, TRADES). `aff_acl` is AFF with ACL's own settings (100 epochs).
PROTOCOLS = {
    "slf": ("linear", False, False),
    "alf": ("linear", True, False),
    "aff": ("full", True, True),
    "aff_acl": ("full", True, True),
}
PROTOCOL_LABELS = {
    "slf": "SLF (frozen encoder, linear head, clean CE)",
    "alf": "ALF (frozen encoder, linear head on PGD-10)",
    "aff": "AFF (full, TRADES β=6)",
    "aff_acl": "AFF (full, TRADES β=6; ACL's 100 epochs)",
}
# The fine-tuning modes of the paper, in finetune's names: `linear` trains the head only ("partial: head only"),
# `partial` stage 4 + head ("partial: last stage + head"), `full` everything.
MODES = ("linear", "partial", "full")
MODE_LABELS = {"linear": "head only", "partial": "last stage + head", "full": "full"}
# which rows an evaluation runs AutoAttack on: every row, every row a question compares (with the members of a
# compared ensemble), the headline rows (those the questions compare by the worst case), none
AUTOATTACK_POLICIES = ("all", "compared", "headline", "none")
# The paper's unforeseen attacks (SPEC §6), as evaluate names them, and CIFAR-10-C (evaluate's --cifar10c_source):
# a row a question judges by one of them is evaluated with those of them its scale runs (`Scale.unforeseen`).
UNFORESEEN_ATTACKS = ("fgsm", "pgd100", "pgd20_eps16", "pgd_l2", "cw_linf")
CIFAR10C = "cifar10c"
UNFORESEEN = (*UNFORESEEN_ATTACKS, CIFAR10C)
UNFORESEEN_WORST = "unforeseen_worst"  # the report's metric: the lowest accuracy among the unforeseen attacks


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """A pretraining run one or more rows start from: `python -m advss_tf.pretrain --task=<task>`."""

    task: str  # selfie, rotation, jigsaw, ensemble, acl or dynacl
    adversarial: bool = True
    air: bool = False  # acl / dynacl: pretrain's --air (AIR's standard- and adversarial-invariant regularisers)
    # The ablations' knobs: a class-balanced fraction of the training split (pretrain's --train_fraction, the
    # reference's `percent`: the first `percent` of each class's images), and the input size (--image_size; 0:
    # the data's own 32×32).
    fraction: float = 1.0
    image_size: int = 0

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"pretraining {self.task}: fraction must be in (0, 1], got {self.fraction}")
        if self.air and self.task not in CONTRASTIVE_TASKS:
            raise ValueError(f"pretraining {self.task}: AIR is an option of {' and '.join(CONTRASTIVE_TASKS)} only")
        if self.task in CONTRASTIVE_TASKS and not self.adversarial:
            raise ValueError(f"pretraining {self.task}: the contrastive tasks are adversarial only")

    @property
    def name(self) -> str:
        name = f"{self.task}{'_air' if self.air else ''}_{'adv' if self.adversarial else 'std'}"
        if self.fraction < 1.0:
            name += f"_f{round(100 * self.fraction)}"
        return name + (f"_px{self.image_size}" if self.image_size else "")

    def flags(self) -> tuple[str, ...]:
        """pretrain's flags for AIR and the fraction (the size is the row's: `Row.size_flags`)."""
        return ("--air",) * self.air + ((f"--train_fraction={self.fraction:g}",) if self.fraction < 1.0 else ())


@dataclasses.dataclass(frozen=True)
class Finetuning:
    """How a row's classifier is trained by `python -m advss_tf.finetune`."""

    mode: str = "full"  # linear, partial or full
    adversarial: bool = True  # --objective=adversarial (or trades), else standard
    aux_rotation_weight: float = 0.0  # > 0: the rotation-auxiliary baseline
    trades: bool = False  # --objective=trades (TRADES, β from finetune's default) instead of PGD adversarial training
    # A RobustSSL protocol (a key of PROTOCOLS): its flagfile is the recipe, and the final model is evaluated
    protocol: str = ""
    # finetune flags of this row's recipe after its flagfile (and before the scale's), each with its source
    recipe: tuple[str, ...] = ()

    def __post_init__(self):
        if self.trades and not self.adversarial:
            raise ValueError("TRADES is an adversarial objective: give adversarial=True with trades=True")
        if self.protocol and PROTOCOLS.get(self.protocol) != (self.mode, self.adversarial, self.trades):
            raise ValueError(
                f"protocol {self.protocol!r}: give it with `Finetuning.of_protocol` (valid: {', '.join(PROTOCOLS)})"
            )

    @classmethod
    def of_protocol(cls, protocol: str, recipe: tuple[str, ...] = ()) -> Finetuning:
        """The fine-tuning of a RobustSSL protocol (`PROTOCOLS`), with the row's own recipe flags."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        mode, adversarial, trades = PROTOCOLS[protocol]
        return cls(mode, adversarial, trades=trades, protocol=protocol, recipe=recipe)

    @property
    def objective(self) -> str:
        """finetune's --objective."""
        return "trades" if self.trades else "adversarial" if self.adversarial else "standard"

    def flagfile(self, pretrained: bool) -> str:
        """The paper flagfile whose recipe the run uses (the objective and the backbone are set by the plan)."""
        if self.protocol:
            return f"finetune_{self.protocol}.flags"
        if self.aux_rotation_weight:
            return "finetune_rotation_aux.flags"
        if not pretrained:
            return "finetune_end_to_end.flags"
        return f"finetune_{self.mode}_adversarial.flags"


@dataclasses.dataclass(frozen=True)
class Row:
    """One model of the study.

    Exactly one of `finetuning` (optionally after `pretraining`) or `members` (an ensemble of other rows'
    fine-tuned classifiers, `tools/ensemble_export.py`). `paper` holds the paper's numbers for this model, in %,
    keyed by the report's metric names (`standard`, `pgd20`, `autoattack`).
    """

    id: str
    label: str
    pretraining: Pretraining | None = None
    finetuning: Finetuning | None = None
    members: tuple[str, ...] = ()
    paper: tuple[tuple[str, float], ...] = ()
    headline: bool = False  # evaluated with AutoAttack where a scale limits it to the headline rows
    image_size: int = 0  # > 0: pretrained (its pretraining's size), fine-tuned and evaluated at this input size

    def __post_init__(self):
        if (self.finetuning is None) == (not self.members):
            raise ValueError(f"row {self.id}: give a finetuning or ensemble members, not both or neither")
        if self.members and self.pretraining is not None:
            raise ValueError(f"row {self.id}: an ensemble row has no pretraining of its own")
        if self.pretraining is not None and self.pretraining.image_size != self.image_size:
            raise ValueError(f"row {self.id}: its pretraining's image_size differs from the row's")

    def size_flags(self) -> tuple[str, ...]:
        """The binaries' --image_size for this row's runs (none at the data's own size)."""
        return (f"--image_size={self.image_size}",) if self.image_size else ()

    @property
    def export(self) -> str:
        """The fine-tuned export a row is judged by: the final model for a RobustSSL protocol (the benchmark evaluates
        its final model), else best validation RA, or best SA for standard fine-tuning."""
        if self.finetuning is not None and self.finetuning.protocol:
            return "last"
        return "best_ra" if self.finetuning is None or self.finetuning.adversarial else "best_sa"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One paired difference that answers a question: `a` − `b` on `metric`, seed by seed."""

    question: str  # the study's question id: Q1 .. Q8 (paper), R1 .. R3 (robustssl)
    a: str
    b: str
    metric: str  # a metric of report.METRICS
    claim: str  # what a positive difference means, for the verdict line


@dataclasses.dataclass(frozen=True)
class Study:
    """A declared table of rows, the questions its comparisons answer, and the scales it runs at.

    `reference_label` / `reference`: whose numbers the rows' `paper` entries are (the report's columns and its
    seeds-needed lines), and `reference_robust_metric` the metric of theirs a worst-case comparison is set beside.
    """

    name: str
    description: str
    rows: tuple[Row, ...]
    questions: tuple[tuple[str, str], ...]  # (Q1, the question)
    comparisons: tuple[Comparison, ...]
    scales: dict[str, Scale] = dataclasses.field(default_factory=dict, compare=False)
    evaluate_flagfile: str = "evaluate.flags"  # every evaluation's flagfile in flags/paper (attacks set by the scale)
    reference_label: str = "paper"
    reference: str = "Chen et al. 2020, ResNet-50v2 on full CIFAR-10, PGD-20 (AutoAttack where given)"
    reference_robust_metric: str = "pgd20"
    # A compact table the report adds under its rows table, where a study crosses pretrainings with fine-tuning
    # protocols: (column labels, ((pretraining label, one row id or None per column), ...)).
    grid: tuple[tuple[str, ...], tuple[tuple[str, tuple[str | None, ...]], ...]] | None = None

    def scale(self, name: str | None) -> Scale:
        if name not in self.scales:
            raise UsageError(
                f"unknown or missing scale {name!r} for study {self.name}; valid: {', '.join(self.scales)}"
            )
        return self.scales[name]

    def compared(self) -> set[str]:
        """The rows the questions compare, with the members of compared ensemble rows."""
        ids = {c.a for c in self.comparisons} | {c.b for c in self.comparisons}
        return ids | {m for r in self.rows if r.id in ids for m in r.members}

    def unforeseen(self, row_id: str) -> set[str]:
        """The unforeseen attacks (and CIFAR-10-C) a question judges `row_id` by."""
        metrics = {c.metric for c in self.comparisons if row_id in (c.a, c.b)}
        return set(UNFORESEEN) if UNFORESEEN_WORST in metrics else metrics & set(UNFORESEEN)

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise UsageError(f"study {self.name} has no row {row_id!r}; its rows: {', '.join(r.id for r in self.rows)}")


def grid_row_id(task: str, pre_adversarial: bool, mode: str, ft_adversarial: bool) -> str:
    return f"{task}_{'adv' if pre_adversarial else 'std'}pre_{mode}_{'adv' if ft_adversarial else 'std'}ft"


# The paper's numbers we hold (README / SPEC §9: CIFAR-10, ResNet-50v2, adversarial full fine-tuning, PGD-20). The
# paper's other tables (the partial fine-tunings, standard pretraining) are not in this project's sources; they
# go here, as a row's `paper`, when someone copies them from the paper.
_PAPER_ADV_FULL = {"selfie": (86.02, 51.05), "rotation": (85.66, 50.05), "jigsaw": (83.74, 48.84)}


def _paper_rows() -> tuple[Row, ...]:
    rows = [
        Row(
            "at_e2e",
            "end-to-end adversarial training",
            finetuning=Finetuning("full", True),
            paper=(("standard", 84.72), ("pgd20", 47.22)),
            headline=True,
        ),
        Row(
            "rotation_aux",
            "one-shot rotation-auxiliary baseline",
            finetuning=Finetuning("full", True, aux_rotation_weight=0.5),
        ),
    ]
    for task in TASKS:
        for pre_adv in (False, True):
            for mode in MODES:
                for ft_adv in (False, True):
                    # The rows the questions judge by the worst case (AutoAttack where a scale limits it).
                    headline = mode == "full" and ft_adv and (pre_adv or task == "rotation")
                    paper = ()
                    if headline and pre_adv:
                        sa, ra = _PAPER_ADV_FULL[task]
                        paper = (("standard", sa), ("pgd20", ra))
                    rows.append(
                        Row(
                            grid_row_id(task, pre_adv, mode, ft_adv),
                            f"{'adversarial' if pre_adv else 'standard'} {task} → "
                            f"{'adversarial' if ft_adv else 'standard'} {MODE_LABELS[mode]} fine-tuning",
                            pretraining=Pretraining(task, pre_adv),
                            finetuning=Finetuning(mode, ft_adv),
                            paper=paper,
                            headline=headline,
                        )
                    )
    rows += [
        Row(
            "ensemble_advpre_full_advft",
            "adversarial ensemble pretraining → adversarial full fine-tuning",
            pretraining=Pretraining("ensemble", True),
            finetuning=Finetuning("full", True),
            paper=(("standard", 83.00), ("pgd20", 52.22)),
            headline=True,
        ),
        Row(
            "ensemble_of_three",
            "ensemble of the three adversarially fine-tuned models (Selfie, Rotation, Jigsaw)",
            members=tuple(grid_row_id(t, True, "full", True) for t in TASKS),
            paper=(("standard", 86.04), ("pgd20", 54.64), ("autoattack", 51.56)),
            headline=True,
        ),
    ]
    # The ablations, each a variation of adversarial Rotation pretraining → adversarial full fine-tuning (the
    # cheapest pretext task; the row Q1 judges): less pretraining data, another input size, TRADES.
    for fraction in ABLATION_FRACTIONS:
        rows.append(
            Row(
                fraction_row_id(fraction),
                f"adversarial rotation on {round(100 * fraction)} % of the training images → adversarial full "
                "fine-tuning (on all of them)",
                pretraining=Pretraining("rotation", True, fraction=fraction),
                finetuning=Finetuning("full", True),
                headline=True,
            )
        )
    rows += [
        Row(
            RESOLUTION_ROW,
            f"adversarial rotation → adversarial full fine-tuning, every image resized to {ABLATION_IMAGE_SIZE}×"
            f"{ABLATION_IMAGE_SIZE}",
            pretraining=Pretraining("rotation", True, image_size=ABLATION_IMAGE_SIZE),
            finetuning=Finetuning("full", True),
            headline=True,
            image_size=ABLATION_IMAGE_SIZE,
        ),
        Row(
            TRADES_ROW,
            "adversarial rotation → TRADES full fine-tuning",
            pretraining=Pretraining("rotation", True),
            finetuning=Finetuning("full", True, trades=True),
            headline=True,
        ),
    ]
    return tuple(rows)


# The dataset-size ablation's pretraining fractions (100 % is the Q1 row itself), the resolution ablation's second
# input size (the reference's ImageNet-32 vs -224 loaders; here CIFAR-10 resized to twice its size, which costs
# four times the compute per image), and the rows they make.
ABLATION_FRACTIONS = (0.25, 0.5)
ABLATION_IMAGE_SIZE = 64
RESOLUTION_ROW = f"rotation_advpre_full_advft_px{ABLATION_IMAGE_SIZE}"
TRADES_ROW = "rotation_advpre_full_tradesft"


def fraction_row_id(fraction: float) -> str:
    return f"rotation_advpre{round(100 * fraction)}_full_advft"


def _paper_comparisons() -> tuple[Comparison, ...]:
    full = {t: grid_row_id(t, True, "full", True) for t in TASKS}
    return (
        Comparison("Q1", full["rotation"], "at_e2e", "worst_case", "adversarial Rotation pretraining adds robustness"),
        # the paper's headline (its abstract: +3.83 % robust, +1.3 % standard accuracy) is this pair's difference
        Comparison("Q1", full["selfie"], "at_e2e", "worst_case", "adversarial Selfie pretraining adds robustness"),
        Comparison(
            "Q1",
            full["rotation"],
            grid_row_id("rotation", False, "full", True),
            "worst_case",
            "adversarial pretraining beats standard pretraining before the same adversarial fine-tuning",
        ),
        Comparison(
            "Q2",
            grid_row_id("rotation", True, "partial", False),
            grid_row_id("rotation", False, "partial", True),
            "pgd20",
            "adversarial pretraining buys more robustness than adversarial fine-tuning (last stage + head)",
        ),
        Comparison(
            "Q2", "at_e2e", full["rotation"], "epochs_to_best", "pretraining saves fine-tuning epochs to the best RA"
        ),
        Comparison("Q3", full["selfie"], full["rotation"], "worst_case", "Selfie is the better pretext task"),
        Comparison("Q3", full["rotation"], full["jigsaw"], "worst_case", "Rotation is the better pretext task"),
        Comparison("Q3", full["selfie"], full["jigsaw"], "worst_case", "Selfie is the better pretext task"),
        Comparison(
            "Q4", "ensemble_of_three", full["selfie"], "worst_case", "the ensemble beats its best single member"
        ),
        Comparison(
            "Q4",
            "ensemble_advpre_full_advft",
            full["selfie"],
            "worst_case",
            "ensemble pretraining beats the best single pretext task",
        ),
        Comparison(
            "Q2",
            grid_row_id("rotation", True, "partial", False),
            grid_row_id("rotation", False, "partial", True),
            "worst_case",
            "adversarial pretraining buys more robustness than adversarial fine-tuning (last stage + head), "
            "judged by the worst case",
        ),
        *(
            Comparison(
                "Q5",
                full["rotation"],
                "rotation_aux",
                metric,
                f"the pipeline is more robust than one-shot rotation-auxiliary training to {what}",
            )
            for metric, what in (
                *((a, f"{a} (unforeseen)") for a in UNFORESEEN_ATTACKS),
                (CIFAR10C, "common corruptions (CIFAR-10-C mean)"),
                (UNFORESEEN_WORST, "the worst of the unforeseen attacks"),
            )
        ),
        *(
            Comparison(
                "Q6",
                full["rotation"],
                fraction_row_id(f),
                "worst_case",
                f"pretraining on all the training images beats pretraining on {round(100 * f)} % of them",
            )
            for f in ABLATION_FRACTIONS
        ),
        Comparison(
            "Q7",
            RESOLUTION_ROW,
            full["rotation"],
            "worst_case",
            f"pretraining and fine-tuning at {ABLATION_IMAGE_SIZE}×{ABLATION_IMAGE_SIZE} beats 32×32",
        ),
        Comparison(
            "Q8",
            TRADES_ROW,
            full["rotation"],
            "worst_case",
            "TRADES fine-tuning beats PGD adversarial fine-tuning after the same pretraining",
        ),
    )


@dataclasses.dataclass(frozen=True)
class Scale:
    """Backbone, epochs, data and attacks of a study: the flags added after each run's paper flagfile.

    `backbone` None keeps the flagfiles' backbone. `autoattack` says which rows get AutoAttack: all, the rows a
    question compares, the headline rows, or none. `unforeseen`: which of the unforeseen attacks (and CIFAR-10-C,
    `CIFAR10C`) a row a question judges by them is evaluated with at this scale. `excluded` maps a row id (or
    `task:<task>`, `task_mode:<task>:<mode>` for groups of rows) to why the row does not run at this scale;
    `questions_only`, when given, is why a row that no question of the study compares does not run.
    `finetune_flagfile` adds flags after `finetune` to the fine-tunings of one flagfile (a protocol's schedule);
    `caveat`, when given, is a line the report puts under its title (e.g. that this is not the benchmark's scale).
    """

    name: str
    description: str
    backbone: str | None
    dataset: str
    pretrain: tuple[str, ...]
    pretrain_task: tuple[tuple[str, tuple[str, ...]], ...]
    finetune: tuple[str, ...]
    evaluate: tuple[str, ...]
    attacks: tuple[str, ...]
    autoattack: str  # one of AUTOATTACK_POLICIES
    unforeseen: tuple[str, ...] = UNFORESEEN
    excluded: tuple[tuple[str, str], ...] = ()
    questions_only: str = ""  # non-empty: only the rows the study's questions compare run, the others for this reason
    cifar10c_source: str = "generate"  # what --cifar10c means at this scale
    finetune_flagfile: tuple[tuple[str, tuple[str, ...]], ...] = ()  # flagfile name → its fine-tunings' extra flags
    caveat: str = ""

    def exclusion(self, row: Row) -> str | None:
        """Why `row` does not run at this scale, or None."""
        reasons = dict(self.excluded)
        keys = [row.id]
        if row.pretraining is not None:
            keys.append(f"task:{row.pretraining.task}")
            if row.finetuning is not None:
                keys.append(f"task_mode:{row.pretraining.task}:{row.finetuning.mode}")
        for key in keys:
            if key in reasons:
                return reasons[key]
        return None

    def exclusion_in(self, study: Study, row: Row) -> str | None:
        """Why `row` of `study` does not run at this scale, or None: `exclusion`, then `questions_only`."""
        why = self.exclusion(row)
        if why is None and self.questions_only and row.id not in study.compared():
            why = self.questions_only
        return why

    def attacks_for(self, study: Study, row: Row, autoattack: str | None = None) -> tuple[str, ...]:
        """The attacks `row` of `study` is evaluated with: the scale's, the unforeseen ones its questions judge it by
        (those this scale runs), AutoAttack by the policy (`autoattack`, one of AUTOATTACK_POLICIES, overrides the
        scale's)."""
        policy = autoattack or self.autoattack
        wanted = study.unforeseen(row.id)
        attacks = [*self.attacks, *(a for a in UNFORESEEN_ATTACKS if a in wanted and a in self.unforeseen)]
        if (
            policy == "all"
            or (policy == "compared" and row.id in study.compared())
            or (policy == "headline" and row.headline)
        ):
            attacks.append("autoattack")
        return tuple(dict.fromkeys(attacks))

    def cifar10c_for(self, study: Study, row: Row, asked: bool) -> str:
        """evaluate's --cifar10c_source for `row`: the scale's source when the study asked for CIFAR-10-C
        (`asked`) or a question judges the row by it and this scale runs it; else none."""
        if asked or (CIFAR10C in study.unforeseen(row.id) and CIFAR10C in self.unforeseen):
            return self.cifar10c_source
        return "none"

    def task_flags(self, task: str) -> tuple[str, ...]:
        return dict(self.pretrain_task).get(task, ())

    def flagfile_flags(self, flagfile: str) -> tuple[str, ...]:
        return dict(self.finetune_flagfile).get(flagfile, ())


def _gpu_scale(name: str, description: str, backbone: str | None) -> Scale:
    """flags/paper's recipes unchanged but for the backbone; every test image, AutoAttack on every row."""
    return Scale(
        name=name,
        description=description,
        backbone=backbone,
        dataset="tfds",
        pretrain=(),
        pretrain_task=(),
        finetune=(),
        evaluate=("--max_examples=0",),
        attacks=("pgd20",),
        autoattack="all",
        cifar10c_source="tfds",
    )


_SMOKE_SELFIE = ("--selfie_layers=1", "--selfie_heads=4", "--selfie_ff_dim=32")
_TINY_SELFIE = ("--selfie_layers=2", "--selfie_heads=4", "--selfie_ff_dim=256")
# What the smoke and tiny scales of every study share: the runs' lengths, and the evaluations' test images.
_SMOKE_PRETRAIN = (
    "--batch_size=8",
    "--train_steps=2",
    "--warmup_steps=0",
    "--attack_steps=1",
    "--steps_per_loop=1",
    "--checkpoint_every=1",
    "--image_summary_every=1000",
    "--deterministic",
)
_SMOKE_FINETUNE = (
    "--batch_size=8",
    "--train_steps=2",
    "--warmup_steps=0",
    "--lr_boundaries=",
    "--attack_steps=1",
    "--val_attack_steps=2",
    "--val_examples=8",
    "--val_batch_size=8",
    "--steps_per_loop=1",
    "--checkpoint_every=1",
    "--image_summary_every=1000",
    "--deterministic",
)
_SMOKE_EVALUATE = ("--max_examples=16", "--batch_size=16")
_TINY_PRETRAIN = ("--batch_size=128", "--epochs=4", "--steps_per_loop=6", "--checkpoint_every=36")
# the epoch-0 warm-up of Rotation and Jigsaw shortened with their epochs; Selfie's recipe has none
_TINY_PRETEXT = (
    ("selfie", _TINY_SELFIE),
    # the ensemble's Selfie head is the Selfie row's (Q4 compares them): not the paper's 13-layer transformer
    ("ensemble", _TINY_SELFIE),
    ("rotation", ("--warmup_steps=36",)),
    ("jigsaw", ("--warmup_steps=36",)),
)
_TINY_EVALUATE = ("--max_examples=0", "--batch_size=128")

SCALES = {
    "smoke": Scale(
        name="smoke",
        description=(
            "seconds per run, for tests: tiny backbone, 2 training steps of 8 images, validation on 8 images, "
            "PGD-20 and FGSM on 16 test images — of the unforeseen attacks Q5 judges by, FGSM only (AutoAttack, the "
            "other unforeseen attacks and CIFAR-10-C are not run at this scale: they would be most of the time)"
        ),
        backbone="tiny",
        dataset="sample",
        pretrain=_SMOKE_PRETRAIN,
        pretrain_task=(("selfie", _SMOKE_SELFIE), ("ensemble", (*_SMOKE_SELFIE, "--batch_size=4"))),
        finetune=_SMOKE_FINETUNE,
        evaluate=_SMOKE_EVALUATE,
        attacks=("pgd20", "fgsm"),
        autoattack="none",
        unforeseen=("fgsm",),
    ),
    "tiny": Scale(
        name="tiny",
        description=(
            "the tiny backbone (0.3 M parameters) on the 5k real CIFAR-10 subset (give --data_dir) on a 2-core CPU: "
            "pretraining 4 epochs, fine-tuning 6 epochs (lr ×0.1 at 4 and 5; validation PGD-10), every test image; "
            "AutoAttack on every row a question compares, the unforeseen attacks and generated CIFAR-10-C on the "
            "rows Q5 compares; only the rows the questions compare, but the resolution ablation"
        ),
        backbone="tiny",
        dataset="sample",
        pretrain=_TINY_PRETRAIN,
        # the epoch-0 warm-up of Rotation and Jigsaw shortened with their epochs; Selfie's recipe has none
        pretrain_task=_TINY_PRETEXT,
        finetune=(
            "--batch_size=128",
            "--epochs=6",
            "--lr_boundaries=4,5",
            "--warmup_steps=36",
            "--val_attack_steps=10",
            "--steps_per_loop=6",
            "--checkpoint_every=36",
        ),
        evaluate=_TINY_EVALUATE,
        attacks=("pgd20",),
        autoattack="compared",
        excluded=(
            (
                RESOLUTION_ROW,
                f"at {ABLATION_IMAGE_SIZE}×{ABLATION_IMAGE_SIZE} every run costs ~4× its 32×32 twin: ~3.2 h of the "
                "2-core Xeon's run time for 3 seeds (plan.simulate), which would take the study past ~6 h of wall "
                "time with --jobs=2 for one comparison (Q7); the other rows answer Q1-Q6 and Q8 in ~5.6 h",
            ),
        ),
        questions_only=(
            "no question compares it, and 3 seeds of every row take ~10 CPU hours at this scale: the tiny study runs "
            "the rows the questions compare"
        ),
    ),
    "resnet18": _gpu_scale(
        "resnet18", "flags/paper recipes (epochs, batch, schedules) with ResNet-18: GPU settings", "resnet18"
    ),
    "paper": _gpu_scale(
        "paper", "flags/paper as they are: ResNet-50v2, the paper's epochs, full CIFAR-10 (GPU-days per row)", None
    ),
}


PAPER = Study(
    name="paper",
    description="Chen et al. (CVPR 2020): every row of the paper's grid on CIFAR-10",
    rows=_paper_rows(),
    questions=(
        ("Q1", "Does adversarial pretraining improve robust fine-tuning?"),
        ("Q2", "Is it pretraining or fine-tuning that buys robustness, and what does pretraining save in epochs?"),
        ("Q3", "How does the pretext task matter?"),
        ("Q4", "Does an ensemble of tasks help?"),
        (
            "Q5",
            "Is adversarial pretraining + adversarial fine-tuning more robust to unforeseen attacks than one-shot "
            "adversarial training with a rotation auxiliary loss?",
        ),
        ("Q6", "Ablation, dataset size: does pretraining on more images help?"),
        ("Q7", "Ablation, input resolution: does pretraining and fine-tuning at a larger input size help?"),
        ("Q8", "Ablation, defence: TRADES or PGD adversarial fine-tuning after the same pretraining?"),
    ),
    comparisons=_paper_comparisons(),
    scales=SCALES,
)


# ---- The robustssl study: the robust contrastive methods beside the paper's pretext tasks, under the RobustSSL
# benchmark's three fine-tuning protocols (issue 33's "table nobody has").

# (id prefix, label, pretraining) of every pretraining the study fine-tunes under each protocol.
ROBUSTSSL_PRETRAININGS = (
    ("acl", "ACL", Pretraining("acl")),
    ("dynacl", "DynACL", Pretraining("dynacl")),
    ("dynacl_air", "DynACL-AIR", Pretraining("dynacl", air=True)),
    *((task, f"adversarial {task.capitalize()}", Pretraining(task)) for task in ("rotation", "jigsaw", "selfie")),
)
ROBUSTSSL_PROTOCOLS = ("slf", "alf", "aff")
# Selfie's export holds its trunk alone (no stage 4), so the frozen-encoder protocols have no pretrained stage 4 to
# freeze: finetune refuses --mode=linear on it (it would freeze a random stage 4). Those two rows are not declared.
FROZEN_ENCODER_PROTOCOLS = ("slf", "alf")
TRUNK_ONLY_PRETRAININGS = ("selfie",)


# The benchmark's published numbers for the contrastive rows, (SA, RA) in %, RA = AutoAttack standard at 8/255:
# ResNet-18 pretrained and fine-tuned on full CIFAR-10, its "Transferability from CIFAR-10 to CIFAR-10" leaderboard
# table in GodXuxilie/RobustSSL_Benchmark's README at ffa202d (2023-10-22; the leaderboard has since moved to
# robustssl.github.io), rows ACL, DynACL and DynACL-IR (AIR's DynACL, our dynacl_air), columns SLF/ALF/AFF RA and SA
# (each row's mean RA over the three protocols checks against its "Mean RA" column: 43.13, 47.09, 47.36). The
# pretext tasks and end-to-end adversarial training are not in the benchmark.
ROBUSTSSL_BENCHMARK = {
    ("acl", "slf"): (78.22, 39.17),
    ("acl", "alf"): (75.53, 40.60),
    ("acl", "aff"): (81.25, 49.62),
    ("dynacl", "slf"): (75.41, 45.09),
    ("dynacl", "alf"): (72.97, 45.67),
    ("dynacl", "aff"): (81.86, 50.52),
    ("dynacl_air", "slf"): (78.08, 45.27),
    ("dynacl_air", "alf"): (77.42, 46.14),
    ("dynacl_air", "aff"): (82.74, 50.68),
}


def robustssl_defined(pretraining: str, protocol: str) -> bool:
    """Whether the study has the row `<pretraining>_<protocol>` (not Selfie under a frozen-encoder protocol)."""
    return not (pretraining in TRUNK_ONLY_PRETRAININGS and protocol in FROZEN_ENCODER_PROTOCOLS)


def robustssl_row_id(pretraining: str, protocol: str) -> str:
    """`<pretraining>_<protocol>`, e.g. dynacl_air_slf (the id prefixes of ROBUSTSSL_PRETRAININGS)."""
    return f"{pretraining}_{protocol}"


def _robustssl_finetuning(pretraining: str, protocol: str) -> Finetuning:
    """The protocol's flagfile, with the benchmark's per-method settings for CIFAR-10 (`setup_hyperparameter`,
    Finetuning_Methods/Vanilla_Finetuning/utils.py of GodXuxilie/RobustSSL_Benchmark at 19dc714; docs/finetune.md):
    ACL's AFF trains 100 epochs (finetune_aff_acl.flags), DynACL-AIR's SLF 5. The pretext tasks have no entry
    there: they get the flagfiles as they are (DynACL's settings)."""
    if pretraining == "acl" and protocol == "aff":
        return Finetuning.of_protocol("aff_acl")
    if pretraining == "dynacl_air" and protocol == "slf":
        return Finetuning.of_protocol("slf", recipe=("--epochs=5",))  # setup_hyperparameter, 'DynACL-AIR', SLF
    return Finetuning.of_protocol(protocol)


def _robustssl_rows() -> tuple[Row, ...]:
    rows = [
        Row(
            "at_e2e",
            "end-to-end adversarial training (the reference line: the paper's recipe, finetune_end_to_end.flags)",
            finetuning=Finetuning("full", True),
            headline=True,
        )
    ]
    for prefix, label, pretraining in ROBUSTSSL_PRETRAININGS:
        for protocol in (p for p in ROBUSTSSL_PROTOCOLS if robustssl_defined(prefix, p)):
            finetuning = _robustssl_finetuning(prefix, protocol)
            benchmark = ROBUSTSSL_BENCHMARK.get((prefix, protocol))
            rows.append(
                Row(
                    robustssl_row_id(prefix, protocol),
                    f"{label} → {PROTOCOL_LABELS[finetuning.protocol]}",
                    pretraining=pretraining,
                    finetuning=finetuning,
                    paper=(("standard", benchmark[0]), ("autoattack", benchmark[1])) if benchmark else (),
                    # the rows R1 and R3 judge: DynACL-AIR, the pretext tasks (and at_e2e above)
                    headline=prefix not in ("acl", "dynacl"),
                )
            )
    return tuple(rows)


def _robustssl_grid() -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str | None, ...]], ...]]:
    """Pretraining × protocol: the row of each (None where the study has none: Selfie's frozen-encoder protocols)."""
    return tuple(p.upper() for p in ROBUSTSSL_PROTOCOLS), tuple(
        (
            label,
            tuple(robustssl_row_id(prefix, p) if robustssl_defined(prefix, p) else None for p in ROBUSTSSL_PROTOCOLS),
        )
        for prefix, label, _ in ROBUSTSSL_PRETRAININGS
    )


def _robustssl_comparisons() -> tuple[Comparison, ...]:
    row = robustssl_row_id
    name = {p: label for p, label, _ in ROBUSTSSL_PRETRAININGS}
    out = []
    for protocol in ROBUSTSSL_PROTOCOLS:
        what = protocol.upper()
        out += [
            Comparison(
                "R1",
                row("dynacl_air", protocol),
                row(task, protocol),
                "worst_case",
                f"DynACL-AIR pretraining beats {name[task]} pretraining under {what}",
            )
            for task in ("rotation", "jigsaw", "selfie")
            if robustssl_defined(task, protocol)
        ]
        out += [
            Comparison(
                "R2", row("dynacl", protocol), row("acl", protocol), "worst_case", f"DynACL beats ACL under {what}"
            ),
            Comparison(
                "R2",
                row("dynacl_air", protocol),
                row("dynacl", protocol),
                "worst_case",
                f"AIR improves DynACL under {what}",
            ),
        ]
    out += [
        Comparison(
            "R3",
            row(prefix, "aff"),
            "at_e2e",
            "worst_case",
            f"{name[prefix]} pretraining + AFF beats end-to-end adversarial training",
        )
        for prefix in ("dynacl_air", "rotation")
    ]
    return tuple(out)


_NOT_THE_BENCHMARK = (
    "**Not the RobustSSL benchmark's scale.** Small backbone, few epochs, a few thousand images: these numbers "
    "say whether every pretraining and protocol runs and how far apart seeds fall, not how the methods rank at the "
    "benchmark's scale (`--scale=benchmark`: ResNet-18 post-activation, the benchmark's epochs, full CIFAR-10)."
)

ROBUSTSSL_SCALES = {
    "smoke": Scale(
        name="smoke",
        description=(
            "seconds per run, for tests: the tiny post-activation ResNet, 2 training steps of 8 images, validation "
            "on 8 images, PGD-20 on 16 test images; no AutoAttack (for tests only: its numbers are noise)"
        ),
        backbone="tiny_post",
        dataset="sample",
        pretrain=_SMOKE_PRETRAIN,
        # no warm-up in 2 steps; DynACL's schedules change every epoch
        pretrain_task=(
            ("selfie", _SMOKE_SELFIE),
            ("acl", ("--warmup_epochs=0",)),
            ("dynacl", ("--warmup_epochs=0", "--dynacl_period=1")),
        ),
        finetune=_SMOKE_FINETUNE,
        evaluate=_SMOKE_EVALUATE,
        attacks=("pgd20",),
        autoattack="none",
        caveat=_NOT_THE_BENCHMARK,
    ),
    "tiny": Scale(
        name="tiny",
        description=(
            "the tiny post-activation ResNet (tiny_post: tiny's widths, ACL's block) for every row, on the 5k real "
            "CIFAR-10 subset (give --data_dir) on a 2-core CPU: every pretraining 4 epochs of batch 128 (ACL/DynACL: "
            "LARS lr 1.25 = 5.0 × 128/512, warm-up 1 epoch, DynACL's schedules changing every epoch), every "
            "fine-tuning 6 epochs of batch 128 (the protocols' lr decays at the same fractions of training; ACL's "
            "100-epoch AFF and DynACL-AIR's 5-epoch SLF also 6), every test image; PGD-20 and AutoAttack on every "
            "row (all are compared)"
        ),
        backbone="tiny_post",
        dataset="sample",
        pretrain=_TINY_PRETRAIN,
        pretrain_task=(
            *_TINY_PRETEXT,
            # ACL's lr 5.0 at batch 512 by the linear scaling rule (not tuned); its 10 warm-up epochs of 1000 would be
            # 1-2 steps here: one epoch, as the pretext tasks' warm-up at this scale
            ("acl", ("--learning_rate=1.25", "--warmup_epochs=1")),
            # DynACL's K = 50 of 1000 epochs: K = 1 of 4, the strength and weight schedules in 4 steps instead of 20
            ("dynacl", ("--learning_rate=1.25", "--warmup_epochs=1", "--dynacl_period=1")),
        ),
        finetune=(
            "--batch_size=128",
            "--epochs=6",
            "--val_attack_steps=10",
            "--steps_per_loop=6",
            "--checkpoint_every=36",
        ),
        # each recipe's lr decays at the epochs nearest the same fractions of its training as at the benchmark's
        # length: SLF/ALF 10,20 of 25, AFF 15,20 of 25, ACL's AFF 40,60 of 100; end-to-end as the paper study's tiny
        finetune_flagfile=(
            ("finetune_slf.flags", ("--lr_boundaries=2,5",)),
            ("finetune_alf.flags", ("--lr_boundaries=2,5",)),
            ("finetune_aff.flags", ("--lr_boundaries=4,5",)),
            ("finetune_aff_acl.flags", ("--lr_boundaries=2,4",)),
            ("finetune_end_to_end.flags", ("--lr_boundaries=4,5", "--warmup_steps=36")),
        ),
        evaluate=_TINY_EVALUATE,
        attacks=("pgd20",),
        autoattack="compared",
        caveat=_NOT_THE_BENCHMARK,
    ),
    "benchmark": _gpu_scale(
        "benchmark",
        "the RobustSSL benchmark's protocol: every row on ResNet-18 post-activation (resnet18_post), the flagfiles' "
        "epochs (ACL/DynACL 1000, the pretext tasks the paper's), full CIFAR-10, PGD-20 and AutoAttack on every "
        "row and every test image (GPU-days per pretraining)",
        "resnet18_post",
    ),
}

ROBUSTSSL = Study(
    name="robustssl",
    description=(
        "ACL, DynACL, DynACL-AIR and the paper's adversarial Rotation, Jigsaw and Selfie, each under the RobustSSL "
        "benchmark's SLF, ALF and AFF, with end-to-end adversarial training as the reference line"
    ),
    rows=_robustssl_rows(),
    questions=(
        (
            "R1",
            "Does contrastive pretraining beat the best pretext task under each protocol? (DynACL-AIR, the latest of "
            "the three, against each pretext task: it beats the best one under a protocol if it beats all three)",
        ),
        ("R2", "Does each step of the contrastive line help under each protocol: DynACL over ACL, AIR over DynACL?"),
        ("R3", "Does pretraining + adversarial full fine-tuning beat end-to-end adversarial training?"),
    ),
    comparisons=_robustssl_comparisons(),
    scales=ROBUSTSSL_SCALES,
    evaluate_flagfile="evaluate_robustssl.flags",
    reference_label="benchmark",
    reference=(
        "the RobustSSL benchmark (Xu et al.): ResNet-18 pretrained and fine-tuned on full CIFAR-10, AutoAttack "
        "standard at 8/255, its published CIFAR-10 leaderboard (catalogue.ROBUSTSSL_BENCHMARK says where from); it "
        "has the contrastive rows only, not the pretext tasks or end-to-end adversarial training"
    ),
    reference_robust_metric="autoattack",
    grid=_robustssl_grid(),
)

STUDIES = {"paper": PAPER, "robustssl": ROBUSTSSL}


def flags_dir() -> str:
    """The repository's flags/ folder (the paper's recipes every study run starts from)."""
    import advss_tf

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(advss_tf.__file__))), "flags", "paper")
    if not os.path.isdir(path):
        raise UsageError(f"{path} not found: the study needs the repository's flags/paper (a source checkout)")
    return path


def tools_dir() -> str:
    import advss_tf

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(advss_tf.__file__))), "tools")
