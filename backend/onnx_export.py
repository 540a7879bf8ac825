"""ONNX export of our matchers, runnable with ``onnxruntime`` alone (issue 25):
``python -m backend export-onnx --features NAME --matcher NAME OUT_DIR``.

What is exported: the learned matcher for the features (LightGlue for ALIKED / DISK, LighterGlue for XFeat), with
our weights, as one graph from keypoints and descriptors to matches: keypoint normalisation, positional encoding,
every transformer layer, the assignment head and LightGlue's own match filter (mutual best, score above
``filter_threshold``). The graph runs *all* layers: LightGlue's adaptive depth and width (early stopping, point
pruning) are data-dependent control flow that ONNX cannot carry, so the ONNX model gives the matches of the torch
model with ``depth_confidence=-1, width_confidence=-1`` (``tests/test_onnx_export.py`` checks it on real pairs).

What is not exported, and why: the extractors. ALIKED samples its descriptors with a deformable convolution
(``torchvision.ops.deform_conv2d`` in kornia), which has no ONNX operator; XFeat's keypoint selection (NMS and a
data-dependent top-k) and SIFT / ORB / AKAZE (OpenCV, COLMAP) are not torch graphs. Extract with this product (or
the same extractor elsewhere) and match with the ONNX file.

``OUT_DIR`` receives ``<matcher>-<features>.onnx`` and ``manifest.json``: the inputs and outputs with their shapes and
dtypes, the filter threshold baked in, the opset, the sha256 of the ONNX file and of the weights it came from, and
the versions of torch and kornia that exported it. :class:`OnnxMatcher` runs such a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .utils.hashing import file_sha256

OPSET = 18
INPUTS = {  # name: (dtype, shape); M and N keypoints of images 0 and 1, D the descriptor size
    "kpts0": ("float32", ["1", "M", "2"]), "kpts1": ("float32", ["1", "N", "2"]),
    "desc0": ("float32", ["1", "M", "D"]), "desc1": ("float32", ["1", "N", "D"]),
    "size0": ("float32", ["1", "2"]), "size1": ("float32", ["1", "2"]),
}
OUTPUTS = {"matches0": ("int64", ["1", "M"]), "mscores0": ("float32", ["1", "M"])}
NOT_EXPORTED = {
    "aliked-n16": "ALIKED's descriptors come from a deformable convolution, which has no ONNX operator",
    "aliked-n16rot": "ALIKED's descriptors come from a deformable convolution, which has no ONNX operator",
    "aliked-n32": "ALIKED's descriptors come from a deformable convolution, which has no ONNX operator",
    "aliked-t16": "ALIKED's descriptors come from a deformable convolution, which has no ONNX operator",
    "disk": "DISK's keypoint selection (NMS, a data-dependent top-k) is not a fixed graph",
    "xfeat": "XFeat's keypoint selection (NMS, a data-dependent top-k) is not a fixed graph",
}


def _full_depth_module(model, threshold: float):
    """A torch module over a kornia ``LightGlue`` ``model``: all layers, then the match filter (see module doc)."""
    import torch
    from kornia.feature.lightglue import filter_matches, normalize_keypoints

    class FullDepth(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lg = model

        def forward(self, kpts0, kpts1, desc0, desc1, size0, size1):
            d0, d1 = self.lg.input_proj(desc0), self.lg.input_proj(desc1)
            e0 = self.lg.posenc(normalize_keypoints(kpts0, size0))
            e1 = self.lg.posenc(normalize_keypoints(kpts1, size1))
            for layer in self.lg.transformers:
                d0, d1 = layer(d0, d1, e0, e1)
            scores, _ = self.lg.log_assignment[-1](d0, d1)
            m0, _, s0, _ = filter_matches(scores, threshold)
            return m0, s0

    return FullDepth().eval()


def export_matcher(features: str, matcher: str, out_dir: Path) -> Path:
    """Export ``matcher`` (for ``features``' descriptors) to ``out_dir/<matcher>-<features>.onnx`` and write
    ``out_dir/manifest.json`` (module doc). Takes 10 s (LighterGlue) to 2 min (LightGlue) on 2 CPU cores.

    Returns:
        The path of the ONNX file.

    Raises:
        ValueError: the combination cannot work, or the matcher is not a learned one (nn-ratio, AdaLAM have no
            network to export).
        MissingWeightsError: the matcher's weights are missing.
    """
    import kornia
    import torch
    from torch.export import Dim

    from .matchers import check_combination, load_matcher, matcher_class

    check_combination(features, matcher)
    if matcher not in ("lightglue", "lighterglue"):
        raise ValueError(f"{matcher} has no network to export; export-onnx takes lightglue or lighterglue")
    m = load_matcher(matcher, features, torch.device("cpu"), depth_confidence=-1, width_confidence=-1)
    threshold = float(m.conf["filter_threshold"])
    module = _full_depth_module(m.model, threshold)
    dim = int(m.model.conf.input_dim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{matcher}-{features}.onnx"
    g = torch.Generator().manual_seed(0)
    example = (torch.rand(1, 64, 2, generator=g) * 500, torch.rand(1, 48, 2, generator=g) * 500,
               torch.nn.functional.normalize(torch.randn(1, 64, dim, generator=g), dim=-1),
               torch.nn.functional.normalize(torch.randn(1, 48, dim, generator=g), dim=-1),
               torch.tensor([[640.0, 480.0]]), torch.tensor([[640.0, 480.0]]))
    dm, dn = Dim("M", min=2, max=16384), Dim("N", min=2, max=16384)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(module, example, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                          input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_shapes={"kpts0": {1: dm}, "kpts1": {1: dn}, "desc0": {1: dm}, "desc1": {1: dn},
                                          "size0": None, "size1": None})
    weights = matcher_class(matcher).weight_names(m.conf, features)
    from .io.weights import weight_path

    manifest = {
        "model": path.name, "matcher": matcher, "features": features, "sha256": file_sha256(path),
        "inputs": {k: {"dtype": t, "shape": [s if s != "D" else dim for s in shape]} for k, (t, shape) in
                   INPUTS.items()},
        "outputs": {k: {"dtype": t, "shape": shape} for k, (t, shape) in OUTPUTS.items()},
        "conventions": "kpts: pixels (x, y) of the image the features were found in, size: (width, height) of "
                       "that image; desc: the extractor's descriptors, float32; matches0[0, i]: index into image 1's "
                       "keypoints of keypoint i of image 0, or -1; mscores0: its confidence in [0, 1]",
        "filter_threshold": threshold, "depth": "all layers (no adaptive depth or width)", "opset": OPSET,
        "weights": {w: file_sha256(weight_path(w)) for w in weights},
        "exported_with": {"torch": torch.__version__, "kornia": kornia.__version__},
        "extractor": NOT_EXPORTED.get(features, "not exported"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return path


class OnnxMatcher:
    """Runs a file of :func:`export_matcher` with ``onnxruntime`` on the CPU.

    Args:
        path: the ``.onnx`` file (its ``manifest.json`` beside it is not needed to run it).
        threads: onnxruntime's intra-op threads (0: its default, all cores).

    Raises:
        onnxruntime's errors for a file that is not an ONNX model.
    """

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(matches int32 [K, 2], scores float32 [K])`` from two images' features (``keypoints`` float [N, 2]
        in pixels, ``descriptors`` float [N, D], ``image_size`` (W, H)), as
        :meth:`backend.matchers.base.Matcher.match`."""
        if len(f0["keypoints"]) < 2 or len(f1["keypoints"]) < 2:
            return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
        feed = {"kpts0": f0["keypoints"][None].astype(np.float32), "kpts1": f1["keypoints"][None].astype(np.float32),
                "desc0": f0["descriptors"][None].astype(np.float32),
                "desc1": f1["descriptors"][None].astype(np.float32),
                "size0": np.asarray(f0["image_size"], np.float32)[None],
                "size1": np.asarray(f1["image_size"], np.float32)[None]}
        m0, s0 = self.session.run(None, feed)
        i = np.nonzero(m0[0] >= 0)[0]
        return np.stack([i, m0[0][i]], 1).astype(np.int32), s0[0][i].astype(np.float32)


ONNX_MATCHERS = ("lightglue", "lighterglue")


class OnnxRuntimeMissing(RuntimeError):
    """``runtime: onnx`` asked for where ``onnxruntime`` is not installed."""


RUNTIMES = ("torch", "onnx")


def onnx_matcher(features: str, matcher: str, threads: int = 0) -> OnnxMatcher:
    """An :class:`OnnxMatcher` for ``matcher`` on ``features``' descriptors, exported on first use (issue 25:
    ``runtime: onnx`` in ``POST /v1/match`` and the Two-view page).

    The file lives in ``<weights>/onnx/<matcher>-<features>/`` (beside the weights it comes from, never the system
    temp folder) and is exported again only when the manifest's weight checksums no longer match the weights. The
    first call exports it (10 s for LighterGlue, up to 2 min for LightGlue on 2 CPU cores); concurrent first calls
    each export into a private folder and the last rename wins, so a reader never sees half a file.

    Raises:
        ValueError: the matcher has no network (only LightGlue and LighterGlue run on ONNX Runtime), or the
            combination cannot work.
        OnnxRuntimeMissing: ``onnxruntime`` is not installed.
        MissingWeightsError: the matcher's weights are missing.
    """
    import os
    import shutil
    import tempfile

    from .io.weights import checksums, weight_path, weights_dir
    from .matchers import check_combination, matcher_class

    check_combination(features, matcher)
    if matcher not in ONNX_MATCHERS:
        raise ValueError(f"the ONNX runtime runs {' and '.join(ONNX_MATCHERS)} only; {matcher} has no network to "
                         "export: choose runtime torch, or one of those matchers")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise OnnxRuntimeMissing("onnxruntime is not installed: run bash setup/setup.sh, or choose runtime torch") \
            from None
    final = weights_dir() / "onnx" / f"{matcher}-{features}"
    path = final / f"{matcher}-{features}.onnx"
    names = matcher_class(matcher).weight_names({}, features)
    for w in names:
        weight_path(w)  # present and matching the manifest (MissingWeightsError otherwise)
    want = checksums(names)  # the manifest's sha256, which export_matcher's manifest records after that check
    try:
        have = json.loads((final / "manifest.json").read_text()).get("weights")
    except (OSError, ValueError):
        have = None
    if have != want or not path.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{matcher}-{features}-", dir=final.parent))
        try:
            export_matcher(features, matcher, tmp)
            old = final.parent / f".old-{tmp.name}"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return OnnxMatcher(path, threads)
