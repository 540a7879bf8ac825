"""The 3D figures of the app (plotly): a reconstruction's sparse points and camera frusta, a point cloud, and
ground-truth versus aligned predicted camera centres. Pure functions of arrays; nothing imports streamlit.

Poses are COLMAP's ``cam_from_world`` (x_cam = R X + t), camera centre C = -Rᵀ t; scene units are the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go


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
                          height: int = 700, mesh: tuple | None = None, point_ids: np.ndarray | None = None,
                          selected_point: np.ndarray | None = None) -> go.Figure:
    """Interactive 3D view: sparse points in their image colours, a frustum per registered camera (hover: image
    name; the camera centres carry the name as ``customdata`` for click selection), ``selected`` highlighted;
    ``mesh``: ``(vertices float [V, 3], triangles int [F, 3], vertex colours uint8 [V, 3] or None)`` drawn as a
    surface (:func:`backend.views.runview.dense_mesh`); ``point_ids`` int [N]: the points' ids as ``customdata`` (a
    click on a point selects it); ``selected_point``: xyz [3] of a selected point, drawn large."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    ids = None if point_ids is None else np.asarray(point_ids).reshape(-1)
    if len(xyz) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]
        ids = None if ids is None else ids[keep]
    fig = go.Figure()
    if len(xyz):
        fig.add_trace(go.Scatter3d(
            x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=f"points ({len(xyz)})",
            marker=dict(size=point_size, color=[f"rgb({r},{g},{b})" for r, g, b in rgb]),
            customdata=None if ids is None else ids.tolist(),
            hovertemplate=None if ids is None else "point %{customdata}<extra></extra>",
            hoverinfo="skip" if ids is None else None))
    if selected_point is not None:
        q = np.asarray(selected_point, float).reshape(1, 3)
        fig.add_trace(go.Scatter3d(x=q[:, 0], y=q[:, 1], z=q[:, 2], mode="markers", name="selected point",
                                   marker=dict(size=10, color="#ff00ff", symbol="circle-open"), hoverinfo="skip"))
    if mesh is not None and len(mesh[1]):
        V, F, C = mesh
        fig.add_trace(go.Mesh3d(
            x=V[:, 0], y=V[:, 1], z=V[:, 2], i=F[:, 0], j=F[:, 1], k=F[:, 2], name=f"mesh ({len(F)} triangles)",
            vertexcolor=None if C is None else [f"rgb({r},{g},{b})" for r, g, b in C],
            color="#bbbbbb" if C is None else None, flatshading=False, hoverinfo="skip", showlegend=True,
            lighting=dict(ambient=0.6, diffuse=0.6)))
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
        transform: ``(s, R [3,3], t [3])`` from :attr:`backend.evaluation.imc_metric.SceneScore.transforms` (GT = s R C
        + t).
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
    sym = [
        "circle" if (inliers is None or i) else "x" for i in (inliers if inliers is not None else [True] * len(names))
    ]
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
