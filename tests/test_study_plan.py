"""The study's declared rows, its plan of runs, the study folder's identity, SLURM emission and the report, without
training anything (the end-to-end study is tests/test_study_e2e.py)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
from binaries import run_binary

from advss_tf.errors import UsageError
from advss_tf.study import catalogue, plan, report, runner
from advss_tf.study import command as command_lib

PAPER = catalogue.STUDIES["paper"]


def _plan(scale="smoke", rows=None, seeds=2, workdir="/w"):
    chosen, excluded = plan.select_rows(PAPER, catalogue.SCALES[scale], rows)
    return plan.build(PAPER, catalogue.SCALES[scale], seeds, workdir, plan.Data("sample"), chosen), excluded


def test_the_paper_study_has_the_papers_rows():
    ids = [r.id for r in PAPER.rows]
    assert len(ids) == len(set(ids)) == 2 + 3 * 2 * 3 * 2 + 2 + len(catalogue.ABLATION_FRACTIONS) + 2
    assert {"at_e2e", "rotation_aux", "ensemble_advpre_full_advft", "ensemble_of_three"} <= set(ids)
    for task in catalogue.TASKS:
        for pre in (False, True):
            for mode in ("linear", "partial", "full"):
                for ft in (False, True):
                    row = PAPER.row(catalogue.grid_row_id(task, pre, mode, ft))
                    assert row.pretraining == catalogue.Pretraining(task, pre)
                    assert row.finetuning.mode == mode and row.finetuning.adversarial == ft
                    assert row.export == ("best_ra" if ft else "best_sa")
    assert PAPER.row("ensemble_of_three").members == tuple(f"{t}_advpre_full_advft" for t in catalogue.TASKS)
    assert PAPER.row("rotation_aux").finetuning.aux_rotation_weight == 0.5
    assert dict(PAPER.row("ensemble_of_three").paper) == {"standard": 86.04, "pgd20": 54.64, "autoattack": 51.56}
    for c in PAPER.comparisons:  # every question's rows exist and its metric is a report metric
        PAPER.row(c.a), PAPER.row(c.b)
        assert c.metric in report.METRICS and c.question in dict(PAPER.questions)
    with pytest.raises(UsageError, match="no row 'nope'; its rows: at_e2e, rotation_aux"):
        PAPER.row("nope")
    # the ablations: each varies adversarial Rotation → adversarial full fine-tuning in one thing, and a question
    # compares it with that row
    base = PAPER.row("rotation_advpre_full_advft")
    varied = {
        catalogue.fraction_row_id(0.25): catalogue.Pretraining("rotation", True, fraction=0.25),
        catalogue.fraction_row_id(0.5): catalogue.Pretraining("rotation", True, fraction=0.5),
        catalogue.RESOLUTION_ROW: catalogue.Pretraining("rotation", True, image_size=catalogue.ABLATION_IMAGE_SIZE),
        catalogue.TRADES_ROW: base.pretraining,
    }
    for row_id, pretraining in varied.items():
        row = PAPER.row(row_id)
        assert row.pretraining == pretraining
        assert row.finetuning == (
            catalogue.Finetuning("full", True, trades=True) if row_id == catalogue.TRADES_ROW else base.finetuning
        )
        assert {(c.a, c.b) for c in PAPER.comparisons if row_id in (c.a, c.b)} <= {(row_id, base.id), (base.id, row_id)}
        assert any(row_id in (c.a, c.b) for c in PAPER.comparisons)
    assert PAPER.row(catalogue.RESOLUTION_ROW).image_size == catalogue.ABLATION_IMAGE_SIZE
    # Q5: the pipeline against the one-shot baseline under each unforeseen attack and their worst
    q5 = [c for c in PAPER.comparisons if c.question == "Q5"]
    assert {(c.a, c.b) for c in q5} == {(base.id, "rotation_aux")}
    assert [c.metric for c in q5] == [*catalogue.UNFORESEEN, catalogue.UNFORESEEN_WORST]
    with pytest.raises(ValueError, match="fraction"):
        catalogue.Pretraining("rotation", fraction=0.0)
    with pytest.raises(ValueError, match="TRADES"):
        catalogue.Finetuning("full", adversarial=False, trades=True)


def test_the_plan_runs_pretraining_before_its_fine_tunings_and_evaluates_the_right_export():
    runs, _ = _plan(rows=["rotation_advpre_partial_stdft", "at_e2e", "ensemble_of_three"])
    position = {r.id: i for i, r in enumerate(runs)}
    for r in runs:
        assert all(position[d] < position[r.id] for d in r.deps), r.id
    by_id = {r.id: r for r in runs}
    ft = by_id["seed1/finetune/rotation_advpre_partial_stdft"]
    assert ft.deps == ("seed1/pretrain/rotation_adv",)
    assert "--pretrained=/w/runs/seed1/pretrain/rotation_adv/export/pretrain" in ft.args
    assert "--objective=standard" in ft.args and "--seed=1" in ft.args
    assert any(a.endswith("finetune_partial_adversarial.flags") for a in ft.args)  # the mode comes from the recipe
    ev = by_id["seed1/evaluate/rotation_advpre_partial_stdft"]
    assert "--model=/w/runs/seed1/finetune/rotation_advpre_partial_stdft/export/best_sa" in ev.args
    e2e = by_id["seed0/finetune/at_e2e"]
    assert e2e.deps == () and "--backbone=tiny" in e2e.args
    assert any(a.endswith("finetune_end_to_end.flags") for a in e2e.args)
    # the ensemble row brings its three members and waits for their fine-tunings
    ens = by_id["seed0/ensemble/ensemble_of_three"]
    assert set(ens.deps) == {f"seed0/finetune/{t}_advpre_full_advft" for t in catalogue.TASKS}
    assert ens.command()[1].endswith(os.path.join("tools", "ensemble_export.py"))
    assert by_id["seed0/evaluate/ensemble_of_three"].deps == ("seed0/ensemble/ensemble_of_three",)
    # the three members' pretrainings, per seed: rotation_adv is shared with the Rotation row, not run twice
    assert sorted(r.id for r in runs if r.kind == "pretrain" and r.seed == 0) == [
        f"seed0/pretrain/{t}_adv" for t in ("jigsaw", "rotation", "selfie")
    ]
    levels = plan.levels(runs)
    assert [r.kind for r in levels[0]] == ["pretrain"] * 6 + ["finetune"] * 2
    assert {r.kind for r in levels[-1]} == {"evaluate"}


@pytest.mark.parametrize("scale", sorted(catalogue.SCALES))
def test_the_ensembles_selfie_head_is_the_selfie_rows_at_every_scale(scale):
    """Q4 compares ensemble pretraining with the single tasks: at every scale the ensemble's Selfie transformer has
    the Selfie pretraining's settings (the tiny scale once trained the paper's 13-layer one inside the ensemble)."""
    runs = plan.build(PAPER, catalogue.SCALES[scale], 1, "/w", plan.Data("sample"), list(PAPER.rows))
    pretrainings = {r.id.split("/")[-1]: r for r in runs if r.kind == "pretrain"}

    def selfie_settings(run):
        flags = {}
        for a in run.args:  # the flagfile's values, then the command line's (the binary's order)
            if a.startswith("--flagfile="):
                with open(a.split("=", 1)[1], encoding="utf-8") as f:
                    lines = [ln.strip() for ln in f if ln.startswith("--selfie_")]
                flags.update(ln.split("=", 1) for ln in lines)
            elif a.startswith("--selfie_"):
                flags.update([a.split("=", 1)])
        return {k: v for k, v in flags.items() if k != "--selfie_dropout"}

    assert selfie_settings(pretrainings["selfie_adv"]) == selfie_settings(pretrainings["ensemble_adv"])


def test_scales_set_the_attacks_and_tiny_says_which_rows_it_leaves_out_and_why():
    runs, excluded = _plan(scale="tiny", seeds=1)
    reasons = {r.id: why for r, why in excluded}
    assert set(reasons) & PAPER.compared() == {catalogue.RESOLUTION_ROW}  # too costly, with the reason
    assert "4×" in reasons[catalogue.RESOLUTION_ROW] and "Q7" in reasons[catalogue.RESOLUTION_ROW]
    # tiny runs only what the questions compare: a row no comparison names is left out, with the reason
    tiny = catalogue.SCALES["tiny"]
    assert reasons["selfie_advpre_linear_advft"] == tiny.questions_only
    assert {r.row for r in runs if r.kind == "evaluate"} == PAPER.compared() - {catalogue.RESOLUTION_ROW}
    assert not any(r.row in reasons for r in runs)
    attacks = {r.row: next(a for a in r.args if a.startswith("--attacks=")) for r in runs if r.kind == "evaluate"}
    c10c = {r.row: next(a for a in r.args if a.startswith("--cifar10c_source=")) for r in runs if r.kind == "evaluate"}
    # AutoAttack on every compared row (the Q2 pair too); the unforeseen attacks and CIFAR-10-C on Q5's two rows
    unforeseen = "fgsm,pgd100,pgd20_eps16,pgd_l2,cw_linf"
    assert attacks["at_e2e"] == attacks["rotation_advpre_partial_stdft"] == "--attacks=pgd20,autoattack"
    assert (
        attacks["rotation_aux"] == attacks["rotation_advpre_full_advft"] == f"--attacks=pgd20,{unforeseen},autoattack"
    )
    assert c10c["rotation_aux"] == "--cifar10c_source=generate" and c10c["at_e2e"] == "--cifar10c_source=none"
    by_id = {r.id: r for r in runs}
    # the ablations' flags: the data fraction on the pretraining only, TRADES as the fine-tuning objective
    pre25 = by_id["seed0/pretrain/rotation_adv_f25"]
    assert "--train_fraction=0.25" in pre25.args and "--adversarial" in pre25.args
    ft25 = by_id[f"seed0/finetune/{catalogue.fraction_row_id(0.25)}"]
    assert ft25.deps == (pre25.id,) and not any(a.startswith("--train_fraction") for a in ft25.args)
    assert "--objective=trades" in by_id[f"seed0/finetune/{catalogue.TRADES_ROW}"].args
    assert by_id[f"seed0/finetune/{catalogue.TRADES_ROW}"].deps == ("seed0/pretrain/rotation_adv",)
    assert "seed0/pretrain/ensemble_adv" in by_id  # Q4's ensemble pretraining runs at tiny now
    # Run.weight: the measured tiny-scale seconds (docs/study.md) — AutoAttack's ×the ensemble's members
    weight = {r.row: r.weight for r in runs if r.kind == "evaluate"}
    assert weight["ensemble_of_three"] == 3 * weight["at_e2e"] == 3 * (plan.EVALUATE_SECONDS + plan.AUTOATTACK_WEIGHT)
    assert weight["rotation_aux"] > weight["at_e2e"]  # the unforeseen attacks and CIFAR-10-C on top
    assert pre25.weight == round(plan.PRETRAIN_SECONDS[True] / 4)
    # the whole tiny study fits the issue's ~6 hours of wall time on the 2-core machine with --jobs=2
    full, _ = _plan(scale="tiny", seeds=3)
    assert plan.simulate(full, 2) <= 6 * 3600 < sum(r.weight for r in full)
    # the runner's choice among ready runs: the longest weighted path to the end of the study first
    key = plan.critical_path(runs)
    first = sorted(range(len(runs)), key=lambda i: key(runs[i], i))
    # first the ensemble's pretraining (the heaviest run), then a member's pretraining: its path runs through the
    # ensemble of three's AutoAttack (3 models)
    ensemble = plan.PRETRAIN_SECONDS[True] * plan.ENSEMBLE_PRETRAIN_FACTOR + plan.FINETUNE_SECONDS["adversarial"]
    assert runs[first[0]].id == "seed0/pretrain/ensemble_adv"
    assert plan.bottom_levels(runs)[runs[first[0]].id] == ensemble + weight["ensemble_advpre_full_advft"]
    assert runs[first[1]].id in {f"seed0/pretrain/{t}_adv" for t in catalogue.TASKS}
    member = plan.PRETRAIN_SECONDS[True] + plan.FINETUNE_SECONDS["adversarial"] + plan.EXPORT_SECONDS
    assert plan.bottom_levels(runs)[runs[first[1]].id] == member + weight["ensemble_of_three"]
    assert runs[first[-1]].kind == "evaluate"
    smoke, _ = _plan(rows=["at_e2e", "rotation_aux"])
    assert all("autoattack" not in a for r in smoke for a in r.args)
    smoke_attacks = {
        r.row: next(a for a in r.args if a.startswith("--attacks=")) for r in smoke if r.kind == "evaluate"
    }
    assert smoke_attacks == {"at_e2e": "--attacks=pgd20,fgsm", "rotation_aux": "--attacks=pgd20,fgsm"}
    with pytest.raises(UsageError, match="no row of --rows runs at --scale=tiny"):
        plan.select_rows(PAPER, catalogue.SCALES["tiny"], [catalogue.RESOLUTION_ROW])


def test_the_critical_path_priority_ends_a_study_sooner_than_finishing_what_started_first():
    """Two cores; a long chain (pretraining → fine-tuning → evaluation) beside short evaluations that are ready at
    once: the old rule (furthest down the pipeline, then heaviest) runs the short ones first and leaves the chain
    alone on one core at the end; the critical path starts the chain at once."""
    chain = [
        plan.Run("p", "pretrain", 0, None, (), (), weight=100),
        plan.Run("f", "finetune", 0, "f", (), ("p",), weight=100),
        plan.Run("e", "evaluate", 0, "f", (), ("f",), weight=20),
    ]
    short = [plan.Run(f"e{i}", "evaluate", 0, f"r{i}", (), (), weight=30) for i in range(4)]
    runs = chain + short

    def old_rule(run, position):  # the runner's rule before issue 34
        return (-plan.KINDS.index(run.kind), -run.weight, position)

    assert plan.bottom_levels(runs) == {"p": 220, "f": 120, "e": 20, **{f"e{i}": 30 for i in range(4)}}
    # old: e0+e1, e2+e3 side by side (60), then p, f, e alone (220): 280; critical path: p, f, e on one core while
    # the other runs the four short ones: 220, the chain's own length (the lower bound)
    assert plan.simulate(runs, 2, old_rule) == 280
    assert plan.simulate(runs, 2) == 220 == plan.bottom_levels(runs)["p"]
    assert plan.simulate(runs, 1) == sum(r.weight for r in runs)  # one core: the sum, whatever the order
    with pytest.raises(ValueError, match="cycle"):
        plan.simulate(
            [plan.Run("a", "finetune", 0, None, (), ("b",)), plan.Run("b", "finetune", 0, None, (), ("a",))], 1
        )


def test_a_foreign_study_folder_is_refused_and_overwrite_replaces_only_the_study(tmp_path):
    ident = {"study": "paper", "scale": "smoke", "seeds": 2}
    runner.prepare(str(tmp_path), ident, overwrite=False)
    runner.prepare(str(tmp_path), ident, overwrite=False)  # the same study re-opens
    (tmp_path / "runs").mkdir()
    (tmp_path / "mine.txt").write_text("keep")
    (tmp_path / "runs" / "seed0").mkdir()
    # More (or fewer) seeds is the same study: it re-opens with its runs, and study.json says the new count.
    runner.prepare(str(tmp_path), {**ident, "seeds": 3}, overwrite=False)
    assert json.loads((tmp_path / "study.json").read_text())["seeds"] == 3 and (tmp_path / "runs" / "seed0").is_dir()
    with pytest.raises(UsageError, match="holds another study .*scale: 'smoke' here, 'tiny' asked"):
        runner.prepare(str(tmp_path), {**ident, "scale": "tiny"}, overwrite=False)
    runner.prepare(str(tmp_path), {**ident, "scale": "tiny"}, overwrite=True)
    assert json.loads((tmp_path / "study.json").read_text())["scale"] == "tiny"
    assert not (tmp_path / "runs").exists() and (tmp_path / "mine.txt").read_text() == "keep"


def test_the_cli_refuses_another_studys_folder_with_one_line_and_exit_2(tmp_path):
    runner.prepare(str(tmp_path), {"study": "paper", "scale": "tiny", "seeds": 3}, overwrite=False)
    before = sorted(os.listdir(tmp_path))
    proc = run_binary("advss_tf.study", "--scale=smoke", "--seeds=2", f"--workdir={tmp_path}", timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "holds another study" in lines[0] and "--overwrite" in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
    proc = run_binary("advss_tf.study", "keep", f"--workdir={tmp_path}", timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == ["error: keep needs --to (the folder the results go to)"], proc.stderr


def test_slurm_emission_is_one_array_per_dependency_level_chained_with_afterok(tmp_path):
    runs, _ = _plan(rows=["rotation_advpre_full_advft"], workdir=str(tmp_path / "study"))
    said = []
    base = ["python", "-m", "advss_tf.study", "--scale=smoke"]
    submit = runner.emit_slurm(str(tmp_path / "study"), runs, base, ["-p gpu"], said.append)
    level0 = (tmp_path / "study" / "slurm" / "level0.sbatch").read_text()
    assert "#SBATCH --array=0-1" in level0 and "#SBATCH -p gpu" in level0
    assert "RUNS=(seed0/pretrain/rotation_adv seed1/pretrain/rotation_adv)" in level0
    assert 'exec python -m advss_tf.study --scale=smoke --only="${RUNS[$SLURM_ARRAY_TASK_ID]}"' in level0
    # submit.sh with a stand-in sbatch that records its arguments and answers job ids 101, 102, ...
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\necho $((100 + $(wc -l < {calls})))\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", submit], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "--parsable level0.sbatch",
        "--parsable --dependency=afterok:101 level1.sbatch",
        "--parsable --dependency=afterok:102 level2.sbatch",
    ]
    assert "seed1/evaluate/rotation_advpre_full_advft" in (tmp_path / "study" / "slurm" / "level2.sbatch").read_text()
    assert said and "submit" in said[0]


def _evaluation(sa, pgd20, aa=None):
    robust = {"pgd20": {"accuracy": pgd20}}
    if aa is not None:
        robust["autoattack"] = {"accuracy": aa}
    return {
        "standard_accuracy": sa,
        "robust_accuracy": robust,
        "worst_case": {"accuracy": min(pgd20, aa if aa is not None else 1.0), "threat_model": "Linf 8/255"},
        "cifar10c": None,
        "num_examples": 100,
    }


def test_report_tables_intervals_questions_and_figures_from_known_results(tmp_path):
    """Three seeds of two rows with known accuracies: the report's numbers are the t intervals of those."""
    rot, e2e = "rotation_advpre_full_advft", "at_e2e"
    known = {
        rot: [(0.60, 0.30, 0.28, 5.0), (0.62, 0.31, 0.29, 4.0), (0.61, 0.32, 0.30, 6.0)],
        e2e: [(0.58, 0.25, 0.24, 9.0), (0.57, 0.26, 0.25, 8.0), (0.59, 0.25, 0.24, 9.0)],
    }
    for row, per_seed in known.items():
        for seed, (sa, pgd, aa, epoch) in enumerate(per_seed):
            for kind, obj in (
                ("evaluate", _evaluation(sa, pgd, aa)),
                ("finetune", {"best_robust_accuracy": {"epoch": epoch, "robust_accuracy": pgd}}),
            ):
                path = tmp_path / "runs" / f"seed{seed}" / kind / row / "results.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(obj))
    ident = {"study": "paper", "scale": "smoke", "seeds": 3}
    left_out = [(PAPER.row(r), "not compared") for r in ("rotation_aux", "selfie_advpre_linear_advft")]
    left_out.append((PAPER.row("ensemble_advpre_full_advft"), "too slow"))
    machine = {"cpu": "Some CPU", "cores": 2, "jobs": 2}
    attempts = [
        {"run": "seed0/pretrain/rotation_adv", "kind": "pretrain", "seconds": 100.0, "outcome": "done"},
        {"run": "seed0/finetune/at_e2e", "kind": "finetune", "seconds": 50.0, "outcome": "stopped"},
        {"run": "seed0/finetune/at_e2e", "kind": "finetune", "seconds": 200.0, "outcome": "done"},
        {"run": "seed0/finetune/rotation_aux", "kind": "finetune", "seconds": 30.0, "outcome": "done"},
    ]
    times = tmp_path / "times.jsonl"
    times.write_text("".join(json.dumps({**a, **machine, "ended": f"t{i}"}) + "\n" for i, a in enumerate(attempts)))
    with times.open("a") as f:
        f.write('{"run": "seed0/evaluate/at')  # a write cut by a kill
    planned = {"seed0/pretrain/rotation_adv", "seed0/finetune/at_e2e"}
    out = report.write(str(tmp_path), PAPER, ident, left_out, "made-up numbers", str(times), planned)
    rows = {r["id"]: r for r in out["rows"]}
    assert set(rows) == {rot, e2e} and rows[rot]["seeds"] == [0, 1, 2]
    aa = rows[rot]["metrics"]["autoattack"]["interval"]
    from advss_tf.study.statistics import t_interval

    assert aa["mean"] == pytest.approx(29.0) and aa["half_width"] == pytest.approx(t_interval([28, 29, 30]).half_width)
    assert rows[e2e]["metrics"]["epochs_to_best"]["interval"]["mean"] == pytest.approx(26 / 3)
    assert rows[e2e]["paper"] == {"standard": 84.72, "pgd20": 47.22}
    q1 = next(q for q in out["questions"] if q["id"] == "Q1")["comparisons"][0]
    assert (q1["a"], q1["b"], q1["metric"]) == (rot, e2e, "worst_case")
    assert q1["per_seed"] == {"0": pytest.approx(4.0), "1": pytest.approx(4.0), "2": pytest.approx(6.0)}
    assert "supports the claim" in q1["verdict"]
    # the seeds each difference needs, at the observed spread: this one's and the paper's (PGD-20 RA, a − b)
    from advss_tf.study.statistics import seeds_to_resolve

    need, sd = q1["seeds_needed"], t_interval([4.0, 4.0, 6.0]).sd
    paper = dict(PAPER.row(rot).paper)["pgd20"] - dict(PAPER.row(e2e).paper)["pgd20"]
    assert need["sd"] == pytest.approx(sd) and need["paper_difference"] == pytest.approx(paper)
    assert need["observed"] == seeds_to_resolve(14 / 3, sd) and need["paper"] == seeds_to_resolve(paper, sd)
    q2_epochs = next(c for q in out["questions"] for c in q["comparisons"] if c["metric"] == "epochs_to_best")
    assert q2_epochs["per_seed"] == {"0": 4.0, "1": 4.0, "2": 3.0} and q2_epochs["unit"] == "epochs"
    missing = next(q for q in out["questions"] if q["id"] == "Q4")["comparisons"][0]
    assert missing["verdict"].startswith("not available") and missing["interval"] is None
    not_run = next(q for q in out["questions"] if q["id"] == "Q4")["comparisons"][1]
    assert not_run["verdict"] == "not run at this scale: ensemble_advpre_full_advft (rows left out, below)"
    folder = tmp_path / "report"
    for name in (report.MARKDOWN, report.JSON, report.SCATTER, report.DIFFERENCES):
        assert (folder / name).stat().st_size > 0
    md = (folder / report.MARKDOWN).read_text()
    assert "| 29.00 ± " in md and "84.72" in md and "not available" in md
    assert "- Not compared: `rotation_aux`, `selfie_advpre_linear_advft`\n" in md  # one line per reason
    assert json.loads((folder / report.JSON).read_text()) == json.loads(json.dumps(out))
    time = json.loads((folder / report.TIME).read_text())
    assert time["finished"]["pretrain"] == {"runs": 1, "seconds": 100.0}
    assert time["finished"]["finetune"] == {"runs": 1, "seconds": 200.0} and time["finished_seconds"] == 300.0
    assert (time["stopped_or_failed"], time["not_in_plan"], time["unreadable_lines"]) == (50.0, 30.0, 1)
    assert time["machines"] == ["Some CPU (2 cores)"] and (time["first_ended"], time["last_ended"]) == ("t0", "t3")
    assert "summed: 0.08 h — pretrain 0.03 h (1 run), finetune 0.06 h (1 run)" in md
    assert (
        f"  - seeds to resolve at 95 % (paired t interval excluding 0), at the seeds' spread (sd {sd:.2f} points): "
        in md
    )
    assert f"the paper's ({paper:+.2f}, PGD-20 RA) {need['paper']} seeds" in md


