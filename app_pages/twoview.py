"""Two-view: do two photos show the same place, and how well does a matcher register them? Two photos of the open
run or two uploads; global similarity in percent with a threshold, verified inliers (the stronger evidence), one or
two methods side by side, two-view geometry with the planar / rotation-only verdict, test-time rotation, and with
ground truth the pose errors and match precision (correct matches green, wrong red). The work is
:func:`backend.twoview.pair.match_prepared`; this page only collects the inputs and shows the result."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import streamlit as st

import app_common as ui
from backend import jobs
from backend.features import EXTRACTORS, extractor_class
from backend.matchers import matchers_for
from backend.onnx_export import ONNX_MATCHERS, RUNTIMES
from backend.twoview.geometry import ESTIMATORS, MIN_INLIERS
from backend.twoview.groundtruth import (PRECISION_PX, PairGT, find_pair, pair_from_poses, parse_typed_gt, read_gt_csv,
                                         read_pairs_file)
from backend.io import sessions
from backend.io.images import release_memory
from backend.twoview.pair import SIMILARITY_THRESHOLD, match_prepared, prepare_image, preview_image
from backend.views import runview, viz

DEFAULTS = (("aliked-n16", "lightglue"), ("sift", "nn-ratio"))
MAX_UPLOAD_BYTES = 50 * 2**20
MAX_GT_BYTES = 20 * 2**20
KEEP = 3  # results kept in the session
_LOCK = threading.Lock()  # one matching at a time per server process (2 CPU cores; models shared)


@st.cache_resource(show_spinner=False)
def _models() -> dict:
    return {}


def _scratch() -> Path:
    """This session's scratch folder for uploaded photos, their validated copies and ground truth (names chosen
    here, never a user's): ``<runs root>/.sessions/twoview-*`` (0700), never the system temp folder. It goes when
    the session ends (the :class:`~backend.io.sessions.SessionFolder` kept in the session state is collected with
    it), when a new pair is uploaded (:func:`_new_scratch`), or, after a crash, when a later session's page start
    finds it unused for hours (:func:`backend.io.sessions.remove_stale`)."""
    f = st.session_state.get("tv_scratch")
    if not isinstance(f, sessions.SessionFolder) or not f.alive:
        f = st.session_state["tv_scratch"] = sessions.SessionFolder("twoview-")
    f.touch()
    return f.path


def _new_scratch() -> None:
    """Remove this session's scratch folder now (the previous pair's photos); the next use makes a new one."""
    f = st.session_state.pop("tv_scratch", None)
    if isinstance(f, sessions.SessionFolder):
        f.remove()


def _pick_method(col, i: int) -> tuple[str, str, str]:
    """``(features, matcher, runtime)`` picked in column ``col``; the runtime choice shows for learned matchers."""
    feats = list(EXTRACTORS)
    f = col.selectbox("Features", feats, index=feats.index(DEFAULTS[i][0]), key=f"tv_feat{i}")
    ms = matchers_for(f)
    want = DEFAULTS[i][1] if f == DEFAULTS[i][0] else extractor_class(f).default_matcher
    m = col.selectbox("Matcher", ms, index=ms.index(want) if want in ms else 0, key=f"tv_match{i}_{f}")
    rt = "torch"
    if m in ONNX_MATCHERS:
        rt = col.radio("Matcher runtime", list(RUNTIMES), horizontal=True, key=f"tv_rt{i}",
                       format_func={"torch": "PyTorch", "onnx": "ONNX Runtime"}.get,
                       help="ONNX Runtime runs the matcher exported to ONNX with our weights (exported on first use, "
                            "up to 2 minutes), all layers on the CPU; the features always come from PyTorch")
    return f, m, rt


def _images(run_dir) -> tuple[list, list[str]]:
    """``(sources, labels)``: two ``Path`` of photos to match and the names shown; empty when not chosen yet."""
    choices = ["Two photos of the open run", "Upload two photos"]
    has_run = bool(st.session_state.get("run_id")) and run_dir is not None
    src = st.radio("Photos", choices, index=0 if has_run else 1, horizontal=True, key="tv_source")
    if src == choices[0]:
        if not has_run:
            st.info("No run is open: upload two photos, or open a run on the Home page.")
            return [], []
        names = [i["name"] for i in runview.images_info(run_dir)["images"]]
        if len(names) < 2:
            st.info("The open run has fewer than two validated photos yet.")
            return [], []
        c0, c1 = st.columns(2)
        a = c0.selectbox("Image 0", names, index=0, key="tv_im0")
        b = c1.selectbox("Image 1", names, index=1, key="tv_im1")
        if a == b:
            st.warning("Choose two different photos.")
            return [], []
        return [runview.image_path(run_dir, a), runview.image_path(run_dir, b)], [a, b]
    c0, c1 = st.columns(2)
    ups = [c.file_uploader(f"Image {i} (JPEG, PNG or HEIC, up to {MAX_UPLOAD_BYTES // 2**20} MB)",
                           type=["jpg", "jpeg", "png", "heic", "heif"], key=f"tv_up{i}")
           for i, c in enumerate((c0, c1))]
    if not all(ups):
        st.caption("Add both photos.")
        return [], []
    pair = tuple(up.file_id for up in ups)
    if st.session_state.get("tv_pair") not in (None, pair):
        _new_scratch()  # a new pair: the previous pair's uploads and validated copies go now, not with the session
    st.session_state["tv_pair"] = pair
    out = []
    for i, up in enumerate(ups):
        if up.size > MAX_UPLOAD_BYTES:
            st.error(f"Image {i} is larger than {MAX_UPLOAD_BYTES // 2**20} MB: send a smaller photo.")
            return [], []
        p = _scratch() / f"upload{i}"
        p.write_bytes(up.getvalue())
        out.append(p)
    return out, [up.name for up in ups]


def _ground_truth(run_dir, state, labels: list[str]) -> PairGT | None:
    """The pair's ground truth from the chosen source (raises ValueError with what to fix)."""
    options = ["None", "Pose CSV (IMC layout)", "Pair file (name0 name1 rot0 rot1 K0 K1 T_0to1)", "Type K, R, t"]
    scene_gt = None
    if state is not None:
        images_dir = (state.get("record") or {}).get("images_dir")
        if images_dir:
            d = Path(images_dir)
            d = d if d.is_absolute() else jobs.REPO_ROOT / d
            scene_gt = d.parent / "gt.csv" if (d.parent / "gt.csv").is_file() else None
    if scene_gt is not None:
        options.insert(1, "The run's scene ground truth")
    kind = st.radio("Ground truth", options, horizontal=True, key="tv_gt_kind")
    if kind == "None":
        return None
    if kind == "The run's scene ground truth":
        table = read_gt_csv(scene_gt, label="the scene's gt.csv")
        return _from_table(table, labels, "the scene's gt.csv")
    if kind.startswith("Pose CSV") or kind.startswith("Pair file"):
        up = st.file_uploader("Ground-truth file", type=["csv", "txt"], key=f"tv_gt_{kind[:4]}")
        if up is None:
            st.caption("Upload the file, or choose another ground truth.")
            return None
        if up.size > MAX_GT_BYTES:
            raise ValueError(f"the ground-truth file is larger than {MAX_GT_BYTES // 2**20} MB")
        p = _scratch() / ("gt.csv" if kind.startswith("Pose") else "pairs.txt")
        p.write_bytes(up.getvalue())
        if kind.startswith("Pose"):
            return _from_table(read_gt_csv(p, label="the uploaded CSV"), labels, "the uploaded CSV")
        gt = find_pair(read_pairs_file(p, label="the uploaded pair file"), labels[0], labels[1])
        if gt is None:
            raise ValueError("the uploaded pair file has no line for these two photos (lines are matched by the "
                             "file names)")
        return gt
    c = st.columns(4)
    k0 = c[0].text_input("K0: fx, fy, cx, cy (px)", key="tv_k0")
    k1 = c[1].text_input("K1: fx, fy, cx, cy (px)", key="tv_k1")
    r = c[2].text_input("R (9 numbers, row-major; x1 = R x0 + t)", key="tv_r")
    t = c[3].text_input("t (3 numbers)", key="tv_t")
    if not all((k0, k1, r, t)):
        st.caption("Type all four, or choose another ground truth.")
        return None
    return parse_typed_gt(k0, k1, r, t)  # checked here, before any matching


