"""Figures and drawings for the app: keypoints and matches drawn on images (numpy/PIL), the similarity heatmap,
the pair graph, the 3D view of a reconstruction (sparse points and camera frusta), and ground-truth versus aligned
predicted camera centres (plotly). Pure functions of arrays and files; nothing imports streamlit.

Conventions: keypoints are (x, y) in pixels of the image as stored in the run folder, pixel centres at integers
(as in ``features.h5``). Poses are COLMAP's ``cam_from_world`` (x_cam = R X + t), camera centre C = -Rᵀ t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageOps

# viridis, sampled (matplotlib's data at 0, 1/8, ..., 1)
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Viridis colours uint8 [N, 3] of ``values`` scaled from ``lo`` (purple) to ``hi`` (yellow)
    (default: the values' 2nd and 98th percentiles)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros((0, 3), np.uint8)
    lo = float(np.percentile(v, 2)) if lo is None else lo
    hi = float(np.percentile(v, 98)) if hi is None else hi
    x = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.full_like(v, 0.5)
    pos = x * (len(_VIRIDIS) - 1)
    i0 = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    f = (pos - i0)[:, None]
    return np.round(_VIRIDIS[i0] * (1 - f) + _VIRIDIS[i0 + 1] * f).astype(np.uint8)


def open_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB with its EXIF orientation applied (the run folder's copies already are)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def _fit(img: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    w, h = img.size
    s = min(1.0, max_side / max(w, h))
    if s < 1.0:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    return img, s


def thumbnail(src: Path, dst: Path, size: int = 320) -> Path:
    """A JPEG thumbnail of ``src`` (long side ``size``) at ``dst``, made once and reused while newer than ``src``."""
    dst = Path(dst)
    if dst.exists() and dst.stat().st_mtime >= Path(src).stat().st_mtime:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    img, _ = _fit(open_rgb(src), size)
    tmp = dst.with_suffix(".tmp.jpg")
    img.save(tmp, "JPEG", quality=85)
    tmp.replace(dst)
    return dst


def draw_keypoints(image: Image.Image, keypoints: np.ndarray, scores: np.ndarray | None = None,
                   max_side: int = 1280, radius: float | None = None) -> Image.Image:
    """``image`` (downscaled to ``max_side``) with ``keypoints`` [N, 2] drawn as dots coloured by ``scores``
    (viridis: purple low, yellow high). Highest scores are drawn last (on top)."""
    img, s = _fit(image.convert("RGB"), max_side)
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    sc = np.ones(len(kp)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    colors = colormap(sc)
    order = np.argsort(sc)
    r = radius if radius is not None else max(1.5, max(img.size) / 400)
    draw = ImageDraw.Draw(img)
    for i in order:
        x, y = (kp[i] + 0.5) * s - 0.5
        c = tuple(int(v) for v in colors[i])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(0, 0, 0))
    return img


def draw_matches(image0: Image.Image, image1: Image.Image, kpts0: np.ndarray, kpts1: np.ndarray,
                 matches: np.ndarray, inliers: np.ndarray | None = None, scores: np.ndarray | None = None,
                 height: int = 600, max_lines: int = 800, seed: int = 0) -> Image.Image:
    """The two images side by side (both scaled to ``height`` px) with a line per match.

    Args:
        kpts0, kpts1: keypoints [N0, 2], [N1, 2] of the two images (original pixels).
        matches: int [M, 2] indices into kpts0 / kpts1.
        inliers: optional bool [M]: verified inliers green, the other (rejected) matches red.
            Without it, lines are coloured by ``scores`` (viridis) or drawn in one colour.
        max_lines: at most this many lines (a fixed random subset) so the drawing stays readable.
    """
    a, b = image0.convert("RGB"), image1.convert("RGB")
    sa, sb = height / a.size[1], height / b.size[1]
    a = a.resize((max(1, round(a.size[0] * sa)), height), Image.Resampling.LANCZOS)
    b = b.resize((max(1, round(b.size[0] * sb)), height), Image.Resampling.LANCZOS)
    gap = 10
    canvas = Image.new("RGB", (a.size[0] + gap + b.size[0], height), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.size[0] + gap, 0))
    m = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    idx = np.arange(len(m))
    if len(idx) > max_lines:
        idx = np.sort(np.random.default_rng(seed).choice(len(m), max_lines, replace=False))
    if inliers is not None:
        inl = np.asarray(inliers, dtype=bool).reshape(-1)
        colors = np.where(inl[:, None], np.array([[20, 200, 60]]), np.array([[235, 50, 50]])).astype(np.uint8)
        idx = idx[np.argsort(inl[idx], kind="stable")]  # inliers drawn last, on top
    elif scores is not None and len(scores):
        colors = colormap(np.asarray(scores, dtype=np.float64))  # 2nd-98th percentile: LightGlue scores bunch near 1
    else:
        colors = np.tile(np.array([[30, 144, 255]], np.uint8), (len(m), 1))
    p0 = (np.asarray(kpts0, np.float64)[m[:, 0]] + 0.5) * sa - 0.5 if len(m) else np.zeros((0, 2))
    p1 = (np.asarray(kpts1, np.float64)[m[:, 1]] + 0.5) * sb - 0.5 if len(m) else np.zeros((0, 2))
    if len(m):
        p1[:, 0] += a.size[0] + gap
    draw = ImageDraw.Draw(canvas)
    w = max(1, round(height / 500))
    for i in idx:
        c = tuple(int(v) for v in colors[i])
        draw.line([tuple(p0[i]), tuple(p1[i])], fill=c, width=w)
        for p in (p0[i], p1[i]):
            draw.ellipse([p[0] - 2 * w, p[1] - 2 * w, p[0] + 2 * w, p[1] + 2 * w], fill=c)
    return canvas


def keypoints_bar(names: list[str], counts: list[int], selected: str | None = None) -> go.Figure:
    """Bar chart of keypoints per image."""
    colors = ["#e4572e" if n == selected else "#4c78a8" for n in names]
    fig = go.Figure(go.Bar(x=list(range(len(names))), y=counts, marker_color=colors, customdata=names,
                           hovertemplate="%{customdata}<br>%{y} keypoints<extra></extra>"))
    fig.update_layout(xaxis_title="image (index)", yaxis_title="keypoints", height=300,
                      margin=dict(l=10, r=10, t=30, b=10), title="Keypoints per image")
    return fig


def similarity_heatmap(similarity: np.ndarray, names: list[str], pairs: list[tuple[str, str, float]] | None = None
                       ) -> go.Figure:
    """Heatmap of the global-descriptor cosine similarity [N, N]; dots mark the selected pairs."""
    sim = np.asarray(similarity, dtype=np.float64)
    n = len(names)
    short = [f"{i}: {_short(nm)}" for i, nm in enumerate(names)]
    z = sim.copy()
    np.fill_diagonal(z, np.nan)
    if n <= 150:  # per-cell hover text with both names (n^2 strings: only for moderate sizes)
        hover = [[f"{names[i]}<br>{names[j]}<br>similarity {sim[i, j]:.3f}" for j in range(n)] for i in range(n)]
        heat = go.Heatmap(z=z, x=short, y=short, colorscale="Viridis", text=hover,
                          hovertemplate="%{text}<extra></extra>", colorbar=dict(title="cosine"))
    else:
        heat = go.Heatmap(z=z, x=short, y=short, colorscale="Viridis", colorbar=dict(title="cosine"),
                          hovertemplate="%{y}<br>%{x}<br>similarity %{z:.3f}<extra></extra>")
    fig = go.Figure(heat)
    if pairs:
        pos = {nm: i for i, nm in enumerate(names)}
        xs, ys = [], []
        for a, b, _ in pairs:
            if a in pos and b in pos:
                xs += [short[pos[b]], short[pos[a]]]
                ys += [short[pos[a]], short[pos[b]]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=5, color="white",
                                 line=dict(width=1, color="black")), name="selected pair", hoverinfo="skip"))
    fig.update_layout(height=max(420, min(900, 28 * n + 150)), margin=dict(l=10, r=10, t=40, b=10),
                      title="Global-descriptor similarity (dots: selected pairs)",
                      yaxis=dict(autorange="reversed"), showlegend=False)
    return fig


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


def pair_graph(names: list[str], pairs: list[tuple[str, str, float]], weight_label: str = "similarity"
               ) -> go.Figure:
    """The pair graph: images on a circle, an edge per selected pair, colour and width by its weight."""
    n = len(names)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + np.pi / 2
    xy = np.stack([np.cos(ang), np.sin(ang)], 1)
    pos = {nm: i for i, nm in enumerate(names)}
    edges = [(pos[a], pos[b], float(w)) for a, b, w in pairs if a in pos and b in pos]
    fig = go.Figure()
    if edges:
        w = np.array([e[2] for e in edges])
        finite = np.isfinite(w)
        lo, hi = (float(w[finite].min()), float(w[finite].max())) if finite.any() else (0.0, 1.0)
        bins = np.linspace(lo, hi + 1e-9, 6)
        colors = colormap(0.5 * (bins[:-1] + bins[1:]), lo, hi)
        for k in range(5):
            xs, ys = [], []
            for (i, j, wt) in edges:
                if (bins[k] <= wt < bins[k + 1]) or (k == 4 and wt >= bins[k + 1]) or (not np.isfinite(wt) and k == 0):
                    xs += [xy[i, 0], xy[j, 0], None]
                    ys += [xy[i, 1], xy[j, 1], None]
            if xs:
                c = "rgb(%d,%d,%d)" % tuple(colors[k])
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(width=1 + k * 0.8, color=c),
                                         hoverinfo="skip", name=f"{bins[k]:.2f}-{bins[k + 1]:.2f}"))
        mids = np.array([(xy[i] + xy[j]) / 2 for i, j, _ in edges])
        fig.add_trace(go.Scatter(x=mids[:, 0], y=mids[:, 1], mode="markers", marker=dict(size=8, opacity=0),
                                 text=[f"{names[i]} - {names[j]}<br>{weight_label} {wt:.3f}" for i, j, wt in edges],
                                 hovertemplate="%{text}<extra></extra>", showlegend=False))
    degree = np.zeros(n, int)
    for i, j, _ in edges:
        degree[i] += 1
        degree[j] += 1
    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[str(i) for i in range(n)],
                             textposition="middle center", marker=dict(size=22, color="#f0f0f0",
                             line=dict(width=1.5, color="#333")), customdata=[[nm, d] for nm, d in zip(names, degree)],
                             hovertemplate="%{customdata[0]}<br>%{customdata[1]} pairs<extra></extra>",
                             showlegend=False))
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), title=f"Pair graph (edges: {weight_label})",
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"),
                      legend=dict(title=weight_label), plot_bgcolor="white")
    return fig


# ---- 3D --------------------------------------------------------------------------------------------------------

@dataclass
class CameraView:
    """A registered image of a reconstruction: ``R``, ``t`` of ``cam_from_world``, ``K``, size, centre."""

    name: str
    image_id: int
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    width: int
    height: int
    num_points: int = 0

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


def reconstruction_arrays(rec) -> tuple[np.ndarray, np.ndarray, list[CameraView]]:
    """Points xyz float [N, 3], colours uint8 [N, 3] and the registered cameras of a pycolmap Reconstruction."""
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    cams = []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        pose = image.cam_from_world()
        cam = rec.cameras[image.camera_id]
        cams.append(CameraView(
            name=image.name, image_id=int(image.image_id),
            R=np.asarray(pose.rotation.matrix(), dtype=np.float64),
            t=np.asarray(pose.translation, dtype=np.float64),
            K=np.asarray(cam.calibration_matrix(), dtype=np.float64),
            width=int(cam.width), height=int(cam.height),
            num_points=int(image.num_points3D)))
    cams.sort(key=lambda c: c.name)
    return xyz, rgb, cams


def _centre_and_extent(xyz: np.ndarray, cams: list[CameraView]) -> tuple[np.ndarray, float]:
    """A robust centre and size of the scene: the points' median and the 90th percentile of their distance to
    it; without enough points, the cameras' median and median spread. Stray points or a badly registered camera
    far away do not change either."""
    if len(xyz) >= 10:
        c = np.median(xyz, 0)
        ext = float(np.percentile(np.linalg.norm(xyz - c, axis=1), 90))
    elif cams:
        cc = np.array([cv.center for cv in cams])
        c = np.median(cc, 0)
        ext = 2.0 * float(np.median(np.linalg.norm(cc - c, axis=1))) if len(cams) > 1 else 1.0
    else:
        return np.zeros(3), 1.0
    return c, (ext if ext > 0 and math.isfinite(ext) else 1.0)


def scene_scale(xyz: np.ndarray, cams: list[CameraView]) -> float:
    """A robust size of the scene (frusta are drawn at a fraction of it); 1 when empty."""
    return _centre_and_extent(xyz, cams)[1]


def view_box(xyz: np.ndarray, cams: list[CameraView], margin: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """The axis-aligned box the 3D view shows and how many cameras lie outside it.

    The box holds the 1st-99th percentile of the points and every camera centre except those further from the
    scene's centre than 10 scene sizes and 5 times the median camera distance (a badly registered camera far
    away would otherwise shrink everything to a dot), padded by ``margin`` and 5%."""
    centre, ext = _centre_and_extent(xyz, cams)
    dist = {cv.name: float(np.linalg.norm(cv.center - centre)) for cv in cams}
    limit = max(10 * ext, 5 * float(np.median(list(dist.values())))) if cams else 0.0
    parts = []
    if len(xyz):
        q = 1 if len(xyz) >= 200 else 0
        parts += [np.percentile(xyz, q, axis=0), np.percentile(xyz, 100 - q, axis=0)]
    near = [cv.center for cv in cams if dist[cv.name] <= limit]
    if near:
        c = np.array(near)
        parts += [c.min(0), c.max(0)]
    if not parts:
        return np.full(3, -1.0), np.full(3, 1.0), len(cams)
    lo, hi = np.min(parts, axis=0) - margin, np.max(parts, axis=0) + margin
    pad = 0.05 * max(float((hi - lo).max()), 1e-6)
    return lo - pad, hi + pad, len(cams) - len(near)


def _default_view(cams: list[CameraView], lo: np.ndarray, hi: np.ndarray) -> dict:
    """Plotly scene camera looking the way the cameras look (their mean viewing direction), from behind and a
    little above them, with their mean 'up' as up. Directions are scaled into plotly's normalised box."""
    span = np.maximum(hi - lo, 1e-9)
    scale = (span / span.max()) / span  # world direction -> normalised scene direction
    if cams:
        fwd = np.mean([cv.R.T @ np.array([0.0, 0.0, 1.0]) for cv in cams], axis=0)
        up = np.mean([cv.R.T @ np.array([0.0, -1.0, 0.0]) for cv in cams], axis=0)
    else:
        fwd, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])
    fwd_n, up_n = fwd * scale, up * scale
    if np.linalg.norm(fwd_n) < 1e-9:
        fwd_n = np.array([0.0, 0.0, 1.0])
    if np.linalg.norm(up_n) < 1e-9:
        up_n = np.array([0.0, -1.0, 0.0])
    fwd_n, up_n = fwd_n / np.linalg.norm(fwd_n), up_n / np.linalg.norm(up_n)
    eye = -0.95 * fwd_n + 0.4 * up_n
    as_dict = lambda v: dict(x=float(v[0]), y=float(v[1]), z=float(v[2]))  # noqa: E731
    return dict(up=as_dict(up_n), eye=as_dict(eye), center=dict(x=0, y=0, z=0))


