"""setup/ec2_bootstrap.sh: lint, the --dry-run plan (GPU, CPU, --public), and the data step for real.

Fast (a few seconds), no network (a URL source is served from 127.0.0.1), no changes outside tmp folders:
the plans run with --dry-run, with stub apt-get/systemctl/nginx/... first on PATH that record any call, and
the data step runs for real with --only data into a tmp --data-dir.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import stat
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "setup" / "ec2_bootstrap.sh"

NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name" ]; then echo "NVIDIA A10G"; exit 0; fi
cat <<'EOF'
Mon Jan  5 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.124.06             Driver Version: 570.124.06     CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA A10G                    On  |   00000000:00:1E.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
EOF
"""

# commands that change the machine: in a dry run none of them may be called
STATEFUL = ["apt-get", "add-apt-repository", "systemctl", "runuser", "chown", "nginx", "sudo", "install",
            "ln", "curl", "kaggle"]


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _path_without(cmd: str) -> str:
    """$PATH minus the folders that hold ``cmd``."""
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / cmd).exists())


@pytest.fixture
def stubs(tmp_path):
    """A folder of recording stubs for the stateful commands, and the log they write to."""
    d = tmp_path / "stubs"
    d.mkdir()
    log = tmp_path / "stub-calls.log"
    for cmd in STATEFUL:
        _write_exe(d / cmd, f'#!/bin/sh\necho "{cmd} $*" >> "{log}"\nexit 0\n')
    return d, log


def run_script(*args: str, path_prefix: list[Path] = (), env_extra: dict | None = None, cwd: Path | None = None,
               no_gpu: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "SFM_")) and k not in ("SUDO_USER", "PYTHON_BIN")}
    base_path = _path_without("nvidia-smi") if no_gpu else env.get("PATH", "")
    env["PATH"] = os.pathsep.join([*(str(p) for p in path_prefix), base_path])
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def fake_gpu(tmp_path: Path, cuda: str) -> Path:
    d = tmp_path / f"gpu-{cuda}"
    d.mkdir()
    _write_exe(d / "nvidia-smi", NVIDIA_SMI.replace("{cuda}", cuda))
    return d


# ----------------------------------------------------------------------------- lint


