"""Shared pieces of the app's pages: which run is open (session state and ``?run=<id>``), the progress panel,
readable errors, plain-text display of user-controlled text (:func:`md_escape`), and small cached readers. Pages
stay thin: they read run folders through ``backend`` and render; all computation lives in ``backend/``.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import streamlit as st

from backend import jobs, owners
from backend.io import uploads
from backend.stages import stage_names, stage_title

PAGES = {  # url path -> (file, title, icon)
    "images": ("app_pages/images.py", "Images", ":material/photo_library:"),
    "pairs": ("app_pages/pairs.py", "Pairs", ":material/hub:"),
    "features": ("app_pages/features.py", "Features", ":material/scatter_plot:"),
    "matches": ("app_pages/matches.py", "Matches", ":material/compare:"),
    "scenes": ("app_pages/scenes.py", "Scenes", ":material/workspaces:"),
    "reconstruction": ("app_pages/reconstruction.py", "Reconstruction", ":material/view_in_ar:"),
    "evaluate": ("app_pages/evaluate.py", "Evaluate", ":material/analytics:"),
    "twoview": ("app_pages/twoview.py", "Two-view", ":material/join_inner:"),
}
STATUS_LABEL = {
    "new": ":grey[not started]", "queued": ":orange[queued]", "running": ":blue[running]",
    "paused": ":violet[paused after a stage]", "done": ":green[finished]", "failed": ":red[failed]",
    "cancelled": ":orange[cancelled]", "interrupted": ":orange[interrupted]",
}
STAGE_ICON = {"done": ":green[:material/check_circle:]", "running": ":blue[:material/progress_activity:]",
              "failed": ":red[:material/error:]", "cancelled": ":orange[:material/cancel:]",
              "stopped": ":orange[:material/pause_circle:]", "pending": ":grey[:material/radio_button_unchecked:]"}


# ---- user-controlled text ------------------------------------------------------------------------------------
# Streamlit renders markdown in st.markdown/st.error/st.warning/st.info/st.caption/st.write, and in labels, image
# captions and progress texts. A run id from the URL, a file name, an EXIF camera name or an error message quoting
# them must show as typed: no link, no image fetched from a URL, no colour or icon directive.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$&=^\"'@])")
# Streamlit turns bare URLs (http://, https://, www.) and e-mail addresses into links after parsing, in the text
# where escapes and character references are already gone; inside a code span it never does. A word (text between
# spaces) that could become one is shown in a code span.
_AUTOLINK_WORD = re.compile(r"(?i)://|www\.|@|mailto:|xmpp:")


def _code_span(word: str) -> str:
    """``word`` (no spaces, no line breaks) as an inline code span, shown exactly as typed."""
    fence = "`" * (max((len(r) for r in re.findall(r"`+", word)), default=0) + 1)
    pad = " " if word.startswith("`") or word.endswith("`") else ""
    return f"{fence}{pad}{word}{pad}{fence}"


def md_escape(text: object, limit: int | None = None) -> str:
    """``text`` as Streamlit markdown that displays it literally (for any text a user can influence), with nothing
    added that a reader would copy.

    Line breaks and other control characters become spaces. Every markdown-special ASCII character is
    backslash-escaped, except ``:``, written as the character reference ``&#58;``: Streamlit (1.67) replaces
    ``:material/`` in the source before parsing, so an escaped colon still turns ``:material/home:`` into an icon,
    while a character reference is decoded only after that (and after the ``:emoji:`` and ``:red[...]`` directives
    are looked for); the browser shows and copies a plain ``:``. A word that Streamlit would turn into a link even
    when escaped (a bare URL, ``www.``, an e-mail address: it finds them after parsing) is put in a code span
    instead, which shows it as typed in a code font and never links it (a code span keeps the text as typed, except
    that Streamlit shows ``:material/`` there as ``:material_``). No invisible characters are added, so copied text
    is the text itself.

    Args:
        text: anything (``str()`` is taken; None gives '').
        limit: cut to this many characters first (``...`` appended), None keeps all.

    Returns:
        Markdown text for ``st.markdown``, ``st.error``, captions and labels.
    """
    s = "" if text is None else str(text)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 3)] + "..."
    s = "".join(c if c.isprintable() else " " for c in s)
    out = []
    for part in re.split(r"(\s+)", s):
        if not part or part.isspace():
            out.append(part)
        elif _AUTOLINK_WORD.search(part):
            out.append(_code_span(part))
        else:
            out.append(_MD_SPECIAL.sub(r"\\\1", part).replace(":", "&#58;"))
    return "".join(out)


# ---- which run is open ----------------------------------------------------------------------------------------

def sync_run_from_query() -> None:
    """Called by the router on every rerun: ``?run=<id>`` opens that run in this session; the open run's id is
    written back into the URL (so a refresh or a shared link reopens it)."""
    ss = st.session_state
    ss.setdefault("my_runs", [])
    qp = st.query_params.get("run")
    if qp is not None and qp != ss.get("run_id"):
        if jobs.valid_run_id(qp) and jobs.run_exists(qp):
            open_run(qp)
        else:
            ss["bad_run"] = qp
            ss["run_id"] = None
            del st.query_params["run"]
    if ss.get("run_id"):
        st.query_params["run"] = ss["run_id"]


def open_run(run_id: str) -> None:
    """Make ``run_id`` the open run of this session (and list it under 'runs of this session')."""
    ss = st.session_state
    ss["run_id"] = run_id
    ss.pop("bad_run", None)
    if run_id not in ss.setdefault("my_runs", []):
        ss["my_runs"].append(run_id)
    st.query_params["run"] = run_id


def deleted_message(run_id: str) -> str:
    """What a viewer of a run that its owner deleted reads (every page says the same)."""
    return (f"Run **{md_escape(run_id, limit=80)}** was deleted by the person who started it: its photos and results "
            "are no longer on the server. Start a new run, or open another one, on the Home page.")


def show_bad_run() -> bool:
    """Shows the message for a run id that does not exist (or was deleted); True when there was one."""
    bad = st.session_state.get("bad_run")
    if bad is None:
        return False
    if not bad.strip() or not bad.isprintable():  # '?run=' or '?run=%00': nothing readable to show
        st.error("The address has an empty or unreadable run id (`?run=`). Copy the whole link again, or start a "
                 "new run on the Home page.")
    elif jobs.valid_run_id(bad) and owners.was_deleted(jobs.runs_root(), bad):
        st.error(deleted_message(bad))
    elif jobs.valid_run_id(bad):
        shown = md_escape(bad, limit=80)  # straight from the URL: shown as typed, never as markdown
        st.error(f"There is no run with the id **{shown}**. Check the id (it was printed when the run started and "
                 "is in the address bar as `?run=...`), or start a new run on the Home page.")
    else:
        shown = md_escape(bad, limit=80)
        st.error(f"**{shown}** is not a run id: ids are letters, digits, '-' and '_' only. "
                 "Check the link, or start a new run on the Home page.")
    return True


def show_missing_run(run_id: str) -> None:
    """The message for the open run whose folder is gone: deleted by its owner, or removed on the server."""
    if owners.was_deleted(jobs.runs_root(), run_id):
        st.error(deleted_message(run_id))
    else:
        st.error(f"Run **{md_escape(run_id)}** has no files on the server any more. Start a new run on the Home page.")


def current_run() -> tuple[str, Path, dict]:
    """The open run ``(run_id, run_dir, run_state)``; otherwise shows what to do and stops the page (no run open,
    a bad id, or a run deleted since it was opened)."""
    if show_bad_run():
        st.page_link(home_page(), label="Go to Home", icon=":material/home:")
        st.stop()
    run_id = st.session_state.get("run_id")
    if not run_id:
        st.info("No run is open. Start a run or reopen one on the Home page (or open a link with `?run=<id>`).")
        st.page_link(home_page(), label="Go to Home", icon=":material/home:")
        st.stop()
    if not jobs.run_exists(run_id):
        show_missing_run(run_id)
        st.page_link(home_page(), label="Go to Home", icon=":material/home:")
        st.stop()
    run_dir = jobs.run_dir_for(run_id)
    return run_id, run_dir, jobs.run_state(run_dir)


@st.cache_resource(show_spinner=False)
def resume_after_restart() -> list[str]:
    """Once per server process (the first page view): resume the runs a stop of the last server (a crash, SIGKILL,
    a reboot) interrupted (:func:`backend.jobs.resume_interrupted`)."""
    return jobs.resume_interrupted()


# ---- who owns a run ----------------------------------------------------------------------------------------------
# The owner secret lives in the session and in a cookie (so a refresh, a new tab or a restart of the browser keeps
# it); only its hash is stored in the run folder (backend/owners.py). The cookie is set by a tiny inline component
# (components v2 run in the page itself, not an iframe).
OWNER_COOKIE = "sfm_owner"
OWNER_COOKIE_DAYS = 30
_SET_COOKIE_JS = """
export default function(component) {
  const { data } = component;
  if (data && data.name && data.value) {
    document.cookie = data.name + '=' + data.value + '; path=/; max-age=' + data.max_age + '; SameSite=Strict';
  }
}
"""
_set_cookie = None


def _cookie(name: str) -> str | None:
    try:
        return st.context.cookies.get(name)
    except Exception:  # noqa: BLE001 - no request context (a script run outside a browser session)
        return None


def owner_secret() -> str:
    """This browser's owner secret: from the session, else from its cookie, else a new one (see
    :func:`keep_owner_cookie`, which the router calls on every run to store it in the browser)."""
    ss = st.session_state
    secret = ss.get("owner_secret")
    if not owners.valid_secret(secret):
        cookie = _cookie(OWNER_COOKIE)
        secret = cookie if owners.valid_secret(cookie) else owners.new_secret()
        ss["owner_secret"] = secret
    return secret


def keep_owner_cookie() -> None:
    """Set the owner cookie in the browser unless it came with this session (draws nothing)."""
    global _set_cookie
    secret = owner_secret()
    if _cookie(OWNER_COOKIE) == secret:
        return
    if _set_cookie is None:
        _set_cookie = st.components.v2.component("sfm_set_cookie", js=_SET_COOKIE_JS)
    try:
        _set_cookie(key="owner_cookie", data={"name": OWNER_COOKIE, "value": secret,
                                             "max_age": OWNER_COOKIE_DAYS * 86400})
    except Exception:  # noqa: BLE001 - without the cookie, ownership lasts as long as the session
        pass


def owns(run_id: str) -> bool:
    """True when this browser started run ``run_id`` (holds its owner secret)."""
    return jobs.valid_run_id(run_id) and owners.is_owner(jobs.run_dir_for(run_id), [owner_secret()])


NAV: dict = {}  # key -> st.Page, filled by the router (streamlit_app.py) on every run


def home_page():
    return NAV.get("home", "streamlit_app.py")


def page_link(key: str, label: str | None = None) -> None:
    file, title, icon = PAGES[key]
    st.page_link(NAV.get(key, file), label=label or title, icon=icon)


# ---- errors ---------------------------------------------------------------------------------------------------

def guarded(fn):
    """Run a page body; an unexpected error becomes a readable message instead of a stack trace."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - shown to the user, never a traceback
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            st.error(f"This view could not be shown: {md_escape(jobs.scrub_paths(msg))}. The run's files may be "
                     "incomplete or still being written: wait for the stage to finish and reload the page, or "
                     "resume the run on Home.")
    return wrapper


