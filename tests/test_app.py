"""The explorer app's logic: Streamlit AppTest of every page on a real finished run (made once with the CLI on
5 Reichstag photos, fast preset), bad run ids, the Home page's options and start flow, and unit tests of the
background job manager, the upload sanitiser, the figures and the Open3D clean-up.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, evaluate, run_cli, scene_dir

from backend import jobs
from backend.io import pointcloud, uploads
from backend.views import viz
from backend.config import get_preset

APP = str(REPO / "streamlit_app.py")
# five Reichstag photos with enough baseline to reconstruct (the first five by name do not: all frontal)
SUBSET = ["05534141_6340060522.jpg", "05791347_12791964625.jpg", "05866831_3427466899.jpg",
          "05936329_2458217347.jpg", "05978621_9257964873.jpg"]
PAGES = ["images", "pairs", "features", "matches", "reconstruction", "evaluate"]


def _jpeg(w=64, h=48, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG")
    return buf.getvalue()


def _png(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def finished_run(runs_root, tmp_path_factory) -> str:
    """A real finished run folder ``<runs_root>/reichstag5`` (CLI, fast preset), with the scene's ground truth
    beside its input images."""
    src = scene_dir("reichstag_imc2020")
    scene = tmp_path_factory.mktemp("reichstag5")
    (scene / "images").mkdir()
    for n in SUBSET:
        shutil.copy(src / "images" / n, scene / "images" / n)
    for f in ("gt.csv", "thresholds.txt"):
        shutil.copy(src / f, scene / f)
    res = run_cli("reconstruct", str(scene / "images"), "--out", str(runs_root / "reichstag5"), "--preset", "fast",
                  "--quiet", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return "reichstag5"


@pytest.fixture
def app(runs_root, monkeypatch):
    """An AppTest of the router with ``SFM_RUNS_DIR`` pointing at the session's runs folder."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFM_RUNS_DIR", str(runs_root))
    return AppTest.from_file(APP, default_timeout=120)


def _plain(markdown: str) -> str:
    """Markdown as a reader sees it, as far as the escapes of user-controlled text go (app_common.md_escape:
    backslashes before punctuation, ``&#58;`` for a colon, code spans around words that could become links)."""
    s = re.sub(r"(?<!\\)(`+) ?(.+?) ?\1(?!`)", r"\2", str(markdown))
    return html.unescape(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", s))


def _texts(at) -> str:
    """The page's texts as a reader sees them."""
    parts = []
    for kind in ("markdown", "error", "info", "warning", "caption", "title", "subheader", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [m.label + " " + str(m.value) for m in at.metric]
    return _plain("\n".join(parts))


# ---- pages ----------------------------------------------------------------------------------------------------

def test_home_renders_without_a_run(app):
    app.run()
    assert not app.exception
    text = _texts(app)
    assert "SfM Explorer" in text and "Start a new run" in text and "Reopen a run" in text
    assert [b.label for b in app.button if b.key in ("start", "start_steps")] == ["Start run", "Run stage by stage"]
    assert "500 MB" in text  # the size limit is stated (server.maxUploadSize)


def test_options_produce_the_config(app):
    app.run()
    app.radio(key="preset").set_value("fast").run()
    assert app.session_state["pending_config"] == get_preset("fast").to_dict()
    app.selectbox(key="opt_retrieval_model_fast").set_value("efficientnet-lite0")
    app.number_input(key="opt_num_neighbors_fast").set_value(4)
    app.number_input(key="opt_resize_fast").set_value(640)
    app.number_input(key="opt_max_keypoints_fast").set_value(512)
    app.selectbox(key="opt_features_fast").set_value("disk").run()
    # the matcher box lists only what can match DISK features
    assert app.selectbox(key="opt_matcher_fast_disk").options == ["lightglue", "nn-ratio", "adalam"]
    app.selectbox(key="opt_matcher_fast_disk").set_value("nn-ratio")
    app.selectbox(key="opt_camera_mode_fast").set_value("shared")
    app.number_input(key="opt_min_matches_fast").set_value(30)
    app.selectbox(key="opt_mapper_fast").set_value("global")
    app.selectbox(key="opt_upright_fast").set_value("auto")
    app.run()
    assert not app.exception
    cfg = app.session_state["pending_config"]
    assert cfg["preset"] == "fast"
    assert cfg["retrieval"]["model"] == "efficientnet-lite0" and cfg["retrieval"]["num_neighbors"] == 4
    assert cfg["features"] == {**get_preset("fast").to_dict()["features"], "resize": 640, "max_keypoints": 512,
                               "name": "disk"}
    assert cfg["matching"]["name"] == "nn-ratio"
    assert cfg["mapping"]["camera_mode"] == "shared" and cfg["matching"]["min_matches"] == 30
    assert cfg["mapping"]["mapper"] == "global" and cfg["images"]["upright"] == "auto"
    # the other sections keep the preset's values
    assert cfg["matching"]["depth_confidence"] == get_preset("fast").matching.depth_confidence


def test_build_config_matches_cli_overrides():
    cfg = jobs.build_config("accurate", max_keypoints=1000, camera_mode="per_image")
    ref = get_preset("accurate")
    ref.features.max_keypoints, ref.mapping.camera_mode = 1000, "per_image"
    assert cfg.to_dict() == ref.to_dict()
    with pytest.raises(ValueError):
        jobs.build_config("turbo")
    with pytest.raises(ValueError):
        jobs.build_config("fast", camera_mode="sideways")


@pytest.mark.parametrize("page", ["home"] + PAGES)
def test_finished_run_shows_on_every_page(app, finished_run, page):
    app.query_params["run"] = finished_run
    app.run()
    if page != "home":
        app.switch_page(f"app_pages/{page}.py").run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    text = _texts(app)
    expect = {
        "home": ["finished", "Registered images", "features **xfeat**", "matcher **nn-ratio**"],
        "images": ["**5** images used", "05534141_6340060522.jpg"],
        "pairs": ["Global descriptor", "10** pairs selected"],
        "features": ["keypoints in all", "**xfeat**"],
        "matches": ["All pairs", "Compare two methods on this pair"],
        "reconstruction": ["Registered images", "3D points", "Mean track length", "Mean reprojection error",
                           "Downloads"],
        "evaluate": ["mAA", "Ground truth and aligned prediction"],
    }[page]
    for e in expect:
        assert e in text, f"{e!r} not on the {page} page"
    if page == "reconstruction":
        assert len(app.get("plotly_chart")) >= 1
        labels = [b.proto.label for b in app.get("download_button")]
        assert {"poses.csv", "poses_imc2024.csv", "model.zip", "points.ply"} <= set(labels)
    if page == "matches":
        assert "most inliers first" in app.selectbox(key="match_pair").label
        assert app.get("image")
    if page == "evaluate":  # the page shows the official mAA of this run's images, as the CLI computes it
        run_dir = Path(os.environ["SFM_RUNS_DIR"]) / finished_run
        scene = Path(json.loads((run_dir / "run.json").read_text())["images_dir"]).parent
        names = {p.name for p in (scene / "images").iterdir()}
        lines = (scene / "gt.csv").read_text().splitlines()
        sub = run_dir.parent / f"{finished_run}_gt_subset.csv"
        sub.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] in names]) + "\n")
        want = evaluate(sub, run_dir / "poses.csv", scene / "thresholds.txt")["mAA"]
        maa = next(m for m in app.metric if m.label == "mAA")
        assert float(maa.value) == pytest.approx(want, abs=5e-4)


