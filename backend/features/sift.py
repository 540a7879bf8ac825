"""SIFT (Lowe, "Distinctive Image Features from Scale-Invariant Keypoints", IJCV 2004) in COLMAP's own
implementation (github.com/colmap/colmap, ``pycolmap.Sift``): DoG keypoints with scale and orientation, RootSIFT
descriptors (L1-root normalised), the same features COLMAP's ``feature_extractor`` writes. The pycolmap wheel here
is a CPU build; a CUDA build of pycolmap runs it on the GPU (``use_gpu``).

COLMAP logs through glog, whose default is a log file per severity in the system temp folder
(``.<host>.<user>.log.INFO.<date>.<pid>``, written at the extractor's first "Creating SIFT CPU feature extractor"
line): :meth:`SIFT._init` turns glog's log files off for the process first
(:func:`backend.utils.colmap.no_colmap_log_files`), so extraction in the app, the CLI and the API leaves
nothing there; the lines still go to stderr."""

from __future__ import annotations

import warnings

import numpy as np

from .base import Extractor, empty_features, to_gray


class SIFT(Extractor):
    default_conf = {"max_keypoints": 8192, "peak_threshold": 0.02 / 3, "edge_threshold": 10.0,
                    "first_octave": -1, "num_octaves": 4, "upright": False}
    descriptor_kind = "float"
    default_matcher = "nn-ratio"
    uses_gpu = False
    licence = "BSD-3-Clause (COLMAP); SIFT's patent expired in 2020"
    reference = "Lowe, IJCV 2004; COLMAP (Schönberger & Frahm, CVPR 2016)"

    def _init(self):
        import pycolmap

        from ..utils.colmap import no_colmap_log_files

        no_colmap_log_files()  # before pycolmap's first log line, which would open the file (module doc)
        c = self.conf
        opts = pycolmap.FeatureExtractionOptions()
        opts.num_threads = -1
        try:
            import torch

            opts.use_gpu = bool(torch.cuda.is_available()) and pycolmap.has_cuda
        except (ImportError, AttributeError):
            opts.use_gpu = False
        s = opts.sift
        s.max_num_features = int(c["max_keypoints"])
        s.peak_threshold = float(c["peak_threshold"])
        s.edge_threshold = float(c["edge_threshold"])
        s.first_octave = int(c["first_octave"])
        s.num_octaves = int(c["num_octaves"])
        s.upright = bool(c["upright"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the array-in, array-out API
            self.sift = pycolmap.Sift(opts)

    def extract(self, image):
        kp, desc = self.sift.extract(np.ascontiguousarray(to_gray(image)))
        if len(kp) == 0:
            return empty_features(128)
        kp = np.asarray(kp, np.float32)
        return {
            "keypoints": kp[:, :2] - 0.5,  # COLMAP puts pixel centres at +0.5
            "scores": kp[:, 2].copy(),  # SIFT has no detection score: larger scales first, as COLMAP keeps them
            "descriptors": np.asarray(desc, np.float32),
            "scales": kp[:, 2].copy(),
            "oris": kp[:, 3].copy(),
        }
