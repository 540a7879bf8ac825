"""Stages declared as data (backend/stages.py), typed errors and the run's log (issue 26), on real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import scene_dir

from backend import jobs
from backend.config import get_preset
from backend.pipeline import Pipeline, PipelineError, RunOptions
from backend.stages import Stage, get_stage, register, stage_names, unregister


def _photos(tmp_path, n: int, scene: str = "temple_ring_middlebury"):
    d = tmp_path / "photos"
    d.mkdir(parents=True)
    for p in sorted((scene_dir(scene) / "images").iterdir())[:n]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture
def histogram_stage():
    """A stage of the test's own, declared after ``images`` and removed afterwards: the image sizes of the run."""

    def run(p, report):
        from backend.io.images import load_images_json

        images = load_images_json(p.run_dir)["images"]
        sizes = sorted({f"{i['width']}x{i['height']}" for i in images})
        (p.run_dir / "sizes.json").write_text(json.dumps(sizes))
        report(1, 1, f"{len(sizes)} sizes")
        return {"sizes": len(sizes), "images": len(images)}

    st = register(Stage("sizes", "Image sizes", "images", ("images",), ("images",), run,
                        summary=(("image_sizes", "sizes"),)), after="images")
    yield st
    unregister("sizes")


def test_a_stage_added_by_its_declaration_alone_runs_resumes_and_shows(tmp_path, histogram_stage):
    """One declaration makes a stage the pipeline runs in order, records, reuses while its inputs and config are
    unchanged, reruns when its config changes, and that the job layer lists with its title."""
    photos = _photos(tmp_path, 3)
    run = tmp_path / "run"
    seen = []
    cfg = get_preset("fast")
    rec = Pipeline(RunOptions(photos, run), cfg, progress=lambda *a: seen.append(a)).run(until="sizes")
    assert stage_names().index("sizes") == 1 and list(rec["stages"]) == ["images", "sizes"]
    assert json.loads((run / "sizes.json").read_text()) == ["640x480"]
    assert rec["stages"]["sizes"]["counts"] == {"sizes": 1, "images": 3} and rec["summary"]["image_sizes"] == 1
    seen.clear()
    Pipeline(RunOptions(photos, run), cfg, progress=lambda *a: seen.append(a)).run(until="sizes")
    assert ("sizes", 1, 1, "reused (unchanged inputs and config)") in seen
    (run / "sizes.json").unlink()
    cfg.images.background = "black"  # a config section the stage declares: it runs again
    Pipeline(RunOptions(photos, run), cfg).run(until="sizes")
    assert (run / "sizes.json").exists()
    state = jobs.run_state(run)
    assert state["stages"]["sizes"]["status"] == "done" and state["next_stage"] == "retrieval"
    assert get_stage("sizes").title == "Image sizes"
    with pytest.raises(ValueError, match="declared already"):
        register(Stage("sizes", "x", "images", (), (), lambda p, r: {}))
    with pytest.raises(ValueError, match="must be declared before it"):
        register(Stage("early", "x", "images", ("mapping",), (), lambda p, r: {}), after="images")


def test_mapper_options_do_not_rerun_verification(tmp_path):
    """Verification has its own config section: a run verified once reuses it when only the mapper's options
    change, and verifies again when a verification option or the cameras change."""
    photos = _photos(tmp_path, 4)
    run = tmp_path / "run"
    cfg = get_preset("fast")
    rec = Pipeline(RunOptions(photos, run), cfg).run(until="verification")
    assert rec["stages"]["verification"]["counts"]["verified_pairs"] >= 3
    cfg.mapping.mapper, cfg.mapping.num_threads, cfg.mapping.disambiguate = "global", 1, "auto"
    seen = []
    Pipeline(RunOptions(photos, run), cfg, progress=lambda *a: seen.append(a)).run(until="verification")
    assert ("verification", 1, 1, "reused (unchanged inputs and config)") in seen
    for change in (lambda c: setattr(c.verification, "ransac_max_error", 2.0),
                   lambda c: setattr(c.mapping, "camera_mode", "per_image")):
        c2 = get_preset("fast")
        change(c2)
        assert Pipeline(RunOptions(photos, run), c2).stage_hashes()["verification"] != \
            rec["stages"]["verification"]["hash"]


def test_typed_errors_reach_run_json_the_log_and_the_page(tmp_path, monkeypatch):
    """A stage's failure keeps its type: ``run.json`` records ``error_type``, the run's log holds the traceback,
    and the page's advice follows the type (photos: a new run, no Resume; weights: the setup command, Resume)."""
    photos = _photos(tmp_path, 1)
    (photos / "notes.jpg").write_bytes(b"not a photo")
    run = tmp_path / "run1"
    with pytest.raises(PipelineError) as e:
        Pipeline(RunOptions(photos, run), get_preset("fast")).run()
    assert e.value.stage == "images" and e.value.error_type == "InputError"
    rec = json.loads((run / "run.json").read_text())
    assert rec["stages"]["images"]["error_type"] == "InputError"
    log = (run / "run.log").read_text()
    assert "stage images failed" in log and "Traceback" in log and "InputError" in log
    state = jobs.run_state(run)
    assert state["resumable"] is False and "Upload at least two" in state["error"]

    photos2 = _photos(tmp_path / "b", 3)
    (tmp_path / "no-weights").mkdir()
    monkeypatch.setenv("SFM_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    cfg = get_preset("balanced")
    cfg.retrieval.exhaustive_below = 10  # all pairs: retrieval needs no network
    run = tmp_path / "run2"
    with pytest.raises(PipelineError) as e:
        Pipeline(RunOptions(photos2, run), cfg).run()
    assert e.value.error_type == "MissingWeightsError", (e.value.stage, e.value.message)
    state = jobs.run_state(run)
    assert state["resumable"] is True and "setup/setup.sh" in state["error"]
    assert state["stages"]["images"]["status"] == "done"  # nothing already done is lost


def test_error_types_follow_the_class_not_the_wording(tmp_path):
    """What the user is told depends on the error's class, also through a wrapper that inherits from it (as Ray's
    RayTaskError(cause) does), and a full disk is a full disk whatever raised it."""
    import errno

    from backend.errors import MappingCrashError, MissingWeightsError, error_type
    from backend.io.pointcloud import read_ply, write_ply
    from backend.messages import friendly_error

    class RayTaskErrorLike(RuntimeError, MissingWeightsError):
        pass

    assert error_type(RayTaskErrorLike("task failed")) == "MissingWeightsError"
    assert error_type(MappingCrashError("signal 6")) == "MappingCrashError"
    assert error_type(OSError(errno.ENOSPC, "No space left on device")) == "NoSpaceError"
    assert error_type(ValueError("weights missing, install them")) == "ValueError"  # no guessing from the text
    assert "setup/setup.sh" in friendly_error("features", "task failed", error_type(RayTaskErrorLike("x")))
    write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8))  # an empty clean-up result
    xyz, rgb = read_ply(tmp_path / "empty.ply")
    assert xyz.shape == (0, 3)
