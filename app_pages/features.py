"""Features: an image with its keypoints drawn (any extractor), coloured by score; keypoints per image."""

from __future__ import annotations

import numpy as np
import streamlit as st

import app_common as ui
from backend.views import runview, viz


@st.cache_data(max_entries=16, show_spinner=False)
def _drawing(run_dir: str, name: str, key: str, max_side: int):
    kp, sc = runview.features(run_dir, name)
    img = viz.open_rgb(runview.image_path(run_dir, name))
    return viz.draw_keypoints(img, kp, sc, max_side=max_side), len(kp), (float(sc.min()), float(sc.max())) \
        if len(sc) else (0.0, 0.0)


@ui.guarded
def page() -> None:
    st.title("Features")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "features", "The keypoints"):
        return
    counts = runview.keypoint_counts(run_dir)
    names = list(counts)
    c = state["record"].get("config", {}).get("features", {})
    name_used = c.get("name") or c.get("model") or "aliked-n16"
    st.markdown(f"**{ui.md_escape(name_used)}** · up to {c.get('max_keypoints', '?')} keypoints at "
                f"{c.get('resize', '?')} px · {sum(counts.values()):,} keypoints in all, "
                f"{np.mean(list(counts.values())):.0f} per image on average")
    col1, col2 = st.columns([3, 1])
    name = col1.selectbox("Image", names, key="feat_image",
                          format_func=lambda n: f"{names.index(n)}: {n} ({counts[n]} keypoints)")
    max_side = col2.select_slider("Drawing size", [640, 960, 1280, 1600], value=1280, key="feat_size")
    img, n, (lo, hi) = _drawing(str(run_dir), name, runview.features_key(run_dir, name), max_side)
    st.image(img, width="stretch",
             caption=f"{ui.md_escape(name)}: {n} keypoints; colour = detection score (purple low {lo:.2f} … yellow "
                     f"high {hi:.2f})")  # image captions are markdown: the file name is shown as plain text
    st.plotly_chart(viz.keypoints_bar(names, [counts[x] for x in names], name), width="stretch")


page()
