"""Peer check: our APGD-CE, APGD-T, FAB-T, Square and the standard ensemble against torchattacks' (which ports the
official AutoAttack code) on the same micro classifier in PyTorch, weights copied, on real test images."""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import import_torch

torch = import_torch()
torchattacks = pytest.importorskip("torchattacks")
pytestmark = pytest.mark.peer


def _load_benchmark_tool():
    """tools/benchmark_attacks.py, whose attack tables (ours and torchattacks', same budgets) the test shares."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "benchmark_attacks.py")
    spec = importlib.util.spec_from_file_location("benchmark_attacks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark_attacks = _load_benchmark_tool()

N_IMAGES = 200  # real CIFAR-10 test images of the bundled sample
# Small enough that robust accuracy stays far from 0 on this undefended model, so agreeing means something: at 1/255
# torchattacks' APGD-CE takes it from ~30 % clean to 0 %; at 0.25/255 both frameworks leave 12.5 % (2026-12-01).
EPS = 0.25 / 255
EPS_LABEL = "0.25/255"
TOLERANCE = 0.015  # 1.5 points (3 images of 200)
SEED = 0
STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")
# CI runs the same algorithms in both frameworks at cut budgets (the standard version's 9 × 100 iterations and
# 5,000 queries take many minutes on two cores); ADVSS_PEER_FULL=1 runs the standard version's budgets.
FULL = os.environ.get("ADVSS_PEER_FULL", "") not in ("", "0")
BUDGET = dict(iterations=100, targets=9, queries=5000) if FULL else dict(iterations=10, targets=2, queries=200)
_SIGNATURE = [tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([2], tf.int64)]


def _torch_correct(net, x_adv: "torch.Tensor", y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(x_adv).argmax(1).numpy() == y


def measure(keras_model, net, x: np.ndarray, y: np.ndarray, eps: float) -> dict:
    """Robust accuracy per attack and for the standard ensemble, ours and torchattacks': {name: (ours, theirs)}."""
    outcomes = measure_per_example(keras_model, net, x, y, eps)
    return {name: (float(ours.mean()), float(theirs.mean())) for name, (ours, theirs) in outcomes.items()}


def measure_per_example(keras_model, net, x: np.ndarray, y: np.ndarray, eps: float) -> dict:
    """Per attack and for the standard ensemble, which examples stayed robust, ours and torchattacks':
    {name: (ours bool [N], theirs bool [N])}."""
    model_fn = lambda z: keras_model(z, training=False)  # noqa: E731
    y = y.astype(np.int64)
    ours = {}
    specs = benchmark_attacks.our_specs(eps, **BUDGET)
    for i, name in enumerate(STAGES):
        spec = specs[name]
        attack = tf.function(lambda a, b, s, spec=spec: spec(model_fn, a, b, s), input_signature=_SIGNATURE)
        x_adv = attack(x, y, tf.constant([SEED, i], tf.int64))
        ours[name] = np.argmax(model_fn(x_adv), -1) == y
    # Our attacks are per example (randomness drawn per example), so running each on the survivors of the previous
    # ones gives the same outcome as running each on all and taking the worst case.
    ours["standard"] = np.logical_and.reduce([ours[n] for n in STAGES])

    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(y)
    # torchattacks' AutoAttack(version='standard') included; its own default of 10 iterations (the official code
    # runs 100) is replaced by BUDGET's, as are the target count and queries.
    attacks = benchmark_attacks.torch_attacks(net, eps, **BUDGET)
    theirs = {name: _torch_correct(net, attack(x_nchw, y_t), y) for name, attack in attacks.items()}
    return {name: (ours[name], theirs[name]) for name in ours}


@pytest.fixture(scope="module")
def twin_models(trained_classifier):
    from advss_tf.peer import torch_resnet

    model, _, _ = trained_classifier
    net = torch_resnet.build_torch_classifier(model.backbone, 10)
    torch_resnet.copy_keras_weights(model, net)
    net.eval()
    return model, net


