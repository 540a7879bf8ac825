"""SfM Explorer, the app: ``streamlit run streamlit_app.py``.

This file is the router (``st.navigation`` over the pages in ``app_pages/``) and the Home page: start a run from
uploaded photos or the bundled sample scene, choose a preset and advanced options, follow each stage's progress,
cancel, continue stage by stage, and reopen past runs. Runs work in the background (``backend.jobs``); pages
read the run folder (``runs/<run_id>/``) and never compute themselves.

The pages live in ``app_pages/``, not ``pages/``: with a folder named ``pages`` next to this file, Streamlit
(1.67) serves those files directly, without this router, when a page URL is the first request after a start.
"""

from __future__ import annotations

import re
import shutil

import streamlit as st

import app_common as ui
from backend import jobs, owners
from backend.io import uploads
from backend.config import get_preset
from backend.options import OPTION, OPTIONS
from backend.stages import get_stage, stage_names, stage_title
from backend.utils.hashing import json_sha256

PRESET_HELP = {"fast": "quickest", "balanced": "the default", "accurate": "slowest"}
CAMERA_MODES = {"auto": "shared per image size and EXIF, checked after mapping",
                "per_image": "one camera per image (safe for mixed cameras)",
                "shared": "one camera for all (one camera and zoom; one image size)"}


# ---- helpers ----------------------------------------------------------------------------------------------------

def _weights_note(model: str) -> str:
    from backend.retrieval.global_descriptors import resolve_model

    try:
        used, reason = resolve_model(model)
    except ValueError as e:
        return str(e)
    return f"uses {used}" + (f" — {reason}" if reason else "")


FEATURES_HELP = ("aliked-n16: the default deep features; aliked-n16rot: for photos turned by 90°/180°; "
                 "aliked-n32 / aliked-t16: larger / tiny ALIKED; disk: dense deep features; xfeat: the fastest deep "
                 "features on a CPU; sift: COLMAP's SIFT; orb / akaze: OpenCV's binary features. "
                 "docs/methods.md has their cost and accuracy.")


def _preset_caption(name: str) -> str:
    c = get_preset(name)
    return (f"{c.features.name} + {c.matching.name}, {c.features.max_keypoints} keypoints at {c.features.resize} px: "
            f"{PRESET_HELP[name]}")


def _option_widget(col, name: str, base, k: str, **kw):
    """The app's widget of option ``name`` (:data:`backend.options.OPTIONS`: label, help, choices, bounds), showing
    preset ``base``'s value."""
    o = OPTION[name]
    value = getattr(getattr(base, o.section), o.key)
    key = kw.pop("key", f"opt_{name}{k}")
    help_text = kw.pop("help", o.help)
    options = kw.pop("options", None) or list(o.allowed() or [])
    if options:
        return col.selectbox(o.label, options, index=options.index(value) if value in options else 0, key=key,
                             help=help_text, **kw)
    return int(col.number_input(o.label, o.minimum, o.maximum, value, step=o.step, key=key, help=help_text))


def options_form() -> tuple[str, dict]:
    """Preset and advanced options (every option of :data:`backend.options.OPTIONS` marked for the app, in its
    order, two columns); returns ``(preset, overrides)`` for :func:`backend.jobs.build_config`."""
    from backend.matchers import matchers_for

    preset = st.radio("Preset", list(PRESET_HELP), index=1, horizontal=True, key="preset",
                      captions=[_preset_caption(p) for p in PRESET_HELP])
    base = get_preset(preset)
    out: dict = {}
    with st.expander("Advanced options"):
        k = f"_{preset}"  # each preset has its own widgets, so switching presets shows that preset's values
        cols = st.columns(2)
        for i, o in enumerate(x for x in OPTIONS if x.app):
            col, extra = cols[i % 2], {}
            if o.name == "matcher":  # only the matchers that can match the chosen features
                extra = {"options": matchers_for(out["features"]), "key": f"opt_matcher{k}_{out['features']}"}
            elif o.name == "camera_mode":
                extra = {"format_func": lambda m: f"{m}: {CAMERA_MODES[m]}"}
            elif o.name == "num_neighbors":
                extra = {"help": f"{o.help}; all pairs are matched when there are at most "
                                 f"{base.retrieval.exhaustive_below} photos"}
            elif o.name == "features":
                extra = {"help": FEATURES_HELP}
            out[o.name] = _option_widget(col, o.name, base, k, **extra)
            if o.name == "retrieval_model":
                col.caption(_weights_note(out[o.name]))
    return preset, out


