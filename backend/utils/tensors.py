"""Photos into network inputs."""

from __future__ import annotations

import numpy as np


def image_to_batch(image: np.ndarray, device):
    """An RGB photo uint8 [H, W, 3] as a batch of one, float32 [1, 3, H, W] in [0, 1] on ``device``
    (``kornia.image.image_to_tensor``; the bytes move to the device before the conversion to float)."""
    from kornia.image import image_to_tensor

    t = image_to_tensor(np.require(image, requirements=("C", "W")), keepdim=False)  # uint8 [1, 3, H, W]
    return t.to(device).float().div_(255.0)