def _from_table(table: dict, labels: list[str], where: str) -> PairGT:
    missing = [n for n in labels if n not in table]
    if missing:
        raise ValueError(f"{where} has no row for {', '.join(missing)} (rows are matched by file name)")
    return pair_from_poses(table[labels[0]], table[labels[1]], where)


def _run(sources, labels, methods, opts, gt) -> dict:
    """Validate and match the pair; the entry kept in the session holds the results and small previews (at most
    1600 px, :func:`~backend.twoview.pair.preview_image`), never the full photos, and the memory of the work is
    handed back to the OS afterwards (a 149 MP photo used to keep the server at 3.2 GB long after)."""
    folder = _scratch() / "images"
    try:
        ims = [prepare_image(Path(s), folder, f"image{i}.jpg", labels[i]) for i, s in enumerate(sources)]
        results = []
        with _LOCK:
            for j, (f, m, rt) in enumerate(methods):
                try:
                    results.append(match_prepared(ims[0], ims[1], f, m, gt=gt, similarity=j == 0, models=_models(),
                                                  runtime=rt, **opts))
                except Exception as e:  # noqa: BLE001 - shown to the user, never a traceback
                    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    results.append({"error": jobs.scrub_paths(msg), "method": (f, m)})
        previews = [preview_image(im) for im in ims]
        return {"results": results, "images": [p for p, _ in previews], "scales": [s for _, s in previews],
                "labels": labels}
    finally:
        release_memory()  # decoded photos, feature maps: freed above, now returned to the OS (glibc malloc_trim)


