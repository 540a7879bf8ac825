"""LighterGlue: LightGlue (Lindenberger et al., ICCV 2023) in the small configuration trained for XFeat by its
authors (Potje et al., CVPR 2024; github.com/verlab/accelerated_features: 6 layers, one head, 96-d), through
``kornia.feature.LightGlue`` with the official weights (``xfeat-lighterglue.pt``)."""

from __future__ import annotations

from .base import Matcher
from .lightglue import check_batch_size, load_lightglue_state, run_lightglue, run_lightglue_batch, set_cpu_attention


class LighterGlue(Matcher):
    """LighterGlue with kornia's model; ``cpu_attention``, ``batch_size`` and :attr:`last_stats` as
    :class:`.lightglue.LightGlue`'s."""

    default_conf = {"depth_confidence": -1.0, "width_confidence": 0.95, "filter_threshold": 0.1,
                    "cpu_attention": "sdpa", "batch_size": 1}
    features = {"xfeat": "xfeat-lighterglue"}
    uses_gpu = True
    licence = "Apache-2.0 (code and weights)"
    reference = "Potje et al., CVPR 2024 (LighterGlue); LightGlue, ICCV 2023"

    @classmethod
    def weight_names(cls, conf, extractor):
        return ["xfeat-lighterglue"]

    def _init(self):
        from kornia.feature import LightGlue as KorniaLightGlue

        c = self.conf
        model = KorniaLightGlue(None, input_dim=64, descriptor_dim=96, n_layers=6, num_heads=1,
                                depth_confidence=c["depth_confidence"], width_confidence=c["width_confidence"],
                                filter_threshold=c["filter_threshold"], mp=self.device.type == "cuda")
        model = load_lightglue_state(model, "xfeat-lighterglue", prefix="matcher.").eval().to(self.device)
        self.batch_size = check_batch_size(c)
        self.model = set_cpu_attention(model, c["cpu_attention"], self.device)
        self.last_stats: dict = {}

    def match(self, f0, f1):
        return run_lightglue(self.model, f0, f1, self.device, self.last_stats)

    def match_batch(self, pairs):
        if self.batch_size == 1:
            return super().match_batch(pairs)
        self.last_stats = {"layers": self.model.conf.n_layers, "pruned": 0.0}
        return run_lightglue_batch(self.model, pairs, self.device)
