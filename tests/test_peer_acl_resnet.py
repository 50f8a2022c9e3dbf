"""ACL's multi-BN ResNet-18 + projection head in PyTorch (advss_tf.peer.torch_acl_resnet, from their
models/resnet_multi_bn.py) against models/post_resnet.py: the same tensors, the same outputs on both routes."""

import numpy as np
import pytest
from conftest import import_torch

from advss_tf.models import post_resnet

torch = import_torch()
pytestmark = pytest.mark.peer

TINY = dict(blocks=(1, 1, 1, 1), planes=(8, 16, 32, 64), stem=8)


@pytest.fixture(scope="module")
def keras_models():
    """Keras models by architecture, built once for the module (ResNet-18 takes seconds)."""
    return {}


def _keras(keras_models, arch):
    if arch not in keras_models:
        spec = TINY if arch == "tiny" else post_resnet.RESNET18
        keras_models[arch] = post_resnet.build_post_resnet(**spec, name=f"acl_{arch}")
    return keras_models[arch]


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_layer_exact_on_both_routes(arch, keras_models):
    from advss_tf.peer import torch_acl_resnet

    torch.manual_seed(0)
    spec = TINY if arch == "tiny" else post_resnet.RESNET18
    net = torch_acl_resnet.move_batch_norms(torch_acl_resnet.AclResNet(**spec)).eval()
    model = _keras(keras_models, arch)
    assert torch_acl_resnet.parameter_count(net) == model.count_params()
    torch_acl_resnet.copy_torch_weights(net, model)
    images = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    outputs = {}
    for bn_name, route in torch_acl_resnet.ROUTE_OF.items():
        with torch.no_grad():
            theirs = net(nchw, bn_name).numpy()
            their_features = net(nchw, bn_name, return_features=True).numpy()
        ours = model(images, training=False, route=route).numpy()
        assert np.abs(model.features(images, route=route).numpy() - their_features).max() <= 1e-4
        assert np.abs(ours - theirs).max() <= 1e-4
        assert np.abs(ours).max() > 0.1  # not vanishing outputs, which any tolerance would pass
        outputs[route] = ours
    assert np.abs(outputs["clean"] - outputs["adversarial"]).max() > 1e-2  # the routes' statistics do differ


def test_state_dict_keys_are_acls_and_all_are_used(keras_models):
    from advss_tf.peer import torch_acl_resnet

    net = torch_acl_resnet.build_torch_acl_resnet18()
    keys = set(net.state_dict())
    for key in ("conv1.weight", "bn1.bn_list.1.running_var", "layer2.0.downsample.conv.weight",
                "layer4.1.bn2.bn_list.0.weight", "fc.fc1.bias", "fc.bn3.bn_list.1.running_mean", "normalize.std"):  # fmt: skip
        assert key in keys
    assert "fc.fc2.bias" not in keys and "layer1.0.downsample.conv.weight" not in keys
    model = _keras(keras_models, "resnet18")
    names = torch_acl_resnet.keras_to_acl_names(model)
    assert len(names) == len(model.weights) == len(set(names.values()))
    leftover = keys - set(names.values()) - {"normalize.mean", "normalize.std"}
    assert all(k.endswith("num_batches_tracked") for k in leftover)


def test_a_different_network_is_refused(keras_models):
    from advss_tf.peer import torch_acl_resnet

    with pytest.raises(ValueError, match="the networks differ"):
        torch_acl_resnet.copy_torch_weights(
            torch_acl_resnet.AclResNet(**TINY), post_resnet.build_post_resnet(name="r18")
        )
    net = torch_acl_resnet.AclResNet(**TINY)
    with torch.no_grad():
        net.normalize.mean.zero_()
    with pytest.raises(ValueError, match="normalize.mean"):
        torch_acl_resnet.copy_torch_weights(net, _keras(keras_models, "tiny"))
