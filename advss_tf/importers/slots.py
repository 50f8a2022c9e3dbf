"""Tensor slots: what each tensor of a checkpoint is in our models, and the check that every one is used.

A format describes the file it reads as a dict key → `Slot` (the tensor's PyTorch shape and where it goes);
`apply_slots` refuses a missing, unexpected or mis-shaped key with one UsageError before anything is placed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from advss_tf.errors import UsageError
from advss_tf.models.layers import MEAN, STD

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor of the file: its expected (PyTorch) shape and where it goes (`put(value)`), or a check."""

    shape: tuple[int, ...]
    put: Callable[[np.ndarray], None]


def assign(var, value: np.ndarray) -> None:
    """`value` into the Keras variable `var`, as float32 of its shape."""
    var.assign(np.asarray(value, dtype=np.float32).reshape(tuple(var.shape)))


def conv_slot(layer) -> Slot:
    """A Conv2d weight (OIHW) → the Keras Conv2D kernel (HWIO) of `layer`."""
    kh, kw, i, o = layer.kernel.shape
    return Slot((o, i, kh, kw), lambda v: assign(layer.kernel, np.transpose(v, (2, 3, 1, 0))))


def bn_slots(prefix: str, layer) -> dict[str, Slot]:
    """A BatchNorm2d's tensors under `prefix` → the Keras BatchNormalization `layer`."""
    c = int(layer.gamma.shape[0])
    slots = {
        f"{prefix}.{suffix}": Slot((c,), lambda v, var=var: assign(var, v))
        for suffix, var in zip(
            _BN_SUFFIXES, (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), strict=True
        )
    }
    slots[f"{prefix}.num_batches_tracked"] = Slot((), lambda v: None)  # PyTorch's update counter: no weight of ours
    return slots


def dense_slots(prefix: str, layer) -> dict[str, Slot]:
    """A Linear's weight and bias under `prefix` → the Keras Dense `layer` (the weight transposed); a Dense without
    a bias takes a Linear(bias=False), which has no `bias` key."""
    d, k = layer.kernel.shape
    slots = {f"{prefix}.weight": Slot((int(k), int(d)), lambda v: assign(layer.kernel, v.T))}
    if layer.bias is not None:
        slots[f"{prefix}.bias"] = Slot((int(k),), lambda v: assign(layer.bias, v))
    return slots


def normaliser_slots(mean_key: str, std_key: str, shape: tuple[int, ...], record: dict) -> dict[str, Slot]:
    """The reference's normaliser buffers: checked against our models' (ImageNet) constants and recorded."""

    def check(name: str, ours: tuple[float, ...]):
        def put(value: np.ndarray) -> None:
            theirs = np.asarray(value, np.float32).reshape(-1)
            if not np.array_equal(theirs, np.asarray(ours, np.float32)):
                raise UsageError(
                    f"the file's normaliser {name} is {theirs.tolist()} but advss_tf's models normalise with "
                    f"{list(ours)} (ImageNet statistics, as the reference scripts): not imported"
                )
            record[name] = theirs.tolist()

        return put

    return {mean_key: Slot(shape, check("mean", MEAN)), std_key: Slot(shape, check("std", STD))}


def apply_slots(state: dict[str, np.ndarray], slots: dict[str, Slot], where: str) -> None:
    """Checks the keys and shapes of `state` against `slots` (one UsageError naming the first offenders), then puts
    every tensor in its place."""
    missing = [k for k in slots if k not in state]
    unexpected = [k for k in state if k not in slots]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {slots[k].shape})"
        for k in slots
        if k in state and tuple(state[k].shape) != slots[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise UsageError(f"{where}: {'; '.join(problems)}")
    for key, slot in slots.items():
        slot.put(state[key])


def sub_state(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The tensors of `state` under `prefix`, keyed without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
