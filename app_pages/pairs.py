"""Pairs: the similarity matrix, the pair graph and the selected pairs; which global descriptor was used."""

from __future__ import annotations

import streamlit as st

import app_common as ui
from backend import jobs
from backend.views import runview, viz


@ui.guarded
def page() -> None:
    st.title("Pairs")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "retrieval", "The image pairs"):
        return
    r = runview.retrieval_info(run_dir)
    prs = runview.pairs(run_dir)
    counts = state["record"]["stages"]["retrieval"].get("counts", {})
    n = len(r["names"])
    k = state["record"].get("config", {}).get("retrieval", {}).get("num_neighbors", "?")
    how = "all pairs, as there are few images" if counts.get("exhaustive") else f"the {k} most similar per image"
    st.markdown(f"Global descriptor: **{ui.md_escape(r['model'])}** · {n} images · **{len(prs)}** pairs selected "
                f"({how})")
    if r["fallback_reason"]:
        st.warning(f"DINOv2 was not used: {ui.md_escape(r['fallback_reason'])}. See docs/setup.md, 'Adding "
                   "DINOv2 weights by hand', to install it.")
    col1, col2 = st.columns(2)
    with col1:
        if r["similarity"] is not None:
            st.plotly_chart(viz.similarity_heatmap(r["similarity"], r["names"], prs), width="stretch")
            st.caption("Image indices on the axes; hover for names. Dots mark the pairs that were matched.")
        else:
            st.info(f"{n} images: the similarity matrix was not built (pairs were chosen block by block to keep "
                    "memory bounded), so there is no heatmap.")
    table = runview.match_table(run_dir) if jobs.stage_done(state, "matching") else None
    with col2:
        options = ["similarity"]
        if table is not None:
            options.append("matches")
            if jobs.stage_done(state, "verification"):
                options.append("inliers")
        weight = st.radio("Edge weight", options, horizontal=True, key="graph_weight")
        if weight == "similarity":
            edges = prs
        else:
            edges = [(a, b, float(w)) for a, b, w in zip(table["image0"], table["image1"], table[weight].fillna(0))]
        st.plotly_chart(viz.pair_graph(r["names"], edges, weight), width="stretch")
        st.caption("Node numbers are the image indices: "
                   + ", ".join(f"{i}: {ui.md_escape(nm)}" for i, nm in enumerate(r["names"])))
    st.subheader("Selected pairs")
    rows = table if table is not None else [{"image0": a, "image1": b, "similarity": s} for a, b, s in prs]
    st.dataframe(rows, hide_index=True, width="stretch")


page()
