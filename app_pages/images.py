"""Images: thumbnails with size, EXIF focal length and camera; skipped files and why."""

from __future__ import annotations

import streamlit as st

import app_common as ui
from backend import jobs
from backend.views import runview


TURNED = {1: "turned 90° counter-clockwise", 2: "upside down", 3: "turned 90° clockwise"}


@ui.guarded
def page() -> None:
    st.title("Images")
    run_id, run_dir, state = ui.current_run()
    info = runview.images_info(run_dir)
    skipped = [{"file": s["name"], "reason": s["reason"], "when": "upload"} for s in info["upload_skipped"]]
    skipped += [{"file": s["name"], "reason": s["reason"], "when": "validation"} for s in info["skipped"]]
    if not ui.require_stage(state, "images", "The validated images"):
        if skipped:
            st.subheader("Skipped files")
            st.dataframe(skipped, hide_index=True, width="stretch")
        return
    images = info["images"]
    mapped = jobs.stage_done(state, "mapping")
    reg = runview.registration(run_dir) if mapped else None  # the counts Home, Scenes and Reconstruction show too
    n_exif = sum(1 for i in images if i.get("focal_source") == "exif")
    st.markdown(f"**{len(images)}** images used, **{len(skipped)}** skipped · focal length from EXIF for "
                f"{n_exif} of {len(images)} (others use the prior 1.2 × the long side)")
    if reg is not None:
        several = len(reg["models"]) > 1
        st.markdown(f"Registered: **{reg['all_models']} / {reg['images']}** in all {len(reg['models'])} models, "
                    f"{reg['largest']} in the largest (model {reg['largest_model']})" if several else
                    f"Registered: **{reg['largest']} / {reg['images']}** in the model")
    n_turned = sum(1 for i in images if i.get("upright_turns"))
    if n_turned:
        st.markdown(f"**{n_turned}** photo(s) are turned against the others (marked below): retrieval and the "
                    "features saw them turned back; keypoints and poses refer to the photos as stored")
    for v in info.get("videos", []):  # a video became its sharpest frames (backend/io/video.py)
        st.info(f"Video {ui.md_escape(v['video'])}: {ui.md_escape(v['note'])}. Each kept frame is the sharpest of "
                "its interval; 'interval median' is the median sharpness of the frames looked at there.")
        st.dataframe([{"frame kept": k["name"], "video frame": k["frame"], "time (s)": k["time_s"],
                       "sharpness": k["sharpness"], "interval median": k["interval_median"]} for k in v["kept"]],
                     hide_index=True, width="stretch", height=min(400, 38 + 35 * len(v["kept"])))
    if info.get("renamed"):
        with st.expander(f"{len(info['renamed'])} file name(s) were cleaned up"):
            st.dataframe([{"uploaded as": k, "saved as": v} for k, v in info["renamed"].items()], hide_index=True)
    _table(images, reg)
    st.subheader("Thumbnails")
    c1, c2 = st.columns([1, 3])
    per_row = c1.select_slider("Thumbnails per row", [2, 3, 4, 5, 6, 8], value=4, key="thumbs_per_row")
    page_size = 48
    shown = images
    if len(images) > page_size:
        n_pages = (len(images) + page_size - 1) // page_size
        p = c2.number_input(f"Page (of {n_pages}, {page_size} images each)", 1, n_pages, 1, key="thumbs_page")
        shown = images[(p - 1) * page_size: p * page_size]
    for start in range(0, len(shown), per_row):
        cols = st.columns(per_row)
        for col, im in zip(cols, shown[start:start + per_row]):
            with col:
                st.image(str(runview.thumbnail_path(run_dir, im["name"])), width="stretch")
                focal = (f"{im['exif_focal_mm']:.1f} mm EXIF" if im.get("exif_focal_mm") else "no EXIF focal")
                prior = f"prior {im['focal_px']:.0f} px ({'EXIF 35 mm' if im['focal_source'] == 'exif' else 'default'})"
                camera = " ".join(x for x in (im.get("make"), im.get("model")) if x) or "camera unknown"
                where = "" if reg is None else "  \n" + (
                    f":green[registered: {_where_text(reg['where'][im['name']])}]" if im["name"] in reg["where"]
                    else ":orange[not registered]")
                # names and EXIF camera names come from the user's files: shown as plain text
                st.markdown(f"**{ui.md_escape(im['name'])}**  \n{im['width']}×{im['height']} px · {focal}  \n"
                            f"{prior}  \n{ui.md_escape(camera)}{where}"
                            + (f"  \n:orange[{ui.md_escape(im['conversion'])}]" if im.get("conversion") else "")
                            + (f"  \n:violet[{TURNED[im['upright_turns'] % 4]} against the others; matched turned "
                               "back]" if im.get("upright_turns") else ""))
    st.subheader("Skipped files")
    if skipped:
        st.dataframe(skipped, hide_index=True, width="stretch")
    else:
        st.caption("None: every file was used.")


def _where_text(where: list[tuple[int, str | None]]) -> str:
    """``model 0 (scene0)``, for each model that holds the photo."""
    return ", ".join(f"model {k}" + (f" ({name})" if name else "") for k, name in where)


def _table(images: list[dict], reg: dict | None) -> None:
    """Every image in one table with a ``registered`` column (yes/no, and the model and scene), as COLMAP's image
    list has; before the mapping stage the column says so."""
    st.subheader("All images")
    rows = []
    for im in images:
        w = reg["where"].get(im["name"], []) if reg is not None else []
        rows.append({"image": im["name"],
                     "registered": ("yes" if w else "no") if reg is not None else "not mapped yet",
                     "model": ", ".join(str(k) for k, _ in w), "scene": ", ".join(n for _, n in w if n),
                     "size (px)": f"{im['width']}×{im['height']}",
                     "focal prior (px)": round(float(im["focal_px"]), 1),
                     "focal from": "EXIF" if im.get("focal_source") == "exif" else "default",
                     "camera": " ".join(x for x in (im.get("make"), im.get("model")) if x)})
    st.dataframe(rows, hide_index=True, width="stretch")
    if reg is not None:
        st.caption("registered: the photo has a pose in a model (model k is sparse/k in model.zip and the model "
                   "picker of the Reconstruction page); scene: the scene that model is (Scenes page).")


page()