def test_keep_copies_the_finished_chains_results_and_the_copy_reports_and_resumes(tmp_path):
    """`study keep`: the results of every finished run whose dependants all finished, study.json and the times —
    a folder that `report` reads and `run` resumes; a run with an unfinished dependant stays behind (its export is
    not copied, so a kept copy of it would leave that dependant nothing to start from)."""
    src, dest = tmp_path / "study", tmp_path / "kept"
    ident = command_lib.identity("paper", "smoke", 2, plan.Data("sample"), False, "none")
    runner.prepare(str(src), ident, overwrite=False)
    rot, e2e = "rotation_advpre_full_advft", "at_e2e"
    finished = {
        "seed0/pretrain/rotation_adv": {},  # other rows' fine-tunings need it too and have not run: not kept
        f"seed0/finetune/{rot}": {"best_robust_accuracy": {"epoch": 2, "robust_accuracy": 0.3}},
        f"seed0/evaluate/{rot}": _evaluation(0.6, 0.3),
        f"seed0/finetune/{e2e}": {"best_robust_accuracy": {"epoch": 3, "robust_accuracy": 0.25}},
        f"seed0/evaluate/{e2e}": _evaluation(0.58, 0.25),
        f"seed1/finetune/{e2e}": {"best_robust_accuracy": {"epoch": 1, "robust_accuracy": 0.2}},  # no evaluation
    }
    for run_id, obj in finished.items():
        path = src / "runs" / run_id / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(obj))
    (src / "runs" / "seed0" / "pretrain" / "rotation_adv" / "checkpoints").mkdir()
    (src / "logs").mkdir()
    attempt = {"run": f"seed0/finetune/{e2e}", "kind": "finetune", "seconds": 1.0, "outcome": "done"}
    (src / "logs" / "times.jsonl").write_text(json.dumps({**attempt, "cpu": "Some CPU", "cores": 2, "jobs": 1}) + "\n")
    lines = []
    kept = command_lib.keep_finished(str(src), str(dest), say=lines.append)
    # Rotation's fine-tuning is also a member of the ensemble of three, whose export has not run: not kept either.
    assert sorted(kept) == sorted([f"seed0/evaluate/{rot}", f"seed0/finetune/{e2e}", f"seed0/evaluate/{e2e}"])
    copied = sorted(str(p.relative_to(dest / "runs").parent) for p in (dest / "runs").rglob("*") if p.is_file())
    assert copied == sorted(kept)  # results.json alone: no checkpoints, no exports
    assert json.loads((dest / "study.json").read_text()) == ident
    assert (dest / "logs" / "times.jsonl").read_text() == (src / "logs" / "times.jsonl").read_text()
    assert lines[-1] == (
        f"study: not kept, finished but a dependant is not: seed0/finetune/{rot}, seed0/pretrain/rotation_adv, "
        f"seed1/finetune/{e2e}"
    )
    made = command_lib.write_report(str(dest), say=lambda _: None)
    assert {r["id"] for r in made["rows"]} == {rot, e2e}
    planned = 2 * (2 + len(made["not_run_yet"]))  # seed 0 of two rows evaluated, of 2 seeds x every row
    title = (dest / report.REPORT / report.MARKDOWN).read_text(encoding="utf-8").splitlines()[0]
    assert (
        title
        == f"# Study `paper` at scale `smoke` (2 seeds; in progress: 2 of {planned} row-seed evaluations finished)"
    )
    runs = command_lib._planned(str(dest))[-1]
    assert sorted(r.id for r in runs if r.finished(str(dest))) == sorted(kept)  # `run` skips these, re-runs the rest
    with pytest.raises(UsageError, match="inside the study folder"):
        command_lib.keep_finished(str(src), str(src / "copy"))
    runner.prepare(str(tmp_path / "other"), {**ident, "scale": "tiny"}, overwrite=False)
    with pytest.raises(UsageError, match="holds another study"):
        command_lib.keep_finished(str(src), str(tmp_path / "other"))


