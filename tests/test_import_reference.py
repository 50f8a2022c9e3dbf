"""The reference's checkpoints import layer-exactly (issue 18): a PyTorch twin of each reference model
(advss_tf.peer.reference_models, the reference's parameter names) with random weights *and* random BatchNorm
statistics, saved in its training script's checkpoint layout, imported, and run on real CIFAR-10 images in inference
mode next to the twin. Tiny widths (our `tiny` backbone: basic blocks [1,1,1,1], widths 16-128) keep it fast."""

import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
from binaries import run_binary
from conftest import import_torch

from advss_tf import export
from advss_tf.errors import UsageError
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import finetuning

torch = import_torch()
pytestmark = pytest.mark.peer

from advss_tf.importers import formats, pretext  # noqa: E402
from advss_tf.peer import reference_models as R  # noqa: E402

TINY = dict(kind="basic", blocks=(1, 1, 1, 1), planes=(16, 32, 64, 128), stem=16)
TOLERANCE = 1e-4  # max abs difference on logits of order 1 (issue 18)


@pytest.fixture(scope="module")
def images(sample_arrays):
    """64 real CIFAR-10 test images, NHWC float32 in [0, 1]."""
    return sample_arrays[2][:64].astype(np.float32) / 255.0


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assert_close(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert np.abs(theirs).max() > 0.2  # of order 1: a comparison of near-zero outputs would prove nothing
    assert np.abs(ours - theirs).max() <= TOLERANCE


def twin_classifier(num_classes: int, seed: int) -> torch.nn.Sequential:
    return R.randomize(R.with_normalizer(R.ReferenceResNet(num_classes=num_classes, **TINY)), seed).eval()


@pytest.fixture(scope="module")
def finetune_file(tmp_path_factory):
    """finetune/main.py's checkpoint layout: {'epoch', 'state_dict' (normaliser + ResNet), 'best_prec1'}."""
    net = twin_classifier(10, seed=1)
    path = str(tmp_path_factory.mktemp("ref") / "model_best.pt")
    torch.save({"epoch": 7, "state_dict": net.state_dict(), "best_prec1": torch.tensor(51.0)}, path)
    return net, path


def test_finetune_classifier_is_layer_exact(finetune_file, images):
    net, path = finetune_file
    imported = formats.load(path, "finetune")
    model = imported.models["classifier"]
    with torch.no_grad():
        theirs = net(nchw(images)).numpy()
    assert_close(model(images, training=False), theirs)
    assert imported.backbone.name == "tiny" and imported.backbone.arch_version == 2
    provenance = imported.info["imported"]
    assert provenance["checkpoint_metadata"] == {"epoch": 7.0, "best_prec1": 51.0}
    assert provenance["sources"][0]["file"] == "model_best.pt" and len(provenance["sources"][0]["sha256"]) == 64
    assert provenance["normalization"]["mean"] == np.float32(R.IMAGENET_MEAN).tolist()


@pytest.mark.parametrize("task, classes", [("rotation", 4), ("jigsaw", 31)])
def test_rotation_and_jigsaw_are_layer_exact(task, classes, images, tmp_path):
    net = twin_classifier(classes, seed=2)
    path = str(tmp_path / "best_model.pt")
    torch.save({"epoch": 1, "state_dict": net.state_dict(), "best_prec1": 90.0}, path)
    kwargs = {}
    if task == "jigsaw":
        perms = np.array([np.random.default_rng(i).permutation(16) for i in range(classes - 1)])
        np.save(tmp_path / "permutation.npy", perms)
        kwargs["permutations"] = str(tmp_path / "permutation.npy")
    model = formats.load(path, task, **kwargs).models["model"]
    with torch.no_grad():
        theirs_logits = net(nchw(images)).numpy()
        theirs_features = net[1].feature_map(net[0](nchw(images))).mean(dim=(2, 3)).numpy()
    assert_close(model(images, training=False), theirs_logits)
    np.testing.assert_allclose(model.features(images, training=False), theirs_features, atol=TOLERANCE, rtol=0)
    if task == "jigsaw":  # class 0 the identity, class k the file's row k-1, as the reference's jigsaw()
        np.testing.assert_array_equal(pretext.read_permutations(kwargs["permutations"])[1:], perms)


def test_selfie_is_layer_exact(images, tmp_path):
    p_model = R.randomize(R.with_normalizer(R.reference_p(TINY["kind"], (1, 1, 1), (16, 32, 64), 16)), 3).eval()
    selfie = R.randomize(R.ReferenceSelfie(n_layers=1, n_heads=4, d_k=16, d_model=64, d_ff=32), 4).eval()
    path = str(tmp_path / "adv_selfie_checkpoint.pth.tar")
    torch.save(
        {"epoch": 3, "P_state": p_model.state_dict(), "selfie_state": selfie.state_dict(), "best_prec1": 1.0}, path
    )
    imported = formats.load(path, "selfie", selfie_heads=4)
    model = imported.models["model"]
    order = np.random.default_rng(5).permutation(16)
    with torch.no_grad():
        theirs = R.selfie_patch_logits(p_model, selfie, nchw(images), order).numpy()
    assert_close(model.selfie_logits(images, tf.constant(order, tf.int32), training=False), theirs)
    assert model.selfie_head.num_layers == 2  # n_layers + 1, as attention_pooling builds it


def test_ensemble_pretraining_is_layer_exact(images, tmp_path):
    ensemble = R.randomize(R.PretrainEnsemble(**TINY, jigsaw_classes=31), 7).eval()
    selfie = R.randomize(R.ReferenceSelfie(n_layers=1, n_heads=4, d_k=16, d_model=64, d_ff=32), 8).eval()
    path = str(tmp_path / "model.pt")
    torch.save({"epoch": 2, "selfie_state": selfie.state_dict(), "state_dict": ensemble.state_dict()}, path)
    np.save(tmp_path / "permutation.npy", np.array([np.random.default_rng(i).permutation(16) + 1 for i in range(30)]))
    imported = formats.load(path, "ensemble_pretrain", permutations=str(tmp_path / "permutation.npy"), selfie_heads=4)
    model = imported.models["model"]
    assert not imported.backbone.stem_norm  # the reference ensemble's trunk: conv1 straight into layer1
    order = np.random.default_rng(9).permutation(16)
    x = nchw(images)
    with torch.no_grad():
        rotation = ensemble.head_logits(x, "rotation").numpy()
        jigsaw = ensemble.head_logits(x, "jigsaw").numpy()
        patch_logits = R.selfie_patch_logits(lambda p: ensemble(p).mean(dim=(2, 3)), selfie, x, order).numpy()
    assert_close(model.rotation(images, training=False), rotation)
    assert_close(model.jigsaw(images, training=False), jigsaw)
    assert_close(model.selfie.selfie_logits(images, tf.constant(order, tf.int32), training=False), patch_logits)


def test_robustbench_ensemble_is_layer_exact(images, tmp_path):
    net = R.randomize(R.Chen2020Adversarial(num_classes=10, **TINY), 6).eval()
    path = str(tmp_path / "Chen2020Adversarial.pt")
    torch.save(net.state_dict(), path)
    assert any(k.startswith("models.2.") for k in net.state_dict())  # the duplicate registration is in the file
    branches = formats.load(path, "robustbench").models
    ours = np.mean([tf.nn.softmax(branches[f"branch{i + 1}"](images, training=False)) for i in range(3)], axis=0)
    with torch.no_grad():
        theirs = net(nchw(images)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)

    state = net.state_dict()
    state["models.1.linear.bias"] = state["models.1.linear.bias"] + 1.0  # the two registrations disagree
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"models\.1\.linear\.bias is not the same tensor as branch2\.linear\.bias"):
        formats.load(path, "robustbench")


