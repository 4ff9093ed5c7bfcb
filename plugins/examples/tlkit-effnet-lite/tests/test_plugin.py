"""The plugin's own tests, as a third-party author would write them: ``pytest plugins/examples/tlkit-effnet-lite``.

``tlkit_conformance`` is a fixture that tlkit's pytest plugin provides to every project that installs tlkit.
"""

import torch
from PIL import Image
from skimage import data

import tlkit
from tlkit.testing import sample_images


def test_conformance(tlkit_conformance):
    backbone = tlkit.get_backbone("effnet/lite0", preprocess={"input_size": [3, 96, 96]})
    tlkit_conformance(backbone, sample_images(4))


def test_real_weights_see_a_cat():
    backbone = tlkit.get_backbone("effnet/lite0").load()
    with torch.inference_mode():
        logits = backbone.logits(backbone.preprocess([Image.fromarray(data.chelsea())]))
    assert int(logits.argmax()) in range(281, 286)  # the ImageNet cat classes
