"""LARS (You, Gitman & Ginsburg 2017) as ACL, DynACL and AIR run it (`optimizer/lars.py`, the same file in all
three), as a Keras 3 optimizer.

For each variable w with gradient g, learning rate η, momentum m, weight decay β and trust coefficient ε_t
(ACL `optimizer/lars.py:81-105`):

    local = ε_t·‖w‖ / (‖g‖ + β·‖w‖), or 1 where ‖w‖ < 1e-15 or ‖g‖ < 1e-15
    buf   ← m·buf + η·local·(g + β·w)
    w     ← w − buf

The learning rate sits inside the momentum buffer (PyTorch SGD's form), not outside it as in SimCLR's TensorFlow
LARS. ACL builds it as `LARS(model.parameters(), lr=args.lr, weight_decay=1e-6)` (`train_simCLR.py:122`; DynACL
`train_DynACL.py:160`, AIR `pretraining.py:233`) with the file's defaults momentum 0.9 and eta 1e-3: every
parameter, BatchNorm scales and shifts and biases included, gets the weight decay and the trust ratio. So nothing is
excluded by default here either; `exclude_from_weight_decay` / `exclude_from_layer_adaptation` (regular expressions
searched in the variable's path, as TF Model Garden's LARS) give SimCLR's exclusions to whoever wants them. A
variable excluded from both is plain momentum SGD: buf ← m·buf + η·g.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
import tensorflow as tf

MOMENTUM = 0.9  # ACL optimizer/lars.py:29 (momentum=.9)
WEIGHT_DECAY = 1e-6  # ACL train_simCLR.py:122 (weight_decay=1e-6; the file's own default, 5e-4, is not used)
TRUST_COEFFICIENT = 1e-3  # ACL optimizer/lars.py:30 (eta=0.001)
NORM_FLOOR = 1e-15  # ACL optimizer/lars.py:94: a zero weight or gradient norm gets the trust ratio 1


def _matches(patterns: Sequence[str], variable) -> bool:
    return any(re.search(p, variable.path) for p in patterns)


@keras.saving.register_keras_serializable(package="advss_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, ACL's update (see the module docstring).

    Args:
      learning_rate: η, a float or a `LearningRateSchedule` (ACL: 5.0, with warm-up and cosine decay).
      momentum: m. weight_decay_rate: β (L2, inside the trust ratio). trust_coefficient: ε_t.
      exclude_from_weight_decay, exclude_from_layer_adaptation: regular expressions; a variable whose path matches
        one gets β = 0, respectively the trust ratio 1.
    """

    def __init__(
        self,
        learning_rate=5.0,
        momentum: float = MOMENTUM,
        weight_decay_rate: float = WEIGHT_DECAY,
        trust_coefficient: float = TRUST_COEFFICIENT,
        exclude_from_weight_decay: Sequence[str] = (),
        exclude_from_layer_adaptation: Sequence[str] = (),
        name: str = "lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay_rate < 0.0 or trust_coefficient <= 0.0:
            raise ValueError(
                f"LARS needs weight_decay_rate >= 0 and trust_coefficient > 0, got {weight_decay_rate}, "
                f"{trust_coefficient}"
            )
        self.momentum = float(momentum)
        self.weight_decay_rate = float(weight_decay_rate)
        self.trust_coefficient = float(trust_coefficient)
        self.exclude_from_weight_decay_patterns = tuple(exclude_from_weight_decay)
        self.exclude_from_layer_adaptation_patterns = tuple(exclude_from_layer_adaptation)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided once, by the Keras variables' paths (update_step may be handed the backend variable).
        self._decays = [
            0.0 if _matches(self.exclude_from_weight_decay_patterns, v) else self.weight_decay_rate for v in variables
        ]
        self._adapts = [not _matches(self.exclude_from_layer_adaptation_patterns, v) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        decay = self._decays[index]
        w = tf.convert_to_tensor(variable)
        g = tf.cast(gradient, w.dtype)
        lr = tf.cast(learning_rate, w.dtype)
        local = tf.ones([], w.dtype)
        if self._adapts[index]:
            w_norm, g_norm = tf.norm(w), tf.norm(g)
            ratio = self.trust_coefficient * w_norm / (g_norm + decay * w_norm)
            local = tf.where((w_norm < NORM_FLOOR) | (g_norm < NORM_FLOOR), local, ratio)
        buf = self.momentums[index]
        self.assign(buf, self.momentum * buf + (lr * local) * (g + decay * w))
        self.assign_sub(variable, buf)

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "weight_decay_rate": self.weight_decay_rate,
            "trust_coefficient": self.trust_coefficient,
            "exclude_from_weight_decay": list(self.exclude_from_weight_decay_patterns),
            "exclude_from_layer_adaptation": list(self.exclude_from_layer_adaptation_patterns),
        }
