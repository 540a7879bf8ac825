"""The holes an adversarial test of the running app found, each retried in a real headless Chromium and shown
closed: the Evaluate page's thresholds box never reads a server file; text from the URL and from file names shows
as plain text (no link, no image fetched from another host); a pixel bomb is refused at upload with what to do;
Start waits for the uploads; a run whose photos are unusable offers no Resume; no request leaves for another host
(fonts included); and a run leaves no file in the system temp folder (COLMAP's glog logs). Screenshots go to
``test-artifacts/browser_holes/`` (gitignored).

The server runs with its own ``TMPDIR`` (Python's ``tempfile`` and glog both use it), so "no new file in the temp
folder" is checked on a folder nobody else writes to.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from appserver import chromium, screenshot, serve_app, settle
from conftest import REPO, scene_dir
from test_images import one_colour_png

ARTIFACTS = REPO / "test-artifacts" / "browser_holes"
# four Reichstag photos that reconstruct with the fast preset (a tiny run)
PHOTOS = ["05534141_6340060522.jpg", "05791347_12791964625.jpg", "05866831_3427466899.jpg",
          "05936329_2458217347.jpg"]
EVIL = "example.invalid"
RUN_TIMEOUT_S = 600

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.scenes  # the tiny run is a real reconstruction


def _listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free loopback port with its own runs folder and temp folder; yields
    ``(base URL, runs folder, temp folder)``."""
    runs = tmp_path_factory.mktemp("holes-runs")
    systmp = tmp_path_factory.mktemp("holes-systmp")
    log_path = tmp_path_factory.mktemp("holes-log") / "server.log"
    with serve_app(runs, log_path, TMPDIR=str(systmp)) as base:
        yield base, runs, systmp


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


class Watched:
    """A page whose every request is recorded; requests to other hosts than the app are blocked (and recorded)."""

    def __init__(self, browser, base: str):
        self.base = base
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.set_default_timeout(60_000)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), self._outside)

    def _outside(self, route):
        if route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    def outside(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base, "data:", "blob:"))]


_settle = settle


def _shot(page, name: str) -> None:
    screenshot(page, ARTIFACTS / f"{name}.png", max_height=5000)


def _no_evil_markup(page) -> None:
    """No link to, and no image from, the attacker's host anywhere on the page."""
    links = page.evaluate("() => [...document.querySelectorAll('a[href]')].map((a) => a.href)")
    imgs = page.evaluate("() => [...document.querySelectorAll('img[src]')].map((i) => i.src)")
    assert not [h for h in links if EVIL in h], links
    assert not [s for s in imgs if EVIL in s], imgs


def _home(w: Watched) -> None:
    w.page.goto(w.base)
    w.page.get_by_role("heading", name="SfM Explorer").wait_for()
    _settle(w.page)


def _upload(page, files: list[str]) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files)
    page.wait_for_function(f"document.querySelectorAll('[data-testid=\"stFileChip\"]').length == {len(files)}")
    # every file uploaded (no chip spinner left), so that Start is enabled
    page.wait_for_function("!document.querySelector('[data-testid=\"stFileChipIconSpinner\"]')")
    _settle(page)


def _fast(page) -> None:
    page.locator('[data-testid="stRadio"]').filter(has_text="Preset").get_by_text("fast", exact=True).click()
    _settle(page)


def _run_id(page) -> str:
    page.wait_for_url(re.compile(r".*[?&]run=[A-Za-z0-9_-]+"))
    return re.search(r"run=([A-Za-z0-9_-]+)", page.url).group(1)


def _wait_record(runs: Path, run_id: str, statuses: tuple[str, ...], timeout: float = RUN_TIMEOUT_S) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            rec = json.loads((runs / run_id / "run.json").read_text())
            if rec.get("status") in statuses:
                return rec
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"run {run_id} did not reach {statuses} in {timeout} s")


# ---- the holes ----------------------------------------------------------------------------------------------------

