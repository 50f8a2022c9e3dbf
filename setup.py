"""advss_tf: adversarial self-supervised pre-training and adversarial fine-tuning in TensorFlow/Keras 3."""

import os

from setuptools import find_namespace_packages, setup

TF_VERSION = "2.21.0"
# tensorflow-cpu by default; ADVSS_TF_GPU=1 at install time asks for the CUDA build instead. This is a switch and
# not only the `gpu` extra because pip cannot drop a base requirement when an extra is chosen, and tensorflow-cpu
# and tensorflow write the same files: installed together, whichever came last wins.
GPU = os.environ.get("ADVSS_TF_GPU", "") not in ("", "0")
TENSORFLOW = f"tensorflow[and-cuda]=={TF_VERSION}" if GPU else f"tensorflow-cpu=={TF_VERSION}"

setup(
    name="advss_tf",
    version="0.1.0",
    description=(
        "Adversarially robust models from adversarial self-supervised pre-training "
        "(Selfie, Rotation, Jigsaw, ensemble) and adversarial fine-tuning (Chen et al., CVPR 2020)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["advss_tf", "advss_tf.*"]),  # data folders too
    package_data={
        "advss_tf.data.sample": ["*.bin", "*.txt"],
        "advss_tf.corruptions.frost": ["*.png", "*.jpg"],
    },
    include_package_data=True,
    install_requires=[
        TENSORFLOW,
        "keras==3.15.1",
        "tensorflow-datasets==4.9.10",
        "importlib_resources>=6",  # tfds needs it on Python 3.11 but does not declare it
        f"tensorboard=={TF_VERSION}",
        "absl-py==2.5.1",
        "numpy>=2,<3",
        "scipy>=1.13,<2",
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
        "scikit-learn>=1.5,<2",  # KMeans for DynACL++'s pseudo-labels (training/pseudo_labels.py); 1.9.1 tested
    ],
    extras_require={
        # GPU users: ADVSS_TF_GPU=1 pip install -e ".[gpu]" (see the comment at the top).
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # pytest-xdist: the suite runs in two processes (.ci/run: -n 2 --dist loadfile; most of its time is
        # single-threaded tracing, so two processes on two cores take ~2/3 of the time of one).
        "test": ["pytest>=8", "pytest-xdist>=3.6", "ruff>=0.6"],
        # tools/benchmark_vs_torch.py and the peer tests (advss_tf.peer); nothing else of the torch ecosystem.
        "bench": ["torch==2.13.0"],
        # The peer check against the reference AutoAttack (tests marked `peer`, tools/benchmark_attacks.py): CPU
        # torch, and torchattacks — whose declared requirements pull torchvision and with it a CUDA torch of several
        # GB, though it imports neither — so install it without them: pip install -e ".[peer]" then
        # pip install --no-deps torchattacks==3.5.1 (what .ci/run does). At import it needs torch, numpy, scipy.
        "peer": ["torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "advss-pretrain=advss_tf.pretrain:run",
            "advss-finetune=advss_tf.finetune:run",
            "advss-evaluate=advss_tf.evaluate:run",
            "advss-import-torch=advss_tf.import_torch:run",
        ]
    },
)