def frustum_depth(xyz: np.ndarray, cams: list[CameraView], fraction: float = 0.06) -> float:
    """Drawing depth of the frusta: ``fraction`` of the scene size, but at most the median distance from each
    camera to its nearest neighbour (robust: a few far or odd cameras do not blow every frustum up)."""
    depth = fraction * scene_scale(xyz, cams)
    if len(cams) >= 2:
        c = np.array([cv.center for cv in cams], dtype=np.float64)
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nn = float(np.median(d.min(1)))
        if math.isfinite(nn) and nn > 0:
            depth = min(depth, nn)
    return depth


def frustum_lines(cam: CameraView, depth: float) -> np.ndarray:
    """World points [16, 3] of a camera frustum as line segments (centre to the 4 image corners at ``depth``,
    then the image rectangle), with NaN rows separating the pieces."""
    Kinv = np.linalg.inv(cam.K)
    corners = np.array([[0, 0, 1], [cam.width, 0, 1], [cam.width, cam.height, 1], [0, cam.height, 1]], float)
    rays = corners @ Kinv.T
    rays = rays / rays[:, 2:3]
    spread = float(np.abs(rays[:, :2]).max())  # half-width / depth; huge for an implausibly short focal length
    rays = rays * depth / max(1.0, spread)  # no frustum wider than twice its drawing depth
    world = (rays - cam.t) @ cam.R  # R^T (x - t) for each row
    c = cam.center
    nan = np.full(3, np.nan)
    seq = []
    for w in world:
        seq += [c, w, nan]
    seq += [world[0], world[1], world[2], world[3], world[0], nan]
    return np.array(seq[:-1])


