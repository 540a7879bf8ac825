"""Open3D post-processing of the sparse point cloud: statistical outlier removal, voxel downsampling, and an
offscreen-rendered preview.

Open3D's ``OffscreenRenderer`` may exist once per process (its Filament engine cannot be re-created), and it can
crash the process where no graphics driver works, so :func:`render_png` always renders in a fresh child process
(``python -m backend.io.pointcloud render ...``) with a timeout, and raises :class:`RenderError` with a readable
reason when that fails; callers then fall back to a plotly view. On Debian the headless renderer needs
``libvulkan1`` and ``mesa-vulkan-drivers`` (software Vulkan, llvmpipe) or a working EGL.

Point convention: xyz float64 [N, 3] in the reconstruction's frame (COLMAP: x right, y down, z forward),
colours uint8 [N, 3].
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


class RenderError(RuntimeError):
    """The offscreen preview could not be rendered; the message says why."""


@dataclass
class CleanStats:
    """Point counts before and after each step, and the voxel size used (0: no downsampling)."""

    input_points: int
    after_outliers: int
    output_points: int
    voxel_size: float

    def to_dict(self) -> dict:
        return dict(vars(self))


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of a PLY file (as written by the exports stage)."""
    import open3d as o3d

    pc = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(pc.points, dtype=np.float64)
    rgb = (np.asarray(pc.colors) * 255).round().clip(0, 255).astype(np.uint8) if pc.has_colors() \
        else np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


def to_o3d(xyz: np.ndarray, rgb: np.ndarray):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, dtype=np.float64).reshape(-1, 3)))
    pc.colors = o3d.utility.Vector3dVector(np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0)
    return pc