def _fingerprint(source: str, files, cfg: dict) -> str:
    items = sorted((f.name, f.size) for f in files) if files else []
    return json_sha256([source, items, cfg])


def start_new_run(source: str, files, preset: str, overrides: dict, until: str | None) -> None:
    """Save the uploads (or pick the sample), start the background run, open it in this session."""
    ss = st.session_state
    cfg = jobs.build_config(preset, **overrides)
    fp = _fingerprint(source, files, cfg.to_dict())
    last = ss.get("last_start")
    if last and last[0] == fp and jobs.run_exists(last[1]):
        ui.open_run(last[1])
        ss["flash"] = (f"These photos and options were already started as run **{ui.md_escape(last[1])}**; it is "
                       "shown here (nothing was started twice).")
        st.rerun()
    if source == "sample":
        default = cfg.to_dict() == get_preset("balanced").to_dict()
        run_id = jobs.SAMPLE_RUN_ID if default else jobs.new_run_id()
        run_dir = jobs.run_dir_for(run_id)
        state = jobs.run_state(run_dir)
        if not default:  # the shared sample run has no owner; a sample run with other options is this browser's
            owners.set_owner(run_dir, ui.owner_secret())
        if not (default and state["status"] in ("done", "running", "queued")):
            jobs.start_run(run_dir, jobs.SAMPLE_IMAGES, cfg, until)
    else:
        if not files:
            st.warning("Add photos first: drop JPEG, PNG or HEIC files or a .zip of them into the box above.")
            return
        run_id = jobs.new_run_id()
        run_dir = jobs.run_dir_for(run_id)
        owners.set_owner(run_dir, ui.owner_secret())  # this browser owns the run: only it may cancel or delete it
        res = uploads.save_uploads(((f.name, f) for f in files), run_dir / "upload")
        if not res.enough():
            shutil.rmtree(run_dir, ignore_errors=True)
            st.error(f"{len(res.saved)} usable photo(s): a reconstruction needs at least two JPEG, PNG or HEIC "
                     "photos of the same scene, or a video (MP4, MOV). Add more and press Start again.")
            if res.skipped:
                st.dataframe(res.skipped, hide_index=True, width="stretch")
            return
        jobs.start_run(run_dir, run_dir / "upload", cfg, until)
        ss["upload_nonce"] = ss.get("upload_nonce", 0) + 1  # clears the uploader
    ss["last_start"] = (fp, run_id)
    ui.open_run(run_id)
    st.rerun()


# the uploader's list of files is a box about two chips high (106 px) that scrolls: let it grow to about ten rows
UPLOADER_CSS = ('<style>[class*="st-key-uploader_"] [data-testid="stFileChips"] '
                "{max-height: 28rem !important;}</style>")
UPLOADED_NAMES_SHOWN = 30


def uploaded_list(files) -> None:
    """Under the uploader: how many files are uploaded (and their size), and their names, so a long selection can
    be checked without scrolling the uploader's box; and a taller box (:data:`UPLOADER_CSS`)."""
    st.html(UPLOADER_CSS)
    if not files:
        return
    mb = sum(f.size for f in files) / 1e6
    names = [f.name for f in files]
    shown = ", ".join(ui.md_escape(n, 60) for n in names[:UPLOADED_NAMES_SHOWN])
    more = f", and {len(names) - UPLOADED_NAMES_SHOWN} more" if len(names) > UPLOADED_NAMES_SHOWN else ""
    st.caption(f"**{len(files)} file{'s' if len(files) != 1 else ''} uploaded** ({mb:.1f} MB): {shown}{more}")


# ---- the open run --------------------------------------------------------------------------------------------

def _panel(run_id: str, was: str) -> None:
    run_dir = jobs.run_dir_for(run_id)
    state = jobs.run_state(run_dir)
    if state["status"] != was and (was in ("running", "queued") or state["status"] in ("running", "queued")):
        st.rerun(scope="app")  # the run started or ended: redraw the whole page (buttons, results)
    st.markdown(ui.status_line(state))
    ui.render_stage_table(state)
    if state["status"] in ("running", "queued"):
        if not ui.owns(run_id):
            st.caption("Only the person who started this run can cancel it.")
        elif state["progress"].get("state") == "running" or state["status"] == "queued":
            if st.button("Cancel run", icon=":material/cancel:", key="cancel_run"):
                jobs.cancel(run_id)
                st.toast("Cancelling: the current stage stops at its next step; finished stages are kept.")


@st.fragment(run_every=1.0)
def live_panel(run_id: str, was: str) -> None:
    _panel(run_id, was)