def reconstruction_figure(xyz: np.ndarray, rgb: np.ndarray, cams: list[CameraView], selected: str | None = None,
                          max_points: int = 100_000, point_size: float = 2.0, frustum_scale: float = 0.06,
                          height: int = 700) -> go.Figure:
    """Interactive 3D view: sparse points in their image colours, a frustum per registered camera (hover: image
    name; the camera centres carry the name as ``customdata`` for click selection), ``selected`` highlighted."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    if len(xyz) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]
    fig = go.Figure()
    if len(xyz):
        fig.add_trace(go.Scatter3d(
            x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=f"points ({len(xyz)})",
            marker=dict(size=point_size, color=[f"rgb({r},{g},{b})" for r, g, b in rgb]), hoverinfo="skip"))
    depth = frustum_depth(xyz, cams, frustum_scale)
    for highlight in (False, True):
        group = [c for c in cams if (c.name == selected) == highlight]
        if not group:
            continue
        lines = np.concatenate([np.vstack([frustum_lines(c, depth * (1.6 if highlight else 1.0)),
                                           np.full((1, 3), np.nan)]) for c in group])
        fig.add_trace(go.Scatter3d(
            x=lines[:, 0], y=lines[:, 1], z=lines[:, 2], mode="lines", hoverinfo="skip",
            line=dict(color="#e4572e" if highlight else "#d62728", width=6 if highlight else 2),
            name="selected camera" if highlight else f"cameras ({len(group)})", showlegend=not highlight))
    if cams:
        c = np.array([cv.center for cv in cams])
        fig.add_trace(go.Scatter3d(
            x=c[:, 0], y=c[:, 1], z=c[:, 2], mode="markers", name="camera centres",
            marker=dict(size=[9 if cv.name == selected else 5 for cv in cams],
                        color=["#ffbf00" if cv.name == selected else "#d62728" for cv in cams], symbol="diamond"),
            customdata=[cv.name for cv in cams], text=[f"{cv.name}<br>{cv.num_points} points" for cv in cams],
            hovertemplate="%{text}<extra></extra>", showlegend=False))
    lo, hi, n_far = view_box(xyz, cams, depth)
    span = np.maximum(hi - lo, 1e-9)
    ratio = span / span.max()
    axis = lambda i: dict(visible=False, range=[float(lo[i]), float(hi[i])])  # noqa: E731
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=10, b=0), legend=dict(x=0, y=1),
        scene=dict(aspectmode="manual", aspectratio=dict(x=ratio[0], y=ratio[1], z=ratio[2]),
                   xaxis=axis(0), yaxis=axis(1), zaxis=axis(2),
                   camera=_default_view(cams, lo, hi), bgcolor="white"),
        uirevision="keep")
    if n_far:
        fig.add_annotation(text=f"{n_far} camera(s) far outside this view (badly registered?)", showarrow=False,
                           xref="paper", yref="paper", x=1, y=1, xanchor="right", font=dict(color="#b45309"))
    return fig


def point_cloud_figure(xyz: np.ndarray, rgb: np.ndarray, height: int = 520, title: str = "") -> go.Figure:
    """Plain 3D scatter of coloured points (the plotly fallback of the Open3D preview)."""
    return reconstruction_figure(xyz, rgb, [], height=height).update_layout(title=title)


# ---- evaluation --------------------------------------------------------------------------------------------------

def aligned_centres(gt: dict, pred: dict, transform, threshold: float
                    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The predicted camera centres mapped onto the ground truth by the metric's model of one threshold.

    Args:
        gt, pred: pose dicts ``{name: (R, t) or None}`` (see :mod:`backend.evaluation.imc_metric`).
        transform: ``(s, R [3,3], t [3])`` from :attr:`backend.evaluation.imc_metric.SceneScore.transforms` (GT = s R C + t).
        threshold: GT units; a camera within it is an inlier.

    Returns:
        ``(names, gt_centres [N, 3], aligned_pred_centres [N, 3], inlier bool [N])`` for the images registered
        in both.

    Raises:
        ValueError: no model at this threshold (fewer than 3 cameras could be registered).
    """
    from ..evaluation.imc_metric import camera_centers

    if transform is None:
        raise ValueError("fewer than 3 cameras could be registered onto the ground truth at this threshold")
    g = camera_centers({n: p for n, p in gt.items() if p is not None})
    p = camera_centers({n: q for n, q in pred.items() if q is not None})
    names = sorted(set(g) & set(p))
    G = np.stack([g[n] for n in names])
    P = np.stack([p[n] for n in names])
    s, R, t = transform
    A = s * P @ np.asarray(R).T + np.asarray(t)
    return names, G, A, np.linalg.norm(A - G, axis=1) < threshold


