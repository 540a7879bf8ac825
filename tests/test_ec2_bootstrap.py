"""setup/ec2_bootstrap.sh: lint, the --dry-run plan (GPU, CPU, --public), and the data step for real.

Fast (a few seconds), no network (a URL source is served from 127.0.0.1), no changes outside tmp folders:
the plans run with --dry-run, with stub apt-get/systemctl/nginx/... first on PATH that record any call, and
the data step runs for real with --only data into a tmp --data-dir.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import re
import shlex
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
#
# The dry run prints each command it would run ("    + CMD") and each file it would install, with its content
# ("    + install -m MODE -o root -g GROUP <rendered> DEST   # content:" then "        | LINE"). The tests parse
# that plan into argument lists and files, read the files as systemd and nginx read them, and assert what the
# machine would end up doing (which torch build, which address the app binds, what the proxy forwards where),
# not how the script words it.

TORCH_PIN = next(line.split("==")[1].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                 if line.startswith("torch=="))
COLMAP_PIN = next(line.split("==")[1].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("pycolmap=="))
UPLOAD_MB = int(re.search(r"^\s*maxUploadSize\s*=\s*(\d+)", (REPO / ".streamlit" / "config.toml").read_text(),
                          re.M).group(1))
FILE_LINE = re.compile(r"install -m (\d+) -o root -g (\S+) <(rendered|token)> (\S+)")


@dataclasses.dataclass
class Plan:
    """What a dry run would do: the commands (argument lists) and the files it would install."""

    commands: list[list[str]]
    files: dict[str, dict]  # destination -> {"mode", "group", "content" (None for a secret)}
    text: str

    def runs(self, *words: str) -> list[list[str]]:
        """The commands whose arguments contain ``words`` in this order (not necessarily adjacent)."""
        def has(argv):
            it = iter(argv)
            return all(any(a == w for a in it) for w in words)
        return [c for c in self.commands if has(c)]

    def unit(self, dest: str) -> dict[str, list[tuple[str, str]]]:
        """A systemd unit as systemd reads it: section -> [(key, value)], repeated keys kept in order."""
        sections, current = {}, None
        for line in self.files[dest]["content"].splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
            else:
                key, _, value = line.partition("=")
                current.append((key.strip(), value.strip()))
        return sections


def parse_plan(out: str) -> Plan:
    commands, files, dest = [], {}, None
    for line in out.splitlines():
        if dest and line.startswith("        |"):
            files[dest]["content"] += line[len("        | "):] + "\n"
            continue
        dest = None
        m = re.match(r"^\s+\+ (.*)$", line)
        if not m:
            continue
        cmd = m.group(1)
        f = FILE_LINE.search(cmd)
        if f:
            mode, group, kind, path = f.groups()
            files[path] = {"mode": mode, "group": group, "content": "" if kind == "rendered" else None}
            dest = path if kind == "rendered" else None
            continue
        commands.append(shlex.split(cmd.split("   #")[0]))
    return Plan(commands, files, out)


def unit_value(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def option(argv: list[str], name: str) -> str:
    """The value after ``name`` in an argument list."""
    assert name in argv, (name, argv)
    return argv[argv.index(name) + 1]


def nginx_blocks(text: str) -> list[tuple[list[str], list]]:
    """nginx's configuration as nested (directive words, children) items (comments dropped)."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))
    def block(i):
        items, words = [], []
        while i < len(tokens):
            t = tokens[i]
            i += 1
            if t == ";":
                items.append((words, []))
                words = []
            elif t == "{":
                children, i = block(i)
                items.append((words, children))
                words = []
            elif t == "}":
                return items, i
            else:
                words.append(t)
        return items, i
    return block(0)[0]


def directives(items, name):
    return [(words, children) for words, children in items if words and words[0] == name]


def assert_tunnel(plan: Plan, user: str, port: int) -> None:
    """The printed SSH tunnel forwards the app's port on the user's computer to the app on the instance."""
    ssh = [shlex.split(line.strip()) for line in plan.text.splitlines() if line.strip().startswith("ssh ")]
    assert ssh, plan.text
    assert option(ssh[0], "-L") == f"{port}:localhost:{port}" and ssh[0][-1].startswith(user + "@")


