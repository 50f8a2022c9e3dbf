"""ACL's pretraining step in PyTorch (advss_tf.peer.torch_acl_step, from their train_simCLR.py, utils.py and
optimizer/lars.py) against advss_tf's `acl` task: the same NT-Xent, the same LARS update, the same loss on the same
weights and views; and their attack's invariants. tools/benchmark_acl_step.py times the two side by side."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import import_torch

torch = import_torch()
pytestmark = pytest.mark.peer


def _nchw(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def test_their_nt_xent_is_ours_in_their_batch_layout():
    from advss_tf.attacks.nt_xent import nt_xent
    from advss_tf.peer import torch_acl_step

    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(6, 5)).astype(np.float32)
    z2 = (2 * z1 + rng.normal(size=(6, 5))).astype(np.float32)  # positives alike: the loss is far from log(2n - 1)
    stacked = torch_acl_step.stack_views(torch.from_numpy(z1), torch.from_numpy(z2))
    assert torch.equal(stacked[2], torch.from_numpy(z1[1])) and torch.equal(stacked[3], torch.from_numpy(z2[1]))
    theirs = float(torch_acl_step.nt_xent(stacked))
    ours = float(nt_xent(tf.constant(z1), tf.constant(z2), 0.5))
    assert theirs == pytest.approx(ours, abs=1e-5)
    # The pairing matters: [z1; z2] unstacked pairs rows of the same view, a different loss.
    unstacked = float(torch_acl_step.nt_xent(torch.from_numpy(np.concatenate([z1, z2]))))
    assert abs(unstacked - ours) > 1e-2


def test_their_lars_takes_our_lars_steps():
    from advss_tf.peer import torch_acl_step
    from advss_tf.training.lars import LARS

    rng = np.random.default_rng(1)
    w0 = [rng.normal(size=(4, 3)), rng.uniform(0.5, 1.5, 3), np.zeros(3)]  # a zero tensor takes the trust-1 branch
    grads = [[rng.normal(size=w.shape) * 0.1 for w in w0] for _ in range(3)]
    params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in w0]
    theirs = torch_acl_step.Lars(params, lr=5.0)
    variables = [tf.Variable(w.astype(np.float32)) for w in w0]
    ours = LARS(learning_rate=5.0)
    for g in grads:
        for p, gi in zip(params, g, strict=True):
            p.grad = torch.tensor(gi, dtype=torch.float32)
        theirs.step()
        ours.apply_gradients([(tf.constant(gi, tf.float32), v) for gi, v in zip(g, variables, strict=True)])
    for p, v, w in zip(params, variables, w0, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), v.numpy(), rtol=1e-5, atol=1e-6)
        assert np.abs(v.numpy() - w).max() > 1e-4  # the weights did move


def test_their_attack_stays_in_the_ball_raises_the_loss_and_reaches_the_weights():
    from advss_tf.peer import torch_acl_resnet, torch_acl_step

    torch.manual_seed(0)
    net = torch_acl_resnet.move_batch_norms(torch_acl_resnet.AclResNet((1, 1, 1, 1), (8, 16, 32, 64), 8))
    x = torch.rand(6, 3, 32, 32)
    inputs = torch_acl_step.stack_views(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    eps = torch_acl_step.EPSILON
    adv = torch_acl_step.pgd_contrastive(net, inputs, steps=3)
    assert (adv - inputs).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean_loss = torch_acl_step.nt_xent(net.eval()(inputs, "pgd"))
        adv_loss = torch_acl_step.nt_xent(net.eval()(adv, "pgd"))
    assert adv_loss > clean_loss + 1e-3
    # As in their loop, the attack's backward fills the weights' gradients too (part of what their step costs): all
    # but the clean route's BatchNorms, which the attack does not run through.
    untouched = {name for name, p in net.named_parameters() if p.grad is None}
    assert untouched and all(".bn_list.0." in name for name in untouched)
    assert net.conv1.weight.grad.abs().max() > 0


def test_their_step_computes_our_acl_loss_on_the_same_weights_and_views():
    from advss_tf.config import PretrainConfig
    from advss_tf.models.backbones import BackboneConfig
    from advss_tf.models.contrastive import build_contrastive_model
    from advss_tf.peer import torch_acl_resnet, torch_acl_step
    from advss_tf.tasks.contrastive import acl_task

    config = BackboneConfig("tiny_post")
    spec = config.spec
    torch.manual_seed(0)
    net = torch_acl_resnet.move_batch_norms(torch_acl_resnet.AclResNet(spec.blocks, spec.planes, spec.stem))
    model = build_contrastive_model(config)
    torch_acl_resnet.copy_torch_weights(net, model)
    task = acl_task(PretrainConfig(task="acl", model_dir="/tmp/unused", backbone=config, batch_size=8))
    images = tf.constant(np.random.default_rng(2).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32))
    batch = task.transform(images, tf.zeros([8], tf.int64), tf.constant([0, 1], tf.int64))
    # The attack left out: the adversarial views are the clean ones, each through its own BatchNorm route.
    per_image, metrics = task.losses(model, batch, (batch["view1"], batch["view2"]))
    step = torch_acl_step.AclStep(net, steps_per_epoch=98)
    inputs = torch_acl_step.stack_views(_nchw(batch["view1"]), _nchw(batch["view2"]))
    with torch.no_grad():
        loss, clean, adv = (float(t) for t in step.losses(inputs, inputs))
    assert clean == pytest.approx(float(tf.reduce_mean(metrics["clean_loss"])), abs=1e-4)
    assert adv == pytest.approx(float(tf.reduce_mean(metrics["adv_loss"])), abs=1e-4)
    assert loss == pytest.approx(float(tf.reduce_mean(per_image)), abs=1e-4)
    assert abs(clean - adv) > 1e-3  # the two routes' BatchNorms differ, so a swapped route would fail above

    before = [p.detach().clone() for p in net.parameters()]
    assert np.isfinite(step(inputs))
    # Their scheduler steps first: the first update runs at step 1 of the 10-epoch linear warm-up.
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(5.0 / (10 * 98))
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
