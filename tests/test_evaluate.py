"""The evaluate binary: loading any classifier SavedModel, end to end on a Keras export, the report tool, bad input."""

import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from binaries import run_binary, run_script

from advss_tf import serving
from advss_tf.attacks.registry import ATTACKS, EOT_ATTACKS
from advss_tf.corruptions import cifar10c
from advss_tf.data import cifar10
from advss_tf.errors import UsageError
from advss_tf.evaluation import evaluator, robustness
from advss_tf.models.backbones import BackboneConfig
from advss_tf.models.classifier import ImageClassifier
from advss_tf.serving import load_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)


def _tiny_model(seed=0) -> ImageClassifier:
    keras.utils.set_random_seed(seed)
    model = ImageClassifier(BackboneConfig("tiny"), 10)
    model(PROBE)  # Keras export needs a model that has been called
    return model


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory):
    """A third-party-style classifier: Keras `model.export` of a tiny ResNet (signature input 'keras_tensor...')."""
    model = _tiny_model()
    path = str(tmp_path_factory.mktemp("third_party") / "classifier")
    model.export(path, verbose=False)
    return path, model


class _Module(tf.Module):
    """A SavedModel written with tf.saved_model.save: `fn` behind a signature of the given input spec."""

    def __init__(self, fn, spec):
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal([3, 10], seed=[1, 2]))
        self.serve = tf.function(lambda images: fn(self, images), input_signature=[spec])


def _save_module(path, fn, spec=tf.TensorSpec([None, 32, 32, 3], tf.float32)) -> str:
    module = _Module(fn, spec)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
    return str(path)


def _pooled(module, images):
    return tf.reduce_mean(images, axis=[1, 2]) @ module.w


# -- loading ---------------------------------------------------------------------------------------------------------
def test_keras_export_loads_as_logits_and_matches_the_model(keras_export):
    path, model = keras_export
    clf = load_classifier(path, PROBE)
    assert (clf.signature, clf.output_kind, clf.batch_size) == ("serving_default", "logits", None)
    np.testing.assert_allclose(clf(tf.constant(PROBE)).numpy(), model(PROBE, training=False).numpy(), atol=1e-4)
    ids = clf.describe()
    assert len(ids["saved_model_pb_sha256"]) == 64 and len(ids["variables_sha256"]) == 64


def test_our_classifier_export_uses_its_logits_output(tmp_path):
    model = _tiny_model(1)
    serving.save_classifier(str(tmp_path / "ft"), lambda im: model(im, training=False), {"model": model}, info={})
    clf = load_classifier(str(tmp_path / "ft"), PROBE)
    assert (clf.signature, clf.output_name, clf.output_kind) == ("serving_default", "logits", "logits")
    with tf.GradientTape() as tape:  # input gradients survive save/load: the attacks need them
        x = tf.constant(PROBE)
        tape.watch(x)
        loss = tf.reduce_sum(clf(x)[:, 0])
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, x)))) > 0


def test_a_probabilities_only_model_is_attacked_through_log_probabilities(tmp_path):
    path = _save_module(tmp_path / "probs", lambda m, x: {"output_0": tf.nn.softmax(_pooled(m, x))})
    clf = load_classifier(path, PROBE)
    assert clf.output_kind == "probabilities"
    logits = _pooled(clf.loaded, tf.constant(PROBE))
    np.testing.assert_allclose(clf(tf.constant(PROBE)).numpy(), tf.nn.log_softmax(logits).numpy(), atol=1e-5)


def test_a_fixed_batch_signature_is_padded(tmp_path):
    spec = tf.TensorSpec([8, 32, 32, 3], tf.float32)
    path = _save_module(tmp_path / "fixed", lambda m, x: {"logits": _pooled(m, x)}, spec)
    clf = load_classifier(path, PROBE)
    assert clf.batch_size == 8
    images = (np.random.default_rng(1).uniform(size=(11, 32, 32, 3)) * 255).astype(np.uint8)
    labels = np.arange(11) % 10
    correct = robustness.Predictor(clf, fixed_batch=8).correct(images, labels, batch_size=8)
    expected = np.argmax(_pooled(clf.loaded, tf.constant(images / 255.0, tf.float32)).numpy(), -1) == labels
    np.testing.assert_array_equal(correct, expected)


@pytest.mark.parametrize(
    "fn, match",
    [
        # 5 classes on 10-class test data: the class counts differ.
        (lambda m, x: {"logits": _pooled(m, x)[:, :5]}, "outputs 5 classes but the test data has 10"),
        (lambda m, x: {"logits": tf.reshape(_pooled(m, x), [-1])}, "no signature mapping"),  # flat output
        (lambda m, x: {"a": _pooled(m, x), "b": _pooled(m, x)}, "no signature mapping"),  # which one is the logits?
    ],
)
def test_signatures_that_are_not_images_to_logits_are_refused(tmp_path, fn, match):
    with pytest.raises(UsageError, match=match):
        load_classifier(_save_module(tmp_path / "bad", fn), PROBE)


