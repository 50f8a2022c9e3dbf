"""Attacks in sequence (AutoAttack's standard version), the worst case over attacks and restarts, the masking checks
with a gradient-free attack, the model card, and data-parallel attacks equal to one device's."""

import dataclasses
import json
import math
import os
import signal
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from binaries import PipedProcess, run_binary

from advss_tf.attacks.registry import ATTACKS, COMPOSITES
from advss_tf.errors import UsageError
from advss_tf.evaluation import evaluator, robustness, worst_case
from advss_tf.evaluation.records import PartialStore
from advss_tf.serving import Classifier


def _silent(_line: str) -> None:
    pass


def _spec(name: str, eps: float = 2 / 255, steps: int | None = None, restarts: int = 1):
    spec = ATTACKS[name].with_budget(eps, restarts)
    return dataclasses.replace(spec, steps=steps) if steps else spec


@pytest.fixture(scope="module")
def fitted(trained_classifier):
    """The undefended micro model on 96 of its training images (high clean accuracy), as uint8."""
    model, x, y = trained_classifier
    images = np.round(x[:96] * 255).astype(np.uint8)
    labels = y[:96].astype(np.int64)
    fn = lambda z: model(z, training=False)  # noqa: E731
    clean = robustness.Predictor(fn).correct(images, labels, batch_size=32)
    return fn, images, labels, clean


def test_a_composite_attacks_only_the_survivors_rebatched_and_records_which_stage_broke_each(fitted, tmp_path):
    fn, x, y, clean = fitted
    store = PartialStore(str(tmp_path), {"test": 1})
    store.open(overwrite=False)
    specs = [_spec("fgsm", 1.5 / 255), _spec("pgd20", 2 / 255, steps=5)]
    comp = worst_case.run_composite(
        fn, "fgsm+pgd20", specs, x, y, clean, batch_size=16, seed=0, store=store, say=_silent
    )
    first, second = comp.stages
    assert first.num_attacked == clean.sum() and second.num_attacked == first.robust.sum()
    assert 0 < second.num_attacked < first.num_attacked  # FGSM broke some, not all: stage 2 had fewer to attack
    # The survivors were gathered and re-batched: stage 2 ran ceil(survivors / 16) batches, not one per original.
    stage2 = os.listdir(tmp_path / "partial" / "attack" / "fgsm+pgd20" / "1_pgd20")
    assert len(stage2) == math.ceil(second.num_attacked / 16) < math.ceil(len(x) / 16)
    assert not np.any(second.robust & ~first.robust) and comp.accuracy <= min(first.accuracy, second.accuracy)
    breaking = comp.breaking_stage()
    np.testing.assert_array_equal(breaking == "fgsm", clean & ~first.robust)
    np.testing.assert_array_equal(breaking == "pgd20", first.robust & ~second.robust)
    assert np.all(breaking[~clean] == "")
    d = comp.to_dict()
    assert d["components"] == ["fgsm", "pgd20"] and d["accuracy_after_stage"]["pgd20"] == comp.accuracy
    assert [s["num_broken"] for s in d["stages"]] == [
        int((clean & ~first.robust).sum()),
        int(second.num_attacked - comp.robust.sum()),
    ]


def test_a_stage_that_makes_a_broken_example_robust_again_is_an_error(fitted, monkeypatch):
    fn, x, y, clean = fitted
    x, y, clean = x[:32], y[:32], clean[:32]
    real = worst_case.run_attack

    calls = []

    def resurrecting(*args, **kwargs):
        outcome = real(*args, **kwargs)
        calls.append(outcome)
        if len(calls) == 2:  # the second stage claims every clean-correct example survived
            outcome.robust = outcome.robust | clean
        return outcome

    monkeypatch.setattr(worst_case, "run_attack", resurrecting)
    specs = [_spec("fgsm", 4 / 255), _spec("fgsm", 1 / 255)]
    with pytest.raises(AssertionError, match="robust again"):
        worst_case.run_composite(fn, "fgsm+fgsm", specs, x, y, clean, batch_size=32, seed=0, say=_silent)
    assert len(calls) == 2 and not np.all(calls[0].robust[clean])  # stage 1 broke some: there was a lie to catch