def run_section(run_id: str) -> None:
    run_dir = jobs.run_dir_for(run_id)
    state = jobs.run_state(run_dir)
    if not state["exists"]:
        if owners.was_deleted(jobs.runs_root(), run_id):
            st.error(ui.deleted_message(run_id))
        else:
            st.error(f"Run **{ui.md_escape(run_id)}** has no files on the server any more. Start a new run below.")
        return
    rec = state["record"]
    st.subheader(f"Run `{run_id}`")  # a valid run id (letters, digits, - and _) in a code span
    cfg = rec.get("config") or jobs.read_json(run_dir / jobs.REQUEST_JSON).get("config", {})
    feats, match = cfg.get("features", {}), cfg.get("matching", {})
    method = (
        (
            f" · features **{ui.md_escape(feats.get('name') or feats.get('model') or 'aliked-n16')}** "
            f"({ui.md_escape(feats.get('max_keypoints', '?'))} keypoints at "
            f"{ui.md_escape(feats.get('resize', '?'))} px)"
            f" · matcher **{ui.md_escape(match.get('name') or 'lightglue')}**"
            f" · mapper **{ui.md_escape(cfg.get('mapping', {}).get('mapper') or 'incremental')}**"
        )
        if feats
        else ""
    )
    st.caption(f"Preset **{ui.md_escape(cfg.get('preset', '?'))}**{method} · created "
               f"{_timestamp(rec.get('created', ''))} · link: `?run={run_id}`")
    if (flash := st.session_state.pop("flash", None)):
        st.info(flash)
    if state["status"] in ("running", "queued"):
        live_panel(run_id, state["status"])
    else:
        _panel(run_id, state["status"])
        if state["error"]:
            st.error(ui.md_escape(state["error"]))
        nxt = state["next_stage"]
        if state["status"] != "done" and nxt and not state.get("resumable", True):
            st.info("Resuming cannot help here: the photos themselves are the problem. Start a new run below with "
                    "at least two photos of the scene (the Images page lists each skipped file and why).")
        elif state["status"] != "done" and nxt and owners.has_owner(run_dir) and not ui.owns(run_id):
            st.caption("Only the person who started this run can continue it.")
        elif state["status"] != "done" and nxt:
            if state["status"] == "paused":
                done = [s for s in stage_names() if jobs.stage_done(state, s)]
                if done:
                    key = get_stage(done[-1]).page
                    st.info(f"Stage **{stage_title(done[-1])}** is done. Look at its result before going on:")
                    ui.page_link(key, f"Open {ui.PAGES[key][1]}")
            resume = state["status"] in ("failed", "cancelled", "interrupted")
            c1, c2 = st.columns(2)
            if c1.button(f"Run next stage: {stage_title(nxt)}", icon=":material/skip_next:", key="next_stage"):
                _continue(run_dir, nxt)
            if c2.button("Resume: run all remaining stages" if resume else "Run all remaining stages",
                         icon=":material/fast_forward:", type="primary", key="run_rest"):
                _continue(run_dir, None)
    summary_and_links(state)
    with st.expander("Configuration of this run"):
        st.json(cfg, expanded=False)
    if ui.owns(run_id):
        delete_section(run_id)


def _timestamp(value) -> str:
    """``run.json``'s ``created`` (ISO 8601, written by the pipeline) as it is: a timestamp needs no escaping (no
    markdown, link or emoji can be made of digits, '-', ':', '+', 'T'); anything else is shown as plain text."""
    s = str(value or "")
    return s if re.fullmatch(r"[0-9T:.+\- Z]*", s) else ui.md_escape(s, 40)


def delete_section(run_id: str) -> None:
    """Delete this run (its owner only): cancels it if it works, then removes its folder from the server."""
    with st.expander("Delete this run"):
        st.caption("Removes the photos and every result of this run from the server. Anyone who has it open is told "
                   "it was deleted. This cannot be undone.")
        sure = st.checkbox("Yes, delete this run", key=f"delete_sure_{run_id}")
        if st.button("Delete run", icon=":material/delete:", disabled=not sure, key="delete_run"):
            try:
                with st.spinner("Stopping and deleting the run..."):
                    jobs.delete_run(run_id, [ui.owner_secret()])
            except (jobs.JobError, owners.NotOwnerError) as e:
                st.error(ui.md_escape(e))
                return
            ss = st.session_state
            ss["run_id"] = None
            ss["my_runs"] = [r for r in ss.get("my_runs", []) if r != run_id]
            ss["flash_home"] = f"Run `{run_id}` was deleted."  # a valid run id in a code span
            st.query_params.pop("run", None)
            st.rerun()