def test_thresholds_box_takes_numbers_only(app, finished_run, tmp_path):
    """A server path typed into the thresholds box is refused as not a number: the file is never read, so nothing
    of it shows (it used to show the file's first word in the error)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-42 0.1\n")
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/evaluate.py").run()
    for typed in ["/etc/hostname", str(secret), "0.1; http://x", "0.1, -2"]:
        app.text_input(key="eval_th_scene").set_value(typed).run()
        assert not app.exception
        errors = [_plain(e.value) for e in app.error]
        assert len(errors) == 1 and errors[0].startswith("Cannot use the thresholds: the thresholds box: "), errors
        assert typed.split(",")[-1].split(";")[-1].strip()[:30] in errors[0]  # the offending text, as typed
        assert "s3cr3t" not in _texts(app)
    assert "'-2' is not a positive number" in errors[0]
    app.text_input(key="eval_th_scene").set_value("0.025; 0.05, 0.1 0.2\n0.5").run()
    assert not [e.value for e in app.error if "thresholds" in e.value]


def test_matches_page_views(app, finished_run):
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/matches.py").run()
    for view in ("raw", "verified", "inliers"):
        app.radio(key="match_view").set_value(view).run()
        assert not app.exception and not app.error
        assert app.get("image")


def test_reconstruction_camera_pick_and_open3d(app, finished_run):
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/reconstruction.py").run()
    app.selectbox(key="rec_camera").set_value(SUBSET[0]).run()
    assert not app.exception
    captions = [_plain(c) for im in app.get("image") for c in im.captions]
    assert any(SUBSET[0] in c for c in captions)  # the picked camera's photo is shown with its name
    app.button(key="o3d_go").click().run()
    assert not app.exception and not app.error
    text = _texts(app)
    assert "after outlier removal" in text
    # setup installs the offscreen renderer's drivers (libvulkan1, mesa): the Open3D rendering must show
    rendered = any("Open3D offscreen rendering" in c for im in app.get("image") for c in im.captions)
    assert rendered and "could not be rendered" not in text


def test_reconstruction_prepares_the_model_for_nerfstudio(app, finished_run, runs_root):
    """The Reconstruction page's "For other tools": the chosen format is written into the run folder and offered as
    a download whose transforms.json lists the registered photos it carries."""
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/reconstruction.py").run()
    app.radio(key="rec_format").set_value("nerfstudio").run()
    app.button(key="rec_format_make").click().run()
    assert not app.exception and not app.error
    made = runs_root / finished_run / "exports" / "nerfstudio-0.zip"
    with zipfile.ZipFile(made) as z:
        frames = json.loads(z.read("transforms.json"))["frames"]
        assert len(frames) >= 3 and all(f["file_path"] in z.namelist() for f in frames)
    labels = [b.label for b in app.get("download_button")]
    assert any(lab.startswith("Download nerfstudio-0.zip") for lab in labels), labels


@pytest.fixture(scope="session")
def two_model_run(runs_root, finished_run) -> tuple[str, dict]:
    """The finished run with its model split in two and a sixth photo that no model holds, as the church sample
    ends up (tests/tworun.py); ``(run id, what the written models hold)``."""
    from tworun import make_two_model_run

    src = scene_dir("reichstag_imc2020") / "images"
    extra = next(p for p in sorted(src.iterdir()) if p.suffix == ".jpg" and p.name not in SUBSET)
    return "two-models", make_two_model_run(runs_root / finished_run, runs_root / "two-models", extra)


def test_every_page_counts_the_registered_photos_alike(app, two_model_run):
    """A run with two models (a folded model mapped as its two sides; one photo placed by neither): Home, Scenes,
    Reconstruction and Images show the same registered counts, each saying what it counts (largest model, all
    models, all scenes, this model), the fold note's groups add up to the scenes' photos, and the Scenes page names
    each scene's model as the Reconstruction page numbers it. The expected numbers are read from the written
    models (pycolmap), not from what the pages read."""
    rid, t = two_model_run
    n, m0, m1, lost = t["images"], t["model0"], t["model1"], t["unregistered"]
    largest, every = len(m0), len(set(m0) | set(m1))
    assert largest > len(m1) and every < n and lost  # the premise: three different numbers

    def open_page(page: str | None) -> dict:
        app.query_params["run"] = rid
        app.run()
        if page:
            app.switch_page(f"app_pages/{page}.py").run()
        assert not app.exception, app.exception
        assert not app.error, [e.value for e in app.error]
        return {m.label: m.value for m in app.metric}

    home = open_page(None)
    assert home["Registered, largest model"] == f"{largest} / {n}"
    assert home["Registered, all 2 models"] == f"{every} / {n}"
    assert "Registered images" not in home  # no count without saying of what
    assert f"{largest} images registered in the largest of 2 models ({every} in all)" in _texts(app)  # stage table

    scenes = open_page("scenes")
    assert scenes["Registered, all scenes"] == f"{every} / {n}"
    panels = {e.label: e for e in app.expander}
    p0 = f"scene0: {len(m0) + len(lost)} photos, {largest} registered in model 0"
    p1 = f"scene1: {len(m1)} photos, {len(m1)} registered in model 1"
    assert set(panels) >= {p0, p1}, list(panels)
    for label, k in ((p0, 0), (p1, 1)):  # each panel names one model, numbered as on the Reconstruction page
        said = " ".join(_plain(c.value) for c in panels[label].caption)
        assert f"this is model {k}" in said and f"Reconstruction page, model {k}." in said, said
        assert f"model {1 - k}" not in said, said

    rec = open_page("reconstruction")
    assert rec["Registered in model 0"] == f"{largest} / {len(m0) + len(lost)}"
    text = _texts(app)
    assert (f"Registered: {largest} / {n} photos in the largest model (model 0), {every} / {n} in all 2 models"
            in text), text
    # the fold note's groups (as the fold check found them) and the scenes' photos, told apart and reconciled
    assert f"two groups ({len(m0)} and {len(m1) + len(lost)} photos)" in text
    assert f"model 0 holds {len(m0)} of the {len(m0)} photos of the first group" in text
    assert f"model 1 holds {len(m1)} of the {len(m1) + len(lost)} photos of the second group" in text
    assert f"so the scenes have {len(m0) + len(lost)} and {len(m1)} photos" in text and lost[0] in text
    app.selectbox(key="rec_model").set_value(1).run()
    assert {m.label: m.value for m in app.metric}["Registered in model 1"] == f"{len(m1)} / {len(m1)}"

    open_page("images")
    assert f"Registered: **{every} / {n}** in all 2 models, {largest} in the largest (model 0)" in _texts(app)
    table = app.dataframe[0].value
    rows = {r["image"]: r for r in table.to_dict("records")}
    assert len(rows) == n
    assert {k for k, r in rows.items() if r["registered"] == "yes"} == set(m0) | set(m1)
    assert all(rows[x]["registered"] == "no" and rows[x]["model"] == "" for x in lost)
    assert all(rows[x]["model"] == "0" and rows[x]["scene"] == "scene0" for x in m0)
    assert all(rows[x]["model"] == "1" and rows[x]["scene"] == "scene1" for x in m1)


def test_compare_reports_each_step(finished_run, runs_root):
    """compare_pair's progress callback: each method's steps in order (extraction of each image, matching,
    verification), each reaching its total, in the calling thread; a second call reports the cache."""
    import threading

    from backend.twoview.compare import compare_pair

    run_dir = runs_root / finished_run
    calls = []
    rec = lambda *a: calls.append((*a, threading.current_thread() is threading.main_thread()))  # noqa: E731
    res = compare_pair(run_dir, SUBSET[0], SUBSET[1], "sift", "nn-ratio", resize=640, max_keypoints=512,
                       progress=rec)
    steps = [c[0] for c in calls]
    assert steps[0] == "extraction" and steps[-1] == "verification" and all(c[-1] for c in calls)
    assert steps == sorted(steps, key=["extraction", "matching", "verification"].index)  # in order
    for step, total in (("extraction", 2), ("matching", 1), ("verification", 1)):
        dones = [c[1] for c in calls if c[0] == step]
        assert dones[0] == 0 and dones[-1] == total == calls[steps.index(step)][2], (step, calls)
        assert dones == sorted(dones)
    assert calls[-1][3] == f"{res['counts']['inliers']} inliers"
    again = []
    compare_pair(run_dir, SUBSET[0], SUBSET[1], "sift", "nn-ratio", resize=640, max_keypoints=512,
                 progress=lambda *a: again.append(a))
    assert ("extraction", 2, 2, "cached") in again
    assert compare_pair(run_dir, SUBSET[0], SUBSET[1], "sift", "nn-ratio", resize=640,
                        max_keypoints=512)["counts"] == res["counts"]  # silent by default, same result


def test_compare_on_the_matches_page_shows_its_steps(app, finished_run):
    """Compare on the Matches page works behind a status box with a progress bar that ends full, and a line per
    method with its counts (the same as under its drawing)."""
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/matches.py").run()
    app.selectbox(key="cmp_feat_right").set_value("sift").run()
    app.button(key="cmp_go").click().run()
    assert not app.exception and not app.error
    status = [b for b in app.status if b.label.startswith("Compared")]
    assert len(status) == 1 and status[0].state == "complete", [(b.label, b.state) for b in app.status]
    bars = app.get("progress")
    assert bars and bars[-1].proto.value == 100 and bars[-1].proto.text == "done"
    lines = [_plain(m.value) for m in status[0].markdown]
    captions = [_plain(c) for e in app.get("image") for c in e.proto.imgs for c in [c.caption] if "inliers (" in c]
    assert len(lines) == 2 and len(captions) == 2
    for line, cap in zip(lines, captions):
        method, counts = line.split(": ", 1)
        assert cap.startswith(f"{method.split('] ')[-1]}: {counts.split(' (')[0]}"), (line, cap)


@pytest.mark.parametrize("page", ["home", "images", "reconstruction"])
def test_bad_run_id_is_a_readable_message(app, page, runs_root):
    app.query_params["run"] = "no-such-run-123"
    app.run()
    if page != "home":
        app.switch_page(f"app_pages/{page}.py").run()
    assert not app.exception
    assert any("no run with the id" in e.value for e in app.error), [e.value for e in app.error]


def test_malformed_run_id_never_becomes_a_path(app):
    app.query_params["run"] = "../../etc"
    app.run()
    assert not app.exception
    assert any("is not a run id" in e.value for e in app.error)


def test_pages_without_a_run_say_what_to_do(app):
    app.run()
    for page in PAGES:
        app.switch_page(f"app_pages/{page}.py").run()
        assert not app.exception
        assert any("No run is open" in i.value for i in app.info), page


def _copy_run(runs_root, finished_run: str, rid: str, edit) -> str:
    """A copy of the finished run under id ``rid`` whose ``run.json`` record ``edit(record)`` changed in place."""
    import json

    d = runs_root / rid
    if not d.exists():
        shutil.copytree(runs_root / finished_run, d)
        rec = json.loads((d / "run.json").read_text())
        edit(rec)
        (d / "run.json").write_text(json.dumps(rec))
    return rid


def test_unfinished_stage_explains_itself(app, runs_root, finished_run):
    """A run paused after 'features' shows its images and keypoints; later pages say what is missing."""
    def pause(rec):
        for s in ("matching", "verification", "scenes", "mapping", "exports"):
            rec["stages"].pop(s)
        rec["status"] = "paused"

    rid = _copy_run(runs_root, finished_run, "paused-copy", pause)
    app.query_params["run"] = rid
    app.run()
    assert not app.exception
    assert any(b.key == "next_stage" for b in app.button)
    app.switch_page("app_pages/features.py").run()
    assert not app.exception and not app.error
    app.switch_page("app_pages/reconstruction.py").run()
    assert any("has not run" in i.value for i in app.info)


def test_failed_run_shows_a_readable_error_and_keeps_finished_stages(app, runs_root, finished_run):
    def fail(rec):
        rec["stages"]["mapping"] = {"status": "failed", "error": "RuntimeError: pycolmap exploded\nTraceback (most "
                                    "recent call last):\n  File \"x.py\", line 1", "error_type": "MappingError"}
        rec["stages"].pop("exports")
        rec["status"] = "failed"

    rid = _copy_run(runs_root, finished_run, "failed-copy", fail)
    app.query_params["run"] = rid
    app.run()
    assert not app.exception
    errors = " ".join(e.value for e in app.error)
    assert "pycolmap exploded" in errors and "Traceback" not in errors and "Matches page" in errors
    assert any(b.key == "run_rest" and "Resume" in b.label for b in app.button)
    app.switch_page("app_pages/matches.py").run()  # a stage that finished stays viewable
    assert not app.exception and not app.error and app.get("image")
    app.switch_page("app_pages/reconstruction.py").run()
    assert any("pycolmap exploded" in e.value for e in app.error)


def test_unusable_photos_offer_no_resume_and_show_names_as_text(app, runs_root):
    """Fewer than two readable photos: the error names the files as plain text (a name that is markdown is no
    link), quotes no server path, and offers no Resume (it cannot succeed) but says what to do."""
    import json

    d = runs_root / "no-photos"
    d.mkdir(exist_ok=True)
    err = ("1 usable image(s): a reconstruction needs at least 2 JPEG, PNG or HEIC photos of the same scene "
           "(skipped: [x](http://example.invalid).jpg: corrupt or truncated image)")
    (d / "run.json").write_text(json.dumps({"status": "failed", "config": {"preset": "fast"},
                                            "stages": {"images": {"status": "failed", "error": err,
                                                                  "error_type": "InputError"}}}))
    (d / jobs.REQUEST_JSON).write_text(json.dumps({"images_dir": str(d / "upload"), "config": {}}))
    state = jobs.run_state(d)
    assert state["status"] == "failed" and state["resumable"] is False
    app.query_params["run"] = "no-photos"
    app.run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "[x](http://example.invalid).jpg" in _plain(errors[0])
    # escaped: no link syntax and no bare URL outside code spans (a code span never links; test_browser_holes.py)
    outside = re.sub(r"(`+).+?\1", "", errors[0])
    assert "](" not in outside and "http://" not in outside, errors[0]
    assert not [b for b in app.button if b.key in ("run_rest", "next_stage")]
    assert any("Resuming cannot help here" in i.value for i in app.info)


def test_elapsed_is_the_total_over_every_continuation(tmp_path, monkeypatch):
    """Stage by stage, each continuation writes a new progress.json: the elapsed time is still the run's total."""
    import json

    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path))
    d = tmp_path / "steps"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "paused", "stages": {
        "images": {"status": "done", "seconds": 2.0}, "retrieval": {"status": "done", "seconds": 3.5}}}))
    now = time.time()
    (d / jobs.PROGRESS_JSON).write_text(json.dumps({"state": "paused", "started": now - 1.0, "finished": now,
                                                     "stages": {"retrieval": {"done": 1, "total": 1}}}))
    assert jobs.run_state(d)["elapsed"] == pytest.approx(5.5)