def test_keeping_a_kept_folder_again_keeps_the_ensemble_members_whose_export_it_never_held(tmp_path):
    """A kept folder holds no ensemble export; its ensemble's evaluation finished, so the export is not needed
    (`plan.states`), and it does not hold back its members' fine-tunings when the folder, grown, is kept again (as
    the tiny study was: kept 2026-12-04, grown and kept again 2026-12-08)."""
    src, dest = tmp_path / "study", tmp_path / "kept"
    ident = command_lib.identity("paper", "smoke", 1, plan.Data("sample"), False, "none")
    runner.prepare(str(src), ident, overwrite=False)
    members = [f"{task}_advpre_full_advft" for task in ("selfie", "rotation", "jigsaw")]
    finished = [f"seed0/{kind}/{m}" for m in members for kind in ("finetune", "evaluate")]
    finished.append("seed0/evaluate/ensemble_of_three")
    for run_id in finished:
        path = src / "runs" / run_id / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_evaluation(0.5, 0.3) if "/evaluate/" in run_id else {}))
    state = plan.states(command_lib._planned(str(src))[-1], str(src))
    assert state["seed0/ensemble/ensemble_of_three"] == plan.NOT_NEEDED
    lines = []
    assert sorted(command_lib.keep_finished(str(src), str(dest), say=lines.append)) == sorted(finished)
    assert len(lines) == 1  # nothing finished was left behind
    assert sorted(command_lib.keep_finished(str(dest), str(tmp_path / "again"), say=lines.append)) == sorted(finished)


