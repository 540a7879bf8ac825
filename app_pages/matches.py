"""Matches: a pair's LightGlue matches drawn between the two images, raw versus verified inliers; a sortable
table of matches and inliers per pair."""

from __future__ import annotations

import streamlit as st

import app_common as ui
from backend import jobs, runview, viz

VIEWS = {
    "raw": "Raw LightGlue matches (colour: confidence, purple low, yellow high)",
    "verified": "Verified inliers (green) and rejected matches (red)",
    "inliers": "Verified inliers only",
}


@st.cache_data(max_entries=16, show_spinner=False)
def _drawing(run_dir: str, a: str, b: str, view: str, max_lines: int, content_key: str):
    # content_key (runview.matches_key) changes with the matches, the features and images they index, and the
    # verified inliers: a cached drawing is never one of older data
    m, sc = runview.matches(run_dir, a, b)
    inl, geom = runview.inliers(run_dir, a, b) if view != "raw" else (None, "")
    mask = runview.inlier_mask(m, inl)
    if view == "inliers":
        m, sc, mask = m[mask], sc[mask], mask[mask]
    ka, _ = runview.features(run_dir, a)
    kb, _ = runview.features(run_dir, b)
    ia = viz.open_rgb(runview.image_path(run_dir, a))
    ib = viz.open_rgb(runview.image_path(run_dir, b))
    img = viz.draw_matches(ia, ib, ka, kb, m, inliers=None if view == "raw" else mask, scores=sc,
                           height=560, max_lines=max_lines)
    return img, len(m), int(mask.sum()), geom


@ui.guarded
def page() -> None:
    st.title("Matches")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "matching", "The matches"):
        return
    verified = jobs.stage_done(state, "verification")
    table = runview.match_table(run_dir)
    if not verified:
        st.info("Geometric verification has not run yet: only raw matches are shown. Continue the run on Home to "
                "see which matches survive.")
    if table.empty:
        st.warning("No pairs were selected for this run.")
        return
    order = table.assign(_k=table["inliers" if verified else "matches"].fillna(0)).sort_values("_k", ascending=False,
                                                                                              kind="stable")
    labels = {}
    for a, b, m, i in zip(order["image0"], order["image1"], order["matches"], order["inliers"]):
        extra = f", {int(i)} inliers" if verified and i == i else ""
        labels[(a, b)] = f"{a} — {b} ({int(m) if m == m else 0} matches{extra})"
    pairs = list(labels)
    c1, c2, c3 = st.columns([4, 3, 2])
    pair = c1.selectbox("Pair (most " + ("inliers" if verified else "matches") + " first)", pairs,
                        format_func=lambda p: labels[p], key="match_pair")
    view = c2.radio("Show", list(VIEWS) if verified else ["raw"], format_func=VIEWS.get, key="match_view",
                    index=1 if verified else 0)
    max_lines = c3.select_slider("Lines drawn (at most)", [100, 200, 400, 800, 2000], value=200, key="match_lines")
    key = runview.matches_key(run_dir, pair[0], pair[1])
    img, n, n_inl, geom = _drawing(str(run_dir), pair[0], pair[1], view, max_lines, key)
    text = f"{n} matches" + (f" (a random {max_lines} of them drawn)" if n > max_lines else "")
    if view != "raw":
        text += f"; {n_inl} verified inliers" + (f", two-view geometry: {geom}" if geom else "")
    st.image(img, width="stretch", caption=text)
    st.subheader("All pairs")
    st.caption("Click a column header to sort. Pairs with fewer matches than the minimum are not verified.")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"inlier_ratio": st.column_config.ProgressColumn("inlier ratio", min_value=0,
                                                                                max_value=1, format="%.2f")})


page()