def gt_vs_prediction_figure(names: list[str], gt_c: np.ndarray, pred_c: np.ndarray,
                            inliers: np.ndarray | None = None, height: int = 600) -> go.Figure:
    """Ground-truth camera centres beside the aligned predicted ones, a grey line joining each pair."""
    fig = go.Figure()
    seg = []
    for a, b in zip(gt_c, pred_c):
        seg += [a, b, [np.nan] * 3]
    seg = np.array(seg, dtype=np.float64).reshape(-1, 3)
    fig.add_trace(go.Scatter3d(x=seg[:, 0], y=seg[:, 1], z=seg[:, 2], mode="lines", name="error",
                               line=dict(color="#888", width=3), hoverinfo="skip"))
    err = np.linalg.norm(gt_c - pred_c, axis=1)
    fig.add_trace(go.Scatter3d(x=gt_c[:, 0], y=gt_c[:, 1], z=gt_c[:, 2], mode="markers", name="ground truth",
                               marker=dict(size=6, color="#1f77b4"), text=names,
                               hovertemplate="%{text} (GT)<extra></extra>"))
    sym = ["circle" if (inliers is None or i) else "x" for i in (inliers if inliers is not None else [True] * len(names))]
    fig.add_trace(go.Scatter3d(x=pred_c[:, 0], y=pred_c[:, 1], z=pred_c[:, 2], mode="markers",
                               name="prediction (aligned)", marker=dict(size=5, color="#ff7f0e", symbol=sym),
                               text=[f"{n}<br>error {e:.3g}" for n, e in zip(names, err)],
                               hovertemplate="%{text}<extra></extra>"))
    # frame the ground truth (and the predictions near it): one wildly wrong camera must not shrink the rest
    mid = np.median(gt_c, axis=0)
    ext = max(float(np.linalg.norm(gt_c - mid, axis=1).max()), 1e-6)
    near = np.linalg.norm(pred_c - mid, axis=1) <= 3 * ext
    pts = np.vstack([gt_c, pred_c[near]])
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.08 * max(float((hi - lo).max()), 1e-6)
    lo, hi = lo - pad, hi + pad
    span = hi - lo
    ratio = span / span.max()
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), legend=dict(x=0, y=1),
                      scene=dict(aspectmode="manual", aspectratio=dict(x=ratio[0], y=ratio[1], z=ratio[2]),
                                 xaxis=dict(range=[lo[0], hi[0]]), yaxis=dict(range=[lo[1], hi[1]]),
                                 zaxis=dict(range=[lo[2], hi[2]])))
    if (~near).any():
        fig.add_annotation(text=f"{int((~near).sum())} predicted camera(s) far outside this view", showarrow=False,
                           xref="paper", yref="paper", x=1, y=1, xanchor="right", font=dict(color="#b45309"))
    return fig