def test_messages_never_quote_server_paths():
    assert jobs.scrub_paths("0 usable image(s) in /srv/app/runs/abc/upload: x") == "0 usable image(s) in upload: x"
    assert jobs.scrub_paths("No such file: '/srv/runs/r1/images.json'") == "No such file: 'images.json'"
    assert jobs.scrub_paths("see https://example.com/a/b, ratio 1/2") == "see https://example.com/a/b, ratio 1/2"
    m = jobs.friendly_error("features", "FileNotFoundError: [Errno 2] No such file: '/srv/runs/r1/features.h5'")
    assert "/srv" not in m and "features.h5" in m


# ---- starting runs from Home (the background job is replaced by a recorder) -----------------------------------

@pytest.fixture
def recorded_starts(monkeypatch):
    calls = []

    def fake_start(run_dir, images_dir, config, until=None, **kw):
        calls.append({"run_dir": Path(run_dir), "images_dir": Path(images_dir), "config": config.to_dict(),
                      "until": until})
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / jobs.REQUEST_JSON).write_text("{}")
        return None

    monkeypatch.setattr(jobs, "start_run", fake_start)
    return calls


def _upload_widget(at):
    return next(u for u in at.get("file_uploader") if u.proto.id and "uploader_" in u.proto.id)


def test_upload_start_saves_sanitised_files_and_never_starts_twice(app, recorded_starts, runs_root):
    app.run()
    app.radio(key="preset").set_value("fast").run()
    files = [("a b (1).JPG", _jpeg(), "image/jpeg"), ("second.png", _png(), "image/png"),
             ("notes.txt", b"hello", "text/plain")]
    _upload_widget(app).set_value(files)
    app.run()
    app.button(key="start").click().run()
    assert not app.exception, app.exception
    assert len(recorded_starts) == 1
    call = recorded_starts[0]
    assert call["until"] is None and call["config"] == get_preset("fast").to_dict()
    run_dir = call["run_dir"]
    assert run_dir.parent == runs_root and call["images_dir"] == run_dir / "upload"
    assert sorted(p.name for p in (run_dir / "upload").iterdir()) == ["a_b_1.jpg", "second.png"]
    assert app.session_state["run_id"] == run_dir.name
    assert app.query_params["run"] == run_dir.name
    # the same photos and options again (a double click, a re-submit): reopened, not started twice
    _upload_widget(app).set_value(files)
    app.run()
    app.button(key="start").click().run()
    assert len(recorded_starts) == 1
    assert any("nothing was started twice" in i.value for i in app.info)


