"""NT-Xent (SimCLR's normalised temperature-scaled cross-entropy) over the global batch, as ACL computes it.

For 2G embeddings of G images (two views each), anchor i's loss is

    ℓ_i = −log( exp(s(i, p(i))/τ) / Σ_{k≠i} exp(s(i, k)/τ) ),   s = cosine similarity, p(i) = i's other view,

and the loss is the mean of ℓ over all 2G anchors (ACL `utils.py:238-249`, τ = 0.5 there: `nt_xent(x, t=0.5)`).

Under `tf.distribute` each replica holds n of the G images. Its embeddings are all-gathered (`ReplicaContext
.all_gather`, SimCLR's cross-replica concat), so its anchors meet the negatives of the whole batch, and it returns
Σ_{its anchors} ℓ_i / 2G: the replicas' values add up to the global loss. The gather is differentiable (its gradient
sends each replica the gradients of its own rows from every replica's loss), so the gradients summed over replicas,
which is what `apply_gradients` applies, are the one-replica gradients of the same global batch.

Two differences from ACL's code, neither changing the value beyond rounding: the anchor's own term is masked out of
the denominator where ACL subtracts exp(1/τ) from the full sum (equal when s(i, i) = 1, which the L2 normalisation
gives up to rounding), and embeddings are L2-normalised with TensorFlow's ε = 1e-12 on the squared norm where ACL
clamps the product of norms at 1e-8 (only an all-zero embedding tells them apart).
"""

from __future__ import annotations

import tensorflow as tf

TEMPERATURE = 0.5  # ACL utils.py:238 (nt_xent(x, t=0.5)); DynACL utils.py:292; AIR pretraining.py:148
_MASKED = -1e9  # an anchor's logit against itself: exp(_MASKED - max) is 0 in float32


def global_rows(*tensors: tf.Tensor, cross_replica: bool = True) -> tuple[list[tf.Tensor], tf.Tensor]:
    """(each tensor's rows from every replica in replica order [G, ...], this replica's first row in them); this
    replica's own where there is one replica or `cross_replica` is False. Differentiable: each replica gets back the
    gradients of its own rows from every replica's loss."""
    ctx = tf.distribute.get_replica_context()
    if not cross_replica or ctx is None or ctx.num_replicas_in_sync == 1:
        return list(tensors), tf.constant(0, tf.int32)
    sizes = ctx.all_gather(tf.shape(tensors[0])[:1], axis=0)  # [replicas]: uneven last batches are allowed
    replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica])
    return [ctx.all_gather(t, axis=0) for t in tensors], offset


def _gathered(z1: tf.Tensor, z2: tf.Tensor, cross_replica: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(view-1 keys [G, D], view-2 keys [G, D], this replica's first row in them): `global_rows` of both views."""
    (k1, k2), offset = global_rows(z1, z2, cross_replica=cross_replica)
    return k1, k2, offset


def _nt_xent(z1, z2, temperature: float, cross_replica: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """(ℓ of this replica's anchors [2n], the global batch's image count G)."""
    z1 = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=-1)
    z2 = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=-1)
    k1, k2, offset = _gathered(z1, z2, cross_replica)
    g = tf.shape(k1)[0]
    own = offset + tf.range(tf.shape(z1)[0])
    anchors = tf.concat([z1, z2], axis=0)  # [2n, D]
    logits = tf.matmul(anchors, tf.concat([k1, k2], axis=0), transpose_b=True) / temperature  # [2n, 2G]
    itself = tf.concat([own, own + g], axis=0)
    positive = tf.concat([own + g, own], axis=0)
    logits = tf.where(tf.one_hot(itself, 2 * g, on_value=True, off_value=False), _MASKED, logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive, logits=logits), g


def nt_xent_per_anchor(
    z1: tf.Tensor, z2: tf.Tensor, temperature: float = TEMPERATURE, cross_replica: bool = True
) -> tf.Tensor:
    """ℓ_i of this replica's anchors, float32 [2n]: its view-1 rows, then its view-2 rows.

    Args:
      z1, z2: embeddings [n, D] of the two views; row j of both comes from the same image.
      temperature: τ.
      cross_replica: gather the negatives from every replica (in a replica context with several replicas);
        False keeps each replica's loss to its own slice of the batch.
    """
    return _nt_xent(z1, z2, temperature, cross_replica)[0]


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float = TEMPERATURE, cross_replica: bool = True) -> tf.Tensor:
    """This replica's share of the global NT-Xent: Σ of its anchors' ℓ_i / 2G, a float32 scalar (arguments as
    `nt_xent_per_anchor`).

    Summed over replicas it is the mean over the global batch's 2G anchors (ACL's `nt_xent`); with one replica it is
    that mean. With `cross_replica=False` every replica's anchors see only its own slice, and the shares still
    add up to a mean over all anchors (assuming equal slices).
    """
    per_anchor, g = _nt_xent(z1, z2, temperature, cross_replica)
    ctx = tf.distribute.get_replica_context()
    if not cross_replica and ctx is not None:
        g *= ctx.num_replicas_in_sync
    return tf.reduce_sum(per_anchor) / (2.0 * tf.cast(g, tf.float32))
