"""Reconstruction: interactive 3D of the sparse points and camera frusta, statistics, model picker, Open3D
clean-up with an offscreen preview, and downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import app_common as ui
from backend import exports, jobs
from backend.exports import FORMATS
from backend.io import pointcloud
from backend.views import inspect, products, runview, viz

DOWNLOADS = [
    ("poses.csv", "poses.csv", "text/csv", "IMC convention: image_name, rotation_matrix (world-to-camera), "
     "translation_vector, calibration_matrix"),
    ("poses_imc2024.csv", "poses_imc2024.csv", "text/csv", "IMC 2024 submission layout: image_path, dataset, scene, "
     "rotation_matrix, translation_vector"),
    ("submission.csv", "submission.csv", "text/csv", "IMC 2025 submission: image_id, dataset, scene (or outliers), "
     "image, rotation_matrix, translation_vector"),
    ("model.zip", "model.zip", "application/zip", "every COLMAP model (binary) and the largest as text"),
    ("points.ply", "points.ply", "application/octet-stream", "the sparse points with colours (binary PLY)"),
]


@st.cache_data(max_entries=8, show_spinner=False)
def _model(run_dir: str, k: int, key: str):
    rec = runview.load_model(run_dir, k)
    xyz, rgb, cams = viz.reconstruction_arrays(rec)
    points = inspect.point_arrays(rec)  # the same order as xyz
    stats = {
        "registered": rec.num_reg_images(), "points": rec.num_points3D(),
        "track": rec.compute_mean_track_length() if rec.num_points3D() else None,
        "error": rec.compute_mean_reprojection_error() if rec.num_points3D() else None,
    }
    return xyz, rgb, cams, stats, points


@st.cache_data(max_entries=32, show_spinner=False)
def _track(run_dir: str, k: int, key: str, point_id: int) -> dict:
    return inspect.point_track(runview.load_model(run_dir, k), point_id)


@st.cache_data(max_entries=32, show_spinner=False)
def _residuals(run_dir: str, k: int, key: str, name: str) -> dict:
    return inspect.image_residuals(runview.load_model(run_dir, k), name)


@ui.guarded
def page() -> None:
    st.title("Reconstruction")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "mapping", "The 3D model"):
        return
    models = runview.models(run_dir)
    n_images = len(runview.images_info(run_dir)["images"])
    if not models:
        st.warning("No 3D model could be built from these photos: the mapper found no good initial pair of images. "
                   "What to try: more photos with overlap taken from different positions (not only zooming or "
                   "turning on the spot), the 'accurate' preset or more keypoints, and check the Matches page for "
                   "pairs with many verified inliers.")
        _downloads(run_dir, state)
        return
    scene_list = [sc for sc in runview.scenes(run_dir)["scenes"] if sc.get("model") is not None]
    scene_of_model = {sc["model"]: sc["name"] for sc in scene_list}
    reg = runview.registration(run_dir)  # the counts Home, Scenes and Images show too
    n_reg = {m["model"]: m["registered"] for m in reg["models"]}
    points = {m["model"]: m["points"] for m in models}
    if len(models) > 1:
        k = st.selectbox("Model", [m["model"] for m in models], key="rec_model",
                         format_func=lambda i: (f"{scene_of_model[i]}: " if i in scene_of_model else "")
                         + f"model {i}: {n_reg.get(i, 0)} photos registered, {points.get(i, 0)} points"
                         + (" (largest)" if i == reg["largest_model"] else ""))
        st.caption(f"Registered: {reg['largest']} / {reg['images']} photos in the largest model (model "
                   f"{reg['largest_model']}), {reg['all_models']} / {reg['images']} in all {len(models)} models"
                   + (f", {reg['all_scenes']} / {reg['images']} in all scenes" if scene_list
                      and reg["all_scenes"] != reg["all_models"] else "") + ".")
        fold_text = runview.fold_note(run_dir)
        if fold_text:
            # (it names photos: file names are shown as plain text)
            st.info(ui.md_escape(fold_text) + " The exports are of the largest model; model.zip holds every one.")
        elif len(scene_of_model) > 1:
            st.caption(f"The photos form {len(scene_of_model)} scenes (see the Scenes page), each with its own model "
                       "and coordinate frame. poses.csv and submission.csv hold every scene's poses; points.ply is "
                       "the largest scene's; the Scenes page has each scene's files.")
        else:
            st.caption(f"The photos split into {len(models)} separate models (no overlap links them). "
                       "The exports are of the largest one.")
    else:
        k = models[0]["model"]
    xyz, rgb, cams, stats, point_info = _model(str(run_dir), int(k), runview.model_key(run_dir, int(k)))
    scene = next((sc for sc in scene_list if sc["model"] == k), None) if len(scene_list) > 1 else None
    if scene is not None:  # a collection of several scenes: count against this scene's photos
        n_images = len(scene["images"])
    c = st.columns(4)
    c[0].metric(f"Registered in model {k}" if len(models) > 1 else "Registered images",
                f"{n_reg.get(k, stats['registered'])} / {n_images}",
                help=f"photos with a pose in this model, of the {n_images} photos of {scene['name']}"
                if scene is not None else f"photos with a pose in this model, of the {n_images} photos used")
    of = f" (model {k})" if len(models) > 1 else ""  # as Home labels the largest model's
    c[1].metric("3D points" + of, f"{stats['points']:,}")
    c[2].metric("Mean track length" + of, f"{stats['track']:.2f}" if stats["track"] is not None else "–")
    c[3].metric("Mean reprojection error" + of, f"{stats['error']:.2f} px" if stats["error"] is not None else "–")
    cam_text = runview.camera_summary(run_dir)
    if cam_text:
        st.caption(cam_text)
    bound_text = runview.time_bound_note(run_dir)
    if bound_text:
        st.warning(bound_text)

    dense_info = products.dense(run_dir, k)
    mesh, view = None, "sparse points"
    if dense_info is not None:
        view = st.radio("Show", ["sparse points", "dense points", "dense points and mesh"], horizontal=True,
                        key="rec_dense_view", index=1)
        if view != "sparse points":
            xyz, rgb = products.dense_points(run_dir)
        if view.endswith("mesh") and "mesh.ply" in dense_info["files"]:
            mesh = products.dense_mesh(run_dir)
    names = [cv.name for cv in cams]
    picked, picked_point = ui.pick_3d(f"rec_click_{k}")
    if picked in names:
        st.session_state["rec_camera"] = picked
    if picked_point is not None:
        st.session_state["rec_point"] = picked_point
    left, right = st.columns([3, 1])
    ids = None
    with right:
        sel = st.selectbox("Camera", ["(none)"] + names, key="rec_camera",
                           help="or click a camera (a red diamond) in the 3D view")
        sel = None if sel == "(none)" else sel
        size = st.slider("Point size", 1.0, 6.0, 2.0, 0.5, key="rec_point_size")
        if dense_info is None or view == "sparse points":
            xyz, rgb, ids = _colour_and_filter(point_info)
        if sel:
            cv = next(x for x in cams if x.name == sel)
            st.image(str(runview.thumbnail_path(run_dir, sel, 640)),
                     caption=f"{ui.md_escape(sel)} · {cv.num_points} points seen", width="stretch")
    point_id = st.session_state.get("rec_point")
    track = None
    if point_id is not None and ids is not None:
        try:
            track = _track(str(run_dir), int(k), runview.model_key(run_dir, int(k)), int(point_id))
        except KeyError:
            track = None
    with left:
        fig = viz.reconstruction_figure(xyz, rgb, cams, selected=sel, point_size=size, mesh=mesh, point_ids=ids,
                                        selected_point=None if track is None else track["xyz"])
        st.plotly_chart(fig, width="stretch", key=f"rec3d_{k}", config={"displaylogo": False})
        st.caption("Drag to rotate, scroll to zoom; hover a camera for its image name, click it to see the photo "
                   "and its residuals; click a point for its track. Red frusta: registered cameras.")
    if track is not None:
        _point_section(run_dir, track)
    if sel:
        _camera_section(run_dir, int(k), sel)
    pool = scene["images"] if scene is not None else [i["name"] for i in runview.images_info(run_dir)["images"]]
    unregistered = [n for n in pool if n not in set(names)]
    if unregistered:
        st.caption(f"Not registered in this {'scene' if scene is not None else 'model'} ({len(unregistered)}): "
                   + ", ".join(ui.md_escape(n) for n in unregistered))
    rescued = models[[m["model"] for m in models].index(k)].get("focal_rescued") or []
    if rescued:
        st.info(f"Focal length put back ({len(rescued)}): " + "; ".join(
            f"{ui.md_escape(r['image'])}: {r['focal_px_was']:.0f} px after mapping, held at its prior "
            f"{r['focal_px_prior']:.0f} px ({r['inliers']} inliers)" for r in rescued)
            + ". Bundle adjustment had traded focal length for depth on a camera seen through few points.")
    dereg = models[[m["model"] for m in models].index(k)].get("deregistered") or []
    if dereg:
        st.warning(f"De-registered before the exports ({len(dereg)}), so they are not in poses.csv, the model or the "
                   "counts: " + "; ".join(f"{ui.md_escape(d['image'])}: {ui.md_escape(d['reason'])}" for d in dereg)
                   + ". A camera with almost no observed points or such a focal length is not a usable pose.")

    _dense(run_dir, int(k), dense_info)
    if k == models[0]["model"]:
        _georef(run_dir)
    _open3d(run_dir, int(k), xyz, rgb)
    _downloads(run_dir, state, k)


def _colour_and_filter(points: dict):
    """The sparse points as the controls ask: coloured by photo colour, track length or reprojection error, and
    filtered by both; returns (xyz, rgb, ids)."""
    by = st.selectbox("Colour points by", inspect.COLOUR_BY, key="rec_colour_by")
    longest = int(points["track_length"].max()) if len(points["ids"]) else 2
    min_track = st.slider("Seen by at least (photos)", 2, max(3, longest), 2, key="rec_min_track")
    worst = float(np.ceil(points["error"].max() * 10) / 10) if len(points["ids"]) else 1.0
    max_err = st.slider("Reprojection error at most (px)", 0.1, max(0.2, worst), max(0.2, worst), 0.1,
                        key="rec_max_error")
    keep = inspect.point_filter(points, min_track, max_err)
    st.caption(f"{int(keep.sum()):,} of {len(keep):,} points shown")
    if by == "track length":
        rgb = inspect.colour_points(points["track_length"][keep], lo=2)
    elif by == "reprojection error":
        rgb = inspect.colour_points(points["error"][keep], lo=0)
    else:
        rgb = points["rgb"][keep]
    if by != "photo colour":
        st.caption(f"viridis: purple = low, yellow = high {by}")
    return points["xyz"][keep], rgb, points["ids"][keep]


def _point_section(run_dir, track: dict) -> None:
    """A 3D point's track: each photo that sees it, its keypoint and the point's projection, the error."""
    st.subheader(f"Point {track['point_id']}")
    obs = track["observations"]
    st.markdown(f"Seen by **{len(obs)}** photos · mean reprojection error **{track['error_px']:.2f} px** · "
                f"position {', '.join(f'{v:.3f}' for v in track['xyz'])} (model frame)")
    st.dataframe([{"photo": o["image"], "keypoint x": o["keypoint"][0], "keypoint y": o["keypoint"][1],
                   "projection x": o["projection"][0], "projection y": o["projection"][1],
                   "error (px)": o["error_px"]} for o in obs], hide_index=True, width="stretch")
    cols = st.columns(min(6, len(obs)))
    for i, o in enumerate(obs[:12]):
        crop = inspect.observation_crop(runview.image_path(run_dir, o["image"]), o["keypoint"], o["projection"])
        cols[i % len(cols)].image(crop, caption=f"{ui.md_escape(o['image'])}: {o['error_px']:.2f} px")
    st.caption("Green circle: the keypoint; red cross: the 3D point projected into the photo (crops enlarged 2x).")


def _camera_section(run_dir, k: int, name: str) -> None:
    """A camera's photo with its observations' residuals, its intrinsics and pose, and its verified pairs."""
    res = _residuals(str(run_dir), k, runview.model_key(run_dir, k), name)
    st.subheader(f"Camera {name}")
    left, right = st.columns([2, 1])
    with left:
        fig = inspect.residual_figure(runview.image_path(run_dir, name), res)
        st.pyplot(fig, clear_figure=True)
        st.caption(f"{ui.md_escape(name)}: reprojection residuals of its {len(res['errors'])} observations")
    with right:
        cam = res["camera"]
        st.markdown(f"**Intrinsics** ({cam['model']}, {cam['width']} x {cam['height']} px): " + ", ".join(
            f"{n.strip()} = {v:.4g}" for n, v in zip(cam["params_info"].split(","), cam["params"])))
        st.markdown("**Pose** (`cam_from_world`): R = " + "; ".join(" ".join(f"{v:.4f}" for v in row)
                                                                  for row in res["R"])
                    + " · t = " + " ".join(f"{v:.4f}" for v in res["t"])
                    + " · centre = " + " ".join(f"{v:.4f}" for v in res["centre"]))
        if len(res["errors"]):
            st.markdown(f"Reprojection error: mean **{res['errors'].mean():.2f} px**, median "
                        f"{np.median(res['errors']):.2f}, max {res['errors'].max():.2f}")
        pairs = runview.verified_partners(run_dir, name)
        st.markdown(f"**Verified pairs** ({len(pairs)}):")
        st.dataframe([{"with": n, "inliers": c} for n, c in pairs], hide_index=True, width="stretch",
                     height=min(300, 38 + 35 * len(pairs)))


def _dense(run_dir, k: int, info: dict | None) -> None:
    """Dense points and a mesh of model k (backend.dense): run it here with a progress bar, or show what it made."""
    from backend.dense import default_method
    from backend.dense.triangulate import densify

    st.subheader("Dense points and a mesh")
    if info is None:
        method = default_method()
        st.caption("More keypoints per photo, matched along the epipolar lines of the registered cameras and "
                   "triangulated into their poses, then a Poisson mesh (CPU; about 80 s for the 16-photo sample). "
                   + ("With CUDA: COLMAP's PatchMatch stereo (python -m backend densify --method patchmatch)."
                      if method == "patchmatch" else ""))
        if st.button(f"Densify model {k}", key="rec_densify", icon=":material/blur_on:"):
            bar = st.progress(0.0, text="starting")
            densify(run_dir, model=k, progress=lambda d, t, m: bar.progress(min(1.0, d / max(t, 1)), text=m[:90]))
            st.rerun()
        return
    b, a = info["before"], info["after"]
    c = st.columns(4)
    c[0].metric("Dense points", f"{a['points']:,}", f"{a['points'] / max(1, b['points']):.1f}x the sparse points",
                delta_color="off")
    c[1].metric("Mean track length (dense)", f"{a.get('mean_track_length', 0):.2f}")
    c[2].metric("Mean reprojection error (dense)", f"{a.get('mean_reprojection_error_px', 0):.2f} px")
    c[3].metric("Mesh triangles", f"{info.get('mesh', {}).get('triangles', 0):,}")
    st.caption(f"{info['method']}: {info['seconds'].get('total', 0):.0f} s; the cloud and the mesh are in the model's "
               "frame (as the sparse points and poses).")
    cols = st.columns(max(1, len(info["files"])))
    for col, (name, path) in zip(cols, info["files"].items()):
        col.download_button(f"dense {name}", path.read_bytes(), file_name=f"{run_dir.name}_dense_{name}",
                            mime="application/octet-stream", key=f"dl_dense_{name}", icon=":material/download:")


def _georef(run_dir) -> None:
    """The largest model aligned to the photos' GPS: the residual per photo, and the geo-referenced poses."""
    geo = products.georef(run_dir)
    if geo is None:
        return
    st.subheader("Geo-referenced (GPS in the photos)")
    st.markdown(ui.md_escape(geo["note"]) + ". Residual: the distance between a photo's aligned camera centre and "
                "its GPS position.")
    st.dataframe([{"photo": r["image"], "residual (m)": r["residual_m"], "used": r["inlier"],
                   "east (m)": r["enu"][0], "north (m)": r["enu"][1], "up (m)": r["enu"][2]}
                  for r in sorted(geo["residuals"], key=lambda r: -r["residual_m"])],
                 hide_index=True, width="stretch", height=min(400, 38 + 35 * len(geo["residuals"])))
    cols = st.columns(max(1, len(geo["files"])))
    for col, (name, path) in zip(cols, geo["files"].items()):
        col.download_button(name, path.read_bytes(), file_name=f"{run_dir.name}_{name}", mime="text/csv",
                            key=f"dl_geo_{name}", icon=":material/download:",
                            help="poses_enu.csv: world-to-camera in East-North-Up metres about the stated origin; "
                                 "cameras_wgs84.csv: each camera's latitude, longitude, altitude and its residual")


