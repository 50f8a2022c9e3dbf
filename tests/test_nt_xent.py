"""NT-Xent (attacks/nt_xent.py): ACL's formula, and negatives from the global batch under tf.distribute."""

import numpy as np
import pytest
import tensorflow as tf

from advss_tf.attacks.nt_xent import TEMPERATURE, nt_xent, nt_xent_per_anchor


def acl_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float = TEMPERATURE) -> float:
    """ACL's utils.nt_xent in NumPy, on its interleaved layout (rows 2j and 2j+1 are image j's two views)."""
    x = np.empty((2 * len(z1), z1.shape[1]), np.float64)
    x[0::2], x[1::2] = z1, z2
    n = np.linalg.norm(x, axis=1, keepdims=True)
    sim = np.exp((x @ x.T) / np.maximum(n * n.T, 1e-8) / t)
    idx = np.arange(len(x))
    idx[0::2] += 1
    idx[1::2] -= 1
    sim = sim[idx]
    return float(-np.log(np.diag(sim) / (sim.sum(0) - np.exp(1.0 / t))).mean())


def _embeddings(n=8, d=5, seed=0):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    return z1, (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_matches_acls_formula_on_known_inputs():
    z1, z2 = _embeddings()
    assert float(nt_xent(z1, z2)) == pytest.approx(acl_nt_xent(z1, z2), rel=1e-5)
    assert float(nt_xent(z1, z2, temperature=0.2)) == pytest.approx(acl_nt_xent(z1, z2, 0.2), rel=1e-5)
    per_anchor = nt_xent_per_anchor(z1, z2).numpy()
    assert per_anchor.shape == (16,)
    np.testing.assert_allclose(per_anchor.mean(), float(nt_xent(z1, z2)), rtol=1e-6)


def test_a_hand_computed_case():
    """Two images, orthogonal views: ℓ = −log(e^{s+/τ} / Σ_{k≠i} e^{s_k/τ}) worked out by hand."""
    z1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    z2 = np.array([[2.0, 0.0], [0.0, -3.0]], np.float32)  # scale does not matter; image 1's views point apart
    # Image 0: anchor (1,0): positive cos 1, negatives cos 0 and 0 → −log(e²/(e² + 2)); view 2 alike.
    # Image 1: anchor (0,1): positive cos −1, negatives 0, 0 → −log(e⁻²/(e⁻² + 2)); its other view alike.
    e = np.exp(2.0)
    expected = (2 * -np.log(e / (e + 2)) + 2 * -np.log((1 / e) / (1 / e + 2))) / 4
    assert float(nt_xent(z1, z2)) == pytest.approx(expected, rel=1e-6)


def test_two_replicas_give_the_one_replica_loss_and_gradients(mirrored_strategy):
    """Each replica holds half the images; summed over replicas, its loss share and its parameter gradients are the
    one-replica ones on the whole batch — which holds only if the negatives are global."""
    z1, z2 = _embeddings(n=8, d=6, seed=1)
    kernel0 = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)

    def loss_and_grad(kernel, a, b, cross_replica=True):
        with tf.GradientTape() as tape:
            loss = nt_xent(a @ kernel, b @ kernel, cross_replica=cross_replica)
        return loss, tape.gradient(loss, kernel)

    one_loss, one_grad = loss_and_grad(tf.Variable(kernel0), tf.constant(z1), tf.constant(z2))
    with mirrored_strategy.scope():
        kernel = tf.Variable(kernel0)

    def replica_step(cross_replica):
        ctx = tf.distribute.get_replica_context()
        rows = tf.range(4) + 4 * ctx.replica_id_in_sync_group
        return loss_and_grad(kernel, tf.gather(z1, rows), tf.gather(z2, rows), cross_replica)

    @tf.function
    def distributed(cross_replica):
        loss, grad = mirrored_strategy.run(replica_step, args=(cross_replica,))
        total = tf.distribute.ReduceOp.SUM
        return mirrored_strategy.reduce(total, loss, None), mirrored_strategy.reduce(total, grad, None)

    loss, grad = distributed(True)
    np.testing.assert_allclose(float(loss), float(one_loss), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), one_grad.numpy(), rtol=1e-4, atol=1e-6)
    local_loss, _ = distributed(False)  # negatives from the replica's own half: a different loss
    assert abs(float(local_loss) - float(one_loss)) > 1e-3


def test_uneven_replica_slices_still_give_the_global_loss(mirrored_strategy):
    """A last batch split 4 + 3: each replica finds its rows among the gathered ones by the gathered sizes."""
    z1, z2 = _embeddings(n=7, d=4, seed=3)

    def replica_step():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        rows = tf.cond(first, lambda: tf.range(4), lambda: tf.range(4, 7))
        return nt_xent(tf.gather(z1, rows), tf.gather(z2, rows))

    total = tf.function(lambda: mirrored_strategy.reduce("SUM", mirrored_strategy.run(replica_step), None))()
    np.testing.assert_allclose(float(total), acl_nt_xent(z1, z2), rtol=1e-5)
