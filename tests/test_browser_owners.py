"""Runs belong to whoever made them, in a real headless Chromium: two people (two browser contexts, so two cookie
jars) on one app server. Alice starts a run; Bob does not see it listed, and when given its link he can look at it
but has no Cancel, continue or Delete; Alice, after a refresh (a new session: her cookie keeps the owner secret),
finds it under her runs and deletes it; every page Bob has open then says the run was deleted. The run folder is
private to the server's user. Screenshots go to ``test-artifacts/browser_owners/`` (gitignored).
"""

from __future__ import annotations

import re
import stat

import pytest

from appserver import chromium, screenshot, serve_app, settle
from conftest import REPO, scene_dir
from test_browser_holes import PHOTOS, _fast, _run_id, _upload, _wait_record

ARTIFACTS = REPO / "test-artifacts" / "browser_owners"
PAGES = [("images", "Images"), ("pairs", "Pairs"), ("features", "Features"), ("matches", "Matches"),
         ("scenes", "Scenes"), ("reconstruction", "Reconstruction"), ("evaluate", "Evaluate"), ("twoview", "Two-view")]
DELETED = "was deleted by the person who started it"

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.scenes  # Alice's run is a real (tiny) reconstruction


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("owners-runs")
    with serve_app(runs, tmp_path_factory.mktemp("owners-log") / "server.log") as base:
        yield base, runs


def _person(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    return ctx, page


def _home(page, base: str, query: str = "") -> None:
    page.goto(f"{base}/{query}")
    page.get_by_role("heading", name="SfM Explorer").wait_for()
    settle(page)


def _shot(page, name: str) -> None:
    screenshot(page, ARTIFACTS / f"{name}.png", max_height=5000)


def test_two_people_one_server(server, tmp_path):
    base, runs = server
    with chromium() as browser:
        alice_ctx, alice = _person(browser)
        bob_ctx, bob = _person(browser)
        _home(alice, base)
        _home(bob, base)
        # Alice starts a run from four photos
        src = scene_dir("reichstag_imc2020") / "images"
        _upload(alice, [str(src / n) for n in PHOTOS])
        _fast(alice)
        alice.get_by_role("button", name="Start run").click()
        run_id = _run_id(alice)
        assert any(c["name"] == "sfm_owner" for c in alice_ctx.cookies())
        assert (runs / run_id / "owner.json").is_file()
        mode = stat.S_IMODE((runs / run_id).stat().st_mode)
        assert mode == 0o700, oct(mode)
        _wait_record(runs, run_id, ("done",))
        files = [p for p in (runs / run_id).rglob("*") if p.is_file()]
        assert files and not [p for p in files if p.stat().st_mode & 0o077]  # no file readable by others

        # Bob: Alice's run is not among his, and by link he can look but not cancel, continue or delete
        _home(bob, base)
        assert run_id not in bob.inner_text("body")
        _home(bob, base, f"?run={run_id}")
        bob.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
        settle(bob)
        assert bob.get_by_text("Delete this run", exact=True).count() == 0
        assert bob.get_by_role("button", name=re.compile("Cancel run|Resume|Run next stage")).count() == 0
        _shot(bob, "1_bob_views_alices_run")

        # Alice refreshes without the link: a new session, the cookie keeps her owner secret and her run
        _home(alice, base)
        alice.get_by_text("Your runs").wait_for()
        assert run_id in alice.inner_text("body")
        _shot(alice, "2_alice_refreshed_lists_her_run")
        alice.get_by_role("button", name="Open").first.click()
        alice.get_by_role("heading", name=re.compile(f"Run {run_id}")).wait_for()
        settle(alice)
        alice.get_by_text("Delete this run", exact=True).click()
        alice.get_by_text("Yes, delete this run").click()
        settle(alice)
        alice.get_by_role("button", name="Delete run").click()
        alice.get_by_text(f"Run {run_id} was deleted.").wait_for()
        _shot(alice, "3_alice_deleted")
        assert not (runs / run_id).exists()

        # Bob still has it open: every page says it was deleted (not 'not computed yet')
        for key, title in PAGES:
            bob.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
            bob.wait_for_url(re.compile(f"/{key}"))
            bob.get_by_text(DELETED).first.wait_for()
            if key == "images":
                _shot(bob, "4_bob_sees_deleted")
            assert "not computed yet" not in bob.inner_text("body")
        bob.locator('[data-testid="stSidebarNav"]').get_by_text("Home", exact=True).click()
        bob.get_by_text(DELETED).first.wait_for()
        # a fresh visitor with the old link is told the same
        _home(bob, base, f"?run={run_id}")
        bob.get_by_text(DELETED).first.wait_for()
        # an empty or unreadable ?run= is said in words (not as '****'), on Home and on the Two-view page
        for query in ("?run=", "?run=%00"):
            for page_path in ("", "twoview"):
                bob.goto(f"{base}/{page_path}{query}")
                bob.get_by_text("empty or unreadable run id").first.wait_for()
        bob.goto(f"{base}/twoview?run=no-such-run")
        bob.get_by_text("There is no run with the id").first.wait_for()
        _shot(bob, "5_twoview_bad_run_id")
        alice_ctx.close()
        bob_ctx.close()