def test_upload_with_fewer_than_two_photos_is_refused(app, recorded_starts):
    app.run()
    _upload_widget(app).set_value([("one.jpg", _jpeg(), "image/jpeg"), ("x.exe", b"MZ..", "application/x")])
    app.run()
    app.button(key="start").click().run()
    assert not recorded_starts
    assert any("at least two" in e.value for e in app.error)


def test_stage_by_stage_starts_only_the_first_stage(app, recorded_starts):
    app.run()
    _upload_widget(app).set_value([("a.jpg", _jpeg(), "image/jpeg"), ("b.jpg", _jpeg(color=(0, 0, 255)),
                                                                      "image/jpeg")])
    app.run()
    app.button(key="start_steps").click().run()
    assert [c["until"] for c in recorded_starts] == ["images"]


def test_sample_scene_with_default_options_uses_the_shared_sample_run(app, recorded_starts, runs_root):
    app.run()
    app.radio(key="source").set_value("sample").run()
    app.button(key="start").click().run()
    assert not app.exception
    assert [(c["run_dir"], c["images_dir"]) for c in recorded_starts] == [(runs_root / jobs.SAMPLE_RUN_ID,
                                                                         jobs.SAMPLE_IMAGES)]
    assert app.session_state["run_id"] == jobs.SAMPLE_RUN_ID
    # other options: a run of its own on the sample photos, never a change to the shared one
    app.radio(key="preset").set_value("fast").run()
    app.button(key="start").click().run()
    assert len(recorded_starts) == 2 and recorded_starts[1]["run_dir"].name != jobs.SAMPLE_RUN_ID
    assert recorded_starts[1]["images_dir"] == jobs.SAMPLE_IMAGES


