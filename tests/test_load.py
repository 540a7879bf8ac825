"""A bounded load test of the shared server (``bench/load.py``): two API users and two app users (each in a real
headless Chromium) at once over one runs folder, two rounds each of upload, run, page views and deleting their own
run. No error, no run lost or mixed (each run holds exactly its user's photos and registers them all), nothing
left on disk or in the servers' temp folder. The figures (slowest page, peak memory) are printed and kept in
``bench/NOTES.md``; they are not asserted (speed belongs in the bench)."""

from __future__ import annotations

import pytest

from bench.load import PHOTOS_PER_USER, load_test

pytestmark = pytest.mark.scenes
pytest.importorskip("playwright.sync_api")


def test_four_users_at_once_two_rounds(tmp_path):
    res = load_test(tmp_path / "load", rounds=2, api_users=2, app_users=2)
    print(f"\nload: {len(res['runs'])} runs, slowest page {res['slowest_page_s']} s, peak MB {res['peak_mb']}, "
          f"wall {res['wall_s']} s")
    assert res["errors"] == []
    assert len(res["runs"]) == 8  # 4 users x 2 rounds: none lost
    assert len({r["run_id"] for r in res["runs"]}) == 8
    assert all(r["status"] == "done" and r["registered"] == PHOTOS_PER_USER for r in res["runs"]), res["runs"]
    assert res["runs_left_on_disk"] == []  # every user deleted their own runs, and only those
    assert res["temp_files_left"] == []
