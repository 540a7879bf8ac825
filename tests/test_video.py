"""A phone video in: frames sampled by time and sharpness (backend/io/video.py), validated as photos, paired in
time order, mapped. The videos are made here, with OpenCV, from consecutive frames of the shared gum scene (a
phone video's frames, with ground truth): each interval holds blurred copies and one sharp frame, so the test knows
which frame the sampler must keep."""

from __future__ import annotations

import json

import pytest

from conftest import evaluate, run_cli, scene_dir

cv2 = pytest.importorskip("cv2")

FPS = 8  # 2 frames kept per second -> intervals of 4 frames
SHARP_AT = 2  # the sharp frame's place in its interval


def make_video(path, sources):
    """An MP4 at FPS frames/s: per source photo 4 frames, all Gaussian-blurred but the one at SHARP_AT."""
    first = cv2.imread(str(sources[0]))
    h, w = first.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    assert out.isOpened()
    for src in sources:
        img = cv2.imread(str(src))
        soft = cv2.GaussianBlur(img, (0, 0), 4)
        for k in range(4):
            out.write(img if k == SHARP_AT else soft)
    out.release()
    return path


@pytest.fixture(scope="module")
def gum_frames():
    d = scene_dir("gum_scene2mesh")
    return d, sorted((d / "images").iterdir())


def test_the_sharpest_frame_of_each_interval_is_kept(gum_frames, tmp_path):
    from backend.io.video import extract_frames

    _, frames = gum_frames
    video = make_video(tmp_path / "walk.mp4", frames[:40:4])  # 10 photos -> 40 frames, 5 s
    res = extract_frames(video, tmp_path / "out")
    assert res.fps == FPS and res.frames_total == 40 and res.interval_s == pytest.approx(0.5)
    assert [k["frame"] for k in res.kept] == [4 * i + SHARP_AT for i in range(10)]  # never a blurred copy
    assert all(k["sharpness"] > k["interval_median"] for k in res.kept)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [k["name"] for k in res.kept] and names[0] == "walk_000002.jpg"
    assert "10 frames kept of 40" in res.note


def test_a_file_that_is_no_video_is_refused_saying_what_to_do(tmp_path):
    from backend.io.video import extract_frames

    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    with pytest.raises(ValueError, match="MP4"):
        extract_frames(bad, tmp_path / "out")


@pytest.mark.scenes
def test_a_video_is_reconstructed_with_its_frames_paired_in_time_order(gum_frames, tmp_path):
    d, frames = gum_frames
    sources = frames[:120:6]  # 20 photos over the first 120 frames of the walk
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "gum.mp4", sources)
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(folder), "--out", str(out), "--preset", "fast", "--quiet", timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "images.json").read_text())
    (video,) = info["videos"]
    kept = [k["name"] for k in video["kept"]]
    assert len(kept) == 20 and [i["name"] for i in info["images"]] == kept
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["retrieval"]["counts"]["sequential_pairs"] > 0  # frames paired in time order
    pairs = {tuple(line.split()[:2]) for line in (out / "pairs.txt").read_text().splitlines()}
    assert all((kept[i], kept[i + 1]) in pairs for i in range(len(kept) - 1))
    # score against the scene's ground truth: each kept frame is the photo it was made from
    source_of = {k["name"]: sources[k["frame"] // 4].name for k in video["kept"]}
    lines = (out / "poses.csv").read_text().splitlines()
    renamed = [lines[0]] + [",".join([source_of[x.split(",")[0]], *x.split(",")[1:]]) for x in lines[1:]]
    (tmp_path / "poses.csv").write_text("\n".join(renamed) + "\n")
    gt = (d / "gt.csv").read_text().splitlines()
    names = {s.name for s in sources}
    (tmp_path / "gt.csv").write_text("\n".join([gt[0]] + [x for x in gt[1:] if x.split(",")[0] in names]) + "\n")
    score = evaluate(tmp_path / "gt.csv", tmp_path / "poses.csv", d / "thresholds.txt")
    registered = sum(1 for x in lines[1:] if x.split(",")[1])
    print(f"video of 20 gum photos: {registered}/20 registered, mAA {score['mAA']:.3f}")
    assert registered >= 16 and score["mAA"] >= 0.3


def test_uploads_take_a_video_within_its_limits(gum_frames, tmp_path):
    from backend.io.uploads import Limits, save_uploads

    _, frames = gum_frames
    video = make_video(tmp_path / "walk.mp4", frames[:8:4]).read_bytes()
    res = save_uploads([("My Walk.mp4", video), ("fake.mov", b"not a video at all, just text here")],
                       tmp_path / "up")
    assert res.saved == ["My_Walk.mp4"] and res.enough()  # one video is enough to start a run
    assert (tmp_path / "up" / "My_Walk.mp4").read_bytes() == video
    assert "not an MP4 or MOV" in res.skipped[0]["reason"]
    small = Limits(max_video_bytes=len(video) - 1, max_videos=1)
    res = save_uploads([("a.mp4", video), ("b.mp4", video)], tmp_path / "up2", small)
    assert res.saved == [] and "larger than" in res.skipped[0]["reason"] and not res.enough()
    assert not any((tmp_path / "up2").glob("*.mp4"))  # nothing half-written is left
    res = save_uploads([("a.mp4", video), ("b.mp4", video)], tmp_path / "up3", Limits(max_videos=1))
    assert res.saved == ["a.mp4"] and "more than 1 videos" in res.skipped[0]["reason"]