def test_the_worst_case_over_attacks_and_which_attack_broke_each_example(fitted):
    fn, x, y, clean = fitted
    fgsm = robustness.run_attack(fn, _spec("fgsm", 1 / 255), x, y, clean, batch_size=32, seed=0)
    pgd = robustness.run_attack(fn, _spec("pgd20", 1 / 255, steps=3), x, y, clean, batch_size=32, seed=0)
    comp = worst_case.run_composite(
        fn, "fgsm+pgd20", [_spec("fgsm", 1 / 255), _spec("pgd20", 1 / 255, steps=3)], x, y, clean,
        batch_size=32, seed=0, say=_silent,
    )  # fmt: skip
    section, arrays = worst_case.worst_case(clean, [fgsm, pgd, comp])
    assert section["threat_model"] == "Linf 1/255" and list(section["by_threat_model"]) == ["Linf 1/255"]
    masks = {"fgsm": fgsm.robust, "pgd20": pgd.robust, "fgsm+pgd20": comp.robust}
    robust = clean & fgsm.robust & pgd.robust & comp.robust
    assert 0 < robust.sum() < clean.sum()  # some survive everything, some do not: the counts below can differ
    assert section["num_robust"] == robust.sum() and section["accuracy"] == pytest.approx(robust.mean())
    assert section["accuracy"] <= min(o.accuracy for o in (fgsm, pgd, comp))
    for name, mask in masks.items():
        others = np.logical_and.reduce([m for n, m in masks.items() if n != name])
        assert section["only_broken_by"][name] == int(np.sum(clean & ~mask & others)), name
    stage = comp.breaking_stage()
    for i in range(len(y)):
        if not clean[i]:
            expected = "clean"
        elif not fgsm.robust[i]:
            expected = "fgsm"
        elif not pgd.robust[i]:
            expected = "pgd20"
        elif not comp.robust[i]:
            expected = f"fgsm+pgd20/{stage[i]}"
        else:
            expected = ""
        assert arrays["breaking_attack"][i] == expected, i
    np.testing.assert_array_equal(arrays["worst_case_robust"], robust)
    np.testing.assert_array_equal(arrays["worst_case_robust_linf_1_255"], robust)
    np.testing.assert_array_equal(arrays["robust_fgsm+pgd20_after_fgsm"], comp.stages[0].robust)
    assert list(arrays["attacks"]) == ["fgsm", "pgd20", "fgsm+pgd20"]


def test_the_worst_case_is_taken_per_threat_model_and_the_headline_is_pgd20s(fitted):
    """A larger radius and another norm are other questions: each gets its own worst case, none lowers PGD-20's."""
    fn, x, y, clean = fitted
    run = dict(batch_size=32, seed=0)
    small = robustness.run_attack(fn, _spec("fgsm", 1 / 255), x, y, clean, **run)
    large = robustness.run_attack(fn, _spec("pgd20_eps16", 8 / 255, steps=3), x, y, clean, **run)
    pgd = robustness.run_attack(fn, _spec("pgd20", 1 / 255, steps=3), x, y, clean, **run)
    l2 = robustness.run_attack(fn, dataclasses.replace(ATTACKS["pgd_l2"], steps=3), x, y, clean, **run)
    mixed = worst_case.run_composite(
        fn, "fgsm+pgd20_eps16", [_spec("fgsm", 1 / 255), _spec("pgd20_eps16", 8 / 255, steps=3)], x, y, clean,
        say=_silent, **run,
    )  # fmt: skip
    section, arrays = worst_case.worst_case(clean, [small, large, pgd, l2, mixed])
    groups = section["by_threat_model"]
    assert list(groups) == ["Linf 1/255", "Linf 8/255", "L2 0.5", worst_case.MIXED]
    assert groups["Linf 1/255"]["attacks"] == ["fgsm", "pgd20"] and groups["L2 0.5"]["attacks"] == ["pgd_l2"]
    assert section["threat_model"] == "Linf 1/255" and section["attacks"] == ["fgsm", "pgd20"]
    headline = clean & small.robust & pgd.robust
    assert section["num_robust"] == headline.sum()
    assert (clean & large.robust).sum() < headline.sum()  # the larger radius would have lowered the headline
    np.testing.assert_array_equal(arrays["worst_case_robust"], headline)
    np.testing.assert_array_equal(arrays["worst_case_robust_linf_8_255"], clean & large.robust)
    np.testing.assert_array_equal(arrays["worst_case_robust_l2_0.5"], clean & l2.robust)
    assert set(arrays["breaking_attack_linf_8_255"]) <= {"", "clean", "pgd20_eps16"}
    # Without PGD-20 or AutoAttack, the first attack's threat model is the headline.
    assert worst_case.worst_case(clean, [large, small])[0]["threat_model"] == "Linf 8/255"


