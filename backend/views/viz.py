"""Figures and drawings for the app: keypoints and matches drawn on images (numpy/PIL), the similarity heatmap,
the pair graph and the scene graph (plotly); the 3D figures are in :mod:`.viz3d` (importable from here too). Pure
functions of arrays and files; nothing imports streamlit.

Conventions: keypoints are (x, y) in pixels of the image as stored in the run folder, pixel centres at integers
(as in ``features.h5``). Poses are COLMAP's ``cam_from_world`` (x_cam = R X + t), camera centre C = -Rᵀ t.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageOps

from .viz3d import (  # noqa: F401 - the pages use them as viz.*
    CameraView, aligned_centres, frustum_depth, frustum_lines, gt_vs_prediction_figure, point_cloud_figure,
    reconstruction_arrays, reconstruction_figure, scene_scale, view_box,
)

def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Viridis colours (matplotlib's colour map) uint8 [N, 3] of ``values`` scaled from ``lo`` (purple) to ``hi``
    (yellow) (default: the values' 2nd and 98th percentiles); every value at or beyond an end gets that end's
    colour, and all values get the middle colour when ``hi`` <= ``lo``."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros((0, 3), np.uint8)
    lo = float(np.percentile(v, 2)) if lo is None else lo
    hi = float(np.percentile(v, 98)) if hi is None else hi
    x = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.full_like(v, 0.5)
    return colormaps["viridis"](x, bytes=True)[:, :3]


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