# ---- stage gating on pages ----------------------------------------------------------------------------------

def require_stage(state: dict, stage: str, what: str) -> bool:
    """True when ``stage`` is finished; otherwise explains why ``what`` is not there yet (and keeps polling
    while the run works, so the page fills in as soon as the stage finishes)."""
    if jobs.stage_done(state, stage):
        return True
    title = stage_title(stage)
    st_stage = state["stages"][stage]["status"]
    if state["status"] in ("running", "queued"):
        st.info(f"{what} will appear when the stage **{title}** finishes; the run is working "
                f"(see its progress on Home). This page refreshes by itself.")
        _watch(state["run_id"], stage)
    elif st_stage in ("failed", "cancelled"):
        st.error(md_escape(state.get("error")) or f"The stage {title} did not finish.")
        if state.get("resumable", True):
            st.page_link(home_page(), label="Resume the run on Home", icon=":material/home:")
        else:
            st.page_link(home_page(), label="Start a new run on Home", icon=":material/home:")
    else:
        st.info(f"{what} is not computed yet: the stage **{title}** has not run. "
                "Continue the run from the Home page.")
        st.page_link(home_page(), label="Go to Home", icon=":material/home:")
    return False


@st.fragment(run_every=2.0)
def _watch(run_id: str, stage: str) -> None:
    state = jobs.run_state(jobs.run_dir_for(run_id))
    if jobs.stage_done(state, stage) or state["status"] not in ("running", "queued"):
        st.rerun(scope="app")