def _open3d(run_dir, k: int, xyz, rgb) -> None:
    st.subheader("Clean-up with Open3D")
    st.caption("Statistical outlier removal (drops points far from their neighbours), then voxel downsampling; "
               "the preview is rendered offscreen by Open3D.")
    c1, c2, c3 = st.columns(3)
    nb = c1.slider("Neighbours", 5, 100, 20, key="o3d_nb", help="points looked at around each point")
    ratio = c2.slider("Std ratio", 0.5, 5.0, 2.0, 0.1, key="o3d_ratio",
                      help="lower removes more: a point goes when its mean neighbour distance exceeds the mean by "
                           "this many standard deviations")
    auto = pointcloud.auto_voxel_size(xyz)
    voxel = c3.number_input("Voxel size (0: off)", 0.0, value=0.0, format="%.4f", key="o3d_voxel",
                            help=f"in scene units; about {auto:.4f} merges points closer than 1/300 of the scene")
    if st.button("Clean and render", icon=":material/auto_fix_high:", key="o3d_go"):
        key = pointcloud.params_key(k, nb, ratio, voxel, len(xyz))
        out_dir = run_dir / "cleaned"
        out_dir.mkdir(exist_ok=True)
        ply = out_dir / f"model{k}_{key}.ply"
        with st.spinner("Cleaning and rendering..."):
            cx, crgb, stats = pointcloud.clean(xyz, rgb, nb, ratio, voxel)
            pointcloud.write_ply(ply, cx, crgb)
            png, err = None, None
            try:
                png = pointcloud.render_png(ply)
            except pointcloud.RenderError as e:
                err = str(e)
        st.session_state["o3d_result"] = {"run": run_dir.name, "ply": ply.name, "stats": stats.to_dict(),
                                          "png": png, "error": err}
    res = st.session_state.get("o3d_result")
    if res and res["run"] == run_dir.name and (run_dir / "cleaned" / res["ply"]).exists():
        s = res["stats"]
        st.markdown(f"{s['input_points']:,} points → {s['after_outliers']:,} after outlier removal → "
                    f"**{s['output_points']:,}**" + (f" after voxel downsampling ({s['voxel_size']:.4g})"
                                                     if s["voxel_size"] else ""))
        ply = run_dir / "cleaned" / res["ply"]
        if res["png"]:
            st.image(res["png"], caption="Open3D offscreen rendering of the cleaned point cloud", width=720)
        else:
            st.warning(f"The Open3D preview could not be rendered on this server: {ui.md_escape(res['error'])} "
                       "Showing an interactive plotly view of the cleaned cloud instead.")
            cx, crgb = pointcloud.read_ply(ply)
            st.plotly_chart(viz.point_cloud_figure(cx, crgb), width="stretch")
        st.download_button("Download the cleaned PLY", ply.read_bytes(), file_name=f"{run_dir.name}_cleaned.ply",
                           mime="application/octet-stream", key="dl_cleaned")