def test_q5_judges_the_pipeline_and_the_one_shot_baseline_by_each_unforeseen_attack_and_their_worst(tmp_path):
    """Known accuracies under FGSM and L2 PGD for Q5's two rows: a difference per attack, the worst unforeseen
    attack per seed (the lowest of them), and what the scale did not run said as such."""
    pipeline, one_shot = "rotation_advpre_full_advft", "rotation_aux"
    known = {pipeline: [(0.30, 0.20), (0.32, 0.25), (0.31, 0.22)], one_shot: [(0.28, 0.21), (0.27, 0.20), (0.30, 0.18)]}
    for row, per_seed in known.items():
        for seed, (fgsm, l2) in enumerate(per_seed):
            evaluation = _evaluation(0.6, 0.25)
            evaluation["robust_accuracy"].update(fgsm={"accuracy": fgsm}, pgd_l2={"accuracy": l2})
            path = tmp_path / "runs" / f"seed{seed}" / "evaluate" / row / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(evaluation))
    planned = {f"seed0/evaluate/{r}" for r in (pipeline, one_shot, "at_e2e")}
    for scale in ("tiny", "smoke"):
        ident = {"study": "paper", "scale": scale, "seeds": 3}
        out = report.write(str(tmp_path), PAPER, ident, [], "made-up numbers", None, planned)
        q5 = {c["metric"]: c for q in out["questions"] if q["id"] == "Q5" for c in q["comparisons"]}
        assert q5["fgsm"]["per_seed"] == {"0": pytest.approx(2.0), "1": pytest.approx(5.0), "2": pytest.approx(1.0)}
        worst = q5[catalogue.UNFORESEEN_WORST]["per_seed"]  # min(fgsm, l2) per seed: 20 − 21, 25 − 20, 22 − 18
        assert worst == {"0": pytest.approx(-1.0), "1": pytest.approx(5.0), "2": pytest.approx(4.0)}
        assert out["not_run_yet"] == ["at_e2e"] and out["unforeseen"] == list(catalogue.SCALES[scale].unforeseen)
        md = (tmp_path / "report" / report.MARKDOWN).read_text()
        assert "## Rows not run yet" in md and "`at_e2e`." in md
        assert "| `rotation_aux` | 3 | 28.33 ± " in md  # the unforeseen attacks' table
    # at smoke, PGD-100 is not among the scale's unforeseen attacks: the report says so; at tiny it is, but the
    # rows ran without it
    assert q5["pgd100"]["verdict"] == "not run at this scale: PGD-100 is not among its unforeseen attacks"
    assert "this scale runs FGSM)" in md
    tiny = report.build(
        PAPER, {"study": "paper", "scale": "tiny", "seeds": 3}, report.collect(str(tmp_path), PAPER, 3), []
    )
    tiny_q5 = {c["metric"]: c for q in tiny["questions"] if q["id"] == "Q5" for c in q["comparisons"]}
    assert tiny_q5["pgd100"]["verdict"] == f"not available: {pipeline} / {one_shot} ran without PGD-100"
    assert tiny_q5["pgd100"]["seeds_needed"]["sd"] is None and tiny_q5["pgd100"]["interval"] is None