def _continue(run_dir, until) -> None:
    try:
        jobs.continue_run(run_dir, until)
    except jobs.JobError as e:
        st.error(ui.md_escape(e))
        return
    st.rerun()


def summary_and_links(state: dict) -> None:
    if jobs.stage_done(state, "mapping"):
        registration_metrics(jobs.run_dir_for(state["run_id"]))
        ev = state["record"].get("evaluation")
        if ev and ev.get("mAA") is not None:
            st.caption(f"mAA against the scene's ground truth: **{ev['mAA']:.3f}** (details on the Evaluate page)")
    keys = list(ui.PAGES)
    per_row = (len(keys) + 1) // 2  # two rows: every page name fits its column ("Reconstruction" included)
    for start in range(0, len(keys), per_row):
        for col, key in zip(st.columns(per_row), keys[start:start + per_row]):
            with col:
                ui.page_link(key)


def registration_metrics(run_dir) -> None:
    """Registered photos (in the largest model and, with several models, in all of them), and the largest model's
    3D points, track length and error: the counts of :func:`backend.views.runview.registration`, which the Scenes,
    Reconstruction and Images pages show too."""
    from backend.views import runview

    reg = runview.registration(run_dir)
    n_models = len(reg["models"])
    stats = {m["model"]: m for m in runview.models(run_dir)}.get(reg["largest_model"], {})
    mtl, mre = stats.get("mean_track_length"), stats.get("mean_reprojection_error")
    points = f"{stats.get('points') or 0:,}"
    track = f"{mtl:.2f}" if mtl is not None else "–"
    error = f"{mre:.2f} px" if mre is not None else "–"
    if n_models <= 1:
        c = st.columns(4)
        c[0].metric("Registered images", f"{reg['largest']} / {reg['images']}",
                    help=f"photos with a pose in the model, of the {reg['images']} photos used")
        c[1].metric("3D points", points)
        c[2].metric("Mean track length", track)
        c[3].metric("Mean reprojection error", error)
        return
    # several models: every label says which (two rows of three, so that the labels are not cut)
    c = st.columns(3)
    c[0].metric("Registered, largest model", f"{reg['largest']} / {reg['images']}",
                help=f"photos with a pose in the largest model (model {reg['largest_model']}), of the "
                     f"{reg['images']} photos used")
    c[1].metric(f"Registered, all {n_models} models", f"{reg['all_models']} / {reg['images']}",
                help="photos with a pose in any model (the Scenes and Reconstruction pages show each)")
    c[2].metric("3D points, largest model", points)
    c = st.columns(3)
    c[0].metric("Mean track length, largest model", track)
    c[1].metric("Reprojection error, largest model", error, help="mean reprojection error")


# ---- reopen ------------------------------------------------------------------------------------------------------

def reopen_section() -> None:
    ss = st.session_state
    st.subheader("Reopen a run")
    owned = owners.owned_runs(jobs.runs_root(), [ui.owner_secret()])
    seen = [r for r in reversed(ss.get("my_runs", [])) if r not in owned and jobs.run_exists(r)]
    mine = [r for r in owned + seen if r != ss.get("run_id")]
    if mine:
        st.caption("Your runs (started in this browser), then runs opened in this session"
                   + (f"; the newest 30 of {len(mine)} (open older ones by id)" if len(mine) > 30 else ""))
        for r in mine[:30]:
            state = jobs.run_state(jobs.run_dir_for(r))
            c1, c2, c3 = st.columns([4, 3, 2], vertical_alignment="center")
            n = state["record"].get("summary", {}).get("images")
            c1.markdown(f"`{r}`" + (f" · {n} images" if n else ""))  # r: a valid run id, in a code span
            c2.markdown(ui.STATUS_LABEL.get(state["status"], state["status"]))
            if c3.button("Open", key=f"open_{r}"):
                ui.open_run(r)
                st.rerun()
    if jobs.run_exists(jobs.SAMPLE_RUN_ID) and ss.get("run_id") != jobs.SAMPLE_RUN_ID:
        if st.button("Open the sample-scene run (church, 16 photos)", icon=":material/church:", key="open_sample"):
            ui.open_run(jobs.SAMPLE_RUN_ID)
            st.rerun()
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    rid = c1.text_input("Run id", key="reopen_id", placeholder="e.g. 20261121-073000-3f9a1c2b4d5e",
                        help="The id is shown when a run starts and is in the address bar as ?run=<id>.")
    if c2.button("Open run", key="open_by_id"):
        rid = (rid or "").strip()
        if jobs.valid_run_id(rid) and jobs.run_exists(rid):
            ui.open_run(rid)
            st.rerun()
        elif not jobs.valid_run_id(rid):
            st.error("A run id has letters, digits, '-' and '_' only (for example 20261121-073000-3f9a1c2b4d5e).")
        else:
            st.error(f"There is no run with the id **{ui.md_escape(rid)}**. Check the id and try again.")