# ---- uploads ----------------------------------------------------------------------------------------------------

def _zip(entries: dict[str, bytes], compress=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_slip_entries_are_never_extracted_outside(tmp_path):
    dest = tmp_path / "run" / "upload"
    z = _zip({"../../evil.jpg": _jpeg(), "/abs/path.jpg": _jpeg(), "C:\\win\\x.jpg": _jpeg(),
              "ok/dir/good.jpg": _jpeg(), "sub\\..\\..\\bad.jpg": _jpeg()})
    res = uploads.save_uploads([("photos.zip", z)], dest)
    assert res.saved == ["good.jpg"]
    reasons = {s["name"]: s["reason"] for s in res.skipped}
    assert any("'..'" in r for n, r in reasons.items() if "evil" in n)
    assert any("absolute" in r for n, r in reasons.items() if "abs/path" in n)
    assert any("absolute" in r for n, r in reasons.items() if "win" in n)
    # nothing was written anywhere but dest
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["run/upload.json", "run/upload/good.jpg"]


def test_non_images_are_skipped_with_a_reason(tmp_path):
    files = [("photo.jpg", _jpeg()), ("shot.PNG", _png()), ("readme.txt", b"text"), ("fake.jpg", b"GIF89a...."),
             ("empty.png", b""), ("movie.avi", b"RIFF\x00\x00\x00\x00AVI "), ("noext", b"abc")]
    res = uploads.save_uploads(files, tmp_path / "upload")
    assert sorted(res.saved) == ["photo.jpg", "shot.png"]
    reasons = {s["name"]: s["reason"] for s in res.skipped}
    assert "unsupported file type '.txt'" in reasons["readme.txt"]
    assert "not a JPEG, PNG or HEIC image" in reasons["fake.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "unsupported" in reasons["movie.avi"] and "unsupported" in reasons["noext"]  # MP4 / MOV: test_video.py
    assert uploads.read_upload_json(tmp_path)["skipped"] == res.skipped


def test_names_are_sanitised_and_deduplicated(tmp_path):
    files = [("../../x/IMG 001.jpg", _jpeg()), ("IMG_001.jpg", _jpeg()), ("img 001.jpg", _jpeg()),
             ("..hidden.jpg", _jpeg()), ("été/café.jpeg", _jpeg()), ("a" * 300 + ".png", _png()),
             ("C:\\Users\\me\\DSC 5.JPG", _jpeg()), ("ünï cøde (1).JPG", _jpeg()), ("uni code 1.jpg", _jpeg()),
             ("写真.jpg", _jpeg()), ("Straße Æble.jpeg", _jpeg())]
    res = uploads.save_uploads(files, tmp_path / "up")
    assert res.saved == ["IMG_001.jpg", "IMG_001_1.jpg", "img_001_2.jpg", "hidden.jpg", "cafe.jpeg",
                         "a" * 96 + ".png", "DSC_5.jpg", "uni_code_1.jpg", "uni_code_1_1.jpg", "image.jpg",
                         "Strasse_AEble.jpeg"]
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == sorted(res.saved)
    assert res.renamed["ünï cøde (1).JPG"] == "uni_code_1.jpg" and res.renamed["写真.jpg"] == "image.jpg"
    assert uploads.sanitize_name("") == "image" and uploads.sanitize_name("../..") == "image"
    assert uploads.sanitize_name("ﬁle①.PNG") == "file1.png"
    assert uploads.sanitize_name("Ærø/Łódź_ðøþ.HEIC") == "Lodz_doth.heic"


def test_phone_formats_are_accepted_and_pixel_bombs_refused_at_upload(tmp_path):
    """HEIC (by content and name) and MPO (a JPEG) are saved; an image above the pixel cap is refused from its
    header, before any stage, with what to do (never Pillow's 'decompression bomb' text)."""
    pytest.importorskip("pillow_heif")
    from test_images import one_colour_png

    heic, mpo = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(heic, format="HEIF")
    Image.new("RGB", (64, 48), (1, 2, 3)).save(mpo, format="MPO", save_all=True,
                                               append_images=[Image.new("RGB", (32, 24))])
    one_colour_png(tmp_path / "bomb.png", 13000, 13000)
    files = [("IMG_0001.HEIC", heic.getvalue()), ("pano.heif", heic.getvalue()), ("dual.jpg", mpo.getvalue()),
             ("bomb.png", (tmp_path / "bomb.png").read_bytes()),
             ("fake.heic", b"\x00\x00\x00\x18ftypmp42" + b"junk" * 10)]  # a video renamed
    res = uploads.save_uploads(files, tmp_path / "up")
    assert res.saved == ["IMG_0001.heic", "pano.heif", "dual.jpg"]
    reasons = {s["name"]: s["reason"] for s in res.skipped}
    assert reasons["bomb.png"] == ("image is 169 MP (13000x13000 px), above the 150 MP limit: downscale it, e.g. to "
                                   "8000 px on the long side, and add it again")
    assert "content does not match" in reasons["fake.heic"]
    assert "HEIC" in uploads.DEFAULT_LIMITS.describe() and "150 MP" in uploads.DEFAULT_LIMITS.describe()


def test_zip_bombs_and_limits_are_bounded(tmp_path):
    limits = uploads.Limits(max_files=3, max_image_bytes=200_000, max_total_bytes=10**9, max_ratio=50)
    bomb = b"\xff\xd8\xff" + b"\x00" * 5_000_000  # compresses ~1000x
    z = _zip({"bomb.jpg": bomb, "a.jpg": _jpeg(), "b.jpg": _jpeg(), "c.jpg": _jpeg(), "d.jpg": _jpeg(),
              "inner.zip": _zip({"x.jpg": _jpeg()}), "__MACOSX/._a.jpg": b"meta", ".DS_Store": b"x"})
    res = uploads.save_uploads([("set.zip", z)], tmp_path / "up", limits)
    assert res.saved == ["a.jpg", "b.jpg", "c.jpg"]
    reasons = " | ".join(f"{s['name']}: {s['reason']}" for s in res.skipped)
    assert "bomb.jpg: " in reasons and ("larger than" in reasons or "compression ratio" in reasons)
    assert "d.jpg: more than 3 photos" in reasons
    assert "zip inside a zip" in reasons and "metadata" in reasons
    assert sum(p.stat().st_size for p in (tmp_path / "up").iterdir()) < 200_000


def test_zip_header_lying_about_size_is_caught(tmp_path):
    """An entry whose header claims a small size but decompresses to more is cut off while reading."""
    limits = uploads.Limits(max_image_bytes=100_000, max_ratio=10**9)
    big = b"\xff\xd8\xff" + os.urandom(300_000)
    raw = bytearray(_zip({"big.jpg": big}, zipfile.ZIP_STORED))
    # patch the sizes in the central directory and the local header to 1000 bytes
    import struct

    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 1000)
    struct.pack_into("<I", raw, 22, 1000)
    res = uploads.save_uploads([("lie.zip", bytes(raw))], tmp_path / "up", limits)
    assert res.saved == []
    assert res.skipped and ("larger than" in res.skipped[0]["reason"] or "cannot be read" in res.skipped[0]["reason"])


def test_broken_zip_is_reported(tmp_path):
    res = uploads.save_uploads([("broken.zip", b"PK\x03\x04garbage")], tmp_path / "up")
    assert res.saved == [] and "not a readable zip" in res.skipped[0]["reason"]


def test_names_keep_their_text_but_never_become_a_path(tmp_path):
    """A slash that is not a folder (a link written into a name) stays readable instead of cutting the name; a name
    that reads as a client's path keeps only its file name (no folder or user name of the client in exports); no
    result is a path: no separator, no '..', no leading dot."""
    assert uploads.sanitize_name("[link](http://evil.invalid).png") == "link_http_evil.invalid.png"
    assert uploads.sanitize_name("http://x.invalid/a/b.jpg") == "http_x.invalid_a_b.jpg"
    assert uploads.sanitize_name("/home/me/IMG 1.jpg") == "IMG_1.jpg"
    assert uploads.sanitize_name("..\\..\\a..b...jpg") == "a.b.jpg"
    hostile = ["[link](http://evil.invalid).png", "../../etc/passwd", "..", ".", "...", "C:\\x\\..\\y.jpg",
               "a/../../b.jpg", "x:/../.hidden.jpg", "http://../..//.jpg", "\\\\server\\share\\z.png", ".../x.png",
               "a:b/../c.jpg"]
    for name in hostile:
        out = uploads.sanitize_name(name)
        assert out and "/" not in out and "\\" not in out and ".." not in out and not out.startswith("."), (name, out)
    res = uploads.save_uploads([(n, _jpeg()) for n in hostile if n.endswith((".jpg", ".png"))], tmp_path / "run" / "up")
    assert "link_http_evil.invalid.png" in res.saved
    assert sorted(p.name for p in (tmp_path / "run" / "up").iterdir()) == sorted(res.saved)  # nothing elsewhere
    assert res.renamed["[link](http://evil.invalid).png"] == "link_http_evil.invalid.png"


def test_submission_lists_photos_refused_at_upload(tmp_path):
    """submission.csv has one row per photo sent, as the README says: photos refused at upload (a zero-byte file, an
    SVG or a GIF renamed .jpg, one in a zip) get an unregistered outlier row under the name they would have been
    saved as, like photos refused at validation; a README is no photo and gets none."""
    import csv

    from backend.config import ImagesConfig
    from backend.io.export import check_submission, run_exports
    from backend.io.images import run_images

    run = tmp_path / "run"
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'
    files = [("a.jpg", _jpeg()), ("b.png", _png()), ("c.jpg", _jpeg(color=(1, 2, 3))), ("empty.jpg", b""),
             ("drawing.jpg", svg), ("anim.JPG", b"GIF89a" + b"\0" * 20), ("README.txt", b"notes"),
             ("my photo, 2.jpg", b""), ("b.png", b""),
             ("photos.zip", _zip({"in zip/zero.jpeg": b"", "notes.md": b"x"}))]
    res = uploads.save_uploads(files, run / "upload")
    assert sorted(res.saved) == ["a.jpg", "b.png", "c.jpg"]
    run_images(run / "upload", run, ImagesConfig())
    counts = run_exports(run, ["a.jpg", "b.png", "c.jpg"], "ds", "sc")
    assert "submission_not_written" not in counts
    with open(run / "submission.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    refused = {"empty.jpg", "drawing.jpg", "anim.jpg", "my_photo_2.jpg", "b_1.png", "zero.jpeg"}
    assert set(rows) == {"a.jpg", "b.png", "c.jpg"} | refused
    for n in refused:
        assert rows[n]["scene"] == "outliers" and rows[n]["rotation_matrix"] == ";".join(["nan"] * 9), rows[n]
    assert check_submission(run / "submission.csv", {"ds": set(rows)}) == []
    assert counts["outliers"] >= len(refused)


# ---- the job manager --------------------------------------------------------------------------------------------

def test_run_ids_are_validated(monkeypatch, tmp_path):
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path))
    for bad in ["", "../x", "a/b", "..", "-x", "x" * 65, "a b", "é"]:
        assert not jobs.valid_run_id(bad)
        with pytest.raises(jobs.JobError):
            jobs.run_dir_for(bad)
    rid = jobs.new_run_id()
    assert jobs.valid_run_id(rid) and jobs.run_dir_for(rid) == tmp_path / rid
    assert not jobs.run_exists(rid)


