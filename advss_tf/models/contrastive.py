"""The models of the contrastive tasks (tasks/contrastive.py): ACL's dual-BatchNorm network on any backbone, and
DynACL's pair of them with a momentum key encoder.

ACL's network (`DualBNNetwork`) is the backbone's trunk and stage 4 with a BatchNorm per route — clean and
adversarial, ACL's `bn_names` — and ACL's projection head of the backbone's feature width on top
(models/post_resnet.py). ACL, DynACL and AIR train the post-activation ResNet-18 (`resnet18_post`, their paper
flagfiles), whose blocks hold both routes; every other `--backbone` is routed the same way (`backbones.build_routed`:
its convolutions shared, each BatchNorm duplicated per route).

DynACL's code (`models/resnet_multi_bn.py:487-529`, `train_DynACL.py:83-88`, `:280-286`) trains `resnet18_momentum`:
two copies of ACL's network, `encoder_q` and `encoder_k`, the key initialised from the query (parameters only;
the BatchNorm statistics start equal). With `swap=True` the first view of each image goes through the query, the
second through the key, both in the mode and route the call names; only the query is trained by gradient, and after
each step's forward passes the key moves to m·key + (1 − m)·query (parameters only: the key's BatchNorm statistics
move with its own forward passes). The key is what DynACL fine-tunes from (`model_encoder_k.pt`, assign_label.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from advss_tf.models.backbones import PARTS, BackboneConfig, build_routed
from advss_tf.models.post_resnet import ROUTES, DualBNNetwork


def _dual_bn_network(backbone: BackboneConfig, name: str) -> DualBNNetwork:
    trunk, stage4 = (build_routed(backbone, part, ROUTES) for part in PARTS)
    return DualBNNetwork(trunk, stage4, backbone.feature_dim, ROUTES, backbone.sync_bn, name=name)


class MomentumEncoders(keras.Model):
    """DynACL's `resnet18_momentum`: a query and a key network (`DualBNNetwork`s); `pair` sends the first views
    through the query and the second through the key; `update_key` moves the key towards the query."""

    def __init__(self, backbone: BackboneConfig, momentum: float, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.query = _dual_bn_network(backbone, "query")
        self.key = _dual_bn_network(backbone, "key")
        for k, q in zip(self.key.trainable_variables, self.query.trainable_variables, strict=True):
            k.assign(q)  # DynACL `_init_encoder_k`

    @property
    def routes(self) -> tuple[str, ...]:
        return self.query.routes

    def pair(self, x1, x2, training: bool, route: str) -> tuple[tf.Tensor, tf.Tensor]:
        """(query(x1), key(x2)) through `route`'s BatchNorms (DynACL's forward with swap=True)."""
        return self.query(x1, training=training, route=route), self.key(x2, training=training, route=route)

    def call(self, images, training: bool = False, route: str | None = None):
        return self.key(images, training=training, route=route)  # DynACL's forward without swap: the key

    def update_key(self) -> None:
        """key ← m·key + (1 − m)·query for every parameter (DynACL `_momentum_update_encoder_k`); in a replica step
        it runs once, in the cross-replica context, on every copy."""
        m = self.momentum
        pairs = [
            (k.value, q.value)
            for k, q in zip(self.key.trainable_variables, self.query.trainable_variables, strict=True)
        ]

        def update(strategy, *_):
            for k, q in pairs:
                strategy.extended.update(k, lambda kv, qv: kv.assign(m * kv + (1.0 - m) * qv), args=(q,))

        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            update(tf.distribute.get_strategy())
        else:
            ctx.merge_call(update)


def build_contrastive_model(backbone: BackboneConfig, encoder_momentum: float | None = None) -> keras.Model:
    """ACL's network (`DualBNNetwork`, routes clean and adversarial) of `backbone`, or with `encoder_momentum`
    DynACL's `MomentumEncoders`."""
    if encoder_momentum is None:
        return _dual_bn_network(backbone, "acl_model")
    return MomentumEncoders(backbone, encoder_momentum, name="dynacl_model")


def exported_network(model: keras.Model) -> DualBNNetwork:
    """The network an export serves and fine-tuning starts from: the key of DynACL's pair, else the model."""
    return model.key if isinstance(model, MomentumEncoders) else model