def test_pixel_bomb_is_refused_at_upload_and_memory_stays_low(server, browser, tmp_path):
    """A 13000 x 13000 one-colour PNG (190 KB, 169 MP) is refused from its header at upload, saying what to do;
    the images stage of the run (the first run of a fresh server) stays far below 1 GB."""
    base, runs, _ = server
    bomb = tmp_path / "bomb.png"
    one_colour_png(bomb, 13000, 13000)
    assert bomb.stat().st_size < 300_000
    src = scene_dir("reichstag_imc2020") / "images"
    w = Watched(browser, base)
    _home(w)
    _upload(w.page, [str(src / PHOTOS[0]), str(src / PHOTOS[1]), str(bomb)])
    w.page.get_by_role("button", name="Run stage by stage").click()  # the images stage only
    run_id = _run_id(w.page)
    rec = _wait_record(runs, run_id, ("paused", "failed", "done"), timeout=180)
    up = json.loads((runs / run_id / "upload.json").read_text())
    assert up["saved"] == PHOTOS[:2]
    assert up["skipped"] == [{"name": "bomb.png", "reason": "image is 169 MP (13000x13000 px), above the 150 MP limit: "
                                                            "downscale it, e.g. to 8000 px on the long side, and add "
                                                            "it again"}]
    images = rec["stages"]["images"]
    assert images["status"] == "done" and images["peak_rss_mb"] < 1024, images
    # Home counts the file skipped at upload; the Images page says why, in the user's terms
    w.page.get_by_text("2 images, 1 skipped (1 at upload)").wait_for()
    _shot(w.page, "1_bomb_home")
    w.page.locator('[data-testid="stSidebarNav"]').get_by_text("Images", exact=True).click()
    w.page.get_by_role("heading", name="Images", exact=True).wait_for()
    _settle(w.page)
    # the table is drawn on a canvas; its cells are also in an accessible (hidden) table
    w.page.get_by_text("image is 169 MP (13000x13000 px), above the 150 MP limit: downscale it").first.wait_for(
        state="attached")
    body = w.page.locator('[data-testid="stMain"]').inner_text()
    assert "DOS" not in body and "decompression bomb" not in body.lower()
    _shot(w.page, "2_bomb_images_page")
    assert w.outside() == []
    w.page.close()


def test_run_id_and_file_names_show_as_plain_text(server, browser, tmp_path):
    base, runs, _ = server
    w = Watched(browser, base)
    for i, bad in enumerate([f"[Session expired: log in again](http://{EVIL})", f"![x](http://{EVIL}/a.png)",
                             f"[x](http://{EVIL})", f"www.{EVIL}"]):
        w.page.goto(f"{base}/?run={urllib.parse.quote(bad, safe='')}")
        err = w.page.locator('[data-testid="stAlertContentError"]').first
        err.wait_for()
        _settle(w.page)
        text = err.inner_text().replace("\u2060", "")
        assert bad in text, text  # shown literally, as typed
        _no_evil_markup(w.page)
        if i == 0:
            _shot(w.page, "3_run_id_markdown")
    # a file name that is markdown (and an autolink) in the message of a run that cannot start
    good = scene_dir("reichstag_imc2020") / "images" / PHOTOS[0]
    evil = tmp_path / f"[Session expired](www.{EVIL}).jpg"
    evil.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a photo" * 20)  # passes upload, fails validation
    _home(w)
    _upload(w.page, [str(good), str(evil)])
    _fast(w.page)
    w.page.get_by_role("button", name="Start run").click()
    run_id = _run_id(w.page)
    rec = _wait_record(runs, run_id, ("failed",), timeout=180)
    assert rec["stages"]["images"]["status"] == "failed"
    err = w.page.locator('[data-testid="stAlertContentError"]').first
    err.wait_for()
    _settle(w.page)
    text = err.inner_text().replace("\u2060", "")
    assert f"Session_expired_www.{EVIL}.jpg" in text and "at least 2" in text
    assert "/" not in text.split("failed:", 1)[1], text  # no server path
    _no_evil_markup(w.page)
    # no Resume that cannot succeed: say what to do instead
    assert w.page.get_by_role("button", name=re.compile("Resume|Run next stage|Run all remaining")).count() == 0
    w.page.get_by_text("Resuming cannot help here").wait_for()
    _shot(w.page, "4_file_name_markdown_no_resume")
    assert not [u for u in w.requests if (urllib.parse.urlsplit(u).hostname or "").endswith(EVIL)]
    assert w.outside() == []
    w.page.close()


