"""End to end in a real headless Chromium (Playwright for Python): start the app, upload six Reichstag photos,
run the fast preset, wait for the 3D view, open every page, download the poses CSV and check it. A page refresh
and a second tab on the running run must not start it twice. Screenshots of every page go to
``test-artifacts/browser/`` (gitignored).
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest

from appserver import chromium, screenshot, serve_app, settle
from conftest import REPO, scene_dir

ARTIFACTS = REPO / "test-artifacts" / "browser"
SUBSET = ["05534141_6340060522.jpg", "05791347_12791964625.jpg", "05866831_3427466899.jpg",
          "05936329_2458217347.jpg", "05978621_9257964873.jpg", "06229406_8584869180.jpg"]
PAGES = [("images", "Images"), ("pairs", "Pairs"), ("features", "Features"), ("matches", "Matches"),
         ("scenes", "Scenes"), ("reconstruction", "Reconstruction"), ("evaluate", "Evaluate"), ("twoview", "Two-view")]
RUN_TIMEOUT_S = 600

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free loopback port with its own runs folder; yields (base URL, runs folder)."""
    runs = tmp_path_factory.mktemp("browser-runs")
    with serve_app(runs, tmp_path_factory.mktemp("browser-log") / "server.log") as base:
        yield base, runs


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _screenshot(page, name: str) -> Path:
    return screenshot(page, ARTIFACTS / f"{name}.png")


_settle = settle


def _no_errors(page, where: str) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, f"a stack trace on {where}"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"error on {where}: {errors.all_inner_texts()}"