def auto_voxel_size(xyz: np.ndarray, fraction: float = 1 / 300) -> float:
    """A voxel size of ``fraction`` of the robust extent (2nd-98th percentile box diagonal) of the points."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) < 2:
        return 0.0
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)
    return float(np.linalg.norm(hi - lo) * fraction)


def clean(xyz: np.ndarray, rgb: np.ndarray, nb_neighbors: int = 20, std_ratio: float = 2.0,
          voxel_size: float | None = 0.0) -> tuple[np.ndarray, np.ndarray, CleanStats]:
    """Statistical outlier removal (a point is dropped when its mean distance to its ``nb_neighbors`` nearest
    neighbours exceeds the global mean by ``std_ratio`` standard deviations), then voxel downsampling
    (``voxel_size`` in scene units; 0 skips it; None picks :func:`auto_voxel_size`).

    Returns the cleaned points, colours and :class:`CleanStats`.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    n0 = len(xyz)
    pc = to_o3d(xyz, rgb)
    if n0 > nb_neighbors and nb_neighbors > 0 and std_ratio > 0:
        pc, _ = pc.remove_statistical_outlier(nb_neighbors=int(nb_neighbors), std_ratio=float(std_ratio))
    n1 = len(pc.points)
    vs = auto_voxel_size(np.asarray(pc.points)) if voxel_size is None else float(voxel_size)
    if vs > 0 and n1:
        pc = pc.voxel_down_sample(vs)
    out_xyz = np.asarray(pc.points, dtype=np.float64)
    out_rgb = (np.asarray(pc.colors) * 255).round().clip(0, 255).astype(np.uint8)
    return out_xyz, out_rgb, CleanStats(n0, n1, len(out_xyz), vs)


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Points ``xyz`` float [N, 3] with colours ``rgb`` uint8 [N, 3] as a binary PLY (Open3D's writer: double x, y,
    z; uchar red, green, blue). No points: a valid PLY with an empty vertex list.

    Raises:
        OSError: Open3D could not write the file.
    """
    import open3d as o3d

    if len(np.asarray(xyz).reshape(-1, 3)) == 0:  # Open3D refuses to write an empty cloud: the header alone
        Path(path).write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty double x\n"
                               b"property double y\nproperty double z\nproperty uchar red\nproperty uchar green\n"
                               b"property uchar blue\nend_header\n")
        return
    if not o3d.io.write_point_cloud(str(path), to_o3d(xyz, rgb), write_ascii=False):
        raise OSError(f"could not write {Path(path).name}")


def params_key(*parts) -> str:
    """Short hash naming cached outputs of a set of parameters."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def render_png(ply: Path, width: int = 960, height: int = 640, timeout: float = 120.0,
               point_size: float = 3.0) -> bytes:
    """PNG bytes of an offscreen Open3D rendering of the point cloud in ``ply``, made in a child process.

    Raises:
        RenderError: the renderer is unavailable (no graphics driver), timed out or crashed.
    """
    with tempfile.TemporaryDirectory(prefix="sfm-render-") as tmp:
        out = Path(tmp) / "preview.png"
        cmd = [sys.executable, "-m", "backend.io.pointcloud", "render", str(ply), str(out),
               "--width", str(int(width)), "--height", str(int(height)), "--point-size", str(float(point_size))]
        env = dict(os.environ)
        env.setdefault("XDG_RUNTIME_DIR", tmp)
        try:
            res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RenderError(f"the offscreen renderer did not finish within {timeout:.0f} s") from None
        if res.returncode != 0 or not out.exists():
            lines = [ln for ln in (res.stderr or "").splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
            code = f"signal {-res.returncode}" if res.returncode < 0 else f"exit code {res.returncode}"
            raise RenderError(f"the offscreen renderer failed ({code}){': ' + why[:300] if why else ''}. "
                              "Headless rendering needs the Debian packages libvulkan1 and mesa-vulkan-drivers "
                              "(bash setup/setup.sh installs them).")
        return out.read_bytes()


def _render_main(ply: str, out: str, width: int, height: int, point_size: float) -> int:
    """Child-process entry: render ``ply`` to ``out`` (PNG)."""
    import open3d as o3d
    from open3d.visualization import rendering

    pc = o3d.io.read_point_cloud(ply)
    xyz = np.asarray(pc.points)
    if len(xyz) == 0:
        print("error: the point cloud is empty", file=sys.stderr)
        return 3
    r = rendering.OffscreenRenderer(int(width), int(height))
    r.scene.set_background([1.0, 1.0, 1.0, 1.0])
    try:
        r.scene.view.set_post_processing(False)  # exact point colours (no tone mapping)
    except AttributeError:
        pass
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.point_size = float(point_size)
    r.scene.add_geometry("points", pc, mat)
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)
    center = (lo + hi) / 2
    extent = float(np.linalg.norm(hi - lo)) or 1.0
    # COLMAP frames look along +z with y down: view from behind and above the cameras, y up = -y
    eye = center + np.array([0.0, -0.35, -1.0]) * extent * 0.9
    r.setup_camera(50.0, center.astype(np.float32), eye.astype(np.float32), np.array([0.0, -1.0, 0.0], np.float32))
    img = np.asarray(r.render_to_image())
    # crop the white margin around the cloud (keeping a border), so the preview shows the points, not the canvas
    ink = np.argwhere((img < 245).any(axis=2))
    if len(ink):
        (y0, x0), (y1, x1) = ink.min(0), ink.max(0)
        b = max(8, int(0.04 * max(y1 - y0, x1 - x0)))
        img = img[max(0, y0 - b): y1 + b + 1, max(0, x0 - b): x1 + b + 1]
    o3d.io.write_image(out, o3d.geometry.Image(np.ascontiguousarray(img)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.io.pointcloud")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="offscreen-render a PLY point cloud to a PNG")
    r.add_argument("ply")
    r.add_argument("out")
    r.add_argument("--width", type=int, default=960)
    r.add_argument("--height", type=int, default=640)
    r.add_argument("--point-size", type=float, default=3.0)
    a = p.parse_args(argv)
    return _render_main(a.ply, a.out, a.width, a.height, a.point_size)


if __name__ == "__main__":
    sys.exit(main())
