"""Matches: a pair's matches (any matcher) drawn between the two images, raw versus verified inliers; the same pair
matched by two methods side by side (:func:`backend.twoview.compare.compare_pair`); a sortable table of matches and
inliers per pair."""

from __future__ import annotations

import streamlit as st

import app_common as ui
from backend import jobs
from backend.features import EXTRACTORS, extractor_class
from backend.matchers import matchers_for
from backend.twoview.compare import GEOMETRY, compare_pair
from backend.views import runview, viz

VIEWS = {
    "raw": "Raw matches (colour: confidence, purple low, yellow high)",
    "verified": "Verified inliers (green) and rejected matches (red)",
    "inliers": "Verified inliers only",
}
DEFAULT_LEFT = ("aliked-n16", "lightglue")  # when the run's own method is not known
DEFAULT_RIGHT = ("sift", "nn-ratio")
COMPARE_KEEP = 4  # comparisons kept in the session (each holds two results and their drawings)


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
    _compare_section(run_id, run_dir, state, pair, max_lines)
    st.subheader("All pairs")
    st.caption("Click a column header to sort. Pairs with fewer matches than the minimum are not verified.")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"inlier_ratio": st.column_config.ProgressColumn("inlier ratio", min_value=0,
                                                                                max_value=1, format="%.2f")})



def _run_method(state: dict) -> tuple[str, str]:
    """The run's own features + matcher (from its config), or :data:`DEFAULT_LEFT`."""
    cfg = (state.get("record") or {}).get("config") or {}
    f = (cfg.get("features") or {}).get("name")
    m = (cfg.get("matching") or {}).get("name")
    if f in EXTRACTORS and m in matchers_for(f):
        return f, m
    return DEFAULT_LEFT


def _run_sizes(state: dict) -> tuple[int, int]:
    """The run's features ``resize`` and ``max_keypoints`` (the comparison uses the same), else the defaults."""
    c = ((state.get("record") or {}).get("config") or {}).get("features") or {}
    try:
        return int(c.get("resize", 1024)), int(c.get("max_keypoints", 2048))
    except (TypeError, ValueError):
        return 1024, 2048


def _pick_method(col, side: str, default: tuple[str, str]) -> tuple[str, str]:
    feats = list(EXTRACTORS)
    f = col.selectbox("Features", feats, index=feats.index(default[0]), key=f"cmp_feat_{side}")
    ms = matchers_for(f)
    want = default[1] if f == default[0] else extractor_class(f).default_matcher
    # the key names the features, so that the matcher list (and its default) follows the features chosen
    m = col.selectbox("Matcher", ms, index=ms.index(want) if want in ms else 0, key=f"cmp_match_{side}_{f}")
    return f, m