def test_robust_accuracy_is_the_worst_case_over_restarts(fitted):
    fn, x, y, clean = fitted
    spec = _spec("pgd20", 4 / 255, steps=1, restarts=3)  # one step from a random start: restarts disagree
    three = robustness.run_attack(fn, spec, x, y, clean, batch_size=32, seed=0)
    per_restart = []
    for r in range(3):
        correct = np.zeros(len(y), bool)
        for b, sl in enumerate(robustness.batch_slices(len(y), 32)):
            x_adv = spec(fn, tf.constant(x[sl] / 255.0, tf.float32), tf.constant(y[sl]),
                         robustness.attack_seed(0, "pgd20", b, r))  # fmt: skip
            correct[sl] = np.argmax(fn(x_adv).numpy(), -1) == y[sl]
        per_restart.append(clean & correct)
    assert len({m.tobytes() for m in per_restart}) > 1  # the restarts break different examples
    np.testing.assert_array_equal(three.robust, np.logical_and.reduce(per_restart))
    assert three.robust.sum() < max(m.sum() for m in per_restart)


def test_masking_checks_of_the_worst_case_and_gradient_free_attacks():
    clean_only = robustness.masking_flags({"pgd20": 0.60}, 1000, standard_accuracy=0.62, worst_case_accuracy=0.58)
    assert clean_only == []  # PGD-20 near clean but the worst case is too: an undefeated model, no flag
    blind = robustness.masking_flags({"pgd20": 0.60}, 1000, standard_accuracy=0.62, worst_case_accuracy=0.20)
    assert [f["check"] for f in blind] == ["pgd20_near_clean_worst_case_far_below"]
    robust_model = robustness.masking_flags({"pgd20": 0.45}, 1000, standard_accuracy=0.80, worst_case_accuracy=0.30)
    assert robust_model == []  # PGD-20 well below clean: it is not blind
    square = robustness.masking_flags({"pgd20": 0.50, "square": 0.40}, 1000)
    assert [f["check"] for f in square] == ["pgd20<=square"]
    assert robustness.masking_flags({"pgd20": 0.50, "square": 0.499}, 1000) == []
    breaks = robustness.masking_flags({}, 1000, gradient_free_breaks={"autoattack/square": 30})
    assert [f["check"] for f in breaks] == ["autoattack/square_after_gradient_attacks"]
    assert robustness.masking_flags({}, 1000, gradient_free_breaks={"autoattack/square": 2}) == []
    aa = robustness.masking_flags({"autoattack": 0.52, "apgd_ce": 0.50, "pgd20": 0.55}, 1000)
    assert [f["check"] for f in aa] == ["autoattack<=apgd_ce"]


def _quantised(model):
    """A non-differentiable 16-level input quantiser in front of the classifier: its input gradient is zero."""
    fn = lambda images: {"logits": model(tf.round(images * 15.0) / 15.0, training=False)}  # noqa: E731
    return Classifier("masked", "s", "images", "logits", "logits", None, fn, None)


def test_masked_gradients_pgd_near_clean_while_square_breaks_it_is_flagged(trained_classifier):
    model, x, y = trained_classifier
    images, labels = np.round(x[:64] * 255).astype(np.uint8), y[:64].astype(np.int64)
    masked = _quantised(model)
    clean = robustness.clean_evaluation(masked, images, labels, batch_size=32, fixed_batch=None, progress=False)
    sa = float(np.mean(clean["correct"]))
    assert sa > 0.6
    pgd = robustness.run_attack(
        masked, _spec("pgd20", 8 / 255), images, labels, clean["correct"], batch_size=32, seed=0
    )
    square = dataclasses.replace(ATTACKS["square"], steps=300)
    sq = robustness.run_attack(masked, square, images, labels, clean["correct"], batch_size=32, seed=0)
    section, _ = worst_case.worst_case(clean["correct"], [pgd, sq])
    assert pgd.accuracy >= sa - robustness.PGD_NEAR_CLEAN  # PGD is blind
    assert section["accuracy"] <= pgd.accuracy - robustness.WORST_FAR_BELOW  # the gradient-free attack is not
    flags = robustness.masking_flags(
        {"pgd20": pgd.accuracy, "square": sq.accuracy},
        len(labels),
        float(np.mean(clean["zero_gradient"])),
        standard_accuracy=sa,
        worst_case_accuracy=section["accuracy"],
    )
    checks = {f["check"] for f in flags}
    assert {"pgd20<=square", "pgd20_near_clean_worst_case_far_below", "zero_gradients"} <= checks