def _four_runs() -> list[plan.Run]:
    """Pretrainings a and d, b fine-tuned from a, c evaluating b (the runner tests' stand-in study)."""
    return [
        plan.Run("seed0/pretrain/a", "pretrain", 0, "a", (), ()),
        plan.Run("seed0/pretrain/d", "pretrain", 0, "d", (), ()),
        plan.Run("seed0/finetune/b", "finetune", 0, "b", (), ("seed0/pretrain/a",)),
        plan.Run("seed0/evaluate/c", "evaluate", 0, "c", (), ("seed0/finetune/b",)),
    ]


def test_the_runner_keeps_dependency_order_runs_k_at_once_skips_dependants_of_a_failure_and_resumes(
    tmp_path, monkeypatch
):
    """The scheduler with stand-in commands (a line of Python each) in place of the binaries."""

    def stand_in(run):
        directory = run.directory(str(tmp_path))
        fail = (tmp_path / f"fail-{run.row}").exists()
        return [
            sys.executable,
            "-c",
            "import os, sys, time\ndeadline = time.time() + 60\n"
            f"events = {str(tmp_path / 'events')!r}\n"
            f"open(events, 'a').write('start {run.row}\\n')\n"
            # a and d wait for each other: they finish only if the runner has them running at the same time
            f"while {run.row in 'ad'} and not {{'start a', 'start d'}} <= set(open(events).read().splitlines())"
            " and time.time() < deadline:\n"
            "    time.sleep(0.05)\n"
            f"open({str(tmp_path / 'events')!r}, 'a').write('end {run.row}\\n')\n"
            f"if {fail}: print('error: boom'); sys.exit(3)\n"
            f"os.makedirs({directory!r}, exist_ok=True); open(os.path.join({directory!r}, 'results.json'), 'w')",
        ]

    monkeypatch.setattr(plan.Run, "command", stand_in)
    monkeypatch.setattr(plan.Run, "exported", plan.Run.finished)  # the stand-ins export nothing
    runs = _four_runs()
    (tmp_path / "fail-b").touch()
    said = []
    assert runner.Executor(str(tmp_path), runs, jobs=2, say=said.append).run() == 1
    events = (tmp_path / "events").read_text().split()
    assert events[:4:2] == ["start", "start"] and set(events[1:4:2]) == {"a", "d"}  # side by side (see stand_in)
    assert events.index("b") > events.index("a", events.index("a") + 1)  # b started after a ended
    assert "c" not in events
    text = "\n".join(said)
    assert "FAILED seed0/finetune/b (exit status 3): error: boom" in text and "skip seed0/evaluate/c" in text
    assert "seed0__finetune__b.log" in text

    (tmp_path / "fail-b").unlink()
    (tmp_path / "events").unlink()
    said = []
    assert runner.Executor(str(tmp_path), runs, jobs=2, say=said.append).run() == 0
    assert "study: 4 runs, 2 already finished, 2 to run" in said
    attempts = [json.loads(ln) for ln in (tmp_path / runner.LOGS / runner.TIMES).read_text().splitlines()]
    outcomes = [(a["run"], a["outcome"]) for a in attempts]
    assert sorted(outcomes[:2]) == [("seed0/pretrain/a", "done"), ("seed0/pretrain/d", "done")]  # side by side
    assert outcomes[2:] == [("seed0/finetune/b", "failed"), ("seed0/finetune/b", "done"), ("seed0/evaluate/c", "done")]
    assert all(a["cpu"] and a["cores"] >= 1 and a["jobs"] == 2 and a["seconds"] >= 0 for a in attempts)
    assert (tmp_path / "events").read_text().split() == ["start", "b", "end", "b", "start", "c", "end", "c"]


