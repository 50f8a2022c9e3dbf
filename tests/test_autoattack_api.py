"""advss_tf.autoattack from Python, the randomness check and the rand version, honest AutoAttack labels.

Most tests attack a linear classifier whose exact L∞ robustness is known in closed form: logits z_k = w_k·x + b_k,
so example i survives every perturbation of L∞ size ε iff (z_y − z_k) / ‖w_y − w_k‖₁ > ε for every k ≠ y (no box
constraint is active: the images stay far from 0 and 1). Half the examples lie well inside that radius, half well
outside: AutoAttack must break exactly the second half.
"""

import dataclasses
import json
import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import advss_tf
from advss_tf.attacks import apgd, registry
from advss_tf.data import cifar10
from advss_tf.errors import UsageError
from advss_tf.evaluation import core, evaluator, report, worst_case

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 32 * 32 * 3
EPS = 8 / 255
QUICK = dict(targets=1, square_queries=10)  # cut budgets: the result is "custom"


def _linear_model(num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.choice([-1.0, 1.0], size=(D, num_classes)).astype(np.float32) * 0.01
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    model.layers[-1].set_weights([w, -0.5 * w.sum(0)])  # z_k = w_k·(x − 0.5)
    return model, w


def _linear_data(w, radii_255):
    """Images 0.5 + a·sign(w_y) whose exact L∞ robustness radius (in 255ths) is `radii_255`; labels 0, 1, 2, ..."""
    n = len(radii_255)
    y = np.arange(n) % w.shape[1]
    pattern = np.sign(w[:, y].T)
    x = 0.5 + pattern
    radius_per_unit = _exact_radius(w, x - 0.5, y)  # the radius grows linearly with the amplitude a
    a = np.asarray(radii_255, np.float32) / 255 / radius_per_unit
    x = (0.5 + a[:, None] * pattern).reshape(n, 32, 32, 3).astype(np.float32)
    return x, y


def _exact_radius(w, centred, y):
    z = centred @ w
    others = [
        min((z[i, y[i]] - z[i, k]) / np.abs(w[:, y[i]] - w[:, k]).sum() for k in range(w.shape[1]) if k != y[i])
        for i in range(len(y))
    ]
    return np.array(others, np.float32)


@pytest.fixture(scope="module")
def linear():
    model, w = _linear_model()
    radii = [2, 3, 4, 5, 6, 12, 13, 14, 15, 16] * 2  # in 255ths; ε = 8/255 sits in the gap
    x, y = _linear_data(w, radii)
    exact_robust = _exact_radius(w, x.reshape(len(x), D) - 0.5, y) > EPS
    assert exact_robust.sum() == 10
    return model, x, y, exact_robust


def test_autoattack_on_a_keras_model_breaks_exactly_the_non_robust_examples(linear):
    model, x, y, exact_robust = linear
    result = advss_tf.autoattack(model, x, y, epsilon=EPS, batch_size=8, seed=3, progress=False, **QUICK)
    assert result.clean_accuracy == 1.0
    np.testing.assert_array_equal(result.robust, exact_robust)
    assert result.robust_accuracy == pytest.approx(0.5)
    assert list(result.accuracy_after_stage) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    # Cut budgets are not AutoAttack's: the result says so and what changed.
    assert result.version == "custom" and result.details["description"].startswith("AutoAttack (custom: ")
    assert any("square queries 10 (standard: 5000)" in c for c in result.changes)
    broken = ~result.robust
    adv = result.adversarial_images
    assert np.abs(adv - x).max() <= EPS + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.all(np.argmax(model(adv[broken]), -1) != y[broken])  # each broken example's image really fools it
    np.testing.assert_array_equal(adv[~broken], x[~broken])
    assert set(result.breaking_attack[broken]) <= set(result.accuracy_after_stage) and all(
        result.breaking_attack[~broken] == ""
    )
    assert result.checks["randomised"] is False and result.checks["probability_outputs"] is False
    assert result.checks["zero_gradient_fraction"] == 0.0 and not result.checks["flags"]
    json.dumps(result.to_dict())  # JSON-ready
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.robust_accuracy = 1.0


def test_a_savedmodel_path_a_loaded_savedmodel_a_callable_and_a_dataset_are_all_taken(linear, tmp_path):
    model, x, y, exact_robust = linear
    path = str(tmp_path / "linear")
    model.export(path, verbose=False)
    runs = {
        "path": (path, x, y),
        # Nothing else holds the loaded object: the API must keep it (and its variables) alive while it attacks.
        "loaded": (tf.saved_model.load(path), x, y),
        "callable": (lambda images: model(images, training=False), x, y),
        "dataset": (model, tf.data.Dataset.from_tensor_slices((x, y)).batch(7), None),
    }
    for name, (m, images, labels) in runs.items():
        # FGSM is exact on a linear model; the model and data handling is what differs between these runs.
        result = advss_tf.evaluate_robustness(m, images, labels, attacks="fgsm", batch_size=8, progress=False)
        np.testing.assert_array_equal(result.robust["fgsm"], exact_robust, err_msg=name)


def _noisy(model):
    """A randomised defence: fresh Gaussian input noise on every call."""
    return lambda images: model(images + tf.random.normal(tf.shape(images), stddev=0.01), training=False)


def test_a_randomised_model_is_flagged_and_the_rand_version_runs_eot(linear):
    model, x, y, exact_robust = linear
    noisy = _noisy(model)
    breakable = ~exact_robust  # APGD-CE breaks them all at once: the later stages have nothing left to attack
    with pytest.warns(RuntimeWarning, match="version='rand'"):
        standard = advss_tf.autoattack(noisy, x[breakable], y[breakable], progress=False)
    assert standard.version == "standard" and standard.robust_accuracy == 0.0
    assert standard.checks["randomised"] and standard.checks["randomness"]["max_output_difference"]["clean"] > 1e-4
    assert "randomised_model" in [f["check"] for f in standard.checks["flags"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right version for it: no warning
        rand = advss_tf.autoattack(noisy, x, y, version="rand", progress=False)
    assert (rand.attack, rand.version, rand.changes) == ("autoattack_rand", "rand", ())
    assert list(rand.accuracy_after_stage) == ["apgd_ce_eot", "apgd_dlr_eot"]
    assert [s["eot_samples"] for s in rand.details["stages"]] == [20, 20]
    assert [s["steps"] for s in rand.details["stages"]] == [100, 100]
    # The noise is small against the margins: EOT finds exactly the non-robust examples; the robust ones stand.
    np.testing.assert_array_equal(rand.robust, exact_robust & rand.clean_correct)
    assert not exact_robust[~rand.robust & rand.clean_correct].any()


def test_eot_averages_the_gradient_over_the_samples():
    calls = []

    def model_fn(z):  # eager: a different scale on every call, like a random defence
        calls.append(len(calls) + 1)
        return tf.reshape(z, [1, -1])[:, :3] * float(calls[-1])

    x = tf.zeros([1, 32, 32, 3])
    loss, logits, grad = apgd.eot_loss_logits_and_gradient(model_fn, x, None, lambda _, z: z[:, 0], samples=20)
    assert len(calls) == 20
    assert float(tf.reshape(grad, [-1])[0]) == pytest.approx(np.mean(np.arange(1, 21)))  # the mean gradient
    assert float(logits[0, 0]) == 0.0 and loss.shape == [1]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=lambda x: x * 2.0), r"images must lie in \[0, 1\]"),
        (dict(x=lambda x: x[0]), r"images must be \[N, height, width, channels\]"),
        (dict(x=lambda x: (x * 255).astype(np.uint8)), "uint8"),
        (dict(y=lambda y: y[:-1]), "labels must be"),
        (dict(y=lambda y: y + 10), r"labels must be in \[0, 10\)"),
        (dict(version="plus"), "unknown AutoAttack version 'plus'; valid: standard, rand"),
        (dict(norm="l1"), "unknown norm 'l1'"),
        (dict(epsilon=1.5), r"linf epsilon must be in \(0, 1\]"),
        (dict(epsilon=0.0), r"linf epsilon must be in \(0, 1\]"),
        (dict(model="/nonexistent/model"), "does not exist"),
        (dict(model=3), "model must be"),
        (dict(model="three_classes"), "needs at least 4 classes"),
        (dict(square_queries=0), "square_queries must be a positive integer"),
    ],
)
def test_bad_input_is_one_clear_exception(linear, change, match):
    model, x, y, _ = linear
    args = dict(model=model, x=x, y=y)
    if change.get("model") == "three_classes":
        change = dict(model=_linear_model(num_classes=3)[0], y=lambda labels: labels % 3)
    for key in ("x", "y"):
        if key in change:
            args[key] = change.pop(key)(args[key])
    args.update(change)
    with pytest.raises(UsageError, match=match):
        advss_tf.autoattack(args.pop("model"), args.pop("x"), args.pop("y"), progress=False, **args)


