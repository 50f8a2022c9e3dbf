"""The ensemble export: mean of the members' softmax, logits = log of it, and attacks through the average."""

import os

import numpy as np
import pytest
import tensorflow as tf
from binaries import run_script

from advss_tf import export, serving
from advss_tf.attacks.pgd import cross_entropy, pgd_linf
from advss_tf.errors import UsageError
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def members(trained_classifier, tmp_path_factory):
    """Two classifier exports that disagree: the trained micro model and a copy with a perturbed head."""
    model_a, images, labels = trained_classifier
    model_b = ImageClassifier(model_a.backbone, 10)
    model_b.set_weights(model_a.get_weights())
    rng = np.random.default_rng(0)
    model_b.head.kernel.assign(
        model_b.head.kernel.numpy() + rng.normal(size=model_b.head.kernel.shape).astype(np.float32)
    )
    root = tmp_path_factory.mktemp("members")
    paths = []
    for name, model in (("a", model_a), ("b", model_b)):
        paths.append(str(root / name))
        validation.export_classifier(paths[-1], model, {"num_classes": 10})
    return (model_a, model_b), paths, images[:32], labels[:32], root


def test_log_mean_softmax_is_the_log_of_the_averaged_probabilities():
    a = tf.constant([[2.0, 0.0, -1.0], [50.0, -50.0, 0.0]])
    b = tf.constant([[0.0, 1.0, 0.0], [-50.0, 50.0, 0.0]])
    z = serving.log_mean_softmax([a, b])
    expected = 0.5 * (tf.nn.softmax(a) + tf.nn.softmax(b))
    np.testing.assert_allclose(tf.exp(z), expected, rtol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(z), expected, rtol=1e-5)  # already normalised
    assert np.all(np.isfinite(z.numpy()))  # saturated members: no log(0)


def test_ensemble_export_averages_softmax_and_attacks_go_through_the_average(members, tmp_path):
    (model_a, model_b), paths, images, labels, _ = members
    out = str(tmp_path / "ensemble")
    info = serving.save_ensemble(paths, out)
    assert info["format"] == serving.CLASSIFIER_FORMAT and len(info["ensemble"]) == 2
    assert export.read_info(out)["combination"].startswith("probabilities = mean")
    assert os.listdir(os.path.join(out, "assets")) == [export.EXPORT_INFO]  # no member's info shadows it
    x, y = tf.constant(images), tf.constant(labels)

    def keras_average(z):  # the reference's SelfEnsembleModel_all: mean of softmax
        return 0.5 * (tf.nn.softmax(model_a(z, training=False)) + tf.nn.softmax(model_b(z, training=False)))

    loaded = tf.saved_model.load(out)
    serve = loaded.signatures["serving_default"]
    result = serve(images=x)
    np.testing.assert_allclose(result["probabilities"], keras_average(x), atol=1e-5)
    np.testing.assert_allclose(
        cross_entropy(y, result["logits"]), -np.log(tf.gather(keras_average(x), y, batch_dims=1)), rtol=1e-4, atol=1e-5
    )
    # The input gradient of CE on the export's logits is that of -log(mean p_y): the attack sees the average.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss_export = cross_entropy(y, serve(images=x)["logits"])
        loss_keras = -tf.math.log(tf.gather(keras_average(x), y, batch_dims=1))
    g_export, g_keras = tape.gradient(loss_export, x), tape.gradient(loss_keras, x)
    np.testing.assert_allclose(g_export, g_keras, rtol=1e-3, atol=1e-6)

    def adversarial_accuracy(logits_fn):
        adv = pgd_linf(logits_fn, x, y, eps=8 / 255, step_size=2 / 255, steps=3, seed=tf.constant([5, 6], tf.int64))
        return float(tf.reduce_mean(tf.cast(tf.argmax(logits_fn(adv), -1, output_type=tf.int32) == y, tf.float32)))

    via_export = adversarial_accuracy(lambda z: serve(images=z)["logits"])
    via_keras = adversarial_accuracy(lambda z: tf.math.log(keras_average(z)))
    assert via_export == pytest.approx(via_keras, abs=1 / 32)
    _, logits_fn = serving.logits_function(out)  # what evaluate loads: images → logits
    assert logits_fn(x).shape == (32, 10)
    np.testing.assert_allclose(
        loaded.signatures["serving_uint8"](images=tf.zeros([2, 32, 32, 3], tf.uint8))["probabilities"],
        keras_average(tf.zeros([2, 32, 32, 3])),
        atol=1e-5,
    )


def test_bad_members_are_usage_errors(members, tmp_path):
    _, paths, _, _, root = members
    with pytest.raises(UsageError, match="at least 2"):
        serving.save_ensemble(paths[:1], str(tmp_path / "e"))
    with pytest.raises(UsageError, match="not a SavedModel"):
        serving.save_ensemble([paths[0], str(tmp_path / "missing")], str(tmp_path / "e"))
    with pytest.raises(UsageError, match="is also a member"):
        serving.save_ensemble(paths, paths[0])
    assert not os.path.exists(tmp_path / "e")


def test_cli_refuses_a_signature_that_is_not_images_to_logits(members, tmp_path):
    _, paths, _, _, _ = members
    module = tf.Module()
    module.f = tf.function(lambda x: {"scores": x * 2.0}, input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.f})
    proc = run_script(
        "tools/ensemble_export.py", f"--members={paths[0]},{tmp_path / 'other'}", f"--output={tmp_path / 'ens'}"
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not float32 [N,H,W,3]" in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "ens")
