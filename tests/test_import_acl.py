"""ACL's, DynACL's and AIR's pretraining checkpoints import layer-exactly (issue 33): ACL's multi-BN ResNet +
projection head in PyTorch (advss_tf.peer.torch_acl_resnet, their state-dict keys) with random weights and random
BatchNorm statistics on both routes, saved in each code's checkpoint layout (importers/contrastive.py cites the
lines), imported, and the export's `features` / `features_clean` run on real CIFAR-10 images beside the twin's
'pgd' / 'normal' routes. ACL's file is a ResNet-18 imported by the binary; the other layouts differ from it only in
their top-level entries, so they, the refusals and the fine-tuning run use tiny widths (tiny_post) to stay fast."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from binaries import run_binary
from conftest import import_torch

from advss_tf import export
from advss_tf.errors import UsageError
from advss_tf.importers.checkpoint import sha256
from advss_tf.models import post_resnet
from advss_tf.models.backbones import BACKBONES
from advss_tf.models.classifier import ImageClassifier
from advss_tf.training import finetuning

torch = import_torch()
pytestmark = pytest.mark.peer

from advss_tf.importers import formats  # noqa: E402
from advss_tf.peer import reference_models as R  # noqa: E402
from advss_tf.peer import torch_acl_resnet as T  # noqa: E402

TOLERANCE = 1e-4  # max |Δ| on features of order 1 (issue 33)
TINY = {k: getattr(BACKBONES["tiny_post"], k) for k in ("blocks", "planes", "stem")}
SIGNATURE_BN = {"features": "pgd", "features_clean": "normal"}  # our signature → ACL's bn_name
ROUTE_BN = {"adversarial": "pgd", "clean": "normal"}
BATCHES = {"clean": 1000, "adversarial": 1001}  # num_batches_tracked of bn_list.0 / bn_list.1


def twin(seed: int, spec=post_resnet.RESNET18) -> T.AclResNet:
    """ACL's network with every weight and BatchNorm statistic random (each route its own) and a batch counter per
    route, in inference mode."""
    torch.manual_seed(seed)
    net = R.randomize(T.AclResNet(**spec), seed)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("num_batches_tracked"):
                buf.fill_(BATCHES["clean"] if ".bn_list.0." in name else BATCHES["adversarial"])
    return net.eval()


def their_features(net: T.AclResNet, images: np.ndarray) -> dict[str, np.ndarray]:
    """The twin's pooled features through each route, keyed by the signature that serves that route."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return {name: net(x, bn, return_features=True).numpy() for name, bn in SIGNATURE_BN.items()}


def assert_export_matches(out: str, net: T.AclResNet, images: np.ndarray) -> dict:
    """The export's two signatures against the twin's routes; returns the export's info."""
    theirs = their_features(net, images)
    loaded = tf.saved_model.load(out)  # held while its signatures run (README)
    for name, expected in theirs.items():
        ours = loaded.signatures[name](images=tf.constant(images))["features"].numpy()
        assert ours.shape == expected.shape and np.abs(expected).max() > 0.2  # of order 1, not vanishing
        assert np.abs(ours - expected).max() <= TOLERANCE, name
    assert np.abs(theirs["features"] - theirs["features_clean"]).max() > 1e-2  # the routes differ: a swap would show
    return export.read_info(out)