def _downloads(run_dir, state, model: int | None = None) -> None:
    st.subheader("Downloads")
    if not jobs.stage_done(state, "exports"):
        st.info("The exports are written by the last stage, which has not finished yet.")
        return
    cols = st.columns(len(DOWNLOADS))
    for col, (fname, label, mime, help_) in zip(cols, DOWNLOADS):
        p = run_dir / fname
        if p.exists():
            col.download_button(label, p.read_bytes(), file_name=f"{run_dir.name}_{fname}", mime=mime,
                                key=f"dl_{fname}", icon=":material/download:", help=help_)
    st.caption("Exports are of the largest model. Poses are world-to-camera (x_cam = R X + t), K in pixels.")
    if model is not None:
        _formats(run_dir, model)


def _formats(run_dir, model: int) -> None:
    """The model for another tool (backend.exports), made on request and kept in the run folder."""
    st.markdown(f"**For other tools** (model {model}; each format's conventions: docs/outputs.md)")
    fmt = st.radio("Format", list(FORMATS), key="rec_format", horizontal=True,
                   format_func=lambda f: f, captions=[FORMATS[f][1] for f in FORMATS])
    made = st.session_state.get("rec_format_zip")
    if st.button(f"Prepare {fmt}", key="rec_format_make", icon=":material/package_2:"):
        with st.spinner(f"Writing {fmt} of model {model}..."):
            made = st.session_state["rec_format_zip"] = (fmt, model, str(exports.export_zip(run_dir, fmt, model)))
    if made and made[:2] == (fmt, model):
        path = Path(made[2])
        st.download_button(f"Download {path.name} ({path.stat().st_size / 1e6:.1f} MB)", path.read_bytes(),
                           file_name=f"{run_dir.name}_{path.name}", mime="application/zip", key="rec_format_dl",
                           icon=":material/download:")


page()
