"""The robustssl study's declared rows, the commands its plan runs, its questions and its report, without training
anything (tests/test_study_plan.py does the same for the paper study)."""

import json
import os

import pytest

from advss_tf.errors import UsageError
from advss_tf.study import catalogue, plan, report, runner
from advss_tf.study import command as command_lib

STUDY = catalogue.STUDIES["robustssl"]
PROTOCOLS = ("slf", "alf", "aff")
PRETRAININGS = {
    "acl": catalogue.Pretraining("acl"),
    "dynacl": catalogue.Pretraining("dynacl"),
    "dynacl_air": catalogue.Pretraining("dynacl", air=True),
    **{t: catalogue.Pretraining(t) for t in ("rotation", "jigsaw", "selfie")},
}


def _runs(scale: str, seeds: int = 1, workdir: str = "/w", autoattack: str | None = None) -> dict[str, plan.Run]:
    the_scale = STUDY.scale(scale)
    chosen, excluded = plan.select_rows(STUDY, the_scale, None)
    assert not excluded  # every row runs at every scale of this study
    runs = plan.build(STUDY, the_scale, seeds, workdir, plan.Data("sample"), chosen, autoattack=autoattack)
    return {r.id: r for r in runs}


def _flag(run: plan.Run, name: str) -> list[str]:
    """The values `run` passes for --name, in order (a later one wins)."""
    return [a.split("=", 1)[1] for a in run.args if a.split("=", 1)[0] == f"--{name}"]


def test_every_pretraining_is_fine_tuned_under_every_protocol_beside_the_reference_line():
    ids = [r.id for r in STUDY.rows]
    # every pretraining under every protocol but Selfie's frozen-encoder two (its export has no stage 4 to freeze)
    assert len(ids) == len(set(ids)) == 1 + len(PRETRAININGS) * len(PROTOCOLS) - 2
    assert "selfie_aff" in ids and "selfie_slf" not in ids and "selfie_alf" not in ids
    e2e = STUDY.row("at_e2e")
    assert e2e.pretraining is None and e2e.finetuning == catalogue.Finetuning("full", True)
    assert e2e.finetuning.flagfile(pretrained=False) == "finetune_end_to_end.flags" and e2e.export == "best_ra"
    for prefix, pretraining in PRETRAININGS.items():
        for protocol in (p for p in PROTOCOLS if catalogue.robustssl_defined(prefix, p)):
            row = STUDY.row(catalogue.robustssl_row_id(prefix, protocol))
            assert row.pretraining == pretraining and row.export == "last"  # the benchmark evaluates the final model
            mode, adversarial, trades = catalogue.PROTOCOLS[protocol]
            ft = row.finetuning
            assert (ft.mode, ft.adversarial, ft.trades) == (mode, adversarial, trades)
            # ACL's AFF is the benchmark's ACL setting (100 epochs); DynACL-AIR's SLF trains 5 epochs
            expected = "aff_acl" if (prefix, protocol) == ("acl", "aff") else protocol
            assert ft.flagfile(pretrained=True) == f"finetune_{expected}.flags"
            assert ft.recipe == (("--epochs=5",) if (prefix, protocol) == ("dynacl_air", "slf") else ())
    assert catalogue.Pretraining("dynacl", air=True).name == "dynacl_air_adv"
    assert catalogue.Pretraining("dynacl", air=True).flags() == ("--air",)
    with pytest.raises(ValueError, match="AIR is an option of acl and dynacl"):
        catalogue.Pretraining("rotation", air=True)
    with pytest.raises(ValueError, match="adversarial only"):
        catalogue.Pretraining("acl", adversarial=False)
    with pytest.raises(ValueError, match="unknown protocol 'xlf'; valid: slf, alf, aff"):
        catalogue.Finetuning.of_protocol("xlf")
    with pytest.raises(ValueError, match="protocol 'slf'"):
        catalogue.Finetuning("full", True, protocol="slf")  # SLF is a linear head on clean images