# ---- progress panel ---------------------------------------------------------------------------------------------

def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _counts_text(stage: str, counts: dict, upload_skipped: int = 0) -> str:
    c = counts or {}
    if stage == "images":
        n = c.get("skipped", 0) + upload_skipped
        return f"{c.get('images', 0)} images, {n} skipped" + (f" ({upload_skipped} at upload)" if upload_skipped
                                                               else "")
    if stage == "retrieval":
        return f"{c.get('pairs', 0)} pairs ({c.get('model', '')})"
    if stage == "features":
        return f"{c.get('keypoints_total', 0):,} keypoints ({c.get('keypoints_mean', 0):.0f} per image)"
    if stage == "matching":
        return f"{c.get('matches_total', 0):,} matches over {c.get('pairs', 0)} pairs"
    if stage == "verification":
        return f"{c.get('verified_pairs', 0)} verified pairs, {c.get('inliers_total', 0):,} inliers"
    if stage == "mapping":
        mre = c.get("mean_reprojection_error")
        n_models = c.get("models") or 0
        if isinstance(n_models, list):
            n_models = len(n_models)
        if n_models > 1:  # say what each count counts (the same words as Home's metrics)
            return (f"{c.get('registered_images', 0)} images registered in the largest of {n_models} models"
                    + (f" ({c['all_models']} in all)" if c.get("all_models") is not None else "")
                    + f"; largest model: {c.get('points', 0):,} points"
                    + (f", {mre:.2f} px error" if mre is not None else ""))
        return (f"{c.get('registered_images', 0)} images registered, {c.get('points', 0):,} points"
                + (f", {mre:.2f} px error" if mre is not None else ""))
    if stage == "exports":
        return "poses CSV, COLMAP model, PLY"
    return ""