def _recording_stand_in(tmp_path, label, also=lambda run: []):
    """A Run.command stand-in: a line of Python that appends label(run) to tmp_path/events and writes the
    results.json of the run (and of the run directories also(run) names)."""

    def stand_in(run):
        finish = [run.directory(str(tmp_path)), *also(run)]
        return [
            sys.executable,
            "-c",
            f"import os\nopen({str(tmp_path / 'events')!r}, 'a').write({label(run)!r} + '\\n')\n"
            f"for d in {finish!r}:\n    os.makedirs(d, exist_ok=True); open(os.path.join(d, 'results.json'), 'w')",
        ]

    return stand_in


def test_a_resumed_folder_skips_what_nothing_needs_and_remakes_what_was_made_otherwise_or_lost_its_export(
    tmp_path, monkeypatch
):
    """`plan.states` on a folder like a `study keep` copy to which a row was added: the pretraining a kept chain
    came from is not needed again; an evaluation made with other arguments than the plan's is made again, with
    the fine-tuning whose export it needs; a pretraining kept without its export is made again for a new row."""
    wd = str(tmp_path)
    evaluate = plan.Run("seed0/evaluate/c", "evaluate", 0, "c", ("--attacks=pgd20,autoattack",), ("seed0/finetune/b",))
    runs = [
        plan.Run("seed0/pretrain/a", "pretrain", 0, "a", (), ()),
        plan.Run("seed0/finetune/b", "finetune", 0, "b", (), ("seed0/pretrain/a",)),
        evaluate,
        plan.Run("seed0/pretrain/p", "pretrain", 0, "p", (), ()),
        plan.Run("seed0/finetune/q", "finetune", 0, "q", (), ("seed0/pretrain/p",)),
        plan.Run("seed0/evaluate/r", "evaluate", 0, "r", ("--attacks=pgd20",), ("seed0/finetune/q",)),
        plan.Run("seed0/finetune/s", "finetune", 0, "s", (), ("seed0/pretrain/p",)),  # the added row
        plan.Run("seed0/evaluate/t", "evaluate", 0, "t", (), ("seed0/finetune/s",)),
    ]

    def finish(rid, command=None):
        path = tmp_path / "runs" / rid / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": command} if command else {}))

    # c's results.json records the plan's arguments with the paths of where the study was made.
    finish("seed0/finetune/b")
    finish("seed0/evaluate/c", ["/elsewhere/advss_tf/evaluate.py", "--attacks=pgd20,autoattack"])
    for rid in ("seed0/pretrain/p", "seed0/finetune/q"):
        finish(rid)
    finish("seed0/evaluate/r", ["/elsewhere/advss_tf/evaluate.py", "--attacks=pgd20,fgsm"])  # made otherwise
    state = plan.states(runs, wd)
    assert state == {
        "seed0/pretrain/a": plan.NOT_NEEDED,
        "seed0/finetune/b": plan.FINISHED,
        "seed0/evaluate/c": plan.FINISHED,
        "seed0/pretrain/p": plan.REMAKE,  # q and s need its export, which is not there
        "seed0/finetune/q": plan.REMAKE,  # r needs its export
        "seed0/evaluate/r": plan.REMAKE,
        "seed0/finetune/s": plan.TO_RUN,
        "seed0/evaluate/t": plan.TO_RUN,
    }
    # The paths that locate a run compare from its id on: a folder moved elsewhere is the same study.
    moved = dataclasses.replace(evaluate, args=(f"--model={wd}/runs/seed0/finetune/b/export/best_ra",))
    finish("seed0/evaluate/c", ["/x/evaluate.py", "--model=/old/place/runs/seed0/finetune/b/export/best_ra"])
    assert not moved.made_otherwise(wd)
    finish("seed0/evaluate/c", ["/elsewhere/advss_tf/evaluate.py", "--attacks=pgd20,autoattack"])

    monkeypatch.setattr(plan.Run, "command", _recording_stand_in(tmp_path, lambda run: run.id))
    said = []
    assert runner.Executor(wd, runs, jobs=1, say=said.append).run() == 0
    made = (tmp_path / "events").read_text().split()
    assert sorted(made) == sorted(r for r, s in state.items() if s in (plan.TO_RUN, plan.REMAKE))
    assert "study: 8 runs, 2 already finished, 5 to run, 1 not needed (every run that needs them has finished)" in said
    lost = "a run to run needs its export, which this folder does not hold"
    for rid, why in [("seed0/pretrain/p", lost), ("seed0/finetune/q", lost), ("seed0/evaluate/r", "made with other ")]:
        assert (tmp_path / "runs" / rid / "results.kept.json").exists()  # the old results kept beside
        assert any(line.startswith(f"study: re-make {rid}: {why}") for line in said)