@pytest.mark.slow
def test_an_imported_ensemble_export_serves_the_mean_softmax_and_evaluates(images, tmp_path):
    net = R.randomize(R.Chen2020Adversarial(num_classes=10, **TINY), 6).eval()
    path = str(tmp_path / "Chen2020Adversarial.pt")
    torch.save({"state_dict": net.state_dict()}, path)
    out = str(tmp_path / "imported")
    formats.import_checkpoint(path, "robustbench", out)
    probabilities = tf.saved_model.load(out).signatures["serving_default"](images=tf.constant(images))["probabilities"]
    with torch.no_grad():
        theirs = net(nchw(images)).numpy()
    np.testing.assert_allclose(probabilities, theirs, atol=TOLERANCE, rtol=0)
    info = export.read_info(out)
    assert info["format"] == "advss_tf.classifier" and len(info["ensemble"]) == 3

    done = run_binary(
        "advss_tf.evaluate",
        *[f"--model={out}", f"--output_dir={tmp_path / 'eval'}", "--attacks=none", "--max_examples=16"],
        *["--batch_size=16", "--quiet"],
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    card = (tmp_path / "eval" / "model_card.json").read_text()
    assert '"architecture": "ensemble of 3"' in card and "model trained by the reference code" in card
    assert "- Trained by Adv-SS-Pretraining" in (tmp_path / "eval" / "report.md").read_text()


def test_finetune_ensemble_of_three_files_matches_the_mean_softmax(finetune_file, images, tmp_path):
    nets, paths = [], []
    for i in range(3):
        net = twin_classifier(10, seed=10 + i)
        paths.append(str(tmp_path / f"branch{i}.pt"))
        torch.save({"epoch": 1, "state_dict": net.state_dict(), "best_prec1": 0.0}, paths[-1])
        nets.append(net)
    branches = formats.load(paths, "finetune_ensemble").models
    ours = np.mean([tf.nn.softmax(branches[f"branch{i + 1}"](images, training=False)) for i in range(3)], axis=0)
    with torch.no_grad():
        theirs = np.mean([torch.softmax(n(nchw(images)), 1).numpy() for n in nets], axis=0)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)

    # The same ensemble as model_ensemble.SelfEnsembleModel_all's own state_dict (branch1-3., normalize.).
    whole = R.FinetuneEnsemble(num_classes=10, **TINY).eval()
    for i, net in enumerate(nets):
        getattr(whole, f"branch{i + 1}").load_state_dict({k[2:]: v for k, v in net.state_dict().items() if k[0] == "1"})
    torch.save(whole.state_dict(), tmp_path / "ensemble.pt")
    branches = formats.load(str(tmp_path / "ensemble.pt"), "finetune_ensemble").models
    ours = np.mean([tf.nn.softmax(branches[f"branch{i + 1}"](images, training=False)) for i in range(3)], axis=0)
    with torch.no_grad():
        np.testing.assert_allclose(whole(nchw(images)).numpy(), theirs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_an_imported_jigsaw_export_fine_tunes(tmp_path):
    net = twin_classifier(31, seed=8)
    path = str(tmp_path / "model.pt")
    torch.save({"epoch": 1, "state_dict": net.state_dict(), "best_prec1": 0.0}, path)
    out = str(tmp_path / "pretrain")
    formats.import_checkpoint(path, "jigsaw", out)  # no permutation set: features import, the head is unusable
    info = export.read_info(out)
    assert info["jigsaw_head"].startswith("unusable") and info["backbone"]["arch_version"] == 2
    done = run_binary(
        "advss_tf.finetune",
        *[f"--pretrained={out}", f"--model_dir={tmp_path / 'ft'}", "--batch_size=16", "--train_steps=2"],
        *["--attack_steps=1", "--steps_per_loop=1", "--quiet", "--val_examples=16", "--val_batch_size=16"],
        "--val_attack_steps=1",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ft" / "export" / "best_ra" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_an_imported_ensemble_pretraining_export_restores_its_trunk_for_finetuning(images, tmp_path):
    ensemble = R.randomize(R.PretrainEnsemble(**TINY, jigsaw_classes=31), 11).eval()
    selfie = R.randomize(R.ReferenceSelfie(n_layers=1, n_heads=4, d_k=16, d_model=64, d_ff=32), 12).eval()
    path = str(tmp_path / "model.pt")
    torch.save({"epoch": 2, "selfie_state": selfie.state_dict(), "state_dict": ensemble.state_dict()}, path)
    out = str(tmp_path / "pretrain")
    formats.import_checkpoint(path, "ensemble_pretrain", out, selfie_heads=4)
    cfg, info = finetuning.resolve_backbone(finetuning.FinetuneConfig(model_dir=str(tmp_path / "ft"), pretrained=out))
    assert not cfg.backbone.stem_norm and info["jigsaw_head"].startswith("unusable")
    classifier = ImageClassifier(cfg.backbone, 10)
    assert finetuning.restore_pretrained(out, info, classifier) == ["trunk"]
    with torch.no_grad():
        theirs = ensemble(nchw(images)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(classifier.trunk(images, training=False), theirs, atol=TOLERANCE, rtol=0)


# -- bad input: one UsageError naming the problem, nothing written -------------------------------------------------
class Opaque:
    """A pickled object of this class needs full unpickling."""


def _state(finetune_file):
    return {k: v.clone() for k, v in finetune_file[0].state_dict().items()}


def test_bad_inputs_are_refused_with_one_line_and_nothing_written(finetune_file, tmp_path):
    out = tmp_path / "out"

    def refused(pattern, checkpoint, fmt="finetune", **kwargs):
        with pytest.raises(UsageError, match=pattern) as e:
            formats.import_checkpoint(checkpoint, fmt, str(out), **kwargs)
        assert "\n" not in str(e.value) and not out.exists()

    refused("is not a file", str(tmp_path / "nope.pt"))
    (tmp_path / "text.pt").write_text("hello")
    refused("is not a PyTorch checkpoint", str(tmp_path / "text.pt"))
    torch.save({"state_dict": Opaque()}, tmp_path / "opaque.pt")
    refused("needs full unpickling", str(tmp_path / "opaque.pt"))
    refused("missing P_state, selfie_state", finetune_file[1], fmt="selfie")
    refused("takes one --checkpoint file, got 2", [finetune_file[1]] * 2)
    with pytest.raises(UsageError, match="unknown --format 'resnet'"):
        formats.load(finetune_file[1], "resnet")

    state = _state(finetune_file)
    del state["1.layer2.0.shortcut.1.running_var"]
    torch.save({"state_dict": state}, tmp_path / "missing.pt")
    refused(r"1 missing: 1\.layer2\.0\.shortcut\.1\.running_var", str(tmp_path / "missing.pt"))

    state = {**_state(finetune_file), "1.extra.weight": torch.zeros(3)}
    torch.save({"state_dict": state}, tmp_path / "unexpected.pt")
    refused(r"1 unexpected: 1\.extra\.weight", str(tmp_path / "unexpected.pt"))

    state = _state(finetune_file)
    state["1.layer3.0.conv1.weight"] = torch.zeros(64, 32, 3, 1)
    torch.save({"state_dict": state}, tmp_path / "misshaped.pt")
    refused(
        r"1 mis-shaped: 1\.layer3\.0\.conv1\.weight \(64, 32, 3, 1\) \(expected \(64, 32, 3, 3\)\)",
        str(tmp_path / "misshaped.pt"),
    )

    state = _state(finetune_file)
    state["0.mean"] = torch.tensor([0.4914, 0.4822, 0.4465])  # CIFAR-10 statistics: not what our models use
    torch.save({"state_dict": state}, tmp_path / "cifar_mean.pt")
    refused("normaliser mean", str(tmp_path / "cifar_mean.pt"))

    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    with pytest.raises(UsageError, match="is not empty; pass --overwrite"):
        formats.import_checkpoint(finetune_file[1], "finetune", str(out))
    assert os.listdir(out) == ["keep.txt"]


def test_an_option_a_format_does_not_take_is_refused_naming_the_formats_that_do(finetune_file):
    with pytest.raises(UsageError, match=r"--permutations is for --format=jigsaw or ensemble_pretrain, not rotation"):
        formats.load(finetune_file[1], "rotation", permutations="permutation.npy")
    with pytest.raises(UsageError, match=r"--selfie_heads is for --format=selfie or ensemble_pretrain, not finetune"):
        formats.load(finetune_file[1], "finetune", selfie_heads=4)


@pytest.mark.slow
def test_the_binary_exits_2_with_one_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"state_dict": Opaque()}))
    done = run_binary(
        "advss_tf.import_torch",
        *[f"--checkpoint={tmp_path / 'x.pt'}", "--format=finetune", f"--output={tmp_path / 'out'}"],
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()