def _mapping_counts(run_id: str, counts: dict) -> dict:
    """The mapping stage's counts with the registered photos as every page counts them
    (:func:`backend.views.runview.registration`: the largest model, all models); ``counts`` as recorded when the
    folder cannot be read."""
    from backend.views import runview

    try:
        reg = runview.registration(jobs.run_dir_for(run_id))
    except Exception:  # noqa: BLE001 - a model being rewritten: the recorded counts
        return counts
    if not reg["models"]:
        return counts
    return {**(counts or {}), "registered_images": reg["largest"], "models": len(reg["models"]),
            "all_models": reg["all_models"]}


def render_stage_table(state: dict) -> None:
    """One row per stage: icon, title, progress bar or result counts, time. The images row counts the files skipped
    at upload too."""
    try:
        upload_skipped = len(uploads.read_upload_json(jobs.run_dir_for(state["run_id"])).get("skipped", []))
    except jobs.JobError:
        upload_skipped = 0
    for s in stage_names():
        info = state["stages"][s]
        stt = info["status"]
        c1, c2, c3 = st.columns([3, 6, 2], vertical_alignment="center")
        c1.markdown(f"{STAGE_ICON.get(stt, STAGE_ICON['pending'])} **{stage_title(s)}**")
        if stt == "done":
            counts = _mapping_counts(state["run_id"], info["counts"]) if s == "mapping" else info["counts"]
            c2.markdown(md_escape(_counts_text(s, counts, upload_skipped if s == "images" else 0)))
        elif stt == "running" and state["status"] in ("running", "queued"):
            done, total = info.get("done") or 0, info.get("total") or 0
            frac = min(1.0, done / total) if total else 0.0
            msg = info.get("message") or ""
            if msg == "cached":  # a resumed stage reports what it already had
                msg = "resuming" if done else "starting"
            # the message can be a file name: progress texts are markdown too
            c2.progress(frac, text=md_escape(f"{done}/{total} {msg}"[:90] if total else (msg or "starting")[:90]))
        elif stt in ("failed", "cancelled", "stopped"):
            c2.markdown(f":red[{stt}]" if stt == "failed" else f":orange[{stt}]")
        else:
            c2.markdown(":grey[waiting]")
        c3.markdown(fmt_seconds(info.get("seconds")))


def status_line(state: dict) -> str:
    label = STATUS_LABEL.get(state["status"], state["status"])
    el = fmt_seconds(state.get("elapsed")) if state.get("elapsed") else ""
    extra = ""
    if state["status"] == "queued":
        n = state.get("queue_position", 0)
        extra = f" — waiting for {n + 1} other run(s) to finish" if n else " — waiting for another run to finish"
    if state.get("where") == "elsewhere":
        extra = " (in another app process)"
    return f"Status: **{label}**{extra}" + (f" · elapsed {el}" if el else "")


def now() -> float:
    return time.time()


