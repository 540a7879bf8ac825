"""LighterGlue: LightGlue (Lindenberger et al., ICCV 2023) in the small configuration trained for XFeat by its
authors (Potje et al., CVPR 2024; github.com/verlab/accelerated_features: 6 layers, one head, 96-d), through
``kornia.feature.LightGlue`` with the official weights (``xfeat-lighterglue.pt``)."""

from __future__ import annotations

import torch

from .lightglue import LightGlue, load_lightglue_state


class LighterGlue(LightGlue):
    """LighterGlue with kornia's model; matching, ``cpu_attention``, ``batch_size`` and :attr:`last_stats` are
    :class:`.lightglue.LightGlue`'s, only the model and its defaults differ."""

    default_conf = {"depth_confidence": -1.0, "width_confidence": 0.95, "filter_threshold": 0.1,
                    "cpu_attention": "sdpa", "batch_size": 1}
    features = {"xfeat": "xfeat-lighterglue"}
    licence = "Apache-2.0 (code and weights)"
    reference = "Potje et al., CVPR 2024 (LighterGlue); LightGlue, ICCV 2023"

    @classmethod
    def weight_names(cls, conf, extractor):
        return ["xfeat-lighterglue"]

    def _model(self, c: dict) -> torch.nn.Module:
        """kornia's LightGlue with 64-d input, 96-d descriptors, 6 layers and one head, with XFeat's weights."""
        from kornia.feature import LightGlue as KorniaLightGlue

        model = KorniaLightGlue(None, input_dim=64, descriptor_dim=96, n_layers=6, num_heads=1,
                                depth_confidence=c["depth_confidence"], width_confidence=c["width_confidence"],
                                filter_threshold=c["filter_threshold"], mp=self.device.type == "cuda")
        return load_lightglue_state(model, "xfeat-lighterglue", prefix="matcher.")