def test_upload_run_explore_download(server, browser, tmp_path):
    base, runs = server
    scene = scene_dir("reichstag_imc2020")
    images = scene / "images"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.set_default_timeout(60_000)
    # the very first request of a fresh server is a page URL: the router still runs (navigation, run handling)
    page.goto(f"{base}/evaluate?run=no-such-run")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Home", exact=True).wait_for()
    page.get_by_text("There is no run with the id").wait_for()
    _screenshot(page, "0_bad_run_id")
    page.goto(base)
    page.get_by_role("heading", name="SfM Explorer").wait_for()
    _settle(page)
    _screenshot(page, "0_home_empty")

    files = [str(images / n) for n in SUBSET] + [str(notes)]
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files)
    page.wait_for_function(f"document.querySelectorAll('[data-testid=\"stFileChip\"]').length == {len(files)}")
    page.locator('[data-testid="stRadio"]').filter(has_text="Preset").get_by_text("fast", exact=True).click()
    _settle(page)
    t_start = time.time()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r".*[?&]run=[A-Za-z0-9_-]+"))
    run_id = re.search(r"run=([A-Za-z0-9_-]+)", page.url).group(1)
    page.get_by_text(re.compile(r"Status: (queued|running|finished)")).first.wait_for()
    # while it works: a Cancel button and a stage's progress bar (on a fast machine it may already be done)
    page.get_by_text(re.compile(r"\d+/\d+ |Status: finished")).first.wait_for(timeout=120_000)
    assert (page.get_by_role("button", name="Cancel run").count() == 1
            or page.get_by_text("Status: finished").count() == 1)
    _screenshot(page, "1_home_running")

    # a refresh and a second tab on the running run show it and never start it again
    page.reload()
    page.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
    other = browser.new_page()
    other.goto(f"{base}/?run={run_id}")
    other.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
    other.close()
    assert [p.name for p in runs.iterdir()] == [run_id]
    prog = json.loads((runs / run_id / "progress.json").read_text())
    assert prog["state"] in ("queued", "running", "done") and prog["run_id"] == run_id

    page.get_by_text(re.compile(r"Status: finished")).wait_for(timeout=RUN_TIMEOUT_S * 1000)
    _settle(page)
    _no_errors(page, "Home")
    _screenshot(page, "2_home_finished")

    page.locator('[data-testid="stSidebarNav"]').get_by_text("Reconstruction", exact=True).click()
    page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.wait_for(timeout=120_000)
    upload_to_3d = time.time() - t_start
    print(f"\nupload + fast preset on {len(SUBSET)} photos -> 3D view: {upload_to_3d:.1f} s")
    (ARTIFACTS / "timing.json").write_text(json.dumps({"images": len(SUBSET), "preset": "fast",
                                                       "start_to_3d_view_s": round(upload_to_3d, 1)}))

    for key, title in PAGES:
        page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
        page.get_by_role("heading", name=title, exact=True).wait_for()
        page.wait_for_url(re.compile(f"/{key}"))
        _settle(page)
        if key in ("pairs", "reconstruction"):
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        if key in ("images", "features", "matches"):
            page.locator('[data-testid="stImage"] img').first.wait_for()
        if key == "matches":  # one pair by two methods side by side: the run's own (XFeat) and SIFT
            _screenshot(page, "6a_matches_before_compare")
            page.get_by_role("button", name="Compare").click()
            page.locator('[data-testid="stImageCaption"]').filter(has_text="sift + nn-ratio").wait_for(
                timeout=180_000)
            page.locator('[data-testid="stImageCaption"]').filter(has_text="xfeat + nn-ratio").wait_for()
            assert page.get_by_text(re.compile(r"sift \+ nn-ratio: \d+ matches, \d+ inliers")).count() >= 1
            _settle(page)
        if key == "twoview":  # two photos of the run, ALIKED + LightGlue beside SIFT + ratio test
            page.get_by_role("button", name="Match", exact=True).click()  # not "Help for Matcher runtime"
            page.get_by_text("Same place?").wait_for(timeout=300_000)
            for method in ("aliked-n16 + lightglue", "sift + nn-ratio"):
                page.locator('[data-testid="stImageCaption"]').filter(has_text=method).wait_for(timeout=300_000)
            assert page.get_by_text(re.compile(r"aliked-n16 \+ lightglue: \d+ matches, \d+ inliers")).count() >= 1
            page.locator('[data-testid="stMetric"]').filter(has_text="Verified inliers").wait_for()
            _settle(page)
        if key == "images":  # the text file was listed as skipped, with the reason
            page.get_by_text("unsupported file type '.txt'").first.wait_for(state="attached")
        if key == "evaluate":
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(scene / "gt.csv"))
            box = page.get_by_role("textbox", name=re.compile("Thresholds"))
            box.fill((scene / "thresholds.txt").read_text().strip())
            box.press("Enter")
            page.locator('[data-testid="stMetric"]').filter(has_text="mAA").wait_for()
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
            _settle(page)
        if key == "reconstruction":
            # clicking a camera (plotly's click event on a camera centre) shows its photo
            name = page.evaluate("""() => {
                const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                const k = gd.data.findIndex((t) => t.name === 'camera centres');
                const tr = gd.data[k];
                gd.emit('plotly_click', {points: [{curveNumber: k, pointNumber: 1, customdata: tr.customdata[1],
                                                   data: tr}]});
                return tr.customdata[1];
            }""")
            page.locator('[data-testid="stImageCaption"]').filter(has_text=name).wait_for()
            # ... with its observations' reprojection residuals, intrinsics and verified pairs
            page.get_by_role("heading", name=f"Camera {name}").wait_for(timeout=60_000)
            residuals = re.compile(re.escape(name) + r": reprojection residuals of its \d+ observations")
            page.get_by_text(residuals).wait_for()
            page.get_by_text(re.compile(r"Verified pairs \(\d+\)")).wait_for()
            _settle(page)
            _screenshot(page, "8a_reconstruction_camera")
            # clicking a 3D point shows its track: every photo that sees it, with the keypoint and the error
            point = page.evaluate("""() => {
                const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                const k = gd.data.findIndex((t) => typeof t.name === 'string' && t.name.startsWith('points'));
                const tr = gd.data[k];
                gd.emit('plotly_click', {points: [{curveNumber: k, pointNumber: 0, customdata: tr.customdata[0],
                                                   data: tr}]});
                return tr.customdata[0];
            }""")
            page.get_by_role("heading", name=f"Point {point}").wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"Seen by \d+ photos")).wait_for()
            crops = page.locator('[data-testid="stImageCaption"]').filter(has_text=re.compile(r": \d+\.\d\d px"))
            assert crops.count() >= 2  # one crop per photo of the track, with its reprojection error
            _settle(page)
            _screenshot(page, "8b_reconstruction_point")
            # Open3D clean-up: an offscreen rendering, or the readable fallback with a plotly view
            page.get_by_role("button", name="Clean and render").click()
            page.get_by_text("after outlier removal").wait_for(timeout=180_000)
            _settle(page)
            with page.expect_download() as dl:
                page.locator('[data-testid="stDownloadButton"]').filter(has_text="poses.csv").first.click()
            with open(dl.value.path(), newline="") as f:
                rows = list(csv.DictReader(f))
            assert [r["image_name"] for r in rows] == SUBSET  # one row per uploaded photo (not the .txt)
            assert all(len(r["rotation_matrix"].split(";")) == 9 for r in rows)  # every photo registered
            assert all(len(r["translation_vector"].split(";")) == 3 for r in rows)
        _no_errors(page, title)
        assert f"run={run_id}" in page.url  # the open run stays in the address
        _screenshot(page, f"{PAGES.index((key, title)) + 3}_{key}")
    page.close()