def test_corruption_and_severity_lists():
    assert len(cifar10c.parse_corruptions(["headline"])) == 15
    assert len(cifar10c.parse_corruptions(["all"])) == 19
    assert cifar10c.parse_corruptions(["fog", "extra", "fog"])[:2] == ("fog", "speckle_noise")
    assert cifar10c.parse_severities(["5", "1", "5"]) == (1, 5)
    with pytest.raises(UsageError, match="valid: gaussian_noise"):
        cifar10c.parse_corruptions(["fogg"])
    with pytest.raises(UsageError, match="severity"):
        cifar10c.parse_severities(["6"])


# -- the binary ------------------------------------------------------------------------------------------------------
def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_binary("advss_tf.evaluate", *args, timeout=600)


def test_end_to_end_on_a_keras_export_then_the_report_tool(keras_export, tmp_path):
    path, model = keras_export
    out = tmp_path / "eval"
    args = [f"--model={path}", f"--output_dir={out}", "--max_examples=24", "--batch_size=16", "--quiet"]
    extra = ["--attacks=fgsm,pgd20", "--cifar10c_source=generate", "--corruptions=contrast,fog", "--severities=1,5"]
    result = _evaluate(*args, *extra, "--model_name=tiny-third-party")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # Clean accuracy is the model's own: the Keras model on the same 24 bundled test images agrees per example.
    test_images, test_labels = cifar10.load_arrays(cifar10.DataSource(), "test")
    predicted = np.argmax(model(test_images[:24] / np.float32(255), training=False).numpy(), -1)
    per_example = np.load(out / "per_example.npz")
    np.testing.assert_array_equal(per_example["clean_correct"], predicted == test_labels[:24])
    assert results["num_examples"] == 24 and results["standard_accuracy"] == np.mean(predicted == test_labels[:24])
    pgd = results["robust_accuracy"]["pgd20"]
    assert (pgd["norm"], pgd["epsilon_label"], pgd["steps"], pgd["restarts"]) == ("linf", "8/255", 20, 1)
    # Robust accuracy counts exactly the per-example survivors, every one of them correct clean.
    robust = per_example["robust_pgd20"]
    assert pgd["num_robust"] == robust.sum() and not np.any(robust & ~per_example["clean_correct"])
    assert pgd["max_perturbation"] <= 8 / 255 + 1e-6
    worst = results["worst_case"]
    np.testing.assert_array_equal(per_example["worst_case_robust"], robust & per_example["robust_fgsm"])
    assert worst["num_robust"] == per_example["worst_case_robust"].sum() and worst["attacks"] == ["fgsm", "pgd20"]
    assert set(results["cifar10c"]["accuracy"]) == {"contrast", "fog"}
    assert set(results["cifar10c"]["mean_accuracy_per_severity"]) == {"1", "5"}
    # 4 of the 75 headline sets: a partial mean, and the report and the model card say so.
    assert (results["cifar10c"]["headline_sets"], results["cifar10c"]["headline_complete"]) == (4, False)
    card = json.loads((out / "model_card.json").read_text())
    assert card["corruptions_acc"] is None and card["clean_acc"] == f"{100 * results['standard_accuracy']:.2f}"
    assert card["eps"] == "8/255" and card["number_forward_passes"] == 1
    csv = (out / "cifar10c.csv").read_text().splitlines()
    assert csv[0] == "corruption,severity,accuracy,num_examples" and len(csv) == 5 and csv[1].startswith("contrast,1,")
    assert results["model"]["name"] == "tiny-third-party" and results["model"]["signature"] == "serving_default"
    assert results["gradient_masking"]["suspected"] is False
    report = (out / "report.md").read_text()
    assert "| pgd20 | L∞ | 8/255 |" in report and "| fog |" in report and "| pgd20 |" in result.stdout
    assert "Mean over 4 of the 75 headline sets" in report and "**worst case, Linf 8/255** (fgsm, pgd20)" in report
    assert not (out / "partial").exists() and f"results: {out / 'results.json'}" in result.stdout
    for figure in results["figures"].values():
        assert (out / figure).stat().st_size > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard" / "evaluate"))

    again = _evaluate(*args, "--attacks=fgsm")  # existing results are not overwritten silently
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert "already exists" in again.stderr

    report_dir = tmp_path / "report"
    tool = run_script("tools/report.py", f"--output_dir={report_dir}", "--paper", str(out), timeout=300)
    assert tool.returncode == 0, tool.stderr[-2000:]
    assert "| tiny-third-party | 24 |" in tool.stdout
    header = tool.stdout.splitlines()[0]
    assert "| AutoAttack | worst case | CIFAR-10-C mean |" in header
    assert f"| {100 * worst['accuracy']:.2f} | {100 * results['cifar10c']['mean_accuracy']:.2f} (4/75) |" in tool.stdout
    assert (report_dir / "sa_vs_ra.png").stat().st_size > 1000 and (report_dir / "comparison.md").exists()


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(keras_export, tmp_path):
    path, _ = keras_export
    not_saved_model = tmp_path / "empty_dir"
    not_saved_model.mkdir()
    five_classes = _save_module(tmp_path / "five", lambda m, x: {"logits": _pooled(m, x)[:, :5]})
    empty_data = tmp_path / "cifar"
    empty_data.mkdir()
    (empty_data / "test_batch.bin").write_bytes(b"")
    cases = {
        "not a SavedModel": ([f"--model={not_saved_model}"], "not a SavedModel"),
        "5-class signature": ([f"--model={five_classes}"], "outputs 5 classes but the test data has 10"),
        "unknown attack": ([f"--model={path}", "--attacks=pgd20,pgd7"], "unknown attack 'pgd7'"),
        "epsilon out of range": ([f"--model={path}", "--linf_epsilon=2"], "linf_epsilon"),
        "missing test source": (
            [f"--model={path}", "--dataset=binary", f"--data_dir={tmp_path / 'no'}"],
            "does not exist",
        ),
        "empty test source": ([f"--model={path}", "--dataset=binary", f"--data_dir={empty_data}"], "truncated"),
        "missing CIFAR-10-C": ([f"--model={path}", "--cifar10c_source=npy", f"--cifar10c_dir={tmp_path}"], "not found"),
        "more targets than classes - 1": (
            [f"--model={path}", "--attacks=apgd_t", "--targets=10"],
            "apgd_t can target at most 9 classes",
        ),
        "unknown strategy": ([f"--model={path}", "--strategy=multi_worker"], "strategy"),
        "unknown AutoAttack version": ([f"--model={path}", "--autoattack_version=plus"], "autoattack_version"),
    }
    # The other configuration checks raise the same UsageError before any work (test_config_checks_... below);
    # one of them (--targets) goes through the binary here, which turns every UsageError into this one line.
    for i, (name, (args, _)) in enumerate(cases.items()):
        result = _evaluate(*args, f"--output_dir={tmp_path / 'out' / str(i)}", "--quiet")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr[-2000:])
        assert cases[name][1] in lines[0], (name, lines[0])
        assert not (tmp_path / "out" / str(i)).exists(), name

    # Another model's partial results in --output_dir: refused, and left as they were.
    foreign = tmp_path / "foreign"
    identity = foreign / "partial" / "identity.json"
    identity.parent.mkdir(parents=True)
    identity.write_text(json.dumps({"model": {"saved_model_pb_sha256": "0" * 64}}))
    result = _evaluate(f"--model={path}", f"--output_dir={foreign}", "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "partial results of another model or configuration" in lines[0]
    assert sorted(os.listdir(foreign)) == ["partial"] and os.listdir(foreign / "partial") == ["identity.json"]


def test_config_checks_happen_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="unknown attack"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), attacks=("nope",))
    with pytest.raises(UsageError, match="l2 epsilon"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), l2_epsilon=100.0)
    with pytest.raises(UsageError, match=r"unknown attack\(s\) 'pgd7'"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), attacks=("fgsm+pgd7",))
    with pytest.raises(UsageError, match="fogg"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), corruptions=("fogg",))
    with pytest.raises(UsageError, match="--square_queries must be >= 1"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), square_queries=0)
    with pytest.raises(UsageError, match="--targets must be >= 1"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), targets=0)
    with pytest.raises(UsageError, match="unknown AutoAttack version 'plus'"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), autoattack_version="plus")
    with pytest.raises(UsageError, match="CIFAR-10-C source"):
        evaluator.EvaluateConfig(model="m", output_dir=str(tmp_path), cifar10c_source="zenodo")
    cfg = evaluator.EvaluateConfig(
        model="m", output_dir=str(tmp_path), attacks=("all",), corruptions=("extra",), severities=("5", "1")
    )
    # What results.json will record: every single attack but the EOT ones (randomised models only).
    assert cfg.attacks[:2] == ("fgsm", "pgd20") and cfg.attacks == tuple(a for a in ATTACKS if a not in EOT_ATTACKS)
    assert cfg.severities == (1, 5) and cfg.corruptions[0] == "speckle_noise" and len(cfg.corruptions) == 4
