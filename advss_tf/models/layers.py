"""What every backbone family builds with: the row of the backbone table a family reads (`ArchSpec`), the image
normalisation inside the model, the BatchNorm factory with its choice of layer class, and BatchNorm routes (one
BatchNorm per route at every BatchNorm place, the rest shared: the contrastive tasks' backbones).

The family modules (models/resnet.py, models/wide_resnet.py, models/post_resnet.py) import this module and nothing else of advss_tf's
models; the registry (models/backbones.py) imports them. As the reference: BatchNorm uses PyTorch's
momentum/epsilon, and images are normalised with ImageNet statistics inside the model, so they stay in [0, 1].
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import keras

from advss_tf.errors import UsageError
from advss_tf.models.batch_norm import FusedBatchNormalization

# ImageNet statistics, as the reference code normalises CIFAR-10 (SPEC §3): images stay in [0, 1] outside the model.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One backbone's shape: its family (a key of models/backbones.FAMILIES) and what that family builds from."""

    family: str  # "resnet" (models/resnet.py) | "wide_resnet" (models/wide_resnet.py) | "post_resnet"
    block: str  # "basic" | "bottleneck" for the ResNets (post_resnet: "basic"), "wide" for the WideResNets
    blocks: tuple[int, ...]  # per stage: 4 stages for the ResNets, 3 for the WideResNets
    planes: tuple[int, ...]
    stem: int


@keras.saving.register_keras_serializable(package="advss_tf")
class ImageNormalization(keras.layers.Layer):
    """(x - mean) / std per channel, inside the model so attacks work in [0, 1] pixel space."""

    def __init__(self, mean=MEAN, std=STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, x):
        mean = keras.ops.cast(keras.ops.convert_to_tensor(self.mean), x.dtype)
        std = keras.ops.cast(keras.ops.convert_to_tensor(self.std), x.dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


# Which BatchNormalization class `batch_norm` builds. Both have the same weights, numerics and checkpoint keys;
# "keras" (Keras' own, unfused) is kept selectable as the reference the fused layer is tested and timed against,
# and is what a model that differentiates through its gradients prefers (the ensemble: `preferred_batch_norm_layer`).
BATCH_NORM_LAYERS = {"fused": FusedBatchNormalization, "keras": keras.layers.BatchNormalization}
AUTO = "auto"  # no override: each model's preferred layer
_batch_norm_layer: str | None = None  # chosen by `batch_norm_layer` (tests, benchmarks); None: the preferred one
_preferred_layer = "fused"


@contextlib.contextmanager
def batch_norm_layer(name: str) -> Iterator[None]:
    """Models built inside the context use BATCH_NORM_LAYERS[name] (tests and benchmarks of either path); AUTO
    leaves each model its preferred layer."""
    global _batch_norm_layer
    if name not in BATCH_NORM_LAYERS and name != AUTO:
        raise UsageError(f"unknown batch-norm layer {name!r}; valid: {', '.join([*BATCH_NORM_LAYERS, AUTO])}")
    previous, _batch_norm_layer = _batch_norm_layer, (None if name == AUTO else name)
    try:
        yield
    finally:
        _batch_norm_layer = previous


@contextlib.contextmanager
def preferred_batch_norm_layer(name: str) -> Iterator[None]:
    """Models built inside use BATCH_NORM_LAYERS[name] unless a caller chose one with `batch_norm_layer`.

    The ensemble prefers Keras' layer: its step differentiates through input gradients (the diversity term's
    double backprop), and TensorFlow's gradient of the fused kernel's gradient keeps more tensors — measured,
    ResNet-18 at batch 128: 17.7 GiB peak with the fused layer vs 13.9 GiB with Keras', at the same speed
    (docs/benchmarks.md).
    """
    global _preferred_layer
    if name not in BATCH_NORM_LAYERS:
        raise UsageError(f"unknown batch-norm layer {name!r}; valid: {', '.join(BATCH_NORM_LAYERS)}")
    previous, _preferred_layer = _preferred_layer, name
    try:
        yield
    finally:
        _preferred_layer = previous


def batch_norm(sync: bool, name: str) -> keras.layers.BatchNormalization:
    """A BatchNorm layer with PyTorch's momentum/epsilon, of the class chosen above; `sync`: statistics
    synchronised across replicas."""
    layer = BATCH_NORM_LAYERS[_batch_norm_layer or _preferred_layer]
    return layer(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=sync, name=name)


def fan_out_conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Conv2D:
    """A bias-free convolution initialised N(0, 2 / (k·k·out)) (PyTorch ResNets' kaiming_normal_, fan_out), padded
    as PyTorch's padding=kernel//2 at stride 1; strided convs get "valid" — a strided 3x3 is padded explicitly by its
    block, a strided 1x1 shortcut needs none. The WideResNets' and the post-activation ResNets' convolution."""
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        name=name,
    )


# -- BatchNorm routes -------------------------------------------------------------------------------------------------
def check_route(route: str | None, routes: Sequence[str]) -> int:
    """The index of `route` among `routes`; None is the last one (adversarial, for ACL's two)."""
    if route is None:
        return len(routes) - 1
    if route not in routes:
        raise ValueError(f"unknown BatchNorm route {route!r}; this model has: {', '.join(routes)}")
    return list(routes).index(route)


def track_by_name(layer: keras.layers.Layer, children: dict) -> None:
    """Makes each child an attribute of `layer`: TensorFlow's checkpoints and SavedModels follow attributes, not the
    lists Keras 3 keeps (a list of sublayers would be left out of `tf.train.Checkpoint` without a word)."""
    for name, child in children.items():
        setattr(layer, name, child)


class RoutedPart(keras.Model):
    """A functional part (a trunk or a stage 4) with one BatchNorm per route: per route, a functional model of the
    same graph whose BatchNorms are that route's own and whose other layers (convolutions, the normalisation, ...)
    are the same layer objects in every route. `call(x, training, route)` runs the named route's model, so in
    training mode only its statistics move. Built by `route_part`."""

    def __init__(self, route_models: dict[str, keras.Model], **kwargs):
        super().__init__(**kwargs)
        self.routes = tuple(route_models)
        track_by_name(self, route_models)  # checkpoint keys <part>/<route>/...

    def route_model(self, route: str | None) -> keras.Model:
        """The functional model of `route` (None: the last route)."""
        return getattr(self, self.routes[check_route(route, self.routes)])

    def call(self, x, training=None, route: str | None = None):
        return self.route_model(route)(x, training=training)

    def compute_output_shape(self, input_shape):
        return self.route_model(None).compute_output_shape(input_shape)


def route_part(part: keras.Model, routes: Sequence[str]) -> RoutedPart:
    """`part` (a functional model with one BatchNorm per place, as every functional family builds it) with a
    BatchNorm per route: each route's model is `part`'s graph rebuilt with a fresh BatchNorm of the same class and
    settings, named `<name>_<route>`, at every BatchNorm place, and `part`'s own layers everywhere else (shared
    weights). `part`'s BatchNorms themselves are left out."""

    def model_of(route: str) -> keras.Model:
        norms = {}  # one per BatchNorm layer, however many times the graph calls it

        def layer_of(layer):
            if not isinstance(layer, keras.layers.BatchNormalization):
                return layer
            if id(layer) not in norms:
                config = {**layer.get_config(), "name": f"{layer.name}_{route}"}
                norms[id(layer)] = layer.__class__.from_config(config)
            return norms[id(layer)]

        model = keras.models.clone_model(part, clone_function=layer_of)
        model.name = f"{part.name}_{route}"
        return model

    return RoutedPart({route: model_of(route) for route in routes}, name=part.name)