def _two_images(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    src = scene_dir("reichstag_imc2020") / "images"
    for n in SUBSET[:2]:
        shutil.copy(src / n, d / n)
    return d


def test_start_twice_returns_the_same_job_and_cancel_stops_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    images = _two_images(tmp_path / "imgs")
    run_dir = jobs.run_dir_for("dup-test")
    cfg = jobs.build_config("fast")
    job = jobs.start_run(run_dir, images, cfg, until="features")
    again = jobs.start_run(run_dir, images, cfg, until="features")
    assert again is job
    assert jobs.locked_elsewhere(run_dir)  # the lock file is held while the job works
    assert jobs.run_state(run_dir)["status"] in ("queued", "running")
    assert jobs.cancel("dup-test")
    jobs.wait("dup-test", timeout=120)
    assert not job.alive and job.state == "cancelled"
    state = jobs.run_state(run_dir)
    assert state["status"] == "cancelled" and "Resume" in state["error"]
    assert not jobs.locked_elsewhere(run_dir)
    prog = jobs.read_progress(run_dir)
    assert prog["state"] == "cancelled" and prog["finished"]


def test_stage_by_stage_then_continue(monkeypatch, tmp_path):
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    images = _two_images(tmp_path / "imgs")
    run_dir = jobs.run_dir_for("steps")
    job = jobs.start_run(run_dir, images, jobs.build_config("fast"), until="images")
    jobs.wait("steps", timeout=300)
    assert job.state == "paused", job.error
    state = jobs.run_state(run_dir)
    assert state["status"] == "paused" and state["next_stage"] == "retrieval"
    assert state["stages"]["images"]["status"] == "done"
    assert state["stages"]["images"]["counts"]["images"] == 2
    job2 = jobs.continue_run(run_dir, "retrieval")
    jobs.wait("steps", timeout=300)
    assert job2 is not job and job2.state == "paused", job2.error
    assert jobs.run_state(run_dir)["next_stage"] == "features"
    assert (run_dir / "pairs.txt").read_text().count("\n") == 1


def test_runs_beyond_the_limit_wait_queued_and_can_be_cancelled(monkeypatch, tmp_path):
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    images = _two_images(tmp_path / "imgs")
    with jobs._SLOTS:
        jobs._RUNNING += 1  # another run holds the only slot (SFM_MAX_JOBS=1)
    try:
        run_dir = jobs.run_dir_for("waiting")
        job = jobs.start_run(run_dir, images, jobs.build_config("fast"))
        time.sleep(0.5)
        state = jobs.run_state(run_dir)
        assert job.alive and state["status"] == "queued" and jobs.read_progress(run_dir)["state"] == "queued"
        t0 = time.perf_counter()
        assert jobs.cancel("waiting")
        jobs.wait("waiting", timeout=30)
        assert time.perf_counter() - t0 < 5  # a queued run stops waiting at once, not when the slot frees
        assert job.state == "cancelled" and "before it started" in job.error
        assert jobs.run_state(run_dir)["status"] == "cancelled" and not jobs.locked_elsewhere(run_dir)
    finally:
        jobs._free_slot()


def test_a_second_server_process_cannot_start_the_same_run(monkeypatch, tmp_path):
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    run_dir = jobs.run_dir_for("busy")
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"), str(run_dir / jobs.LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(jobs.JobError, match="another app process"):
            jobs.start_run(run_dir, tmp_path, jobs.build_config("fast"))
        assert jobs.run_state(run_dir)["where"] == "elsewhere"
        assert jobs.cancel("busy") and (run_dir / jobs.CANCEL_FILE).exists()  # handed to the other process
    finally:
        holder.kill()
        holder.wait()


def test_progress_writer_attributes_child_substeps(tmp_path):
    w = jobs.ProgressWriter(tmp_path, "x", None)
    w("features", 3, 10, "img3")
    w("mapping", 0, 5, "incremental mapping")
    w("database", 1, 1, "40 pairs")
    w("verification", 0, 1, "two-view geometry (RANSAC)")  # the mapping child's second pass
    w.flush()
    p = jobs.read_progress(tmp_path)
    assert p["stage"] == "mapping" and p["stages"]["mapping"]["message"].startswith("verification:")
    assert "verification" not in p["stages"] and p["stages"]["features"]["done"] == 3


def test_friendly_errors_keep_one_line_and_no_traceback():
    m = jobs.friendly_error(
        "mapping", "RuntimeError: boom\nTraceback (most recent call last):\n  File x", "RuntimeError"
    )
    assert "Traceback" not in m and "boom" in m and "Resume" in m


# ---- figures and Open3D -------------------------------------------------------------------------------------------

def _camera(R, C, name="c"):
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    t = -R @ C
    return viz.CameraView(name=name, image_id=1, R=R, t=t, K=K, width=100, height=80)


def test_camera_centre_and_frustum_geometry():
    a = 0.3
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    C = np.array([1.0, 2.0, 3.0])
    cam = _camera(R, C)
    assert np.allclose(cam.center, C)
    pts = viz.frustum_lines(cam, depth=2.0)
    finite = pts[np.isfinite(pts).all(1)]
    assert np.allclose(finite[0], C)
    # every corner lies at depth 2 in front of the camera
    corners = finite[1::2][:4]
    depth = (corners @ R.T + cam.t)[:, 2]
    assert np.allclose(depth, 2.0)
    fig = viz.reconstruction_figure(np.random.rand(50, 3), np.full((50, 3), 120, np.uint8), [cam], selected="c")
    assert any(tr.customdata is not None and "c" in list(tr.customdata) for tr in fig.data)


def test_drawings_have_the_expected_size():
    a, b = Image.new("RGB", (400, 300)), Image.new("RGB", (200, 100))
    kp = np.array([[10.0, 10.0], [100, 50], [390, 290]])
    out = viz.draw_keypoints(a, kp, np.array([0.1, 0.5, 0.9]), max_side=200)
    assert out.size == (200, 150)
    m = np.array([[0, 0], [1, 1], [2, 1]])
    img = viz.draw_matches(a, b, kp, kp[:2], m, inliers=np.array([True, False, True]), height=100)
    assert img.size == (round(400 * 100 / 300) + 10 + 200, 100)
    c = viz.colormap(np.array([-5.0, 0.0, 0.25, 0.5, 1.0, 7.0]), 0, 1)  # low purple, high yellow, clipped ends
    assert c.dtype == np.uint8 and c.shape == (6, 3)
    assert (c[0] == c[1]).all() and (c[4] == c[5]).all() and c[1, 2] > c[1, 1] and c[4, 0] > 200 > c[4, 2]
    green = c[1:5, 1].astype(int)
    assert (np.diff(green) > 0).all()  # viridis grows steadily lighter from purple to yellow
    fig = viz.pair_graph(["a", "b", "c"], [("a", "b", 0.5), ("b", "c", 0.9)])
    assert len(fig.data) >= 3
    fig = viz.similarity_heatmap(np.eye(3), ["a", "b", "c"], [("a", "b", 0.0)])
    assert fig.data[0].z.shape == (3, 3)


def test_aligned_centres_recover_a_similarity():
    rng = np.random.default_rng(0)
    gt = {f"i{k}": (np.eye(3), rng.normal(size=3)) for k in range(6)}
    s, R = 2.5, np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    # prediction = GT centres in another frame: C_pred = (R^T (C_gt - t0)) / s
    pred = {}
    for n, (Rg, tg) in gt.items():
        C = -Rg.T @ tg
        Cp = R.T @ (C - np.array([1.0, 2, 3])) / s
        pred[n] = (np.eye(3), -Cp)
    from backend.evaluation.imc_metric import mean_average_accuracy

    res = mean_average_accuracy(gt, pred, "0.001;0.005;0.01")  # at least 3: the metric skips the 2 tightest
    names, g, p, inl = viz.aligned_centres(gt, pred, res.transforms[2], threshold=0.01)
    assert len(names) == 6 and inl.all() and np.allclose(g, p, atol=1e-6)
    # one ground-truth camera moved by 1: it is the only outlier
    _, _, _, inl2 = viz.aligned_centres({n: (np.eye(3), -(c + (1.0 if k == 0 else 0.0)))
                                         for k, (n, c) in enumerate(zip(names, g))}, pred, res.transforms[2], 0.01)
    assert inl2.tolist() == [False] + [True] * 5
    fig = viz.gt_vs_prediction_figure(names, g, p, inl)
    assert len(fig.data) == 3


def test_open3d_cleanup_and_render(tmp_path):
    rng = np.random.default_rng(0)
    xyz = np.vstack([rng.normal(size=(500, 3)) * 0.1, [[50.0, 50, 50]]])
    rgb = rng.integers(0, 255, size=(501, 3)).astype(np.uint8)
    out, out_rgb, stats = pointcloud.clean(xyz, rgb, nb_neighbors=20, std_ratio=2.0, voxel_size=0.0)
    assert stats.input_points == 501 and stats.after_outliers < 501
    assert not np.any(np.all(out == [50.0, 50, 50], axis=1))
    out2, _, stats2 = pointcloud.clean(xyz, rgb, voxel_size=0.05)
    assert stats2.output_points < stats2.after_outliers
    ply = tmp_path / "c.ply"
    pointcloud.write_ply(ply, out, out_rgb)
    back, back_rgb = pointcloud.read_ply(ply)
    assert back.shape == out.shape and np.array_equal(back_rgb, out_rgb)
    t0 = time.time()
    png = pointcloud.render_png(ply, 320, 240, timeout=120)  # setup installs libvulkan1 + mesa: it must render
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and time.time() - t0 < 120
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    # cropped to the drawn points (never larger than asked), and something was drawn on the white background
    assert img.shape[2] == 3 and img.shape[0] <= 240 and img.shape[1] <= 320 and (img < 250).any()


def test_twoview_page_matches_two_photos_of_the_run_against_its_ground_truth(app, finished_run):
    app.query_params["run"] = finished_run
    app.run()
    app.switch_page("app_pages/twoview.py").run()
    assert not app.exception, app.exception
    assert app.radio(key="tv_source").value == "Two photos of the open run"
    app.selectbox(key="tv_feat0").set_value("xfeat").run()
    app.radio(key="tv_gt_kind").set_value("The run's scene ground truth").run()
    app.button(key="tv_go").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    metrics = {m.label: m.value for m in app.metric}
    assert int(metrics["Verified inliers (stronger evidence)"]) >= 15
    assert metrics[next(k for k in metrics if k.startswith("Global similarity"))].endswith("%")
    assert len(app.get("image")) >= 2  # one drawing per method
    tables = "\n".join(d.value.to_string() for d in app.dataframe)
    for e in ("Rotation error", "Match precision", "Two-view model"):
        assert e in tables, e
    # a typed-in rotation that is not one says so, and the page still works
    app.radio(key="tv_gt_kind").set_value("Type K, R, t").run()
    for k, v in (("tv_k0", "800,800,500,300"), ("tv_k1", "800,800,500,300"), ("tv_r", "1,2,3,4,5,6,7,8,9"),
                 ("tv_t", "0,0,1")):
        app.text_input(key=k).input(v)
    app.run()
    assert not app.exception
    assert any("not a rotation matrix" in e.value for e in app.error)