def test_the_questions_compare_declared_rows_paired_under_each_protocol():
    questions = dict(STUDY.questions)
    assert set(questions) == {c.question for c in STUDY.comparisons} == {"R1", "R2", "R3"}
    for c in STUDY.comparisons:
        STUDY.row(c.a), STUDY.row(c.b)
        assert c.metric in report.METRICS and c.claim
    # R1: DynACL-AIR against each pretext task under the same protocol (beating the best = beating all three)
    r1 = {(c.a, c.b) for c in STUDY.comparisons if c.question == "R1"}
    row = catalogue.robustssl_row_id
    pairs = {(p, t) for p in PROTOCOLS for t in ("rotation", "jigsaw", "selfie")} - {
        ("slf", "selfie"),
        ("alf", "selfie"),
    }
    assert r1 == {(row("dynacl_air", p), row(t, p)) for p, t in pairs}
    r2 = {(c.a, c.b) for c in STUDY.comparisons if c.question == "R2"}
    assert r2 == {(row("dynacl", p), row("acl", p)) for p in PROTOCOLS} | {
        (row("dynacl_air", p), row("dynacl", p)) for p in PROTOCOLS
    }
    assert {(c.a, c.b) for c in STUDY.comparisons if c.question == "R3"} == {
        (row("dynacl_air", "aff"), "at_e2e"),
        (row("rotation", "aff"), "at_e2e"),
    }
    # every comparison pairs two rows fine-tuned under the same protocol, or one with the reference line
    for c in STUDY.comparisons:
        a, b = STUDY.row(c.a).finetuning, STUDY.row(c.b).finetuning
        assert c.b == "at_e2e" or catalogue.PROTOCOLS[a.protocol] == catalogue.PROTOCOLS[b.protocol], c
    assert STUDY.compared() == set(r.id for r in STUDY.rows)  # no row is left without a question


def test_the_tiny_plan_pretrains_once_per_seed_and_fine_tunes_each_protocol_from_that_export():
    runs = _runs("tiny", seeds=2)
    flagfiles = catalogue.flags_dir()
    for seed in (0, 1):
        pretrainings = {r.id for r in runs.values() if r.kind == "pretrain" and r.seed == seed}
        assert pretrainings == {f"seed{seed}/pretrain/{p.name}" for p in PRETRAININGS.values()}
    acl, dynacl, air = (runs[f"seed0/pretrain/{n}"] for n in ("acl_adv", "dynacl_adv", "dynacl_air_adv"))
    assert _flag(acl, "flagfile") == [os.path.join(flagfiles, "pretrain_acl.flags")]
    assert _flag(dynacl, "flagfile") == _flag(air, "flagfile") == [os.path.join(flagfiles, "pretrain_dynacl.flags")]
    assert "--air" in air.args and "--air" not in dynacl.args and "--air" not in acl.args
    assert _flag(dynacl, "dynacl_period") == ["1"] and _flag(acl, "learning_rate") == ["1.25"]
    rotation = runs["seed0/pretrain/rotation_adv"]
    assert _flag(rotation, "flagfile") == [os.path.join(flagfiles, "pretrain_rotation.flags")]
    # one backbone for every row: the tiny post-activation ResNet; the scale's lengths after each recipe
    for r in (acl, dynacl, air, rotation, runs["seed0/pretrain/selfie_adv"], runs["seed0/finetune/at_e2e"]):
        assert _flag(r, "backbone") == ["tiny_post"] and "--seed=0" in r.args, r.id
    for r in (acl, rotation):
        assert _flag(r, "epochs") == ["4"] and _flag(r, "batch_size") == ["128"]
    boundaries = {"slf": "2,5", "alf": "2,5", "aff": "4,5"}
    objectives = {"slf": "standard", "alf": "adversarial", "aff": "trades"}
    for prefix, pretraining in PRETRAININGS.items():
        for protocol in (p for p in PROTOCOLS if catalogue.robustssl_defined(prefix, p)):
            row = catalogue.robustssl_row_id(prefix, protocol)
            ft = runs[f"seed1/finetune/{row}"]
            assert ft.deps == (f"seed1/pretrain/{pretraining.name}",)
            assert _flag(ft, "pretrained") == [f"/w/runs/seed1/pretrain/{pretraining.name}/export/pretrain"]
            assert _flag(ft, "objective") == [objectives[protocol]] and "--backbone" not in " ".join(ft.args)
            assert _flag(ft, "epochs") == ["6"]  # the scale's length, once (DynACL-AIR's SLF recipe included)
            acl_aff = (prefix, protocol) == ("acl", "aff")
            assert _flag(ft, "lr_boundaries") == ["2,4" if acl_aff else boundaries[protocol]]
            assert _flag(ft, "flagfile") == [
                os.path.join(flagfiles, "finetune_aff_acl.flags" if acl_aff else f"finetune_{protocol}.flags")
            ]
            ev = runs[f"seed1/evaluate/{row}"]
            assert ev.deps == (ft.id,) and _flag(ev, "model") == [f"/w/runs/seed1/finetune/{row}/export/last"]
            assert _flag(ev, "flagfile") == [os.path.join(flagfiles, "evaluate_robustssl.flags")]
            assert _flag(ev, "attacks") == ["pgd20,autoattack"]  # every row is compared: AutoAttack on each
    e2e = runs["seed0/finetune/at_e2e"]
    assert e2e.deps == () and _flag(e2e, "flagfile") == [os.path.join(flagfiles, "finetune_end_to_end.flags")]
    assert _flag(runs["seed0/evaluate/at_e2e"], "model") == ["/w/runs/seed0/finetune/at_e2e/export/best_ra"]
    named = {os.path.basename(f) for r in runs.values() for f in _flag(r, "flagfile")}
    assert not [f for f in named if not os.path.exists(os.path.join(flagfiles, f))]
    # Run.weight: contrastive pretraining costed above a pretext task's, AIR above DynACL (estimates, plan.py)
    assert rotation.weight < acl.weight < dynacl.weight < air.weight
    # 3 seeds fit about six hours of the 2-core machine's wall time with --jobs=2; headline AutoAttack saves some
    full = list(_runs("tiny", seeds=3).values())
    assert len(full) == 3 * (6 + 17 + 17) and plan.simulate(full, 2) <= 6 * 3600 < sum(r.weight for r in full)
    assert plan.simulate(list(_runs("tiny", seeds=3, autoattack="headline").values()), 2) < plan.simulate(full, 2)