def assert_app_unit(plan: Plan, user: str, port: int) -> None:
    """The app's unit runs our venv's streamlit as ``user``, restarts on failure and listens on localhost only."""
    unit = plan.unit("/etc/systemd/system/sfm-explorer.service")
    assert unit_value(unit, "Service", "User") == [user]
    assert unit_value(unit, "Service", "Restart") == ["on-failure"]
    assert unit_value(unit, "Install", "WantedBy") == ["multi-user.target"]
    (exec_start,) = unit_value(unit, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[:5] == [f"{REPO}/.venv/bin/python", "-m", "streamlit", "run", "streamlit_app.py"]
    assert option(argv, "--server.address") == "127.0.0.1" and option(argv, "--server.port") == str(port)
    assert plan.runs("systemctl", "enable", "sfm-explorer")


def assert_torch(plan: Plan, index: str, spec: str) -> None:
    """torch comes from ``index`` with ``spec`` before the requirements (whose plain pin it then satisfies)."""
    pips = plan.runs("-m", "pip", "install")
    torch = [c for c in pips if any(a.startswith("torch==") for a in c)]
    assert len(torch) == 1, pips
    assert option(torch[0], "--index-url") == index and spec in torch[0]
    reqs = [c for c in pips if "-r" in c]
    assert reqs and option(reqs[0], "-r") == str(REPO / "requirements.txt")
    assert pips.index(torch[0]) < pips.index(reqs[0])


def assert_changed_nothing(log: Path) -> None:
    assert not log.exists(), "dry run called: " + log.read_text()


def test_dry_run_gpu_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", path_prefix=[stub_dir, fake_gpu(tmp_path, "12.8")])
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    assert_torch(plan, "https://download.pytorch.org/whl/cu128", f"torch=={TORCH_PIN}+cu128")
    # the CUDA build of the pinned pycolmap replaces the CPU one (PatchMatch stereo), after the requirements
    swap = plan.runs("-m", "pip", "install", f"pycolmap-cuda12=={COLMAP_PIN}")
    gone = plan.runs("-m", "pip", "uninstall", "-y", "pycolmap")
    reqs = [c for c in plan.runs("-m", "pip", "install") if "-r" in c]
    assert swap and gone and plan.commands.index(reqs[0]) < plan.commands.index(gone[0]) < plan.commands.index(swap[0])
    weights = plan.runs(str(REPO / "setup" / "fetch_weights.py"))
    assert weights and "small" in option(weights[0], "--dinov2").split(",")
    assert_app_unit(plan, "ubuntu", 8501)
    assert_tunnel(plan, "ubuntu", 8501)
    # nothing public without --public: no proxy installed or configured
    assert not [f for f in plan.files if f.startswith("/etc/nginx")] and not plan.runs("nginx")
    assert not plan.runs("apt-get", "install", "nginx")
    assert_changed_nothing(log)


def test_dry_run_cpu_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    # requirements' pin, from the PyTorch CPU index (PyPI's Linux torch would bring the CUDA libraries)
    assert_torch(plan, "https://download.pytorch.org/whl/cpu", f"torch=={TORCH_PIN}")
    assert not plan.runs("-m", "pip", "uninstall", "-y", "pycolmap")  # the CPU build stays
    assert_app_unit(plan, "ubuntu", 8501)
    assert_tunnel(plan, "ubuntu", 8501)
    assert not [f for f in plan.files if f.startswith("/etc/nginx")]
    assert_changed_nothing(log)


def test_dry_run_api_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", "--api", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    # the token lives in a root-only file that systemd reads; it is never on a command line of the plan
    env_file = "/etc/sfm-explorer-api.env"
    assert plan.files[env_file]["mode"] == "600" and plan.files[env_file]["group"] == "root"
    unit = plan.unit("/etc/systemd/system/sfm-explorer-api.service")
    assert unit_value(unit, "Service", "EnvironmentFile") == [env_file]
    assert unit_value(unit, "Service", "User") == ["ubuntu"]
    argv = shlex.split(unit_value(unit, "Service", "ExecStart")[0])
    assert argv[1:4] == ["-m", "backend", "serve"]
    assert option(argv, "--host") == "127.0.0.1" and option(argv, "--port") == "8000"
    assert option(argv, "--token") == "${SFM_API_TOKEN}"  # expanded by systemd from the environment file
    assert plan.runs("systemctl", "enable", "sfm-explorer-api")
    assert_changed_nothing(log)
    res = run_script("--dry-run", "--api-port", "8501", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 2 and "--api-port" in res.stderr and not parse_plan(res.stdout).commands


def test_dry_run_ray_head_and_worker_plans(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--user", "ubuntu", "--ray-head", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    ray = plan.unit("/etc/systemd/system/sfm-explorer-ray.service")
    argv = shlex.split(unit_value(ray, "Service", "ExecStart")[0])
    assert argv[1:4] == ["start", "--block", "--head"] and option(argv, "--port") == "6379"
    # the worker processes' ports are a fixed range, so one security-group rule covers them
    assert 0 < int(option(argv, "--max-worker-port")) - int(option(argv, "--min-worker-port")) < 2000
    # the app's runs use the cluster
    assert "SFM_EXECUTOR=ray" in unit_value(plan.unit("/etc/systemd/system/sfm-explorer.service"), "Service",
                                            "Environment")
    res = run_script("--dry-run", "--user", "ubuntu", "--ray-worker", "172.31.5.10:6379", path_prefix=[stub_dir],
                     no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    worker = parse_plan(res.stdout)
    argv = shlex.split(unit_value(worker.unit("/etc/systemd/system/sfm-explorer-ray.service"), "Service",
                                  "ExecStart")[0])
    assert option(argv, "--address") == "172.31.5.10:6379" and "--head" not in argv
    assert "/etc/systemd/system/sfm-explorer.service" not in worker.files  # a worker serves no app
    assert_changed_nothing(log)
    res = run_script("--dry-run", "--ray-worker", "not an address", path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 2 and "HOST:PORT" in res.stderr


@pytest.mark.parametrize("cuda, expect", [("12.9", "cu128"), ("12.6", "cu126"), ("13.0", "cu128")])
def test_dry_run_cuda_variant(tmp_path, stubs, cuda, expect):
    res = run_script("--dry-run", "--only", "python", path_prefix=[stubs[0], fake_gpu(tmp_path, cuda)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert_torch(parse_plan(res.stdout), f"https://download.pytorch.org/whl/{expect}", f"torch=={TORCH_PIN}+{expect}")


def test_dry_run_cpu_forced_on_a_gpu(tmp_path, stubs):
    res = run_script("--dry-run", "--only", "python", "--cpu", path_prefix=[stubs[0], fake_gpu(tmp_path, "12.8")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert_torch(parse_plan(res.stdout), "https://download.pytorch.org/whl/cpu", f"torch=={TORCH_PIN}")


def test_old_driver_fails_clearly(tmp_path, stubs):
    res = run_script("--dry-run", path_prefix=[stubs[0], fake_gpu(tmp_path, "11.8")])
    assert res.returncode == 1
    assert "11.8" in res.stderr and "--cpu" in res.stderr  # names the driver's CUDA and the way out
    assert not parse_plan(res.stdout).runs("-m", "pip", "install")  # stops before installing anything


def test_dry_run_public_plan(tmp_path, stubs):
    stub_dir, log = stubs
    res = run_script("--dry-run", "--public", "--password", "s3cret-Pw", "--port", "8600", "--user", "ubuntu",
                     path_prefix=[stub_dir], no_gpu=True)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    assert plan.runs("apt-get", "install", "nginx")
    assert_app_unit(plan, "ubuntu", 8600)  # the app itself stays on localhost
    assert_tunnel(plan, "ubuntu", 8600)
    site = "/etc/nginx/sites-available/sfm-explorer"
    conf = nginx_blocks(plan.files[site]["content"])
    (server,) = [children for words, children in directives(conf, "server")]
    assert ["listen", "80", "default_server"] in [w for w, _ in directives(server, "listen")]
    # every request needs the password, from a file readable by nginx's group only
    (auth_file,) = [w[1] for w, _ in directives(server, "auth_basic_user_file")]
    assert plan.files[auth_file]["mode"] == "640" and plan.files[auth_file]["group"] == "www-data"
    assert plan.files[auth_file]["content"].startswith("sfm:$apr1$")
    assert directives(server, "auth_basic")
    # uploads as large as the app accepts get through
    (body,) = [w[1] for w, _ in directives(server, "client_max_body_size")]
    assert body.endswith("m") and int(body[:-1]) > UPLOAD_MB
    # each location goes to the app on localhost; the websocket location upgrades the connection
    locations = {w[1]: children for w, children in directives(server, "location")}
    assert set(locations) == {"/", "/_stcore/stream"}
    for children in locations.values():
        assert [w[1] for w, _ in directives(children, "proxy_pass")] == ["http://127.0.0.1:8600"]
    headers = {w[1]: w[2] for w, _ in directives(locations["/_stcore/stream"], "proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade" and "Connection" in headers
    assert plan.runs("ln", "-sfn", site, "/etc/nginx/sites-enabled/sfm-explorer")
    assert plan.runs("nginx", "-t") and plan.runs("systemctl", "reload", "nginx")
    assert "s3cret-Pw" not in res.stdout + res.stderr  # never printed, never on a command line
    assert_changed_nothing(log)


def test_dry_run_ubuntu_adds_deadsnakes(tmp_path, stubs):
    osr = tmp_path / "os-release"
    osr.write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n')
    fresh = tmp_path / "fresh"  # a fresh instance: dpkg lists no package as installed
    fresh.mkdir()
    _write_exe(fresh / "dpkg-query", "#!/bin/sh\nexit 1\n")
    res = run_script("--dry-run", "--only", "system", path_prefix=[stubs[0], fresh], no_gpu=True,
                     env_extra={"SFM_OS_RELEASE": str(osr), "PYTHON_BIN": "python3.11-absent"})
    assert res.returncode == 0, res.stdout + res.stderr
    plan = parse_plan(res.stdout)
    # Ubuntu 22.04 has no python3.11 of its own: the deadsnakes PPA is added before the install that needs it
    ppa = plan.runs("add-apt-repository", "-y", "ppa:deadsnakes/ppa")
    install = plan.runs("apt-get", "install", "python3.11-venv")
    assert ppa and install and plan.commands.index(ppa[0]) < plan.commands.index(install[0])


def test_dry_run_changes_no_data(tmp_path, stubs):
    src = make_images(tmp_path / "scene")
    data = tmp_path / "data"
    res = run_script("--dry-run", "--only", "data", "--data", str(src), "--data-dir", str(data),
                     path_prefix=[stubs[0]])
    assert res.returncode == 0, res.stdout + res.stderr
    imports = parse_plan(res.stdout).runs(str(REPO / "setup" / "ec2" / "import_data.py"))
    assert imports and str(src) in imports[0]
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