def test_the_runner_finishes_what_it_started_first_and_does_not_rerun_what_another_process_finished(
    tmp_path, monkeypatch
):
    # Each records its start; b also finishes d, as a second process (--only, SLURM) would.
    also = lambda run: [str(tmp_path / "runs/seed0/pretrain/d")] if run.row == "b" else []  # noqa: E731
    monkeypatch.setattr(plan.Run, "command", _recording_stand_in(tmp_path, lambda run: run.row, also))
    monkeypatch.setattr(plan.Run, "exported", plan.Run.finished)  # the stand-ins export nothing
    runs = _four_runs()
    said = []
    assert runner.Executor(str(tmp_path), runs, jobs=1, say=said.append).run() == 0
    assert (tmp_path / "events").read_text().split() == ["a", "b", "c"]  # b and c before the pretraining d
    assert "study: seed0/pretrain/d was finished by another process" in said


def test_k_runs_at_once_share_the_cores_unless_the_user_set_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for variable in runner.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

    def stand_in(run):  # records the threads its process was given, then finishes
        directory = run.directory(str(tmp_path / "study"))
        return [
            sys.executable,
            "-c",
            f"import os; open({str(tmp_path / 'threads')!r}, 'a').write("
            f"' '.join(os.environ.get(v, '-') for v in {runner.THREAD_VARIABLES!r}) + '\\n'); "
            f"os.makedirs({directory!r}); open(os.path.join({directory!r}, 'results.json'), 'w')",
        ]

    monkeypatch.setattr(plan.Run, "command", stand_in)
    monkeypatch.setattr(command_lib, "write_report", lambda workdir, say: None)
    status = command_lib.run_study(str(tmp_path / "study"), "smoke", seeds=1, rows=["at_e2e"], jobs=2, say=print)
    assert status == 0 and (tmp_path / "threads").read_text().splitlines() == ["2 2 2"] * 2  # fine-tune, evaluate
    env = runner.job_environment(2, {"PATH": "/bin"})
    assert [env[v] for v in runner.THREAD_VARIABLES] == ["2", "2", "2"] and env["PATH"] == "/bin"
    assert runner.job_environment(8, {})["TF_NUM_INTRAOP_THREADS"] == "1"  # never 0
    assert not any(v in runner.job_environment(1, {}) for v in runner.THREAD_VARIABLES)  # one run: TF's default
    mine = runner.job_environment(2, {"OMP_NUM_THREADS": "3"})
    assert mine == {"OMP_NUM_THREADS": "3"}  # the user's choice, untouched


