"""Selfie: the shared trunk as a patch encoder, a post-LN transformer over the visible patches, position queries.

Every patch (8x8 on a 32x32 image, 24x24 on a 96x96 one) goes through the trunk (the same weights as for whole images) and a global average pool: one vector
of the trunk's width per patch. A learned token u0 (zeros) and the 12 visible vectors pass through the encoder
layers (no input position embedding, as the reference); the output at u0 is the pooled summary. The query for
target position p is pooled + row_emb[p // 4] + col_emb[p % 4], and its logits are the dot products with the 4
target patch vectors (`advss_tf.patches` cuts the grid and splits an order; the orders come from
`advss_tf.pretext.selfie`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from advss_tf import patches as selfie_lib  # Selfie's patch grid and its split of a patch order
from advss_tf.models.backbones import BackboneConfig, build_trunk

_LN_EPSILON = 1e-5  # PyTorch's LayerNorm default, as the reference


@keras.saving.register_keras_serializable(package="advss_tf")
class TransformerEncoderLayer(keras.layers.Layer):
    """Post-LN encoder layer: x ← LN(x + Dropout(MHA(x))); x ← LN(x + Dropout(W₂ GELU(W₁ x))).

    Args:
      model_dim: width of the tokens (d_model); must be divisible by `num_heads`.
      num_heads: attention heads, each of width model_dim / num_heads.
      ff_dim: hidden width of the feed-forward block (d_ff).
      dropout: rate on the attention probabilities, the attention output and the feed-forward output.
      approximate_gelu: tanh approximation of GELU (the reference's BERT-style GELU).
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        approximate_gelu: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if model_dim % num_heads:
            raise ValueError(f"model_dim {model_dim} is not divisible by num_heads {num_heads}")
        self.model_dim, self.num_heads, self.ff_dim = int(model_dim), int(num_heads), int(ff_dim)
        self.dropout, self.approximate_gelu = float(dropout), bool(approximate_gelu)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, key_dim=model_dim // num_heads, dropout=dropout, name="attention"
        )
        self.attention_dropout = keras.layers.Dropout(dropout, name="attention_dropout")
        self.attention_norm = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="attention_norm")
        self.ff_in = keras.layers.Dense(ff_dim, name="ff_in")
        self.ff_out = keras.layers.Dense(model_dim, name="ff_out")
        self.ff_dropout = keras.layers.Dropout(dropout, name="ff_dropout")
        self.ff_norm = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="ff_norm")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.ff_in.build(input_shape)
        self.ff_out.build(input_shape[:-1] + (self.ff_dim,))
        self.ff_norm.build(input_shape)
        super().build(input_shape)

    def call(self, tokens, training: bool = False):
        attended = self.attention(tokens, tokens, training=training)
        tokens = self.attention_norm(tokens + self.attention_dropout(attended, training=training))
        hidden = keras.activations.gelu(self.ff_in(tokens), approximate=self.approximate_gelu)
        return self.ff_norm(tokens + self.ff_dropout(self.ff_out(hidden), training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "model_dim": self.model_dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
            "approximate_gelu": self.approximate_gelu,
        }


@keras.saving.register_keras_serializable(package="advss_tf")
class SelfieHead(keras.layers.Layer):
    """u0 + visible patch vectors → encoder layers → pooled (output at u0) → one query per target position.

    Args:
      model_dim: width of the patch vectors (the trunk's channels).
      num_layers, num_heads, ff_dim, dropout: the encoder stack (the paper: 13, 16, 2048, 0.1).
      grid: patches per side (row/column embeddings have `grid` rows each).
    """

    def __init__(
        self,
        model_dim: int,
        num_layers: int = 13,
        num_heads: int = 16,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        grid: int = selfie_lib.GRID,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_dim, self.num_layers, self.num_heads = int(model_dim), int(num_layers), int(num_heads)
        self.ff_dim, self.dropout, self.grid = int(ff_dim), float(dropout), int(grid)
        self.encoder_layers = [
            TransformerEncoderLayer(model_dim, num_heads, ff_dim, dropout, name=f"encoder_layer{i + 1}")
            for i in range(num_layers)
        ]

    def build(self, input_shape):
        # The reference: u0 and the column embeddings start at zero, the row embeddings ~ N(0, 1).
        self.u0 = self.add_weight(name="u0", shape=(1, 1, self.model_dim), initializer="zeros")
        self.row_embeddings = self.add_weight(
            name="row_embeddings",
            shape=(self.grid, self.model_dim),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
        )
        self.column_embeddings = self.add_weight(
            name="column_embeddings", shape=(self.grid, self.model_dim), initializer="zeros"
        )
        tokens_shape = (input_shape[0], None, self.model_dim)
        for layer in self.encoder_layers:
            layer.build(tokens_shape)
        super().build(input_shape)

    def pooled(self, visible, training: bool = False):
        """visible [B, V, D] → the encoder output at the u0 token, [B, D]."""
        u0 = keras.ops.cast(keras.ops.tile(self.u0, [keras.ops.shape(visible)[0], 1, 1]), visible.dtype)
        tokens = keras.ops.concatenate([u0, visible], axis=1)
        for layer in self.encoder_layers:
            tokens = layer(tokens, training=training)
        return tokens[:, 0]

    def call(self, visible, target_positions, training: bool = False):
        """visible [B, V, D], target_positions int [T] → queries [B, T, D]."""
        pooled = self.pooled(visible, training=training)
        positions = tf.cast(target_positions, tf.int32)
        # One-hot products rather than gathers: dense gradients (IndexedSlices would need their own all-reduce).
        rows = tf.one_hot(positions // self.grid, self.grid, dtype=self.row_embeddings.dtype)
        cols = tf.one_hot(positions % self.grid, self.grid, dtype=self.column_embeddings.dtype)
        embedding = tf.matmul(rows, self.row_embeddings) + tf.matmul(cols, self.column_embeddings)
        return pooled[:, None, :] + keras.ops.cast(embedding, pooled.dtype)[None]

    def get_config(self):
        return {
            **super().get_config(),
            "model_dim": self.model_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
            "grid": self.grid,
        }


def query_logits(queries: tf.Tensor, targets: tf.Tensor, scale: float = 1.0) -> tf.Tensor:
    """queries [B, T, D], target patch vectors [B, T, D] → scale · dot products [B, T (query), T (candidate)], float32.

    The reference put a softmax before its cross-entropy (a double softmax); these are logits for a plain one.
    """
    return scale * tf.einsum("bqd,bcd->bqc", tf.cast(queries, tf.float32), tf.cast(targets, tf.float32))


class SelfieModel(keras.Model):
    """Images in [0, 1] and a patch order → Selfie logits [B, 4, 4]; holds `trunk` and `selfie_head` by name.

    Args:
      backbone: which trunk (its width is the transformer's d_model).
      num_layers, num_heads, ff_dim, dropout: the transformer (see `SelfieHead`).
      trunk: a trunk to share (the ensemble); a new one when None.
      logit_scale: multiplies the query·patch dot products; None = 1/sqrt(d_model), as scaled dot-product
        attention. Deviation (docs/selfie_ensemble.md): with raw dot products (scale 1) the loss diverged to NaN
        within 8-14 SGD steps (64-d tiny trunk at lr 0.05, 256-d ResNet-18 trunk at the paper's lr 0.1).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        num_layers: int = 13,
        num_heads: int = 16,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        trunk: keras.Model | None = None,
        logit_scale: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.logit_scale = float(logit_scale) if logit_scale is not None else backbone.trunk_channels**-0.5
        self.trunk = trunk if trunk is not None else build_trunk(backbone)
        self.selfie_head = SelfieHead(
            backbone.trunk_channels, num_layers, num_heads, ff_dim, dropout, name="selfie_head"
        )
        self.build((None, 32, 32, 3))

    def build(self, input_shape):
        self.selfie_head.build((input_shape[0], selfie_lib.NUM_VISIBLE, self.backbone.trunk_channels))
        super().build(input_shape)

    def features(self, images, training: bool = False):
        """Trunk features of whole images, globally average-pooled: [N, trunk channels]."""
        return keras.ops.mean(self.trunk(images, training=training), axis=(1, 2))

    def patch_vectors(self, images, training: bool = False):
        """images [B, H, W, 3] → one vector per patch [B, 16, D]: all B·16 patches go through the trunk at once."""
        # [B, 16, H/4, W/4, 3] (8x8 patches on 32x32 images); reshapes only, so gradients reach every pixel.
        patches = selfie_lib.to_patches(images)
        flat = tf.reshape(patches, [-1, patches.shape[2], patches.shape[3], images.shape[-1]])
        vectors = keras.ops.mean(self.trunk(flat, training=training), axis=(1, 2))
        return tf.reshape(vectors, [tf.shape(images)[0], selfie_lib.NUM_PATCHES, vectors.shape[-1]])

    def selfie_logits(self, images, order, training: bool = False):
        """images [B, H, W, 3], order int [16] → logits [B, 4, 4]; the answer to query i is candidate i."""
        targets, visible = selfie_lib.split_patches(self.patch_vectors(images, training=training), order)
        target_positions, _ = selfie_lib.split_order(order)
        queries = self.selfie_head(visible, target_positions, training=training)
        return query_logits(queries, targets, self.logit_scale)

    def call(self, images, order=None, training: bool = False):
        # Without an order: the canonical one (targets = the top row), what the exported signature uses.
        if order is None:
            order = tf.range(selfie_lib.NUM_PATCHES, dtype=tf.int32)
        return self.selfie_logits(images, order, training=training)

    @property
    def checkpoint_items(self) -> dict:
        return dict(trunk=self.trunk, selfie_head=self.selfie_head)