def optimizer_state(net: T.AclResNet) -> dict:
    """An optimizer's state_dict with momentum buffers, as their 'optim' entry holds."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt.state_dict()


@pytest.fixture(scope="module")
def images(sample_arrays):
    """16 real CIFAR-10 test images, NHWC float32 in [0, 1]."""
    return sample_arrays[2][:16].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def acl_twin():
    return twin(0)


@pytest.fixture(scope="module")
def acl_export(tmp_path_factory, acl_twin):
    """ACL's model_<epoch>.pt layout (train_simCLR.py:189-195), imported by the binary."""
    folder = tmp_path_factory.mktemp("acl")
    path = str(folder / "ACL_DS.pt")
    state = {"epoch": 1000, "state_dict": acl_twin.state_dict(), "optim": optimizer_state(acl_twin)}
    torch.save({**state, "acc": 81.5, "tacc": 80.25}, path)
    out = str(folder / "imported")
    done = run_binary("advss_tf.import_torch", f"--checkpoint={path}", "--format=acl", f"--output={out}", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return path, out


def test_acl_checkpoint_imports_layer_exact_through_the_binary(acl_export, acl_twin, images):
    path, out = acl_export
    info = assert_export_matches(out, acl_twin, images)
    assert (info["format"], info["task"], info["air"]) == ("advss_tf.pretrain", "acl", False)
    assert info["parts"] == ["trunk", "stage4", "projection"] and info["routes"] == ["clean", "adversarial"]
    assert info["backbone"]["name"] == "resnet18_post"
    imported = info["imported"]
    assert imported["format"] == "acl" and imported["trained_by"].startswith("ACL (Jiang et al.")
    assert imported["sources"] == [{"file": "ACL_DS.pt", "sha256": sha256(path)}]
    assert imported["checkpoint_metadata"] == {
        "epoch": 1000.0,
        "acc": 81.5,
        "tacc": 80.25,
        "optim": "present in the file, not imported (training state)",
    }
    assert imported["batchnorm_updates"] == BATCHES
    assert imported["normalization"]["mean"] == np.float32(R.IMAGENET_MEAN).tolist()


@pytest.fixture(scope="module")
def dynacl_export(tmp_path_factory):
    """DynACL's release layout, model_encoder_k.pt (train_DynACL.py:235-238: the key encoder alone), tiny widths,
    imported by the function the binary calls."""
    folder = tmp_path_factory.mktemp("dynacl")
    net = twin(1, TINY)
    path = str(folder / "model_encoder_k.pt")
    torch.save({"epoch": 1000, "state_dict": net.state_dict()}, path)
    formats.import_checkpoint(path, "dynacl", str(folder / "imported"))
    return net, str(folder / "imported")


def test_dynacls_release_imports_layer_exact_as_its_key_encoder(dynacl_export, images):
    net, out = dynacl_export
    info = assert_export_matches(out, net, images)
    assert (info["task"], info["air"], info["encoder"]) == ("dynacl", False, "momentum key")
    assert info["backbone"]["name"] == "tiny_post" and info["imported"]["checkpoint_metadata"] == {"epoch": 1000.0}
    assert info["imported"]["trained_by"].startswith("DynACL (Luo et al.")


def test_airs_layout_imports_layer_exact_as_dynacl_air(images, tmp_path):
    net = twin(2, TINY)
    path = str(tmp_path / "model.pt")  # AIR pretraining.py:294-298 (--DynAug: the released DynACL_IR.pt)
    torch.save({"epoch": 1000, "state_dict": net.state_dict(), "optim": optimizer_state(net)}, path)
    formats.import_checkpoint(path, "dynacl_air", str(tmp_path / "imported"))
    info = assert_export_matches(str(tmp_path / "imported"), net, images)
    assert (info["task"], info["air"], info["encoder"]) == ("dynacl", True, "the trained network")
    assert info["imported"]["checkpoint_metadata"]["optim"].startswith("present in the file, not imported")


def test_the_imported_export_restores_either_route_for_finetuning(dynacl_export, images):
    """What `finetune --pretrained_route` does: the route's BatchNorms into the one-route classifier."""
    net, out = dynacl_export
    cfg, info = finetuning.resolve_backbone(finetuning.FinetuneConfig(model_dir="unused", pretrained=out))
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    for route, bn in ROUTE_BN.items():
        classifier = ImageClassifier(cfg.backbone, 10)
        assert finetuning.restore_pretrained(out, info, classifier, route) == ["stage4", "trunk"]
        with torch.no_grad():
            theirs = net(x, bn, return_features=True).numpy()
        assert np.abs(classifier.features(images, training=False).numpy() - theirs).max() <= TOLERANCE, route


def pair_state(key: T.AclResNet, query: T.AclResNet) -> dict:
    """DynACL's `resnet18_momentum` state dict: encoder_q. and encoder_k."""
    state = {f"encoder_k.{k}": v for k, v in key.state_dict().items()}
    return {**state, **{f"encoder_q.{k}": v for k, v in query.state_dict().items()}}


def test_dynacls_momentum_pair_imports_its_key_encoder(images, tmp_path):
    key, query = twin(3, TINY), twin(4, TINY)
    path = str(tmp_path / "model.pt")  # train_DynACL.py:252-259
    torch.save({"epoch": 500, "state_dict": pair_state(key, query), "optim": {}, "acc": 1, "tacc": 2, "rtacc": 3}, path)
    imported = formats.load(path, "dynacl")
    their = their_features(key, images)
    for name, route in (("features", "adversarial"), ("features_clean", "clean")):
        ours = imported.models["model"].features(images, route=route).numpy()
        assert np.abs(ours - their[name]).max() <= TOLERANCE, name
    assert imported.info["imported"]["encoder_q"].startswith("DynACL's query")
    assert imported.info["imported"]["checkpoint_metadata"]["rtacc"] == 3.0
    with pytest.raises(UsageError, match=r"momentum pair .*--format=dynacl"):
        formats.load(path, "acl")
    broken = pair_state(key, query)
    broken["encoder_q.layer3.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)  # the query's tensors are checked too
    torch.save({"state_dict": broken}, path)
    with pytest.raises(UsageError, match=r"1 mis-shaped: encoder_q\.layer3\.0\.conv2\.weight"):
        formats.load(path, "dynacl")


def test_a_bare_state_dict_imports_and_records_the_method(tmp_path):
    net = twin(5, TINY)
    path = str(tmp_path / "acl_air.pt")
    torch.save(net.state_dict(), path)
    imported = formats.load(path, "acl_air")
    assert imported.info["imported"]["trained_by"].startswith("ACL-AIR")
    stem_bn = {layer.name: layer for layer in imported.models["model"].trunk.parts}["stem_bn"]
    for i, route in enumerate(post_resnet.ROUTES):  # bn_list.i is route i
        ours = stem_bn.norm(route).moving_variance.numpy()
        np.testing.assert_allclose(ours, net.bn1.bn_list[i].running_var.numpy(), rtol=1e-6)


# -- bad input: one line, nothing written ---------------------------------------------------------------------------
class Opaque:
    """A pickled object of this class needs full unpickling."""


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A missing key, an extra key, a mis-shaped tensor and a pickle that needs code, each in ACL's layout (tiny)."""
    folder = tmp_path_factory.mktemp("bad")
    good = twin(6, TINY).state_dict()

    def save(name, state):
        torch.save({"epoch": 1, "state_dict": state, "optim": {}}, folder / name)
        return str(folder / name)

    missing = {k: v for k, v in good.items() if k != "layer2.0.downsample.bn.bn_list.1.running_var"}
    misshaped = {**good, "fc.fc2.weight": torch.zeros(128, 64)}
    torch.save({"state_dict": Opaque()}, folder / "opaque.pt")
    return {
        r"1 missing: layer2\.0\.downsample\.bn\.bn_list\.1\.running_var": save("missing.pt", missing),
        r"1 unexpected: fc\.fc4\.weight": save("extra.pt", {**good, "fc.fc4.weight": torch.zeros(3)}),
        r"1 mis-shaped: fc\.fc2\.weight \(128, 64\) \(expected \(128, 128\)\)": save("misshaped.pt", misshaped),
        "needs full unpickling": str(folder / "opaque.pt"),
        "normaliser mean": save("cifar_mean.pt", {**good, "normalize.mean": torch.tensor([0.4914, 0.4822, 0.4465])}),
    }


def test_bad_files_are_refused_with_one_line_and_nothing_written(bad_files, tmp_path):
    out = tmp_path / "out"
    for pattern, path in bad_files.items():
        with pytest.raises(UsageError, match=pattern) as e:
            formats.import_checkpoint(path, "acl", str(out))
        assert "\n" not in str(e.value) and not out.exists()
    folder = os.path.dirname(next(iter(bad_files.values())))
    torch.save({"epoch": 1, "state_dict": twin(6, TINY).state_dict(), "scheduler": {}}, os.path.join(folder, "s.pt"))
    with pytest.raises(UsageError, match=r"unexpected scheduler \(top-level keys\)"):
        formats.load(os.path.join(folder, "s.pt"), "dynacl")
    stl_stem = twin(6, TINY).state_dict()
    stl_stem["conv1.weight"] = torch.zeros(16, 3, 7, 7)  # DynACL's STL-10 network: a 7x7 stem
    torch.save({"state_dict": stl_stem}, os.path.join(folder, "stl.pt"))
    with pytest.raises(UsageError, match=r"mis-shaped: conv1\.weight \(16, 3, 7, 7\)"):
        formats.load(os.path.join(folder, "stl.pt"), "dynacl")


@pytest.mark.slow
def test_the_binary_refuses_each_with_exit_2_and_one_line(bad_files, tmp_path):
    for i, (pattern, path) in enumerate(list(bad_files.items())[:4]):  # missing, extra, mis-shaped, pickle
        out = tmp_path / f"out{i}"
        done = run_binary(
            "advss_tf.import_torch", f"--checkpoint={path}", "--format=acl", f"--output={out}", timeout=300
        )
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and re.search(pattern, last), last
        assert not out.exists()


@pytest.mark.slow
def test_finetune_runs_from_an_imported_export_on_the_clean_route(dynacl_export, tmp_path):
    _, out = dynacl_export
    done = run_binary(
        "advss_tf.finetune",
        *[f"--pretrained={out}", "--pretrained_route=clean", f"--model_dir={tmp_path / 'ft'}", "--dataset=sample"],
        *["--batch_size=16", "--train_steps=1", "--val_examples=16", "--val_batch_size=16", "--quiet"],
        *["--attack_steps=1", "--val_attack_steps=1"],
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "its clean BatchNorm route" in done.stderr
    assert (tmp_path / "ft" / "export" / "last" / "saved_model.pb").is_file()