def _results(**over):
    results = {
        "model": {"name": "rotation_ft"},
        "num_examples": 10_000,
        "standard_accuracy": 0.86041,
        "robust_accuracy": {
            "autoattack": {"accuracy": 0.515649, "norm": "linf", "epsilon_label": "8/255"},
            "pgd20": {"accuracy": 0.5464, "norm": "linf", "epsilon_label": "8/255"},
        },
        "worst_case": {"accuracy": 0.5150, "attacks": ["pgd20", "autoattack"]},
        "gradient_masking": {"suspected": False},
        "cifar10c": {"mean_accuracy": 0.771949, "headline_sets": 75, "headline_complete": True},
    }
    results.update(over)
    return results


def test_the_model_card_has_robustbench_fields_and_percent_strings():
    card = worst_case.model_card(_results(), {"backbone": {"name": "resnet18"}})
    assert card["clean_acc"] == "86.04" and card["autoattack_acc"] == "51.56" and card["corruptions_acc"] == "77.19"
    assert (card["eps"], card["architecture"], card["number_forward_passes"]) == ("8/255", "resnet18", 1)
    assert "worst case over pgd20, autoattack: 51.50%" in card["footnote"]
    ensemble = worst_case.model_card(_results(), {"ensemble": [{}, {}, {}], "backbone": None})
    assert ensemble["number_forward_passes"] == 3 and ensemble["architecture"] == "ensemble of 3"
    partial = _results(cifar10c={"mean_accuracy": 0.7, "headline_sets": 12, "headline_complete": False})
    partial["robust_accuracy"].pop("autoattack")
    card = worst_case.model_card(partial, None)
    assert card["corruptions_acc"] is None and card["autoattack_acc"] is None and card["architecture"] == "unknown"


def test_autoattack_is_the_standard_chain_and_composites_are_validated(tmp_path):
    assert COMPOSITES["autoattack"] == ("apgd_ce", "apgd_t", "fab_t", "square")
    cfg = evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), attacks=("fgsm+pgd20+apgd_ce", "pgd20"))
    plan = cfg.attack_plan()
    assert [(n, [s.name for s in specs]) for n, specs in plan] == [
        ("fgsm+pgd20+apgd_ce", ["fgsm", "pgd20", "apgd_ce"]),
        ("pgd20", ["pgd20"]),
    ]
    for bad, match in (("fgsm+pgd7", "pgd7"), ("fgsm+fgsm", "repeats"), ("autoatack", "unknown attack")):
        with pytest.raises(UsageError, match=match):
            evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), attacks=(bad,))
    with pytest.raises(UsageError, match="targets"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), targets=0)
    # The upper bound is the data's class count − 1, checked once the test data is known (before any output).
    plan = evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), attacks=("autoattack",), targets=10)
    with pytest.raises(UsageError, match="--targets=10 but apgd_t can target at most 9 classes"):
        evaluator.check_class_count(plan.attack_plan(), 10, 10)
    evaluator.check_class_count(plan.attack_plan(), 11, 10)
    with pytest.raises(UsageError, match="square_queries"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), square_queries=0)
    assert evaluator.EvaluateConfig(model="runs/rot_ft/export/best_ra").output_dir == os.path.join(
        "runs", "rot_ft_eval"
    )


@pytest.fixture(scope="module")
def fitted_export(trained_classifier, tmp_path_factory):
    model, _, _ = trained_classifier
    path = str(tmp_path_factory.mktemp("fitted") / "classifier")
    model.export(path, verbose=False)
    return path


