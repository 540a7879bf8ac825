"""Features: an image with its ALIKED keypoints drawn, coloured by score; keypoints per image."""

from __future__ import annotations

import numpy as np
import streamlit as st

import app_common as ui
from backend import runview, viz


@st.cache_data(max_entries=16, show_spinner=False)
def _drawing(run_dir: str, name: str, mtime: float, max_side: int):
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
    st.markdown(f"**{c.get('model', 'ALIKED')}** · up to {c.get('max_keypoints', '?')} keypoints at "
                f"{c.get('resize', '?')} px · {sum(counts.values()):,} keypoints in all, "
                f"{np.mean(list(counts.values())):.0f} per image on average")
    col1, col2 = st.columns([3, 1])
    name = col1.selectbox("Image", names, key="feat_image",
                          format_func=lambda n: f"{names.index(n)}: {n} ({counts[n]} keypoints)")
    max_side = col2.select_slider("Drawing size", [640, 960, 1280, 1600], value=1280, key="feat_size")
    mtime = (run_dir / "features.h5").stat().st_mtime
    img, n, (lo, hi) = _drawing(str(run_dir), name, mtime, max_side)
    st.image(img, width="stretch",
             caption=f"{name}: {n} keypoints; colour = detection score (purple low {lo:.2f} … yellow high {hi:.2f})")
    st.plotly_chart(viz.keypoints_bar(names, [counts[x] for x in names], name), width="stretch")


page()
