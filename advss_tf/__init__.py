"""advss_tf: adversarial self-supervised pre-training and adversarial fine-tuning for TensorFlow/Keras 3.

From Python: `advss_tf.autoattack(model, x, y, epsilon=8/255)` and `advss_tf.evaluate_robustness(...)` (defined in
`advss_tf.api`, loaded on first use, so importing the package stays light).

Importing the package (which ``python -m advss_tf.<binary>`` does before anything else) sets
``TF_ENABLE_ONEDNN_OPTS=1`` when no GPU is present and the user has not chosen: on CPU it made a ResNet-18 PGD-10
step 2.5x faster (SPEC §2). It must happen before TensorFlow is first imported.
"""

import os


def _gpu_present() -> bool:
    # Cheap checks that do not import TensorFlow.
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


if "TF_ENABLE_ONEDNN_OPTS" not in os.environ and not _gpu_present():
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
# TensorFlow's C++ start-up INFO/WARNING lines would bury the one-line errors the binaries promise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with fd 2 silenced: its C++ start-up banner ignores TF_CPP_MIN_LOG_LEVEL.

    Only the import is silenced; an import failure is re-raised (and printed) after stderr is restored.
    Set ADVSS_TF_VERBOSE_IMPORT=1 to see the banner.
    """
    import sys

    if "tensorflow" in sys.modules or os.environ.get("ADVSS_TF_VERBOSE_IMPORT"):
        return
    try:
        saved = os.dup(2)
    except OSError:
        return
    try:
        sys.stderr.flush()
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


_import_tensorflow_quietly()


# The public Python API lives in the top layer (`advss_tf.api`); it is loaded on first use by name, so the
# package import stays light and the layers point down (docs/architecture.md).
_API = ("autoattack", "evaluate_robustness", "AutoAttackResult", "RobustnessResult")


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