# ---- home ------------------------------------------------------------------------------------------------------

@ui.guarded
def home() -> None:
    ss = st.session_state
    st.title("SfM Explorer")
    st.caption("Photos of a scene in, cameras and a sparse 3D point cloud out: DINOv2/EfficientNet pair selection, "
               "local features (ALIKED, DISK, XFeat, SIFT, ORB, AKAZE) and matchers (LightGlue, LighterGlue, "
               "nearest neighbour + ratio test), COLMAP (pycolmap) incremental or global (GLOMAP) mapping.")
    ui.show_bad_run()
    if (flash := ss.pop("flash_home", None)):
        st.success(flash)
    run_id = ss.get("run_id")
    if run_id:
        with st.container(border=True):
            run_section(run_id)

    with st.container(border=True):
        st.subheader("Start a new run")
        source = st.radio("Photos", ["upload", "sample"], horizontal=True, key="source",
                          format_func=lambda s: {"upload": "Upload photos",
                                                 "sample": "Sample scene: church (16 photos)"}[s])
        files = None
        if source == "upload":
            files = st.file_uploader("Photos of one scene (JPEG, PNG or HEIC), several files or one .zip, or a "
                                     "video (MP4, MOV)",
                                     accept_multiple_files=True, key=f"uploader_{ss.get('upload_nonce', 0)}")
            uploaded_list(files)
            st.caption(f"{uploads.DEFAULT_LIMITS.describe()}; at most "
                       f"{st.get_option('server.maxUploadSize')} MB per uploaded file. Other files are listed as "
                       "skipped with the reason, and so is a second copy of the same photo. Names are cleaned up "
                       "(letters, digits, . _ -).")
        else:
            st.caption("The IMC 2024 'church' scene bundled with the app (Apache-2.0): a wide and a ~3x tele camera, "
                       "no EXIF. Its ground truth is available on the Evaluate page. With the default options this "
                       "opens the shared, precomputed sample run.")
        preset, overrides = options_form()
        try:
            cfg = jobs.build_config(preset, **overrides)
            ss["pending_config"] = cfg.to_dict()
        except ValueError as e:
            st.error(f"Invalid option: {ui.md_escape(e)}")
            return
        if source == "upload":  # Start waits for the uploads: a click while a file is still on its way is lost
            ui.upload_guard(["start", "start_steps"], "Uploading photos: Start is available when every file has "
                                                      "been uploaded.")
        c1, c2 = st.columns(2)
        until = None
        go = c1.button("Start run", type="primary", icon=":material/play_arrow:", key="start",
                       help="run every stage in the background; you can leave this page and come back")
        if c2.button("Run stage by stage", icon=":material/step:", key="start_steps",
                     help="run only the first stage, then look at each result and continue"):
            go, until = True, stage_names()[0]
        if go:
            try:
                start_new_run(source, files, preset, overrides, until)
            except (jobs.JobError, ValueError) as e:
                st.error(ui.md_escape(e))

    with st.container(border=True):
        reopen_section()


# ---- router ----------------------------------------------------------------------------------------------------

# an emoji favicon is drawn in the browser (an inline SVG); a ':material/...:' one would be fetched from
# fonts.gstatic.com, a request to an outside host on every page load
st.set_page_config(page_title="SfM Explorer", page_icon="📷", layout="wide")
owners.private_umask()  # run folders 0700, files 0600: only the server's user reads the photos
ui.keep_owner_cookie()  # this browser's owner secret (session, cookie)
ui.resume_after_restart()  # once per server process
_home = st.Page(home, title="Home", icon=":material/home:", default=True)
_pages = {k: st.Page(f, title=t, icon=i, url_path=k) for k, (f, t, i) in ui.PAGES.items()}
ui.NAV.update(home=_home, **_pages)
_nav = st.navigation([_home, *_pages.values()])
ui.sync_run_from_query()
with st.sidebar:
    if st.session_state.get("run_id"):
        st.caption(f"Open run: `{st.session_state['run_id']}`")  # a valid run id in a code span
    else:
        st.caption("No run open: start or reopen one on Home.")
_nav.run()