def _error_text(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return ui.md_escape(jobs.scrub_paths(msg))


def _compare_caption(res: dict, max_lines: int) -> str:
    c, s = res["counts"], res["seconds"]
    text = (f"{ui.md_escape(res['features'])} + {ui.md_escape(res['matcher'])}: {c['matches']} matches, "
            f"{c['inliers']} inliers (two-view: {GEOMETRY}), extraction {s['extraction']:.2f} s, "
            f"matching {s['matching']:.2f} s")
    if all(res["reused"].values()):
        text += " (cached)"
    if c["matches"] > max_lines:
        text += f"; a random {max_lines} of the matches drawn"
    return text


# each method's share of its progress: extracting both images' features, matching the pair, verifying the matches
STEP_SPAN = {"extraction": (0.0, 0.6), "matching": (0.6, 0.9), "verification": (0.9, 1.0)}


def step_text(step: str, done: int, total: int, detail: str = "") -> str:
    """What a method is doing, for the progress bar: ``compare_pair``'s ``progress(step, done, total, detail)``
    as a sentence (plain text)."""
    if step == "extraction":
        return (f"extracting features, image {done + 1} of {total}" if done < total else
                f"features of both images {'found in the cache' if detail == 'cached' else 'extracted'}")
    if step == "matching":
        return "matching the pair" if done < total else "matched"
    if step == "verification":
        return ("verifying the matches with a fundamental matrix (MAGSAC)" if done < total else
                f"verified: {detail}" if detail else "verified")
    return step


def _compare(run_dir, pair: tuple[str, str], methods, resize: int, max_kp: int) -> dict:
    """Run both methods on the pair with a progress bar (each method's steps: extraction of each image, matching,
    verification) and a line per finished method; returns the session entry ``{"results", "drawings"}``."""
    entry: dict = {"results": [], "drawings": {}}
    names = [f"{f} + {m}" for f, m in methods]
    with st.status(f"Comparing {names[0]} and {names[1]} on this pair...", expanded=True) as box:
        bar = st.progress(0.0, text="starting")
        for i, (f, m) in enumerate(methods):
            def show(step, done, total, detail, i=i):
                lo, hi = STEP_SPAN.get(step, (0.0, 1.0))
                frac = (i + lo + (hi - lo) * (min(done, total) / total if total else 0.0)) / len(methods)
                # the detail can hold image names: progress texts are markdown
                bar.progress(min(1.0, frac), text=ui.md_escape(
                    f"Method {i + 1} of {len(methods)}, {names[i]}: {step_text(step, done, total, detail)}"))

            try:
                res = compare_pair(run_dir, pair[0], pair[1], f, m, resize=resize, max_keypoints=max_kp,
                                   progress=show)
            except Exception as e:  # noqa: BLE001 - shown to the user, never a traceback
                entry["results"].append({"error": _error_text(e)})
                st.markdown(f":red[:material/error:] {ui.md_escape(names[i])}: could not match this pair")
                continue
            entry["results"].append(res)
            c, sec = res["counts"], res["seconds"]
            st.markdown(f":green[:material/check_circle:] {ui.md_escape(names[i])}: {c['matches']} matches, "
                        f"{c['inliers']} inliers (extraction {sec['extraction']:.2f} s, matching "
                        f"{sec['matching']:.2f} s, verification {sec['verification']:.2f} s)")
        bar.progress(1.0, text="done")
        failed = sum("error" in r for r in entry["results"])
        box.update(label=f"Compared {names[0]} and {names[1]}" + (f" ({failed} failed)" if failed else ""),
                   state="error" if failed == len(methods) else "complete", expanded=False)
    return entry


def _compare_section(run_id: str, run_dir, state: dict, pair: tuple[str, str], max_lines: int) -> None:
    """Two methods on the selected pair, side by side; results kept in the session per (run, pair, methods)."""
    st.subheader("Compare two methods on this pair")
    resize, max_kp = _run_sizes(state)
    st.caption(f"Both methods extract at most {max_kp} keypoints at {resize} px (as this run), with their default "
               "options; their matches are verified with a fundamental matrix (OpenCV MAGSAC). Verified inliers are "
               "green, rejected matches red.")
    cols = st.columns(2)
    methods = (_pick_method(cols[0], "left", _run_method(state)), _pick_method(cols[1], "right", DEFAULT_RIGHT))
    store: dict = st.session_state.setdefault("match_compare", {})
    key = (run_id, tuple(pair), methods, resize, max_kp)
    if st.button("Compare", key="cmp_go"):
        entry = _compare(run_dir, pair, methods, resize, max_kp)
        store.pop(key, None)
        store[key] = entry
        while len(store) > COMPARE_KEEP:
            store.pop(next(iter(store)))
    entry = store.get(key)
    if entry is None:
        st.caption("Choose two methods and press Compare.")
        return
    cols = st.columns(2)
    for i, (col, res) in enumerate(zip(cols, entry["results"])):
        if "error" in res:
            col.error(f"{ui.md_escape(methods[i][0])} + {ui.md_escape(methods[i][1])} could not match this pair: "
                      f"{res['error']}")
            continue
        dkey = (i, max_lines)
        if dkey not in entry["drawings"]:
            ia = viz.open_rgb(runview.image_path(run_dir, pair[0]))
            ib = viz.open_rgb(runview.image_path(run_dir, pair[1]))
            entry["drawings"][dkey] = viz.draw_matches(ia, ib, res["keypoints0"], res["keypoints1"], res["matches"],
                                                       inliers=res["inliers"], height=400, max_lines=max_lines)
        col.image(entry["drawings"][dkey], width="stretch", caption=_compare_caption(res, max_lines))


page()