def _caption(r) -> str:
    """Method names escaped (registry names, but shown as text); the numbers and model names are ours."""
    d = r.to_dict()
    s = d["seconds"]
    rt = " on ONNX Runtime" if d["runtime"] == "onnx" else ""
    return (f"{ui.md_escape(d['features'])} + {ui.md_escape(d['matcher'])}{rt}: {d['matches']} matches, {d['inliers']} "
            f"inliers ({d['inlier_ratio']:.0%}), model {d['model'] or 'none'} ({d['verdict']}); extraction "
            f"{s['extraction']:.2f} s, matching {s['matching']:.2f} s, verification {s['verification']:.2f} s")


def _same_place(entry: dict) -> None:
    ok = [r for r in entry["results"] if not isinstance(r, dict)]
    st.subheader("Same place?")
    c = st.columns(3)
    if ok and ok[0].similarity_percent is not None:
        sim = ok[0].similarity_percent
        th = c[0].slider("Similarity threshold (%)", 0, 100, int(SIMILARITY_THRESHOLD), key="tv_sim_th")
        c[1].metric(f"Global similarity ({ok[0].similarity_model})", f"{sim:.1f} %",
                    "same place" if sim >= th else "different places",
                    delta_color="normal" if sim >= th else "inverse")
    if ok:
        n = int(ok[0].inliers.sum())
        c[2].metric("Verified inliers (stronger evidence)", n,
                    "same place" if ok[0].same_place else "not verified",
                    delta_color="normal" if ok[0].same_place else "inverse")
        st.caption(f"Descriptor similarity is a hint: unrelated photos of similar things can score high. {MIN_INLIERS} "
                   "or more inliers of one two-view geometry (COLMAP's minimum for a verified pair) is the evidence.")


def _show(entry: dict, show: str, max_lines: int) -> None:
    results, (ia, ib) = entry["results"], entry["images"]
    sa, sb = entry.get("scales") or (np.ones(2), np.ones(2))  # stored px / preview px
    cols = st.columns(len(results))
    for col, r in zip(cols, results):
        if isinstance(r, dict):
            col.error(f"{ui.md_escape(' + '.join(r['method']))} could not match this pair: "
                      f"{ui.md_escape(r['error'])}")
            continue
        m, inl = r.matches, r.inliers
        k0, k1 = r.keypoints0 / sa, r.keypoints1 / sb  # keypoints on the previews
        if show == "correct" and r.correct is not None:
            img = viz.draw_matches(ia, ib, k0, k1, m, inliers=r.correct, height=420, max_lines=max_lines)
        elif show == "inliers":
            img = viz.draw_matches(ia, ib, k0, k1, m[inl], inliers=inl[inl], height=420, max_lines=max_lines)
        else:
            img = viz.draw_matches(ia, ib, k0, k1, m, inliers=inl, height=420, max_lines=max_lines)
        col.image(img, width="stretch", caption=_caption(r))
        d = r.to_dict()
        rows = [("Intrinsics", d["intrinsics"]), ("Two-view model", f"{d['model'] or 'none'}: {d['verdict']}"),
                ("Homography / epipolar inliers", f"{d['geometry']['h_inlier_ratio']:.2f}")]
        if r.geometry.R is not None:
            angle = float(np.degrees(np.arccos(np.clip((np.trace(r.geometry.R) - 1) / 2, -1, 1))))
            rows += [("Relative rotation", f"{angle:.2f} deg"),
                     ("Translation direction", ", ".join(f"{x:+.3f}" for x in r.geometry.t))]
        if d.get("tta"):
            rows.append(("Test-time rotation", d["tta"]["note"]))
        if r.gt is not None:
            def deg(x):
                return "-" if x is None else f"{x:.2f} deg"
            rows += [("Rotation error", deg(d["rotation_error_deg"])),
                     ("Translation direction error", deg(d["translation_error_deg"]))]
            if d.get("match_precision") is not None:
                rows.append(("Match precision", f"{d['match_precision']:.1%} of {d['matches']} "
                                                f"(< {d['precision_threshold_px']:g} px)"))
        col.dataframe({"": [a for a, _ in rows], "value": [str(b) for _, b in rows]}, hide_index=True,
                      width="stretch")
    if any(not isinstance(r, dict) and r.correct is not None for r in results):
        st.caption("Match precision: the share of matches whose symmetric epipolar distance under the ground truth "
                   "is below the threshold; a match that slides along its epipolar line is not caught, so it is an "
                   "upper bound.")
        for note in d["notes"]:
            col.caption(ui.md_escape(note))


