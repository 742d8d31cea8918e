"""The built-in example end to end: the digits CNN's bundle classifies the test split as PyTorch does.

The factory trains in a few seconds with fixed seeds, so calling it again here gives the very
model the build exported (checked below through the logits, not assumed).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    from edgepack.build import build
    from edgepack.examples import digits

    return build(f"{digits.__file__}:digits_cnn", "x86_64", tmp_path_factory.mktemp("dist-digits")).bundle


def test_digits_manifest(digits_bundle):
    manifest = digits_bundle.manifest
    assert digits_bundle.path.name == "digits_cnn-1.0.0-x86_64"  # version from the example's __version__
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 1, 8, 8]}]
    assert [out["shape"] for out in manifest["outputs"]] == [[1, 10]]
    assert manifest["verification"]["passed"] is True
    assert manifest["verification"]["native_loader"]["passed"] is True


def test_bundle_accuracy_equals_pytorch_on_the_whole_test_split(digits_bundle):
    import torch

    from edgepack.examples.digits import accuracy, digits_cnn, digits_split
    from edgepack.runtime.loader import load

    _, test_x, _, test_y = digits_split()
    assert test_x.shape[1:] == (1, 8, 8) and len(test_x) == len(test_y) > 400

    bundle = load(digits_bundle.path)
    logits = np.concatenate([bundle.run([image[None]])[0] for image in test_x])  # batch 1, image by image

    model = digits_cnn()
    with torch.no_grad():
        reference = model(torch.from_numpy(test_x)).numpy()

    np.testing.assert_allclose(logits, reference, atol=1e-3, rtol=1e-3)  # the same trained weights
    bundle_accuracy, torch_accuracy = accuracy(logits, test_y), accuracy(reference, test_y)
    assert bundle_accuracy == torch_accuracy
    assert bundle_accuracy > 0.95