def test_evaluate_robustness_runs_the_unforeseen_set_and_the_worst_case(linear):
    model, x, y, exact_robust = linear
    result = advss_tf.evaluate_robustness(model, x, y, attacks=("fgsm", "pgd20"), progress=False)
    assert set(result.robust_accuracy) == {"fgsm", "pgd20"}
    # FGSM is optimal against a linear model at this radius; PGD-20 too: both find the exact answer.
    for name in ("fgsm", "pgd20"):
        np.testing.assert_array_equal(result.robust[name], exact_robust, err_msg=name)
    assert result.worst_case_accuracy == pytest.approx(0.5) and result.worst_case["threat_model"] == "Linf 8/255"
    json.dumps(result.to_dict())


def _readme_python_block() -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README's 'Use from Python' section has no python block"
    return blocks[0]


def test_the_readmes_python_example_runs(linear, capsys):
    model, w = _linear_model(seed=1)
    # Inputs the README's code is given: an (undefended) Keras model and test images it classifies correctly but
    # non-robustly, so AutoAttack's standard budgets stop early and the example runs in seconds.
    x_test, y_test = _linear_data(w, [2, 3, 4, 5, 6, 2, 3, 4])
    namespace = {"model": model, "x_test": x_test, "y_test": y_test}
    exec(compile(_readme_python_block(), "README.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.version == "standard" and result.clean_accuracy == 1.0 and result.robust_accuracy == 0.0
    assert "robust accuracy" in capsys.readouterr().out
    # Deterministic given the seed (same machine, same mode): the same adversarial images.
    again = advss_tf.autoattack(model, x_test, y_test, seed=0, progress=False)
    np.testing.assert_array_equal(again.adversarial_images, result.adversarial_images)
    assert np.abs(result.adversarial_images - x_test).max() > 0


def _centroid_export(tmp_path, n=16):
    """A nearest-centroid classifier of the first `n` CIFAR-10 test images (a linear SavedModel), and those images."""
    keras.utils.set_random_seed(0)
    xt, yt = cifar10.load_arrays(cifar10.DataSource(), "test")
    x, y = xt[:n].astype(np.float32) / 255.0, yt[:n]
    model, _ = _linear_model()
    centroids = np.stack([x[y == k].mean(0).reshape(-1) if np.any(y == k) else np.zeros(D) for k in range(10)])
    model.layers[-1].set_weights([centroids.T.astype(np.float32) * 5, -2.5 * (centroids**2).sum(1).astype(np.float32)])
    path = str(tmp_path / "centroids")
    model.export(path, verbose=False)
    return path, x, y


def test_the_evaluate_binary_and_the_api_are_one_implementation(tmp_path):
    """The same model and images through `evaluator.run` (what the binary calls) and `advss_tf.autoattack`: the
    same per-example outcome; the binary labels the cut budgets "custom", and keeps them off the model card."""
    path, x, y = _centroid_export(tmp_path)
    cfg = evaluator.EvaluateConfig(
        model=path, output_dir=str(tmp_path / "eval"), attacks=("autoattack",), max_examples=16, batch_size=8,
        targets=1, square_queries=10, quiet=True,
    )  # fmt: skip
    results = evaluator.run(cfg)
    ours = advss_tf.autoattack(path, x, y, batch_size=8, progress=False, targets=1, square_queries=10)
    per_example = np.load(tmp_path / "eval" / worst_case.PER_EXAMPLE)
    np.testing.assert_array_equal(per_example["robust_autoattack"], ours.robust)
    assert ours.clean_accuracy == results["standard_accuracy"] > 0.2
    aa = results["robust_accuracy"]["autoattack"]
    assert aa["version"] == "custom" and "apgd_t target classes 1 (standard: 9)" in aa["changes"]
    assert "AutoAttack (custom: " in (tmp_path / "eval" / "report.md").read_text()
    card = json.loads((tmp_path / "eval" / worst_case.MODEL_CARD).read_text())
    assert card["autoattack_acc"] is None and "custom settings" in card["footnote"]
    table = report.combined_table([results], ["centroids"])
    assert f"{100 * aa['accuracy']:.2f} (custom)" in table and table.splitlines()[2].split("|")[-5].strip() == "–"
    assert results["gradient_masking"]["randomness"]["randomised"] is False


SHARED = ("pgd20", "apgd_ce", "square", "autoattack")


def test_both_doors_call_one_core_and_give_equal_outcomes_on_four_attacks(tmp_path, monkeypatch):
    """PGD-20, APGD-CE, Square and AutoAttack on the same images and SavedModel through the evaluate binary's
    `evaluator.run` and `advss_tf.evaluate_robustness`: both pass through `evaluation.core.evaluate` with the same
    plan, and give the same per-example outcomes, robust accuracies, clean accuracy and worst case."""
    path, x, y = _centroid_export(tmp_path)
    calls = []
    evaluate = core.evaluate

    def spy(model, images, labels, plan, **kwargs):
        calls.append((kwargs["door"], [(name, [s.to_dict() for s in specs]) for name, specs in plan]))
        return evaluate(model, images, labels, plan, **kwargs)

    monkeypatch.setattr(core, "evaluate", spy)
    budgets = dict(targets=1, square_queries=10)  # cut: equality is the question, not AutoAttack's number
    cfg = evaluator.EvaluateConfig(
        model=path, output_dir=str(tmp_path / "eval"), attacks=SHARED, max_examples=len(x), batch_size=8, quiet=True,
        **budgets,
    )  # fmt: skip
    results = evaluator.run(cfg)
    ours = advss_tf.evaluate_robustness(path, x, y, attacks=SHARED, batch_size=8, progress=False, **budgets)
    assert [door for door, _ in calls] == [core.CLI, core.PYTHON]
    assert calls[0][1] == calls[1][1]  # one plan: the same names, stages, radii and budgets
    per_example = np.load(tmp_path / "eval" / worst_case.PER_EXAMPLE)
    assert list(ours.robust_accuracy) == list(results["robust_accuracy"]) == list(SHARED)
    for name in SHARED:
        np.testing.assert_array_equal(per_example[f"robust_{name}"], ours.robust[name], err_msg=name)
        assert ours.robust_accuracy[name] == results["robust_accuracy"][name]["accuracy"], name
        assert ours.details[name].get("version") == results["robust_accuracy"][name].get("version"), name
    assert ours.clean_accuracy == results["standard_accuracy"] > 0.2
    assert ours.worst_case == results["worst_case"]
    # Not a case where every attack finds nothing or everything: the outcomes compared vary.
    assert 0 < results["worst_case"]["accuracy"] < results["standard_accuracy"]


def test_too_many_targets_are_refused_by_both_doors_with_one_sentence(tmp_path):
    path, x, y = _centroid_export(tmp_path, n=8)
    cfg = evaluator.EvaluateConfig(
        model=path, output_dir=str(tmp_path / "eval"), attacks=("apgd_t",), max_examples=len(x), targets=10,
        quiet=True,
    )  # fmt: skip
    with pytest.raises(UsageError, match="pass --targets=9") as cli:
        evaluator.run(cfg)
    with pytest.raises(UsageError, match="pass targets=9") as api:
        advss_tf.evaluate_robustness(path, x, y, attacks=("apgd_t",), targets=10, progress=False)
    with pytest.raises(UsageError, match="pass targets=9"):
        advss_tf.autoattack(path, x, y, targets=10, progress=False)
    # The same sentence, each naming its own door's setting and where it read the class count.
    expected = str(cli.value).replace("--targets", "targets").replace("the data's", "the model's")
    assert str(api.value) == expected
    assert str(api.value).startswith("targets=10 but apgd_t can target at most 9 classes")
    assert not os.path.exists(tmp_path / "eval")  # refused before anything is written


class _NoisyModule(tf.Module):
    """A randomised SavedModel: fresh input noise on every call of its signature."""

    def __init__(self, w):
        super().__init__()
        self.w = tf.Variable(w)
        self.serve = tf.function(self._logits, input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])

    def _logits(self, images):
        noisy = images + tf.random.normal(tf.shape(images), stddev=0.05)
        return {"logits": tf.reshape(noisy - 0.5, [-1, D]) @ self.w}


def test_the_binary_flags_a_randomised_model_and_reports_its_rand_number(tmp_path):
    _, w = _linear_model()
    module = _NoisyModule(w)
    path = str(tmp_path / "noisy")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
    cfg = evaluator.EvaluateConfig(
        model=path, output_dir=str(tmp_path / "eval"), attacks=("autoattack",), autoattack_version="rand",
        max_examples=8, quiet=True,
    )  # fmt: skip
    results = evaluator.run(cfg)
    assert results["gradient_masking"]["randomness"]["randomised"] is True
    assert "randomised_model" in [f["check"] for f in results["gradient_masking"]["flags"]]
    rand = results["robust_accuracy"]["autoattack_rand"]
    assert rand["version"] == "rand" and rand["components"] == ["apgd_ce_eot", "apgd_dlr_eot"]
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "**Randomised model**" in text and "AutoAttack's rand version (autoattack_rand)" in text
    card = json.loads((tmp_path / "eval" / worst_case.MODEL_CARD).read_text())
    assert card["autoattack_acc"] == f"{100 * rand['accuracy']:.2f}"
    # The standard version's number of a randomised model is no headline: not on the card.
    standard = dict(results, robust_accuracy={"autoattack": dict(rand, name="autoattack", version="standard")})
    assert worst_case.headline_autoattack(standard) is None


def test_autoattack_labels_and_versions_in_the_registry():
    specs = registry.configure(registry.COMPOSITES["autoattack"])
    assert registry.autoattack_version("autoattack", specs) == ("standard", [])
    specs2 = registry.configure(registry.COMPOSITES["autoattack"], restarts=2)
    version, changes = registry.autoattack_version("autoattack", specs2)
    assert version == "custom" and "apgd_ce restarts 2 (standard: 1)" in changes
    assert registry.parse_attacks(["autoattack"], "l2", "rand") == ["autoattack_rand_l2"]
    assert not set(registry.EOT_ATTACKS) & set(registry.parse_attacks(["all"]))
    assert registry.autoattack_version("fgsm+pgd20", []) is None