def test_the_benchmark_scale_runs_the_flagfiles_as_they_are_on_resnet18_post():
    runs = _runs("benchmark")
    for r in runs.values():
        if r.kind == "pretrain" or r.id == "seed0/finetune/at_e2e":
            assert _flag(r, "backbone") == ["resnet18_post"], r.id
        if r.kind == "finetune":  # the flagfile's lengths and schedule; only DynACL-AIR's SLF has its own epochs
            assert _flag(r, "batch_size") == _flag(r, "lr_boundaries") == [], r.id
            assert _flag(r, "epochs") == (["5"] if r.row == "dynacl_air_slf" else []), r.id
        if r.kind == "evaluate":
            assert _flag(r, "attacks") == ["pgd20,autoattack"] and _flag(r, "max_examples") == ["0"]
    assert "--air" in runs["seed0/pretrain/dynacl_air_adv"].args


def test_a_study_has_its_own_scales_and_the_dry_run_lists_every_run(tmp_path):
    said = []
    status = command_lib.run_study(
        str(tmp_path / "s"), "tiny", study="robustssl", seeds=3, dry_run=True, say=said.append
    )
    assert status == 0 and not (tmp_path / "s").exists()  # a dry run writes nothing
    listed = [line.split()[0] for line in said[:-1]]
    assert listed == [r.id for r in plan.order(list(_runs("tiny", seeds=3, workdir=str(tmp_path / "s")).values()))]
    assert all("[to run]" in line and "-m advss_tf." in line for line in said[:-1])
    assert said[-1].startswith("study: 120 of 120 runs to run: expected ")
    with pytest.raises(UsageError, match="unknown or missing scale 'resnet18' for study robustssl; valid: smoke"):
        command_lib.run_study(str(tmp_path / "s"), "resnet18", study="robustssl", dry_run=True)
    with pytest.raises(UsageError, match="for study paper; valid: smoke, tiny, resnet18, paper"):
        command_lib.run_study(str(tmp_path / "s"), "benchmark", study="paper", dry_run=True)


def test_the_benchmark_scale_is_one_slurm_command_away(tmp_path):
    said = []
    workdir = tmp_path / "study"
    status = command_lib.run_study(str(workdir), "benchmark", study="robustssl", seeds=2, emit="slurm", say=said.append)
    assert status == 0 and json.loads((workdir / runner.STUDY_FILE).read_text())["study"] == "robustssl"
    levels = sorted(os.listdir(workdir / "slurm"))
    assert levels == ["level0.sbatch", "level1.sbatch", "level2.sbatch", "submit.sh"]
    level0 = (workdir / "slurm" / "level0.sbatch").read_text()
    assert "--study=robustssl --scale=benchmark --seeds=2" in level0 and "--dataset=tfds" in level0
    assert "seed1/pretrain/dynacl_air_adv" in level0 and "seed0/finetune/at_e2e" in level0
    assert "seed0/evaluate/acl_slf" in (workdir / "slurm" / "level2.sbatch").read_text()


def _evaluation(sa: float, pgd20: float, aa: float) -> dict:
    return {
        "standard_accuracy": sa,
        "robust_accuracy": {"pgd20": {"accuracy": pgd20}, "autoattack": {"accuracy": aa}},
        "worst_case": {"accuracy": min(pgd20, aa), "threat_model": "Linf 8/255"},
        "cifar10c": None,
        "num_examples": 100,
    }