@ui.guarded
def page() -> None:
    st.title("Two-view")
    st.caption("Two photos: do they show the same place, and how well does a matcher register them? The same as "
               "`python -m backend twoview` and the API's POST /v1/match.")
    sessions.remove_stale()  # scratch folders of sessions that ended without their finaliser (a killed server)
    ui.show_bad_run()  # a bad ?run= is said here too; two uploaded photos still work
    run_id = st.session_state.get("run_id")
    if run_id and not jobs.run_exists(run_id):  # deleted (or removed) since it was opened
        ui.show_missing_run(run_id)
        run_id = None
    run_dir = jobs.run_dir_for(run_id) if run_id else None
    state = jobs.run_state(run_dir) if run_dir is not None else None
    sources, labels = _images(run_dir if state and jobs.stage_done(state, "images") else None)
    try:
        gt = _ground_truth(run_dir, state, labels) if sources else None
    except ValueError as e:
        st.error(f"Ground truth not used: {ui.md_escape(str(e))}")
        gt = None
    two = st.checkbox("Compare with a second method", value=True, key="tv_two")
    cols = st.columns(2 if two else 1)
    methods = [_pick_method(cols[0], 0)] + ([_pick_method(cols[1], 1)] if two else [])
    c = st.columns(4)
    opts = {"tta": c[0].checkbox("Test-time rotation", key="tv_tta",
                                 help="Also match image 1 turned by 90, 180 and 270 degrees; keep the turn with the "
                                      "most verified inliers"),
            "estimator": c[1].selectbox("Robust estimator", list(ESTIMATORS), key="tv_est",
                                        format_func={"poselib": "PoseLib LO-RANSAC",
                                                     "opencv": "OpenCV USAC MAGSAC++"}.get),
            "resize": c[2].select_slider("Resize (long side, px)", [640, 800, 1024, 1280, 1600], value=1024,
                                         key="tv_resize"),
            "max_keypoints": c[3].select_slider("Keypoints (at most)", [512, 1024, 2048, 4096, 8192], value=2048,
                                                key="tv_kp")}
    if gt is not None:
        opts["precision_px"] = float(st.number_input("Match precision threshold (px, symmetric epipolar distance)",
                                                     0.5, 50.0, PRECISION_PX, 0.5, key="tv_prec"))
    store: dict = st.session_state.setdefault("tv_results", {})
    key = (tuple(labels), tuple(methods), tuple(sorted(opts.items())), gt is not None,
           tuple(str(s) for s in sources))
    if st.button("Match", type="primary", key="tv_go", disabled=not sources):
        names = " and ".join(f"{f} + {m}" + (" (ONNX Runtime)" if rt == "onnx" else "") for f, m, rt in methods)
        with st.spinner(f"Matching {names}..."):
            try:
                entry = _run(sources, labels, methods, opts, gt)
            except ValueError as e:
                st.error(f"This photo cannot be used: {ui.md_escape(jobs.scrub_paths(str(e)))}. Choose or upload "
                         "another JPEG, PNG or HEIC photo.")
                return
        store.pop(key, None)
        store[key] = entry
        while len(store) > KEEP:
            store.pop(next(iter(store)))
    entry = store.get(key)
    if entry is None:
        if sources:
            st.caption("Press Match.")
        return
    _same_place(entry)
    st.subheader("Matches")
    views = {"verified": "Verified inliers (green) and rejected matches (red)", "inliers": "Verified inliers only"}
    if gt is not None and any(not isinstance(r, dict) and r.correct is not None for r in entry["results"]):
        views["correct"] = "Correct (green) and wrong (red) by the ground truth"
    c = st.columns([3, 1])
    show = c[0].radio("Show", list(views), format_func=views.get, horizontal=True, key="tv_show",
                      index=list(views).index("correct") if "correct" in views else 0)
    max_lines = c[1].select_slider("Lines drawn (at most)", [100, 200, 400, 800], value=200, key="tv_lines")
    _show(entry, show, max_lines)


page()