@pytest.mark.parametrize("folder,study", [("study_tiny", "paper"), ("robustssl_tiny", "robustssl")])
def test_the_readme_results_are_the_report_of_the_committed_tiny_study(tmp_path, folder, study):
    """README's results tables and question lines are what `study report` makes of docs/<folder>: the tiny studies'
    per-run results.json (the runs themselves are too large to keep), so the numbers cannot drift from their runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(root, "docs", folder)
    shutil.copytree(source, tmp_path / "study", ignore=shutil.ignore_patterns(report.REPORT))
    made = command_lib.write_report(str(tmp_path / "study"), say=lambda _: None)
    # every row the tiny scale runs is in the table, or listed as not run yet (rows added since the study ran)
    reported = {r["id"] for r in made["rows"]}
    assert reported.isdisjoint(made["not_run_yet"])
    the_study = catalogue.STUDIES[study]
    assert reported | set(made["not_run_yet"]) == {
        r.id for r in plan.select_rows(the_study, the_study.scale("tiny"), None)[0]
    }
    assert all(r["metrics"]["standard"]["interval"]["n"] == 3 for r in made["rows"])  # 3 seeds each
    text = (tmp_path / "study" / report.REPORT / report.MARKDOWN).read_text(encoding="utf-8")
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    # the paper study's rows table; the robustssl study's pretraining x protocol table (its rows table: the report)
    tables = text.split("## The questions")[0].split("By protocol")
    table = [line for line in tables[-1].splitlines() if line.startswith("| ")]
    answers = [line for line in text.splitlines() if line.startswith(("- `", "  - seeds", "Outside the grid"))]
    assert len(table) >= 7 and len(answers) >= 8
    for line in table + answers:
        assert line in readme, line
    with open(os.path.join(source, report.REPORT, report.MARKDOWN), encoding="utf-8") as f:
        assert f.read().split("## Time")[0] == text.split("## Time")[0]  # the committed report is this one