def test_robust_accuracy_agrees_with_torchattacks(twin_models, sample_arrays):
    model, net = twin_models
    _, _, xt, yt = sample_arrays
    x, y = xt[:N_IMAGES].astype(np.float32) / 255.0, yt[:N_IMAGES].astype(np.int64)
    clean = float(np.mean(np.argmax(model(x, training=False), -1) == y))
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy(), model(x), atol=1e-3)
    results = measure(model, net, x, y, EPS)
    print(json.dumps({"clean": clean, "eps": EPS_LABEL, "n": N_IMAGES, "budget": BUDGET, "robust": results}))
    for name, (ours, theirs) in results.items():
        # Informative: neither attack trivially at 0 or at clean accuracy. Square at CI's 200 queries runs the
        # standard version's unrescaled schedule (p halves only 3 times in 200 queries, the windows stay large):
        # it breaks few examples here (2026-12-03, the micro fixture on AMD EPYC: 21.0 % of 22.5 % clean in both
        # frameworks); it must break some.
        assert 0.03 <= theirs, (name, theirs, clean)
        assert theirs < clean if name == "square" else theirs <= clean - 0.03, (name, theirs, clean)
        assert abs(ours - theirs) <= TOLERANCE, (name, ours, theirs)


# -- an adversarially trained model at the standard radius ---------------------------------------------------------
AT_EPS = 8 / 255
AT_IMAGES = 500 if FULL else 200  # real test images (the measurement: all 500 of the bundled sample)
AT_EPOCHS = 20
# Examples on which the two frameworks may disagree (robust in one, broken in the other), as a fraction.
AT_EXAMPLE_DISAGREEMENT = 0.03


class _TorchLinear(torch.nn.Module):
    """The twin of a Keras Flatten → Dense classifier: NCHW input, flattened in Keras' NHWC order."""

    def __init__(self, kernel: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(bias.copy()))

    def forward(self, x):
        return self.linear(x.permute(0, 2, 3, 1).flatten(1))


@pytest.fixture(scope="module")
def adversarially_trained_twins(sample_arrays):
    """A linear classifier adversarially trained (PGD-5 at 8/255, Madry et al.) on the bundled sample's 1,500 real training
    images, and its PyTorch twin. Linear, because adversarially training the tiny ResNet takes many minutes on two
    cores; it is still a model with real robustness at 8/255 (PGD-20 leaves ~10 % of ~25 % clean), unlike the
    undefended one above, whose robust accuracy is 0 at this radius."""
    import keras

    from advss_tf.attacks.pgd import pgd_linf

    x, y, _, _ = sample_arrays
    x = x.astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    optimizer = keras.optimizers.Adam(3e-3)
    model_fn = lambda z: model(z, training=False)  # noqa: E731

    @tf.function
    def step(images, labels, seed):
        x_adv = pgd_linf(model_fn, images, labels, eps=AT_EPS, step_size=2 / 255, steps=5, seed=seed)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, model(x_adv), from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    k = 0
    for epoch in range(AT_EPOCHS):
        order = np.random.default_rng(epoch).permutation(len(x))
        for start in range(0, len(x) - 127, 128):
            idx = order[start : start + 128]
            step(tf.constant(x[idx]), tf.constant(y[idx].astype(np.int64)), tf.constant([0, k], tf.int64))
            k += 1
    kernel, bias = (v.numpy() for v in model.layers[-1].weights)
    net = _TorchLinear(kernel, bias).eval()
    return model, net


def test_robust_accuracy_agrees_with_torchattacks_on_an_adversarially_trained_model_at_8_255(
    adversarially_trained_twins, sample_arrays
):
    model, net = adversarially_trained_twins
    _, _, xt, yt = sample_arrays
    x, y = xt[:AT_IMAGES].astype(np.float32) / 255.0, yt[:AT_IMAGES].astype(np.int64)
    clean = float(np.mean(np.argmax(model(x, training=False), -1) == y))
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy(), model(x), atol=1e-4)
    outcomes = measure_per_example(model, net, x, y, AT_EPS)
    summary = {
        name: {
            "ours": float(ours.mean()),
            "theirs": float(theirs.mean()),
            "examples_differing": int(np.sum(ours != theirs)),
        }
        for name, (ours, theirs) in outcomes.items()
    }
    print(json.dumps({"clean": clean, "eps": "8/255", "n": len(x), "budget": BUDGET, "robust": summary}))
    for name, (ours, theirs) in outcomes.items():
        # Informative: robust accuracy well inside (0, clean) under every attack.
        assert 0.03 <= theirs.mean() <= clean - 0.02, (name, theirs.mean(), clean)
        assert abs(ours.mean() - theirs.mean()) <= TOLERANCE, (name, ours.mean(), theirs.mean())
        assert np.mean(ours != theirs) <= AT_EXAMPLE_DISAGREEMENT, (name, summary[name])
