"""AIR's invariance regularisers (Xu et al., NeurIPS 2023; `AIR.py:76-98` of GodXuxilie/Enhancing_ACL_via_AIR at
15cf0a7), over the global batch.

With s(a, b) the cosine similarity, τ the temperature and k running over the G images of the batch, AIR's code
builds distributions over the batch from the diagonal similarities (`logits[torch.logical_not(mask)]` is the
diagonal, its softmax runs over k):

    SIR = KL(Q ‖ P),  P = softmax_k(s(z₁ᵏ, zₒᵏ)/τ),  Q = softmax_k(s(z₂ᵏ, zₒᵏ)/τ)
    AIR = KL(Q' ‖ P'), P' = softmax_k(s(z̃₁ᵏ, zₒᵏ)/τ) · softmax_k(s(z̃₁ᵏ, z₁ᵏ)/τ),
                       Q' = softmax_k(s(z̃₂ᵏ, zₒᵏ)/τ) · softmax_k(s(z̃₂ᵏ, z₂ᵏ)/τ)

(z₁, z₂ the clean views' projections, zₒ the original image's, z̃ the adversarial views'; KL(Q ‖ P) = Σₖ Qₖ (log Qₖ −
log Pₖ), `reduction="sum"`; P' and Q' are the elementwise products the code forms, not renormalised).

**Deviation (recorded in README and docs/contrastive.md).** AIR's code calls `F.kl_div(P, log Q, log_target=True)`
with the *probabilities* P where PyTorch's `kl_div` expects log-probabilities as its input, so it computes
Σ Q (log Q − P), not a KL divergence (AIR issue #1). Here the input is log P: the KL divergence the paper states.

Under `tf.distribute` the diagonal logits of every replica are gathered, so the softmax runs over the global batch,
and each replica returns its own images' terms Qₖ (log Qₖ − log Pₖ): summed over replicas they are the KL.
"""

from __future__ import annotations

import tensorflow as tf

from advss_tf.attacks.nt_xent import TEMPERATURE, global_rows


def _diagonal_logits(a: tf.Tensor, b: tf.Tensor, temperature: float) -> tf.Tensor:
    """s(aᵏ, bᵏ)/τ per row k, float32 [n]."""
    a = tf.math.l2_normalize(tf.cast(a, tf.float32), axis=-1)
    b = tf.math.l2_normalize(tf.cast(b, tf.float32), axis=-1)
    return tf.reduce_sum(a * b, axis=-1) / temperature


def _global_log_softmax(*logits: tf.Tensor, cross_replica: bool) -> list[tf.Tensor]:
    """log softmax over the global batch of each [n] logit vector, this replica's rows [n] of each."""
    gathered, offset = global_rows(*logits, cross_replica=cross_replica)
    n = tf.shape(logits[0])[0]
    return [tf.nn.log_softmax(g)[offset : offset + n] for g in gathered]


def _kl_terms(log_q: tf.Tensor, log_p: tf.Tensor) -> tf.Tensor:
    """Qₖ (log Qₖ − log Pₖ) per row: the rows' terms of KL(Q ‖ P)."""
    return tf.exp(log_q) * (log_q - log_p)


def invariance_regularisers(
    z1: tf.Tensor,
    z2: tf.Tensor,
    z_orig: tf.Tensor,
    z1_adv: tf.Tensor,
    z2_adv: tf.Tensor,
    temperature: float = TEMPERATURE,
    cross_replica: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(SIR terms [n], AIR terms [n]) of this replica's images: the KL divergences above are their sums over the
    global batch. Inputs: projections [n, D], row k of all five from image k."""
    log_p, log_q, log_p_adv, log_p_consistent, log_q_adv, log_q_consistent = _global_log_softmax(
        _diagonal_logits(z1, z_orig, temperature),
        _diagonal_logits(z2, z_orig, temperature),
        _diagonal_logits(z1_adv, z_orig, temperature),
        _diagonal_logits(z1_adv, z1, temperature),
        _diagonal_logits(z2_adv, z_orig, temperature),
        _diagonal_logits(z2_adv, z2, temperature),
        cross_replica=cross_replica,
    )
    sir = _kl_terms(log_q, log_p)
    air = _kl_terms(log_q_adv + log_q_consistent, log_p_adv + log_p_consistent)
    return sir, air