def test_start_waits_for_the_uploads(server, browser):
    base, runs, _ = server
    w = Watched(browser, base)
    _home(w)
    held = []  # uploads held back (a handler must not block: it runs on this thread), sent on when released
    w.page.route("**/_stcore/upload_file/**", lambda route: held.append(route))
    src = scene_dir("reichstag_imc2020") / "images"
    before = set(os.listdir(runs))
    w.page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(src / n) for n in PHOTOS[:2]])
    w.page.locator('[data-testid="stFileChipIconSpinner"]').first.wait_for()
    start = w.page.get_by_role("button", name="Start run")
    w.page.wait_for_function("() => { const b = [...document.querySelectorAll('.st-key-start button, "
                             ".st-key-start_steps button')]; return b.length >= 2 && b.every((x) => x.disabled); }")
    assert start.is_disabled() and w.page.get_by_role("button", name="Run stage by stage").is_disabled()
    note = w.page.locator('[data-testid="sfmUploadGuard"]')
    assert note.is_visible() and "Start is available when every file has been uploaded" in note.inner_text()
    _shot(w.page, "5_start_disabled_while_uploading")
    assert held, "no upload was held back"
    w.page.unroute("**/_stcore/upload_file/**")
    for route in held:
        route.continue_()
    w.page.wait_for_function("!document.querySelector('[data-testid=\"stFileChipIconSpinner\"]')")
    w.page.wait_for_function("() => { const b = [...document.querySelectorAll('.st-key-start button, "
                             ".st-key-start_steps button')]; return b.length >= 2 && b.every((x) => !x.disabled); }")
    assert not note.is_visible()
    assert set(os.listdir(runs)) == before  # nothing was started meanwhile
    w.page.close()


def test_thresholds_box_never_reads_a_server_file_and_a_run_leaves_no_temp_files(server, browser, tmp_path):
    """A tiny real run from the browser: the server's temp folder gains no file (COLMAP's glog logs stay out of it);
    then the Evaluate page refuses '/etc/hostname' in the thresholds box without revealing the file."""
    base, runs, systmp = server
    scene = scene_dir("reichstag_imc2020")
    before = _listing(systmp)
    w = Watched(browser, base)
    _home(w)
    _upload(w.page, [str(scene / "images" / n) for n in PHOTOS])
    _fast(w.page)
    w.page.get_by_role("button", name="Start run").click()
    run_id = _run_id(w.page)
    rec = _wait_record(runs, run_id, ("done", "failed"))
    assert rec["status"] == "done", rec.get("error")
    w.page.get_by_text("Status: finished").wait_for(timeout=60_000)
    _settle(w.page)
    _shot(w.page, "6_tiny_run_finished")
    assert _listing(systmp) - before == set(), "files left in the system temp folder"
    assert (runs / run_id / "mapping.log").is_file()

    w.page.locator('[data-testid="stSidebarNav"]').get_by_text("Evaluate", exact=True).click()
    w.page.get_by_role("heading", name="Evaluate", exact=True).wait_for()
    _settle(w.page)
    w.page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(scene / "gt.csv"))
    box = w.page.get_by_role("textbox", name=re.compile("Thresholds"))
    box.wait_for()
    host = Path("/etc/hostname").read_text().split()[0] if Path("/etc/hostname").is_file() else "localhost"
    secret_file = tmp_path / "secret.txt"  # a server file whose first word would show if the box read files
    secret_file.write_text("s3cr3t-7f1c2e 0.1\n")
    for path in ["/etc/hostname", str(secret_file)]:
        box.fill(path)
        box.press("Enter")
        err = w.page.locator('[data-testid="stAlertContentError"]').first
        err.wait_for()
        w.page.wait_for_function("(p) => [...document.querySelectorAll('[data-testid=\"stAlertContentError\"]')]"
                                 ".some((e) => e.innerText.replaceAll('\\u2060', '').includes(p))", arg=path[:30])
        _settle(w.page)
        text = err.inner_text().replace("\u2060", "")
        assert f"'{path[:40]}' is not a number" in text, text
        body = w.page.locator('[data-testid="stMain"]').inner_text().replace("\u2060", "").replace(path, "")
        assert not re.search(rf"\b{re.escape(host)}\b", body) and "s3cr3t" not in body
        if path == "/etc/hostname":
            _shot(w.page, "7_thresholds_refuse_a_path")
    # numbers typed in work (the box takes ';', ',' and spaces)
    box.fill("0.025; 0.05, 0.1 0.2;0.5;1.0")
    box.press("Enter")
    _settle(w.page)
    assert w.page.locator('[data-testid="stAlertContentError"]').filter(has_text="thresholds").count() == 0
    _shot(w.page, "8_thresholds_numbers")
    # the pages read the model with pycolmap inside the server process: still no file in the temp folder
    w.page.locator('[data-testid="stSidebarNav"]').get_by_text("Reconstruction", exact=True).click()
    w.page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.wait_for(timeout=120_000)
    _settle(w.page)
    assert _listing(systmp) - before == set(), "files left in the system temp folder"
    assert w.outside() == []  # no request left for another host (fonts, icons, favicon included)
    w.page.close()
