"""Keypoint positions survive the resize, end to end: ALIKED run through the features stage on a downscaled photo
must report the same points, in original-image pixels, as ALIKED run on the full-resolution photo.

A pixel-centre mistake in the mapping back (using ``x * s`` instead of ``(x + 0.5) * s - 0.5``, say) shifts every
keypoint by ``(s - 1) / 2`` original pixels in both axes; the test bounds the mean offset at half of that."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.config import FeaturesConfig
from backend.features.extract import read_features, run_features
from conftest import scene_dir


def _keypoints(tmp_path, name: str, image: Image.Image, resize: int):
    run = tmp_path / name
    (run / "images").mkdir(parents=True)
    image.save(run / "images" / "a.png")
    run_features(run, ["a.png"], FeaturesConfig(resize=resize, max_keypoints=2048))
    f = read_features(run / "features.h5", "a.png")
    return f["keypoints"], f["scores"]


@pytest.mark.parametrize("factor", [2, 4])
def test_keypoints_of_a_downscaled_photo_land_on_the_full_resolution_ones(tmp_path, factor):
    photo = sorted((scene_dir("fox_instant_ngp") / "images").iterdir())[0]
    im = Image.open(photo).convert("RGB")  # 1080 x 1920
    side = max(im.size)
    full, _ = _keypoints(tmp_path, "full", im, side)
    small, scores = _keypoints(tmp_path, "small", im, side // factor)
    assert full.dtype == np.float32 and small.dtype == np.float32
    # stored in original pixels: the downscaled detections span the whole photo
    assert small[:, 0].max() > 0.8 * im.size[0] and small[:, 1].max() > 0.8 * im.size[1]
    strong = small[np.argsort(-scores)[:300]]
    d = np.linalg.norm(strong[:, None] - full[None], axis=-1)
    nn = d.argmin(1)
    close = d[np.arange(len(strong)), nn] < 1.5 * factor
    assert close.mean() > 0.5, f"only {close.mean():.0%} of the strong keypoints have a full-resolution twin"
    offset = (strong[close] - full[nn[close]]).mean(0)
    bound = 0.25 * (factor - 1)  # half the shift of a pixel-centre mistake
    assert np.all(np.abs(offset) < bound), f"mean offset {offset} px between scales (bound {bound})"


def test_aliked_fast_normalisation_gives_kornias_features():
    """Our ALIKED normalises its dense map with an in-place rsqrt (backend/features/aliked.py, 0.73-0.86x the
    extraction time): on two church photos it finds kornia's own ALIKED's keypoints exactly and its descriptors
    within 1e-5."""
    import torch
    from kornia.feature import ALIKED as KorniaALIKED

    from backend.features import load_extractor

    ours = load_extractor("aliked-n16", torch.device("cpu"), max_keypoints=2048)
    theirs = load_extractor("aliked-n16", torch.device("cpu"), max_keypoints=2048)
    k = KorniaALIKED(model_name="aliked-n16", max_num_keypoints=2048, detection_threshold=0.01, nms_radius=2)
    k.load_state_dict(ours.model.state_dict())
    theirs.model = k.eval()
    assert type(ours.model) is not KorniaALIKED
    for p in sorted((scene_dir("church_imc2024") / "images").iterdir())[:2]:
        im = Image.open(p).convert("RGB")
        im.thumbnail((1024, 1024))
        a, b = theirs.extract(np.asarray(im)), ours.extract(np.asarray(im))
        assert len(a["keypoints"]) == 2048
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
        np.testing.assert_allclose(a["descriptors"], b["descriptors"], atol=1e-5)
