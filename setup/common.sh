# shellcheck shell=bash
# Setup steps shared by setup/setup.sh and other bootstraps (e.g. a cloud VM's user-data).
#
# Source it from bash after setting REPO_ROOT (defaults to this file's parent folder):
#     source setup/common.sh
#     install_debian_packages && create_venv && install_python_requirements && fetch_weights
#
# Every function is idempotent and quick when there is nothing to do, prints what it does,
# and returns non-zero (with a message saying what to do) when it cannot do its job.
# Nothing here sets shell options: the caller chooses (setup.sh uses set -euo pipefail).

: "${REPO_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${VENV_DIR:=$REPO_ROOT/.venv}"
: "${PYTHON_BIN:=python3.11}"

# Default torch: the CPU build pinned in requirements.txt (pip takes it from /opt/wheels or PyPI).
DEFAULT_TORCH_SPEC="torch==2.13.0"

# Debian packages the app and its tests need:
#   libusb-1.0-0                     open3d imports it
#   libvulkan1 mesa-vulkan-drivers   open3d offscreen rendering (lavapipe)
#   libgl1 libgomp1                  open3d / pycolmap / torch runtime libraries
#   chromium chromium-driver         browser tests (Playwright drives /usr/bin/chromium)
#   (the linter)  shellcheck         CI lint of setup/*.sh
# The runtime part is split out so that other bootstraps (setup/ec2_bootstrap.sh, which serves the app on
# Ubuntu, where chromium is a snap) install the same runtime libraries without the test-only packages.
DEBIAN_RUNTIME_PACKAGES=(
    libusb-1.0-0
    libvulkan1 mesa-vulkan-drivers
    libgl1 libgomp1
)
DEBIAN_TEST_PACKAGES=(
    chromium chromium-driver
    shellcheck
)
DEBIAN_PACKAGES=("${DEBIAN_RUNTIME_PACKAGES[@]}" "${DEBIAN_TEST_PACKAGES[@]}")

# Seconds apt-get waits for the dpkg lock (a fresh cloud VM runs unattended-upgrades at boot).
: "${APT_LOCK_TIMEOUT_S:=300}"

_log() { printf '    %s\n' "$*"; }
_err() { printf 'ERROR: %s\n' "$*" >&2; }

_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# debian_packages_wanted: print (one per line) $DEBIAN_PACKAGES, plus python3.11 and python3.11-venv when
# $PYTHON_BIN cannot make a venv (a bare Debian 12 has python3.11 but not its venv module).
debian_packages_wanted() {
    printf '%s\n' "${DEBIAN_PACKAGES[@]}"
    if ! "$PYTHON_BIN" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        printf '%s\n' python3.11 python3.11-venv
    fi
}

# debian_packages_missing: print (one per line) the wanted packages that dpkg does not list as installed.
# Read-only: bootstraps use it to show their plan (--dry-run) without running apt.
debian_packages_missing() {
    local pkg
    while IFS= read -r pkg; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done < <(debian_packages_wanted)
}