def test_mixed_zip_scenes_and_submission(server, browser, tmp_path):
    """Upload a zip of two scenes mixed with stray photos, see the scenes and the outliers, download the IMC 2025
    submission and check it."""
    import zipfile

    from bench.mixtures import build_mixture

    base, runs = server
    mix = build_mixture("browser_mix", tmp_path / "mix", parts=[
        ("temple_ring_middlebury", 8), ("fox_instant_ngp", 8), ("noise", 0), ("flat", 0)])
    zpath = tmp_path / "holiday.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(mix.images.iterdir()):
            z.write(p, f"holiday/{p.name}")
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(base)
    page.get_by_role("heading", name="SfM Explorer").wait_for()
    _settle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(zpath))
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stFileChip\"]').length == 1")
    page.locator('[data-testid="stRadio"]').filter(has_text="Preset").get_by_text("fast", exact=True).click()
    _settle(page)
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r".*[?&]run=[A-Za-z0-9_-]+"))
    page.get_by_text(re.compile(r"Status: finished")).wait_for(timeout=RUN_TIMEOUT_S * 1000)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Scenes", exact=True).click()
    page.get_by_role("heading", name="Scenes", exact=True).wait_for()
    page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.wait_for()
    page.get_by_role("heading", name=re.compile(r"Outliers \(\d+\)")).wait_for()
    page.locator('[data-testid="stMetric"]').filter(has_text="Scenes").get_by_text("2", exact=True).wait_for()
    _settle(page)
    _no_errors(page, "Scenes")
    _screenshot(page, "mixed_scenes")
    with page.expect_download() as dl:
        page.locator('[data-testid="stDownloadButton"]').filter(has_text="submission.csv").first.click()
    with open(dl.value.path(), newline="") as f:
        rows = list(csv.DictReader(f))
    gt = {r["image"]: r["scene"] for r in csv.DictReader(open(mix.gt_csv, newline=""))}
    assert sorted(r["image"] for r in rows) == sorted(gt)
    assert all(r["scene"] == "outliers" for r in rows if gt[r["image"]] == "outliers")
    clusters = {r["scene"] for r in rows} - {"outliers"}
    assert len(clusters) == 2
    for c in clusters:  # each cluster holds one scene's photos, most of them registered
        members = [r for r in rows if r["scene"] == c]
        assert len({gt[r["image"]] for r in members}) == 1
        assert sum("nan" not in r["rotation_matrix"] for r in members) >= 0.75 * len(members), members
    page.close()