def test_mirrored_attacks_give_the_numbers_of_one_device(fitted_export, mirrored_strategy, tmp_path):
    runs = {}
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", mirrored_strategy)):
        cfg = evaluator.EvaluateConfig(
            model=fitted_export,
            output_dir=str(tmp_path / name),
            attacks=("fgsm", "fgsm+pgd20"),
            linf_epsilon=0.25 / 255,  # small enough that FGSM leaves some examples robust, so the masks compared vary
            max_examples=40,
            batch_size=8,  # 5 batches: the last group leaves one replica idle
            quiet=True,
        )
        runs[name] = evaluator.run(cfg, strategy=strategy)
    one, two = runs["one"], runs["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for key in ("standard_accuracy", "worst_case"):
        assert one[key] == two[key]
    for attack in ("fgsm", "fgsm+pgd20"):
        assert one["robust_accuracy"][attack]["num_robust"] == two["robust_accuracy"][attack]["num_robust"]
    a, b = (np.load(tmp_path / n / worst_case.PER_EXAMPLE) for n in ("one", "two"))
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert one["robust_accuracy"]["fgsm"]["num_robust"] > 0  # something to compare beyond all-False masks
    card = json.loads((tmp_path / "one" / worst_case.MODEL_CARD).read_text())
    assert card["clean_acc"] == f"{100 * one['standard_accuracy']:.2f}" and card["autoattack_acc"] is None
    assert not (tmp_path / "one" / "partial").exists()  # the records go once results.json is written


# -- the binary: interrupted and continued, refused, default output directory ------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _evaluate(*args: str, cwd: str = REPO) -> tuple[int, str, str]:
    done = run_binary("advss_tf.evaluate", *args, cwd=cwd, timeout=600)
    return done.returncode, done.stdout, done.stderr


def _numbers(results: dict) -> dict:
    """Every number of results.json that does not measure time."""
    attacks = {}
    for name, r in results["robust_accuracy"].items():
        attacks[name] = (r["accuracy"], r["num_robust"], r["max_perturbation"], r.get("accuracy_after_stage"))
    return {
        "standard_accuracy": results["standard_accuracy"],
        "attacks": attacks,
        "worst_case": results["worst_case"],
        "masking": results["gradient_masking"],
    }


def test_an_interrupted_evaluation_continues_to_the_numbers_of_an_uninterrupted_one(fitted_export, tmp_path):
    args = [
        f"--model={fitted_export}",
        "--max_examples=48",
        "--batch_size=4",
        "--attacks=pgd20,fgsm+pgd20",
        "--linf_epsilon=1/255",
    ]
    out = tmp_path / "stopped"
    # SIGTERM goes to the run's own process (forked: tests/binaries.py).
    stopped = PipedProcess([sys.executable, "-m", "advss_tf.evaluate", *args, f"--output_dir={out}", "--quiet"])
    first_batch = out / "partial" / "attack" / "pgd20" / "00000.npz"
    while not first_batch.exists() and stopped.poll() is None:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=600)
    code = stopped.returncode
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: stopped by signal 15")
    assert not (out / "results.json").exists()
    recorded = sorted(p.name for p in (out / "partial" / "attack" / "pgd20").iterdir())
    assert 0 < len(recorded) < 12  # stopped after some of pgd20's 12 batches

    # Another configuration in that folder is refused, one line, leaving the partial results as they were.
    code, _, err = _evaluate(*args, "--seed=1", f"--output_dir={out}", "--quiet")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert "partial results of another model or configuration (differs in: settings.seed)" in err
    assert sorted(p.name for p in (out / "partial" / "attack" / "pgd20").iterdir()) == recorded

    code, stdout, err = _evaluate(*args, f"--output_dir={out}")  # the same command: continues
    assert code == 0, err[-3000:]
    assert "continuing the evaluation" in stdout
    assert _evaluate(*args, f"--output_dir={tmp_path / 'whole'}", "--quiet")[0] == 0  # the uninterrupted one
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["resumed_units"] >= len(recorded) + 1 and a["resumed_units"] == 0
    assert _numbers(a) == _numbers(b)
    pa, pb = (np.load(d / worst_case.PER_EXAMPLE) for d in (tmp_path / "whole", out))
    assert pa["clean_correct"].any() and "pgd20" in set(pa["breaking_attack"])  # the masks are not all False
    assert set(pa.files) == set(pb.files)
    for k in pa.files:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert not (out / "partial").exists()


def test_without_output_dir_results_go_to_runs_model_eval_and_the_path_is_printed(fitted_export, tmp_path):
    code, stdout, err = _evaluate(
        f"--model={fitted_export}", "--max_examples=8", "--attacks=none", "--quiet", cwd=str(tmp_path)
    )
    assert code == 0, err[-2000:]
    expected = os.path.join("runs", "classifier_eval", "results.json")
    assert (tmp_path / expected).exists()
    assert stdout.strip().splitlines()[-1].startswith(f"results: {expected}")


def test_autoattack_brings_an_undefended_model_to_at_most_2_percent(fitted):
    fn, x, y, clean = fitted
    budget = {"apgd_ce": {"steps": 10}, "apgd_t": {"steps": 10, "targets": 3}, "fab_t": {"steps": 10, "targets": 3}}
    budget["square"] = {"steps": 100}
    specs = [dataclasses.replace(ATTACKS[n], **budget[n]) for n in COMPOSITES["autoattack"]]
    aa = worst_case.run_composite(fn, "autoattack", specs, x, y, clean, batch_size=32, seed=0, say=_silent)
    assert clean.mean() > 0.9 and aa.accuracy <= 0.02
    assert [s.spec.name for s in aa.stages] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert aa.to_dict()["accuracy_after_stage"]["square"] == aa.accuracy
