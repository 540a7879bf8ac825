"""The automatic camera grouping of the mapping stage (backend.mapping.cameras: metadata_camera_groups,
shared_camera_groups)."""

from __future__ import annotations

from types import SimpleNamespace

from backend.mapping.cameras import metadata_camera_groups, shared_camera_groups


def _rec(focals: dict[str, float | None]):
    images, cameras = {}, {}
    for i, (name, f) in enumerate(focals.items()):
        cameras[i] = SimpleNamespace(mean_focal_length=lambda f=f: f)
        images[i] = SimpleNamespace(name=name, camera_id=i, has_pose=f is not None)
    return SimpleNamespace(images=images, cameras=cameras)


def _infos(names, size=(640, 480)):
    return {n: {"width": size[0], "height": size[1]} for n in names}


def test_video_frames_share_one_camera():
    focals = {f"{i}.jpg": 1500 + 10 * (i % 3) for i in range(10)}
    groups = shared_camera_groups(_rec(focals), _infos(focals), list(focals))
    assert len(groups) == 1 and len(groups[0]["names"]) == 10 and 1500 <= groups[0]["focal_px"] <= 1520


def test_wide_and_tele_photos_stay_per_image():
    focals = {f"w{i}.png": 700.0 + i for i in range(5)} | {f"t{i}.png": 2200.0 + i for i in range(5)}
    assert shared_camera_groups(_rec(focals), _infos(focals), list(focals)) == []


def test_groups_are_per_image_size_and_need_registered_images():
    focals = {f"a{i}": 1000.0 for i in range(4)} | {f"b{i}": (900.0 if i < 1 else None) for i in range(4)}
    infos = _infos([f"a{i}" for i in range(4)]) | _infos([f"b{i}" for i in range(4)], size=(480, 640))
    groups = shared_camera_groups(_rec(focals), infos, list(focals))
    assert [sorted(g["names"]) for g in groups] == [[f"a{i}" for i in range(4)]]


def _meta(size, make="", model="", focal_mm=None, focal_px=768.0, source="prior"):
    return {"width": size[0], "height": size[1], "make": make, "model": model, "exif_focal_mm": focal_mm,
            "focal_px": focal_px, "focal_source": source}


def test_metadata_groups_split_by_size_and_exif_focal():
    images = {f"v{i}.jpg": _meta((1920, 1080)) for i in range(5)}  # video frames, no EXIF
    images |= {f"w{i}.jpg": _meta((4032, 3024), "Apple", "iPhone", 4.2, 2900.0, "exif") for i in range(3)}
    images |= {f"t{i}.jpg": _meta((4032, 3024), "Apple", "iPhone", 9.0, 8000.0, "exif") for i in range(3)}
    images |= {f"x{i}.jpg": _meta((1000 + i, 700)) for i in range(4)}  # internet photos: sizes differ
    groups = metadata_camera_groups(images, list(images))
    got = sorted((sorted(g["names"]), g["trusted"]) for g in groups)
    assert got == [([f"t{i}.jpg" for i in range(3)], True), ([f"v{i}.jpg" for i in range(5)], False),
                   ([f"w{i}.jpg" for i in range(3)], True)]