def test_the_report_answers_r1_per_seed_and_labels_the_tiny_scale_as_not_the_benchmarks(tmp_path):
    """Known worst-case accuracies of DynACL-AIR and Rotation under SLF over three seeds: R1's paired differences,
    interval, verdict and seeds-needed line; the report says this is not the benchmark's scale."""
    air, rot = "dynacl_air_slf", "rotation_slf"
    known = {air: (0.30, 0.33, 0.31), rot: (0.25, 0.27, 0.28)}
    ident = {"study": "robustssl", "scale": "tiny", "seeds": 3, "data": {"dataset": "sample"}}
    runner.prepare(str(tmp_path), ident, overwrite=False)
    for row, per_seed in known.items():
        for seed, worst in enumerate(per_seed):
            path = tmp_path / "runs" / f"seed{seed}" / "evaluate" / row / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_evaluation(0.7, worst + 0.02, worst)))
    out = command_lib.write_report(str(tmp_path), say=lambda _: None)
    r1 = next(
        c for q in out["questions"] if q["id"] == "R1" for c in q["comparisons"] if (c["a"], c["b"]) == (air, rot)
    )
    assert r1["per_seed"] == {"0": pytest.approx(5.0), "1": pytest.approx(6.0), "2": pytest.approx(3.0)}
    assert "supports the claim" in r1["verdict"] and r1["seeds_needed"]["observed"] is not None
    assert r1["seeds_needed"]["paper_metric"] == "autoattack"  # the benchmark's robust metric
    other = next(c for q in out["questions"] if q["id"] == "R2" for c in q["comparisons"])
    assert other["verdict"].startswith("not available") and other["interval"] is None
    assert set(out["not_run_yet"]) == {r.id for r in STUDY.rows} - {air, rot}
    md = (tmp_path / report.REPORT / report.MARKDOWN).read_text()
    title, caveat = md.splitlines()[0], md.splitlines()[2]
    assert title == "# Study `robustssl` at scale `tiny` (3 seeds)"
    assert caveat.startswith("**Not the RobustSSL benchmark's scale.**")
    assert "| benchmark SA | benchmark AutoAttack |" in md and "evaluated as its final model" in md
    table = {
        line.split("(`")[1].split("`)")[0]: line for line in md.splitlines() if line.startswith("| ") and "(`" in line
    }
    assert table[air].endswith("| 78.08 | 45.27 |") and table[rot].endswith("| – | – |")  # not in the benchmark
    # the pretraining × protocol grid: worst case / SA over the 3 seeds, the benchmark's AA / SA where it has the row
    grid = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in md.splitlines() if line.startswith("| ")}
    assert grid["pretraining"] == ["SLF", "ALF", "AFF |"]
    assert grid["DynACL-AIR"][0] == "31.33 ± 3.79 / 70.00 ± 0.00 (45.27 / 78.08)"  # 30, 33, 31: sd 1.53, t 4.30
    assert grid["adversarial Rotation"][0] == "26.67 ± 3.79 / 70.00 ± 0.00"
    assert grid["DynACL-AIR"][1] == "not run yet (46.14 / 77.42)" and grid["adversarial Selfie"][0] == "(not a row)"
    assert "Outside the grid: `at_e2e` not run yet." in md
    assert "Unforeseen attacks" not in md and "paper" not in md.split("## The questions")[1].split("## Rows")[0]
    assert "**R1. Does contrastive pretraining beat the best pretext task under each protocol?" in md
    at_benchmark = report.markdown({**out, "identity": {**ident, "scale": "benchmark"}}, "GPU", None, STUDY)
    assert "Not the RobustSSL" not in at_benchmark and "| benchmark SA |" in at_benchmark


def test_the_benchmarks_numbers_are_its_tables_and_only_the_contrastive_rows_have_them():
    """catalogue.ROBUSTSSL_BENCHMARK against the published table's own "Mean SA" and "Mean RA" columns (the means of
    each method's SLF, ALF and AFF cells: a mistyped cell shows), and on the rows: SA and AutoAttack, nothing else."""
    published_means = {"acl": (78.33, 43.13), "dynacl": (76.75, 47.09), "dynacl_air": (79.41, 47.36)}  # SA, RA
    for method, means in published_means.items():
        cells = [catalogue.ROBUSTSSL_BENCHMARK[(method, p)] for p in catalogue.ROBUSTSSL_PROTOCOLS]
        assert [sum(c[i] for c in cells) / 3 for i in (0, 1)] == pytest.approx(means, abs=0.005), method
    for row in STUDY.rows:
        method = row.id.rsplit("_", 1)[0]
        if method in published_means:
            assert dict(row.paper).keys() == {"standard", "autoattack"}, row.id
        else:
            assert row.paper == (), row.id