SCENE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                 "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]
OUTLIER_COLOUR = "#d62728"


def scene_colour(k: int) -> str:
    """The colour of scene ``k`` in every scene figure (outliers: :data:`OUTLIER_COLOUR`)."""
    return SCENE_COLOURS[k % len(SCENE_COLOURS)]


def scene_graph(scene_images: list[list[str]], outliers: list[str], edges: list[tuple[str, str, int]],
                cut: set[tuple[str, str]] | None = None, labels: list[str] | None = None) -> go.Figure:
    """The verified-pair graph coloured by scene: each scene's images on a circle of their own (side by side,
    largest first), outliers on a last circle in red; an edge per verified pair, in the scene's colour when both
    images are in one scene, dashed red when the split cut it, grey otherwise. Hover shows names and inliers.

    Args:
        scene_images: image names per scene (scene k gets :func:`scene_colour`).
        outliers: image names in no scene.
        edges: ``(image0, image1, inliers)``.
        cut: pairs (sorted tuples) the scene split cut.
        labels: a legend name per scene (default ``scene<k>``).
    """
    cut = cut or set()
    groups = [list(g) for g in scene_images] + ([list(outliers)] if outliers else [])
    names_l = (labels or [f"scene{k}" for k in range(len(scene_images))]) + (["outliers"] if outliers else [])
    pos, owner = {}, {}
    cols = max(1, int(np.ceil(np.sqrt(len(groups)))))
    for gi, members in enumerate(groups):
        cx, cy = 3.0 * (gi % cols), -3.0 * (gi // cols)
        r = 0.35 + 0.12 * np.sqrt(len(members))
        ang = np.linspace(0, 2 * np.pi, max(len(members), 1), endpoint=False) + np.pi / 2
        for n, a in zip(members, ang):
            pos[n] = (cx + r * np.cos(a), cy + r * np.sin(a))
            owner[n] = gi
    fig = go.Figure()
    kinds: dict[str, tuple[list, list, dict]] = {}
    hover_x, hover_y, hover_t = [], [], []
    n_out = len(groups) - (1 if outliers else 0)
    for a, b, w in edges:
        if a not in pos or b not in pos:
            continue
        if tuple(sorted((a, b))) in cut:
            key, style = "cut pair", dict(color=OUTLIER_COLOUR, width=1, dash="dash")
        elif owner[a] == owner[b] and owner[a] < n_out:
            key, style = names_l[owner[a]], dict(color=scene_colour(owner[a]), width=1)
        else:
            key, style = "pair across groups", dict(color="#999999", width=1, dash="dot")
        xs, ys, _ = kinds.setdefault(key, ([], [], style))
        xs += [pos[a][0], pos[b][0], None]
        ys += [pos[a][1], pos[b][1], None]
        hover_x.append((pos[a][0] + pos[b][0]) / 2)
        hover_y.append((pos[a][1] + pos[b][1]) / 2)
        hover_t.append(f"{a} - {b}<br>{int(w)} inliers")
    for key, (xs, ys, style) in kinds.items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=style, hoverinfo="skip", name=key,
                                 legendgroup=key, showlegend=key in ("cut pair", "pair across groups")))
    if hover_x:
        fig.add_trace(go.Scatter(x=hover_x, y=hover_y, mode="markers", marker=dict(size=8, opacity=0),
                                 text=hover_t, hovertemplate="%{text}<extra></extra>", showlegend=False))
    for gi, members in enumerate(groups):
        colour = OUTLIER_COLOUR if gi >= n_out else scene_colour(gi)
        fig.add_trace(go.Scatter(
            x=[pos[n][0] for n in members], y=[pos[n][1] for n in members], mode="markers",
            marker=dict(size=11, color=colour, line=dict(width=1, color="#333")), name=names_l[gi],
            text=[f"{n}<br>{names_l[gi]}" for n in members], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10),
                      title="Verified pairs, photos grouped by scene",
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), plot_bgcolor="white")
    return fig
