"""Fits the `trained_classifier` fixture's model and writes its weights to tests/data (not a test module).

    python tests/make_trained_classifier.py

Run it when the block definition changes (a new backbones.ARCH_VERSION: the fixture then finds no file and fits the
model in every test run until this is run and the file committed). Fitting takes about half a minute on the 2-core CPU;
the weights are float32 and the same on every machine once written.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402  (the fixture's model, data and file name)

from advss_tf.data import cifar10  # noqa: E402


def main() -> None:
    x, y = cifar10.load_arrays(cifar10.DataSource(), "train")
    images, labels = conftest.trained_classifier_data((x, y, None, None))
    model = conftest.fit_trained_classifier(images, labels)
    accuracy = float(np.mean(np.argmax(model(images, training=False), -1) == labels))
    path = conftest.committed_weights_path()
    conftest.save_weights_npz(model, path)
    print(f"{path}: {os.path.getsize(path)} bytes; clean accuracy on its 256 images {accuracy:.3f}")


if __name__ == "__main__":
    main()