# install_debian_packages: apt-get install the packages above that are missing (skips apt when none is).
install_debian_packages() {
    local missing=() wanted=()
    mapfile -t wanted < <(debian_packages_wanted)
    mapfile -t missing < <(debian_packages_missing)
    if ((${#missing[@]} == 0)); then
        _log "all ${#wanted[@]} Debian packages already installed; skipping apt"
        return 0
    fi
    _log "missing Debian packages: ${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        _err "apt-get not found: install the equivalents of: ${missing[*]} (or re-run with --no-apt)"
        return 1
    fi
    local sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            _err "not root and no sudo: as root run"
            _err "  apt-get update && apt-get install -y ${missing[*]}"
            _err "then re-run this script (or pass --no-apt to skip this step)"
            return 1
        fi
    fi
    # apt's chatter (debconf, invoke-rc.d notes) goes to a log that is shown only when apt fails
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/sfm-apt.XXXXXX.log")"
    _log "apt-get update && apt-get install -y ${missing[*]}   (log: $log)"
    if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT_S" &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT_S" "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        _err "apt-get failed (full log: $log). Install by hand: apt-get update && apt-get install -y ${missing[*]}"
        return 1
    fi
    rm -f "$log"
    _log "installed: ${missing[*]}"
}

# create_venv: make $VENV_DIR with python3.11 unless a working one is there already.
create_venv() {
    local py="$VENV_DIR/bin/python"
    if [[ -x "$py" ]] && "$py" -c 'import sys, pip; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then
        _log "virtualenv ok: $VENV_DIR ($("$py" --version 2>&1))"
        return 0
    fi
    if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
        _err "$PYTHON_BIN not found: install Python 3.11 (Debian 12: apt-get install python3.11 python3.11-venv) or set PYTHON_BIN"
        return 1
    fi
    if [[ -e "$VENV_DIR" ]]; then
        _log "virtualenv at $VENV_DIR is broken or not Python 3.11; recreating it"
        rm -rf "$VENV_DIR"
    fi
    "$PYTHON_BIN" -m venv "$VENV_DIR"
    _log "created virtualenv $VENV_DIR ($("$py" --version 2>&1))"
}

# _requirements_satisfied: every 'name==version' pin of requirements.txt is installed in the venv
# (metadata only, no imports: well under a second).
_requirements_satisfied() {
    "$VENV_DIR/bin/python" - "$REPO_ROOT/requirements.txt" <<'PY' >/dev/null 2>&1
import re, sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line)
    if not m:
        continue
    try:
        have = version(m.group(1))
    except PackageNotFoundError:
        try:  # a CUDA build of pycolmap (pycolmap-cuda12) stands in for pycolmap at the same version
            have = version(m.group(1) + "-cuda12") if m.group(1) == "pycolmap" else ""
        except PackageNotFoundError:
            have = ""
        if not have:
            sys.exit(1)
    if have.split("+", 1)[0] != m.group(2):
        sys.exit(1)
PY
}

# install_python_requirements [TORCH_SPEC [INDEX_URL]]
#   pip install -r requirements.txt into the venv. With TORCH_SPEC (e.g. torch==2.13.0+cu128) that
#   torch is installed first, from INDEX_URL or, for a +cuXXX spec, https://download.pytorch.org/whl/cuXXX;
#   requirements' torch==2.13.0 then accepts it; a +cuXXX spec also swaps pycolmap for pycolmap-cuda12 at the same
#   version (PatchMatch stereo is CUDA only). Skips pip entirely when the stamp
#   $VENV_DIR/.requirements.sha256 matches requirements.txt (and the torch spec) and the pins are installed.
install_python_requirements() {
    local torch_spec="${1:-}" index_url="${2:-}"
    local pip=("$VENV_DIR/bin/python" -m pip --disable-pip-version-check)
    local req="$REPO_ROOT/requirements.txt" stamp="$VENV_DIR/.requirements.sha256"
    local want
    want="$(_sha256 "$req") ${torch_spec:-$DEFAULT_TORCH_SPEC}"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && _requirements_satisfied; then
        _log "requirements unchanged since last install (stamp $stamp); skipping pip"
        return 0
    fi
    rm -f "$stamp"
    if [[ -n "$torch_spec" ]]; then
        if [[ -z "$index_url" && "$torch_spec" =~ \+(cu[0-9]+)$ ]]; then
            index_url="https://download.pytorch.org/whl/${BASH_REMATCH[1]}"
        fi
        local index_args=()
        if [[ -n "$index_url" ]]; then index_args=(--index-url "$index_url"); fi
        _log "installing $torch_spec${index_url:+ from $index_url}"
        "${pip[@]}" install -q "${index_args[@]}" "$torch_spec"
    fi
    _log "pip install -r requirements.txt (torch stays pinned; this takes minutes on a new venv)"
    "${pip[@]}" install -q -r "$req"
    if [[ "$torch_spec" == *+cu* ]]; then
        # COLMAP's PatchMatch stereo (densify --method patchmatch) is CUDA only: the CUDA build of the same pycolmap
        local colmap_pin
        colmap_pin="$(sed -n 's/^pycolmap==\([^ #]*\).*/\1/p' "$req")"
        _log "installing pycolmap-cuda12==$colmap_pin in place of pycolmap (CUDA: dense multi-view stereo)"
        "${pip[@]}" uninstall -q -y pycolmap
        "${pip[@]}" install -q "pycolmap-cuda12==$colmap_pin"
    fi
    if "${pip[@]}" show -q torchvision >/dev/null 2>&1; then
        _err "torchvision is installed in $VENV_DIR: it cannot import beside the pinned torch and breaks transformers;"
        _err "remove it with: $VENV_DIR/bin/python -m pip uninstall -y torchvision"
        return 1
    fi
    printf '%s\n' "$want" >"$stamp"
    _log "requirements installed; stamp written to $stamp"
}

# fetch_weights [fetch_weights.py args...]: install and verify the network weights (weights/manifest.json).
fetch_weights() {
    "$VENV_DIR/bin/python" "$REPO_ROOT/setup/fetch_weights.py" "$@"
}

# install_playwright_python: the browser tests drive Debian's /usr/bin/chromium through the playwright
# package from requirements.txt; no browser is downloaded. This only checks chromium is there.
install_playwright_python() {
    local chromium
    chromium="$(command -v chromium || true)"
    if [[ -z "$chromium" ]]; then
        _err "chromium not found: install it with: apt-get install -y chromium chromium-driver"
        return 1
    fi
    local ver
    if ! ver="$("$chromium" --version 2>/dev/null)"; then
        _err "$chromium --version failed: reinstall it with: apt-get install --reinstall -y chromium"
        return 1
    fi
    _log "browser for tests: $chromium ($ver)"
}
