"""Scenes: which photos belong to which scene and why (the verified-pair graph coloured by scene, thumbnails per
scene), the outliers with their reasons, and downloads per scene and of the IMC 2025 submission."""

from __future__ import annotations

import streamlit as st

import app_common as ui
from backend import jobs
from backend.views import runview, viz

THUMBS_SHOWN = 12  # thumbnails per scene before "show all"


@ui.guarded
def page() -> None:
    st.title("Scenes")
    run_id, run_dir, state = ui.current_run()
    if not ui.require_stage(state, "mapping", "The scenes"):
        return
    info = runview.scenes(run_dir)
    scenes, outliers = info["scenes"], info["outliers"]
    if not info["has_scenes"]:
        st.info("This run was made before scenes were found: run it again (Home, resume) to split it.")
        return
    reg = runview.registration(run_dir)
    counts = {sc["name"]: sc for sc in reg["scenes"]}
    c = st.columns(4)
    c[0].metric("Scenes", len(scenes))
    c[1].metric("Photos in scenes", sum(len(s["images"]) for s in scenes))
    c[2].metric("Registered, all scenes", f"{reg['all_scenes']} / {reg['images']}",
                help="photos with a pose in the model of their scene, of the photos used (Home and Reconstruction "
                     "count the same models)")
    c[3].metric("Outliers", len(outliers))
    if reg["all_models"] > reg["all_scenes"]:
        st.caption(f"{reg['all_models'] - reg['all_scenes']} more photo(s) have a pose in a model too small to be a "
                   f"scene (registered in all models: {reg['all_models']} / {reg['images']}; Reconstruction page).")
    if info["mode"] == "single":
        st.caption("Scenes mode 'single': every photo was mapped as one scene.")
    else:
        st.caption(
            f"The rule: photos are joined by verified pairs (two-view geometry); a pair with fewer than "
            f"{info['strong_inliers']} inliers only counts when it closes a triangle with a third photo (a lone weak "
            f"pair is what a false match between two scenes looks like). Groups of at least "
            f"{info['min_scene_size']} photos are mapped on their own; when the mapper makes several models of one "
            "group, each becomes a scene. Photos in no scene are outliers.")
    edges = [(e["images"][0], e["images"][1], e["inliers"]) for e in info["edges"]]
    fig = viz.scene_graph([s["images"] for s in scenes], [o["image"] for o in outliers if not o.get("skipped")],
                          edges, info["cut"], [s["name"] for s in scenes])
    st.plotly_chart(fig, width="stretch", key="scene_graph", config={"displaylogo": False})
    st.caption("Each dot is a photo, each line a verified pair (hover for names and inliers). Dashed red: pairs cut "
               "by the rule; dotted grey: pairs between groups that the mapper did not join.")
    _submission(run_dir, state)
    for k, sc in enumerate(scenes):
        n = counts.get(sc["name"], {"registered": 0, "registered_names": []})
        where = f" in model {sc['model']}" if sc.get("model") is not None else ""
        with st.expander(f"{sc['name']}: {len(sc['images'])} photos, {n['registered']} registered{where}",
                         expanded=k < 3):
            st.caption(ui.md_escape(sc["why"]))
            show_all = len(sc["images"]) <= THUMBS_SHOWN or st.toggle(
                f"Show all {len(sc['images'])} photos", key=f"scene_all_{k}")
            _thumbs(run_dir, sc["images"] if show_all else sc["images"][:THUMBS_SHOWN], set(n["registered_names"]))
            _scene_downloads(run_dir, state, k, sc)
    if outliers:
        st.subheader(f"Outliers ({len(outliers)})")
        st.caption("Photos that joined no scene: they get the scene 'outliers' and no pose in submission.csv.")
        cols = st.columns(4)
        for i, o in enumerate(outliers):
            with cols[i % 4]:
                if not o.get("skipped"):
                    st.image(str(runview.thumbnail_path(run_dir, o["image"], 240)), width="stretch")
                st.markdown(f"**{ui.md_escape(o['image'], 60)}**: {ui.md_escape(o['reason'])}")


def _thumbs(run_dir, names: list[str], registered: set[str]) -> None:
    cols = st.columns(6)
    for i, n in enumerate(names):
        with cols[i % 6]:
            st.image(str(runview.thumbnail_path(run_dir, n, 240)), width="stretch",
                     caption=ui.md_escape(n, 40) + ("" if n in registered else " (not registered)"))


def _scene_downloads(run_dir, state, k: int, sc: dict) -> None:
    if not jobs.stage_done(state, "exports"):
        return
    files = runview.scene_files(run_dir, k) if len(runview.scenes(run_dir)["scenes"]) > 1 else {}
    if not files:
        st.caption("Downloads of this scene: the run's own (Reconstruction page).")
        return
    where = f"3D view: Reconstruction page, model {sc['model']}." if sc.get("model") is not None else \
        "Not reconstructed: no 3D view."
    st.caption(f"{where} Downloads of this scene:")
    cols = st.columns(len(files))
    mime = {"poses.csv": "text/csv", "points.ply": "application/octet-stream", "model.zip": "application/zip"}
    for col, (fname, p) in zip(cols, files.items()):
        col.download_button(fname, p.read_bytes(), file_name=f"{run_dir.name}_{sc['name']}_{fname}",
                            mime=mime[fname], key=f"dl_scene_{k}_{fname}", icon=":material/download:")


def _submission(run_dir, state) -> None:
    p = run_dir / "submission.csv"
    if jobs.stage_done(state, "exports") and p.exists():
        st.download_button("Download submission.csv (IMC 2025)", p.read_bytes(),
                           file_name=f"{run_dir.name}_submission.csv", mime="text/csv", key="dl_submission",
                           icon=":material/download:",
                           help="image_id, dataset, scene, image, rotation_matrix, translation_vector: one row per "
                                "photo, 'outliers' for outliers, nan poses for unregistered photos")


page()