def test_bash_syntax():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (setup/setup.sh installs it)")
    res = subprocess.run(["shellcheck", "-x", "setup/ec2_bootstrap.sh", "setup/common.sh", "setup/setup.sh"],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_help_and_bad_arguments():
    res = run_script("--help")
    assert res.returncode == 0
    for opt in ("--data", "--kaggle-competition", "--kaggle-scenes", "--public", "--password", "--port",
                "--repo-dir", "--no-service", "--dry-run", "--only"):
        assert opt in res.stdout
    for bad in (["--bogus"], ["--port", "80"], ["--only", "everything"], ["--only", "proxy"]):
        res = run_script(*bad, "--dry-run")
        assert res.returncode == 2, (bad, res.stdout, res.stderr)


# ----------------------------------------------------------------------------- the dry-run plan


def test_dry_run_gpu_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", path_prefix=[stub_dir, fake_gpu(tmp_path, "12.8")])
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0+cu128\n" in out
    assert "whl/cpu" not in out
    # the pinned requirements and the weights, through setup/common.sh
    assert "pip install -r" in out and "requirements.txt" in out
    assert "setup/fetch_weights.py --dinov2 small,base" in out
    # the systemd unit, bound to localhost, and the tunnel
    assert "/etc/systemd/system/sfm-explorer.service" in out
    assert "User=ubuntu" in out and "Restart=on-failure" in out
    assert ("ExecStart=%s/.venv/bin/python -m streamlit run streamlit_app.py --server.address 127.0.0.1 "
            "--server.port 8501 --server.headless true" % REPO) in out
    assert "ssh -i" in out and "-L 8501:localhost:8501 ubuntu@" in out
    # nothing public without --public
    assert "nginx" not in out.lower() and "htpasswd" not in out and "basic auth" not in out.lower()
    assert not log.exists(), "dry run called: " + log.read_text()


def test_dry_run_cpu_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", path_prefix=[stub_dir], no_gpu=True)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    # requirements' pin, from the PyTorch CPU index (PyPI's Linux torch would bring the CUDA libraries)
    assert "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0\n" in out
    assert "CPU build" in out
    assert "cu128" not in out and "cu126" not in out
    assert "sfm-explorer.service" in out
    assert "ssh -i" in out and "-L 8501:localhost:8501" in out
    assert "nginx" not in out.lower() and "basic auth" not in out.lower()
    assert not log.exists(), "dry run called: " + log.read_text()


def test_dry_run_api_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", "--api", path_prefix=[stub_dir], no_gpu=True)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "sfm-explorer-api.service" in out and "EnvironmentFile=/etc/sfm-explorer-api.env" in out
    assert "-m backend serve --host 127.0.0.1 --port 8000 --token ${SFM_API_TOKEN}" in out
    assert "install -m 600 -o root -g root <token> /etc/sfm-explorer-api.env" in out
    assert "-L 8000:localhost:8000" in out and "Authorization: Bearer" in out
    assert not log.exists(), "dry run called: " + log.read_text()
    res = run_script("--dry-run", "--api-port", "8501", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 2 and "--api-port must differ from --port" in res.stderr


def test_dry_run_ray_head_and_worker_plans(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", "--ray-head", path_prefix=[stub_dir], no_gpu=True)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "sfm-explorer-ray.service" in out
    assert "ray start --block --head --port 6379" in out and "--min-worker-port 10002 --max-worker-port 10999" in out
    assert "--ray-worker THIS_PRIVATE_IP:6379" in out and "--executor ray --ray-address auto" in out
    assert "Environment=SFM_EXECUTOR=ray" in out  # the app's runs use the cluster
    res = run_script("--dry-run", "--user", "ubuntu", "--ray-worker", "172.31.5.10:6379", path_prefix=[stub_dir],
                     no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ray start --block --address 172.31.5.10:6379" in res.stdout
    assert "joined 172.31.5.10:6379" in res.stdout
    assert "sfm-explorer.service" not in res.stdout  # a worker serves no app
    assert not log.exists(), "dry run called: " + log.read_text()
    res = run_script("--dry-run", "--ray-worker", "not an address", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 2 and "HOST:PORT" in res.stderr


@pytest.mark.parametrize("cuda, expect", [("12.9", "cu128"), ("12.6", "cu126"), ("13.0", "cu128")])
def test_dry_run_cuda_variant(tmp_path, stubs, cuda, expect):
    res = run_script("--dry-run", "--only", "python", path_prefix=[stubs[0], fake_gpu(tmp_path, cuda)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"--index-url https://download.pytorch.org/whl/{expect} torch==2.13.0+{expect}" in res.stdout


def test_dry_run_cpu_forced_on_a_gpu(tmp_path, stubs):
    res = run_script("--dry-run", "--only", "python", "--cpu", path_prefix=[stubs[0], fake_gpu(tmp_path, "12.8")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0\n" in res.stdout


def test_old_driver_fails_clearly(tmp_path, stubs):
    res = run_script("--dry-run", path_prefix=[stubs[0], fake_gpu(tmp_path, "11.8")])
    assert res.returncode == 1
    assert "CUDA 11.8" in res.stderr and "--cpu" in res.stderr
    assert "FAILED" in res.stderr and "re-run" in res.stderr


def test_dry_run_public_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--public", "--password", "s3cret-Pw", "--port", "8600", "--user", "ubuntu",
                     path_prefix=[stub_dir], no_gpu=True)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "nginx" in out
    assert "/etc/nginx/sites-available/sfm-explorer" in out
    assert "auth_basic_user_file /etc/nginx/sfm-explorer.htpasswd;" in out
    assert "openssl passwd -apr1" in out
    assert "install -m 640" in out and "/etc/nginx/sfm-explorer.htpasswd" in out
    assert "location /_stcore/stream" in out and "proxy_set_header Upgrade $http_upgrade;" in out
    assert "listen 80 default_server;" in out and "proxy_pass http://127.0.0.1:8600;" in out
    assert "--server.address 127.0.0.1 --server.port 8600" in out  # the app itself stays on localhost
    assert "-L 8600:localhost:8600" in out
    assert "certbot" in out
    assert "@" + "MAX_BODY@" not in out and "client_max_body_size " in out
    assert "s3cret-Pw" not in out + res.stderr  # never printed, never on a command line
    assert not log.exists(), "dry run called: " + log.read_text()


def test_dry_run_ubuntu_adds_deadsnakes(tmp_path, stubs):
    osr = tmp_path / "os-release"
    osr.write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n')
    res = run_script("--dry-run", "--only", "system", path_prefix=[stubs[0]], no_gpu=True,
                     env_extra={"SFM_OS_RELEASE": str(osr), "PYTHON_BIN": "python3.11-absent"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Ubuntu 22.04" in res.stdout
    assert "add-apt-repository -y ppa:deadsnakes/ppa" in res.stdout
    assert "python3.11-venv" in res.stdout


def test_dry_run_changes_no_data(tmp_path, stubs):
    src = make_images(tmp_path / "scene")
    data = tmp_path / "data"
    res = run_script("--dry-run", "--only", "data", "--data", str(src), "--data-dir", str(data),
                     path_prefix=[stubs[0]])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "import_data.py" in res.stdout and str(src) in res.stdout
    assert not data.exists()


# ----------------------------------------------------------------------------- the data step, for real


def make_images(folder: Path, n: int = 3) -> Path:
    """A few small (valid) PNG files."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 12), (40 * i, 100, 200)).save(folder / "images" / f"img_{i}.png")
    return folder


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its type, mtime and content hash."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        snap[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_mtime_ns, digest)
    return snap


@pytest.fixture
def sources(tmp_path):
    scene = make_images(tmp_path / "src" / "scene_a")
    pngs = {f"scene_b/images/{p.name}": p.read_bytes() for p in sorted((scene / "images").iterdir())}
    zipped = make_zip(tmp_path / "scene_b.zip", pngs)
    flat = make_zip(tmp_path / "loose.zip", {"x.png": pngs["scene_b/images/img_0.png"], "notes.txt": b"hi"})
    return scene, zipped, flat


def test_data_folder_and_zip(tmp_path, sources):
    scene, zipped, flat = sources
    data = tmp_path / "data"
    args = ["--only", "data", "--data-dir", str(data), "--data", str(scene), "--data", str(zipped),
            "--data", str(flat)]
    res = run_script(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    for i in range(3):
        a = data / "scene_a" / "images" / f"img_{i}.png"
        b = data / "scene_b" / "images" / f"img_{i}.png"  # the zip's single top folder becomes the folder
        assert a.read_bytes() == (scene / "images" / f"img_{i}.png").read_bytes()
        assert b.read_bytes() == a.read_bytes()
    assert (data / "loose" / "x.png").is_file() and (data / "loose" / "notes.txt").read_bytes() == b"hi"
    assert "copied 3 files" in res.stdout and "extracted 3 of 3 files" in res.stdout

    # the second run changes nothing
    before = snapshot(data)
    res2 = run_script(*args)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert snapshot(data) == before
    assert res2.stdout.count("unchanged") == 3
    assert "copied" not in res2.stdout and "extracted" not in res2.stdout


def test_relative_data_paths_are_taken_from_the_callers_folder(tmp_path, sources):
    data = tmp_path / "data"
    res = run_script("--only", "data", "--data-dir", "data", "--data", "scene_b.zip", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (data / "scene_b" / "images" / "img_0.png").is_file()


@pytest.mark.parametrize("bad_name, why", [
    ("../evil", "path traversal"),
    ("scene/../../evil", "path traversal"),
    ("/tmp/evil-abs", "absolute path"),
])
def test_unsafe_zip_is_refused(tmp_path, bad_name, why):
    data = tmp_path / "work" / "data"
    bad = make_zip(tmp_path / "bad.zip", {"scene/ok.txt": b"fine", bad_name: b"evil"})
    res = run_script("--only", "data", "--data-dir", str(data), "--data", str(bad))
    assert res.returncode == 1
    assert "refusing" in res.stderr and why in res.stderr
    assert "FAILED" in res.stderr and "--only data" in res.stderr  # what failed, how to retry
    assert not (data / "bad").exists() and not (data / "scene").exists()  # nothing extracted, not even ok.txt
    assert not (tmp_path / "work" / "evil").exists() and not (tmp_path / "evil").exists()


def test_zip_with_symlink_is_refused(tmp_path):
    data = tmp_path / "data"
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("scene/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    res = run_script("--only", "data", "--data-dir", str(data), "--data", str(path))
    assert res.returncode == 1 and "symbolic link" in res.stderr
    assert not data.exists() or not any(data.rglob("*"))


def test_data_from_url(tmp_path, sources):
    _, zipped, _ = sources
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(zipped, served / "scene_b.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/scene_b.zip"
        data = tmp_path / "data"
        res = run_script("--only", "data", "--data-dir", str(data), "--data", url)
        assert res.returncode == 0, res.stdout + res.stderr
        assert (data / "scene_b" / "images" / "img_2.png").is_file()
        assert (data / ".downloads" / "scene_b.zip").read_bytes() == zipped.read_bytes()
        before = snapshot(data)
        (served / "scene_b.zip").unlink()  # a second run must not download again
        res2 = run_script("--only", "data", "--data-dir", str(data), "--data", url)
        assert res2.returncode == 0, res2.stdout + res2.stderr
        assert "already downloaded" in res2.stdout and "unchanged" in res2.stdout
        assert snapshot(data) == before
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_kaggle(tmp_path):
    """A stand-in for the Kaggle CLI: 'competitions download COMP -p DIR' copies a prepared zip."""
    comp_zip = make_zip(tmp_path / "competition.zip", {
        "train_labels.csv": b"dataset,scene,image\n",
        "train/ETs/et_0.png": b"png0",
        "train/ETs/et_1.png": b"png1",
        "train/stairs/st_0.png": b"png2",
        "test/ETs/t_0.png": b"png3",
    })
    bindir = tmp_path / "kbin"
    bindir.mkdir()
    calls = tmp_path / "kaggle-calls.log"
    _write_exe(bindir / "kaggle", f"""#!/bin/sh
echo "$*" >> "{calls}"
[ "$1" = competitions ] && [ "$2" = download ] && [ "$4" = -p ] || exit 9
mkdir -p "$5" && cp "{comp_zip}" "$5/$3.zip"
""")
    return bindir, calls


def test_kaggle_scenes(tmp_path, fake_kaggle):
    bindir, calls = fake_kaggle
    data = tmp_path / "data"
    env = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "not-a-real-key", "HOME": str(tmp_path)}
    args = ["--only", "data", "--data-dir", str(data), "--kaggle-scenes", "ETs"]
    res = run_script(*args, path_prefix=[bindir], env_extra=env)
    assert res.returncode == 0, res.stdout + res.stderr
    comp = data / "image-matching-challenge-2025"
    got = sorted(str(p.relative_to(comp)) for p in comp.rglob("*") if p.is_file())
    assert got == ["test/ETs/t_0.png", "train/ETs/et_0.png", "train/ETs/et_1.png", "train_labels.csv"]
    assert calls.read_text().split() == ["competitions", "download", "image-matching-challenge-2025", "-p",
                                         str(data / ".downloads" / "kaggle")]
    before = snapshot(data)
    res2 = run_script(*args, path_prefix=[bindir], env_extra=env)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert len(calls.read_text().splitlines()) == 1  # not downloaded again
    assert snapshot(data) == before


def test_kaggle_unknown_scene_and_missing_token(tmp_path, fake_kaggle):
    bindir, _ = fake_kaggle
    data = tmp_path / "data"
    env = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k", "HOME": str(tmp_path)}
    res = run_script("--only", "data", "--data-dir", str(data), "--kaggle-scenes", "nope",
                     path_prefix=[bindir], env_extra=env)
    assert res.returncode == 1 and "no such folder" in res.stderr and "train/ETs" in res.stderr
    res = run_script("--only", "data", "--data-dir", str(tmp_path / "data2"), "--kaggle", path_prefix=[bindir],
                     env_extra={"HOME": str(tmp_path / "nohome")})
    assert res.returncode == 1 and "kaggle.json" in res.stderr and "KAGGLE_USERNAME" in res.stderr
