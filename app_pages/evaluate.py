"""Evaluate: mAA of the run's poses against a ground-truth CSV (uploaded, or the sample scene's), the
per-threshold table, and ground-truth camera centres beside the aligned predicted ones."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

import app_common as ui
from backend import evaluate, jobs, runview, viz

DEFAULT_THRESHOLDS = "0.025;0.05;0.1;0.2;0.5;1.0"
MAX_GT_BYTES = 20 * 2**20


def _scene_gt(state: dict) -> tuple[Path | None, str]:
    """The ground truth beside the run's input images (the sample scene, or a scene run from the command line)
    and its thresholds text; (None, '') when there is none. Only paths recorded by the server are used."""
    images_dir = state["record"].get("images_dir")
    if not images_dir:
        return None, ""
    d = Path(images_dir)
    d = d if d.is_absolute() else jobs.REPO_ROOT / d
    gt = d.parent / "gt.csv"
    if not gt.is_file():  # uploads never contain a gt.csv (only images are saved)
        return None, ""
    th = d.parent / "thresholds.txt"
    return gt, (th.read_text().strip().replace("\n", ";") if th.is_file() else DEFAULT_THRESHOLDS)


@ui.guarded
def page() -> None:
    st.title("Evaluate")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "exports", "The evaluation"):
        return
    scene_gt, scene_th = _scene_gt(state)
    if scene_gt:
        src = st.radio("Ground truth", ["scene", "upload"], horizontal=True, key="eval_source",
                       format_func=lambda s: {"scene": f"The scene's ground truth ({scene_gt.parent.name}/gt.csv)",
                                              "upload": "Upload a CSV"}[s])
    else:
        src = "upload"
    gt_bytes = None
    if src == "upload":
        up = st.file_uploader("Ground-truth poses (IMC CSV: image_name,rotation_matrix,translation_vector[,...])",
                              type=["csv", "txt"], key="eval_upload", max_upload_size=MAX_GT_BYTES // 2**20)
        st.caption(f"At most {MAX_GT_BYTES // 2**20} MB. Rotation: 9 numbers row-major world-to-camera, translation: "
                   "3 numbers, separated by ';' (the IMC convention; the IMC 2024 `image_path` layout works too).")
        if up is None:
            st.info("Upload a ground-truth CSV to evaluate this run.")
            return
        if up.size > MAX_GT_BYTES:
            st.error(f"The file is larger than {MAX_GT_BYTES // 2**20} MB.")
            return
        gt_bytes = up.getvalue()
    th_text = st.text_input("Thresholds (ground-truth units, e.g. metres; separated by ';')",
                            value=scene_th if src == "scene" else DEFAULT_THRESHOLDS, key=f"eval_th_{src}",
                            help="IMC gives each scene its own thresholds (its thresholds.txt); paste them here")
    try:
        if gt_bytes is not None:
            with tempfile.NamedTemporaryFile(suffix=".csv") as tmp:
                tmp.write(gt_bytes)
                tmp.flush()
                gt = evaluate.read_poses_csv(tmp.name)
        else:
            gt = evaluate.read_poses_csv(scene_gt)
        pred = evaluate.read_poses_csv(run_dir / "poses.csv")
        run_names = {i["name"] for i in runview.images_info(run_dir)["images"]} | set(pred)
        extra = sorted(n for n in gt if n not in run_names)
        if extra:
            only = st.checkbox(f"Evaluate only the images of this run ({len(extra)} of the {len(gt)} ground-truth "
                               "images are not in it)", value=True, key="eval_only_run",
                               help="IMC counts every ground-truth image that is missing from a submission as a "
                                    "failure; untick to score this run that way")
            if only:
                gt = {n: p for n, p in gt.items() if n in run_names}
                if not gt:
                    raise ValueError("none of the ground-truth image names occur in this run")
        res = evaluate.mean_average_accuracy(gt, pred, th_text)
    except (ValueError, OSError) as e:
        msg = str(e).replace(tempfile.gettempdir(), "").strip()
        st.error(f"Cannot evaluate: {msg}. Check that the file is an IMC pose CSV of this scene and that the "
                 "thresholds are positive numbers separated by ';'.")
        return
    common = [n for n in gt if n in pred]
    if not common:
        st.warning("None of the ground-truth image names occur in this run: is it the right scene?")
    c = st.columns(3)
    c[0].metric("mAA", f"{res.mAA:.3f}")
    c[1].metric("Registered (of GT images)", f"{res.n_registered} / {res.n_gt}")
    c[2].metric("Missing or unregistered", res.n_missing)
    st.dataframe([{"threshold": float(t), "accuracy": float(a), "accurate cameras": int(round(a * res.n_gt))}
                  for t, a in zip(res.thresholds, res.accuracies)], hide_index=True, width="content")
    st.subheader("Ground truth and aligned prediction")
    ths = [float(t) for t in res.thresholds]
    th = st.select_slider("Align at threshold", ths, value=ths[-1], key="eval_align_th",
                          help="the predicted centres are registered onto the ground truth as the mAA does at this "
                               "threshold (similarity transform, RANSAC over camera triplets)")
    try:
        names, g, p, inl = viz.aligned_centres(gt, pred, th)
    except ValueError as e:
        st.info(f"No 3D comparison: {e}.")
        return
    st.plotly_chart(viz.gt_vs_prediction_figure(names, g, p, inl), width="stretch")
    err = np.linalg.norm(g - p, axis=1)
    st.caption(f"Blue: ground-truth centres; orange: predicted centres after alignment (x: outside {th:g}); "
               f"grey lines: errors. Median error {np.median(err):.3g}.")
    st.dataframe([{"image": n, "error": float(e), f"< {th:g}": bool(i)} for n, e, i in zip(names, err, inl)],
                 hide_index=True, width="stretch")


page()
