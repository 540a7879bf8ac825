"""Evaluate: the official IMC 2025 mAA of the run's poses against a ground-truth CSV (uploaded, or the sample
scene's), the per-threshold table, and ground-truth camera centres beside the aligned predicted ones."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

import app_common as ui
from backend.evaluation import imc_metric as evaluate
from backend import jobs
from backend.views import runview, viz

DEFAULT_THRESHOLDS = "0.025;0.05;0.1;0.2;0.5;1.0"
MAX_GT_BYTES = 20 * 2**20
MAX_THRESHOLD_FILE_BYTES = 64 * 2**10


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
    th_text = st.text_input("Thresholds (ground-truth units, e.g. metres; numbers separated by ';' or ',')",
                            value=scene_th if src == "scene" else DEFAULT_THRESHOLDS, key=f"eval_th_{src}",
                            help="IMC gives each scene its own thresholds (its thresholds.txt): type or paste the "
                                 "numbers here, or upload the file below")
    th_file = st.file_uploader("Or upload a thresholds file (numbers only, like IMC's thresholds.txt)",
                               type=["txt", "csv"], key="eval_th_file", max_upload_size=1)
    try:
        if th_file is not None:  # a file from the user's browser, read as text; never a server path
            if th_file.size > MAX_THRESHOLD_FILE_BYTES:
                raise ValueError(f"the thresholds file is larger than {MAX_THRESHOLD_FILE_BYTES // 2**10} KB")
            source = "the uploaded thresholds file"
            thresholds = evaluate.parse_threshold_text(evaluate.decode_text(th_file.getvalue(), source), source)
        else:
            source = "the thresholds box"
            thresholds = evaluate.parse_threshold_text(th_text, source)
        evaluate.check_threshold_count(thresholds, source)
    except ValueError as e:
        st.error(f"Cannot use the thresholds: {ui.md_escape(e)}. Type numbers separated by ';' or ',' (e.g. "
                 "0.025; 0.05; 0.1), or upload a thresholds file.")
        return
    tmp_name = None
    try:
        if gt_bytes is not None:
            with tempfile.NamedTemporaryFile(suffix=".csv") as tmp:
                tmp_name = tmp.name
                tmp.write(gt_bytes)
                tmp.flush()
                gt = evaluate.read_poses_csv(tmp.name, label="the uploaded CSV", ground_truth=True)
        else:
            gt = evaluate.read_poses_csv(scene_gt, label=f"{scene_gt.parent.name}/gt.csv", ground_truth=True)
        pred = evaluate.read_poses_csv(run_dir / "poses.csv")
        scene_names = [sc["name"] for sc in runview.scenes(run_dir)["scenes"]]
        if len(scene_names) > 1:  # several scenes, each in its own frame: score one against this ground truth
            table = evaluate.read_pose_table(run_dir / "poses.csv")
            overlap = {s: sum(r.scene == s and r.image in gt for r in table) for s in scene_names}
            pick = st.selectbox("Scene of this run to score", scene_names, key="eval_scene",
                                index=scene_names.index(max(scene_names, key=lambda s: overlap[s])),
                                help="this run holds several scenes (Scenes page); the one sharing most photos with "
                                     "the ground truth is chosen first. A whole mixed collection is scored with "
                                     "'python -m backend evaluate GT.csv submission.csv'")
            pred = evaluate.read_poses_csv(run_dir / "poses.csv", scene=pick)
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
        res = evaluate.mean_average_accuracy(gt, pred, thresholds)
    except (ValueError, OSError, csv.Error) as e:
        msg = str(e).replace(tmp_name, "the uploaded CSV") if tmp_name else str(e)
        if "field larger than field limit" in msg:  # Python's csv module on a huge field: not a pose CSV
            msg = "the uploaded CSV has a field that is too large: it is not a pose CSV"
        msg = jobs.scrub_paths(msg.replace(tempfile.gettempdir(), "").strip())
        st.error(f"Cannot evaluate: {ui.md_escape(msg)}. Check that the file is an IMC pose CSV of this scene and "
                 "that the thresholds are positive numbers separated by ';' or ','.")
        return
    common = [n for n in gt if n in pred]
    if not common:
        st.warning("None of the ground-truth image names occur in this run: is it the right scene?")
    n_reg = res.n_registered
    c = st.columns(4)
    c[0].metric("mAA", f"{res.mAA:.3f}", help="the official Image Matching Challenge 2025 metric: per threshold "
                "max(0, cameras within - 3) / (ground-truth cameras - 3), averaged over the thresholds after the "
                "two tightest")
    c[1].metric("Accuracy over all thresholds", f"{res.accuracy_all_thresholds:.3f}",
                help="cameras within each threshold / all ground-truth cameras, averaged over every threshold, "
                     "nothing subtracted (not the mAA)")
    c[2].metric("Registered (of GT images)", f"{n_reg} / {res.n_gt}")
    c[3].metric("Missing or unregistered", res.n_gt - n_reg)
    denom = max(res.n_gt - evaluate.TO_DEC, 1)
    st.dataframe([{"threshold": float(t), "cameras within": int(k),
                   "accuracy (official)": max(0, int(k) - evaluate.TO_DEC) / denom,
                   "counted in mAA": q >= evaluate.SKIP_TOP_THRESHOLDS}
                  for q, (t, k) in enumerate(zip(res.thresholds, res.inliers))], hide_index=True, width="content")
    if not res.exhaustive:
        st.caption(f"More than {evaluate.MAX_TRIPLETS:,} camera triplets: a fixed sample of them was tried, not all.")
    st.subheader("Ground truth and aligned prediction")
    ths = [float(t) for t in res.thresholds]
    th = st.select_slider("Align at threshold", ths, value=ths[-1], key="eval_align_th",
                          help="the predicted centres mapped onto the ground truth by the metric's model for this "
                               "threshold (the similarity transform that puts the most cameras within it)")
    try:
        names, g, p, inl = viz.aligned_centres(gt, pred, res.transforms[ths.index(th)], th)
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