# ---- click a camera in the 3D view -------------------------------------------------------------------------------
# st.plotly_chart reports selections of 2D charts only (a click on a scatter3d point is not a selection), so this
# tiny inline component listens to plotly's own 'plotly_click' on the app's 3D charts that have a trace named
# 'camera centres' and sends the clicked camera's name (the point's customdata) back to Python. It draws nothing.
_CAMERA_CLICK_JS = """
export default function(component) {
  const { setTriggerValue } = component;
  window.__sfmPickCamera = (name) => setTriggerValue('camera', name);
  window.__sfmPickPoint = (id) => setTriggerValue('point', id);
  const bind = () => {
    document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot').forEach((gd) => {
      if (gd.__sfmCameraPick || typeof gd.on !== 'function' || !gd.data) return;
      if (!gd.data.some((t) => t.name === 'camera centres')) return;
      gd.__sfmCameraPick = true;
      gd.on('plotly_click', (ev) => {
        for (const p of (ev && ev.points) || []) {
          const trace = p.data || (gd.data[p.curveNumber] || {});
          if (typeof trace.name === 'string' && trace.name.startsWith('points')) {
            const id = typeof p.customdata === 'number' ? p.customdata : (trace.customdata || [])[p.pointNumber];
            if (typeof id === 'number' && window.__sfmPickPoint) { window.__sfmPickPoint(id); return; }
            continue;
          }
          if (trace.name !== 'camera centres') continue;
          const name = typeof p.customdata === 'string' ? p.customdata
            : (trace.customdata || [])[p.pointNumber];
          if (typeof name === 'string' && window.__sfmPickCamera) { window.__sfmPickCamera(name); return; }
        }
      });
    });
  };
  bind();
  const timer = setInterval(bind, 700);
  return () => clearInterval(timer);
}
"""
_camera_click = None


def camera_click(key: str) -> str | None:
    """Mount the click listener; returns the camera name clicked since the last run, else None."""
    return pick_3d(key)[0]


def pick_3d(key: str) -> tuple[str | None, int | None]:
    """Mount the click listener of a 3D view; returns ``(camera name, 3D point id)`` clicked since the last run
    (None for what was not clicked). A point is clickable when its trace's name starts with "points" and its
    ``customdata`` holds point ids."""
    global _camera_click
    if _camera_click is None:
        _camera_click = st.components.v2.component("sfm_camera_click", js=_CAMERA_CLICK_JS)
    try:
        res = _camera_click(key=key, on_camera_change=lambda: None, on_point_change=lambda: None)
        point = getattr(res, "point", None)
        return getattr(res, "camera", None), (int(point) if isinstance(point, (int, float)) else None)
    except Exception:  # noqa: BLE001 - the picker still works without click support
        return None, None


# ---- Start waits for the uploads ---------------------------------------------------------------------------------
# While the browser still sends a file, the uploader's value on the server lacks it, and a click on Start in that
# time is lost (or would start with the files that happen to be there). The server cannot see an upload in
# flight, so this tiny inline component watches the page instead: while any file chip of an uploader shows its
# upload spinner, it disables the given buttons (found by their key's ``st-key-<key>`` class) and shows a message.
_UPLOAD_GUARD_JS = """
export default function(component) {
  const { parentElement, data } = component;
  const keys = (data && data.buttons) || [];
  const note = document.createElement('div');
  note.setAttribute('data-testid', 'sfmUploadGuard');
  note.setAttribute('role', 'status');
  note.style.cssText = 'display:none;padding:0.5rem 0.75rem;border-radius:0.5rem;background:#fff8db;' +
    'color:#7a5c00;font-family:inherit;font-size:0.95rem;';
  note.textContent = (data && data.message) || '';
  parentElement.appendChild(note);
  const tick = () => {
    const busy = !!document.querySelector(
      '[data-testid="stFileUploader"] [data-testid="stFileChipIconSpinner"]');
    for (const k of keys) {
      document.querySelectorAll('.st-key-' + k + ' button').forEach((b) => {
        if (busy) { b.disabled = true; b.dataset.sfmUploadGuard = '1'; }
        else if (b.dataset.sfmUploadGuard) { b.disabled = false; delete b.dataset.sfmUploadGuard; }
      });
    }
    note.style.display = busy ? 'block' : 'none';
  };
  tick();
  const timer = setInterval(tick, 200);
  return () => { clearInterval(timer); note.remove(); };
}
"""
_upload_guard = None


def upload_guard(button_keys: list[str], message: str) -> None:
    """Disable the buttons with these widget keys, and show ``message`` (plain text), while a file is still
    uploading in the browser. Draws nothing otherwise."""
    global _upload_guard
    if _upload_guard is None:
        _upload_guard = st.components.v2.component("sfm_upload_guard", js=_UPLOAD_GUARD_JS)
    try:
        _upload_guard(key="upload_guard", data={"buttons": list(button_keys), "message": message})
    except Exception:  # noqa: BLE001 - without it Start still works once the uploads are done
        pass
