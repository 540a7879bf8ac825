#!/usr/bin/env bash
# Turn a fresh Ubuntu 22.04/24.04 EC2 instance into a running SfM Explorer with one command: system packages,
# Python 3.11, .venv with the pinned requirements (CUDA torch when nvidia-smi works, CPU torch otherwise),
# verified weights, optional data, and a systemd service on localhost (reach it through an SSH tunnel).
#
#   bash setup/ec2_bootstrap.sh [options]
#
#   --data PATH_OR_URL      import a folder, a .zip or an http(s) URL of a .zip into the data dir (repeatable)
#   --data-dir DIR          where data goes (default: <repo>/data)
#   --kaggle                fetch Image Matching Challenge data with the Kaggle CLI (needs a Kaggle token)
#   --kaggle-competition C  the competition (default: image-matching-challenge-2025; implies --kaggle)
#   --kaggle-scenes a,b     extract only these folders of the competition's zip, e.g. ETs,stairs (the
#                           dataset folders under train/ and test/), plus its top-level csv files
#   --public                also serve on port 80 through nginx, behind HTTP basic auth
#   --password PW           basic-auth password for --public (default: generated and printed once;
#                           also read from $SFM_EXPLORER_PASSWORD)
#   --auth-user NAME        basic-auth user name (default: sfm)
#   --port N                local port of the app (default: 8501)
#   --api                   also run the HTTP API (python -m backend serve) as a service on 127.0.0.1, with a
#                           bearer token generated once and printed
#   --api-port N            local port of the API (default: 8000)
#   --ray-head              also run a Ray head node as a service (port 6379); the app and the API then compute
#                           features and matches on the cluster (SFM_EXECUTOR=ray); the CLI takes
#                           --executor ray --ray-address auto
#   --ray-worker ADDRESS    make this instance a Ray worker node that joins the head at ADDRESS
#                           (HEAD_PRIVATE_IP:6379), with no app service; every node needs this same checkout at
#                           the same path (see docs/scale.md, "Many machines")
#   --user NAME             user the service runs as (default: the invoking non-root user)
#   --repo-dir DIR          the SfM Explorer checkout (default: the one holding this script)
#   --dinov2 WHICH          DINOv2 weights to fetch: small, base, small,base or none (default: small,base)
#   --cpu                   install the CPU torch even when a GPU is found
#   --torch SPEC            install this torch instead of the detected one (e.g. torch==2.13.0+cu126; the
#   --torch-index URL       PyTorch index is derived from +cpu/+cuXXX, or given with --torch-index)
#   --no-service            set everything up, install no service
#   --only STEPS            run only these steps: system,python,weights,data,service,api,proxy
#   --dry-run               print every step and the commands it would run; change nothing
#   -h, --help              this help
#
# Run it as the user that will own the app (ubuntu, with sudo), or as root with --user NAME.
# Idempotent: a second run checks everything and changes nothing. Works from any folder.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$SELF"; }

SERVICE_NAME=sfm-explorer
UNIT_PATH=/etc/systemd/system/$SERVICE_NAME.service
API_SERVICE_NAME=sfm-explorer-api
API_UNIT_PATH=/etc/systemd/system/$API_SERVICE_NAME.service
API_ENV=/etc/$API_SERVICE_NAME.env
RAY_SERVICE_NAME=sfm-explorer-ray
RAY_UNIT_PATH=/etc/systemd/system/$RAY_SERVICE_NAME.service
NGINX_SITE=/etc/nginx/sites-available/$SERVICE_NAME
NGINX_ENABLED=/etc/nginx/sites-enabled/$SERVICE_NAME
NGINX_DEFAULT_ENABLED=/etc/nginx/sites-enabled/default
HTPASSWD=/etc/nginx/$SERVICE_NAME.htpasswd
# the Kaggle CLI, in its own venv (not the app's): 2.2.4 checked here; it imports six without declaring it
KAGGLE_PIP=(kaggle==2.2.4 six==1.17.0)
IMDS=http://169.254.169.254/latest
ALL_STEPS=(system python weights data service api ray proxy)

REPO_DIR=""
DATA_DIR=""
DATA_SOURCES=()
KAGGLE=0
KAGGLE_COMPETITION=image-matching-challenge-2025
KAGGLE_SCENES=""
PUBLIC=0
PASSWORD="${SFM_EXPLORER_PASSWORD:-}"
AUTH_USER=sfm
PORT=8501
API=0
API_PORT=8000
RAY_ROLE=""
RAY_HEAD_ADDRESS=""
SVC_USER=""
DINOV2=small,base
TORCH_SPEC=""
TORCH_INDEX=""
FORCE_CPU=0
SERVICE=1
ONLY=""
DRY_RUN=0
ORIG_ARGS=("$@")

die_usage() { printf 'ec2_bootstrap: %s\n\n' "$1" >&2; usage >&2; exit 2; }
while (($#)); do
    opt="$1" val=""
    case "$opt" in
        --*=*) val="${opt#*=}"; opt="${opt%%=*}" ;;
        --data | --data-dir | --kaggle-competition | --kaggle-scenes | --password | --auth-user | --port | --api-port | \
            --user | --repo-dir | --dinov2 | --torch | --torch-index | --only | --ray-worker)
            (($# >= 2)) || die_usage "$opt needs a value"
            val="$2"; shift ;;
    esac
    case "$opt" in
        --data) DATA_SOURCES+=("$val") ;;
        --data-dir) DATA_DIR="$val" ;;
        --kaggle) KAGGLE=1 ;;
        --kaggle-competition) KAGGLE_COMPETITION="$val"; KAGGLE=1 ;;
        --kaggle-scenes) KAGGLE_SCENES="$val"; KAGGLE=1 ;;
        --public) PUBLIC=1 ;;
        --password) PASSWORD="$val" ;;
        --auth-user) AUTH_USER="$val" ;;
        --port) PORT="$val" ;;
        --api) API=1 ;;
        --api-port) API_PORT="$val"; API=1 ;;
        --ray-head) RAY_ROLE="head" ;;
        --ray-worker) RAY_ROLE="worker"; RAY_HEAD_ADDRESS="$val" ;;
        --user) SVC_USER="$val" ;;
        --repo-dir) REPO_DIR="$val" ;;
        --dinov2) DINOV2="$val" ;;
        --torch) TORCH_SPEC="$val" ;;
        --torch-index) TORCH_INDEX="$val" ;;
        --cpu) FORCE_CPU=1 ;;
        --no-service) SERVICE=0 ;;
        --only) ONLY="$val" ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die_usage "unknown option: $1" ;;
    esac
    shift
done

# ----------------------------------------------------------------------------- validate arguments

if [[ ! "$PORT" =~ ^[1-9][0-9]{3,4}$ ]] || ((PORT > 65535)); then die_usage "--port must be 1024..65535 (got $PORT)"; fi
if [[ ! "$API_PORT" =~ ^[1-9][0-9]{3,4}$ ]] || ((API_PORT > 65535)); then
    die_usage "--api-port must be 1024..65535 (got $API_PORT)"
fi
((API_PORT != PORT)) || die_usage "--api-port must differ from --port ($PORT)"
if [[ "$RAY_ROLE" == worker ]] && [[ ! "$RAY_HEAD_ADDRESS" =~ ^[A-Za-z0-9.-]+:[1-9][0-9]{0,4}$ ]]; then
    die_usage "--ray-worker needs the head's address as HOST:PORT, e.g. 172.31.5.10:6379 (got '$RAY_HEAD_ADDRESS')"
fi
[[ "$AUTH_USER" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--auth-user may use letters, digits, . _ - (got $AUTH_USER)"
[[ "$KAGGLE_COMPETITION" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--kaggle-competition: not a competition name"
[[ "$PASSWORD" != *$'\n'* ]] || die_usage "--password must be one line"
if [[ -n "$PASSWORD" ]] && ((!PUBLIC)) && [[ ",$ONLY," != *,proxy,* ]]; then
    printf 'WARNING: --password has no effect without --public\n' >&2
fi

REPO_ROOT="$(cd "${REPO_DIR:-$SCRIPT_DIR/..}" 2>/dev/null && pwd)" || die_usage "--repo-dir $REPO_DIR: no such folder"
[[ -f "$REPO_ROOT/requirements.txt" && -f "$REPO_ROOT/setup/common.sh" ]] ||
    die_usage "$REPO_ROOT is not an SfM Explorer checkout (no requirements.txt / setup/common.sh)"
DATA_DIR="$(realpath -m "${DATA_DIR:-$REPO_ROOT/data}")"
for i in "${!DATA_SOURCES[@]}"; do # local paths are relative to where the command was typed
    if [[ "${DATA_SOURCES[$i]}" != *://* ]]; then
        DATA_SOURCES[i]="$(realpath -m "${DATA_SOURCES[$i]/#\~/$HOME}")"
    fi
done
cd "$REPO_ROOT"
# shellcheck source=setup/common.sh
source "$REPO_ROOT/setup/common.sh"
IMPORT_DATA="$REPO_ROOT/setup/ec2/import_data.py"

STEPS=()
if [[ -n "$ONLY" ]]; then
    IFS=',' read -r -a STEPS <<<"$ONLY"
    for s in "${STEPS[@]}"; do
        [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || die_usage "--only: unknown step '$s' (steps: ${ALL_STEPS[*]})"
    done
    if [[ " ${STEPS[*]} " == *" proxy "* ]] && ((!PUBLIC)); then
        die_usage "--only proxy needs --public"
    fi
else
    STEPS=(system python weights)
    if ((${#DATA_SOURCES[@]} || KAGGLE)); then STEPS+=(data); fi
    if [[ "$RAY_ROLE" == worker ]]; then
        STEPS+=(ray) # a worker node computes for the head; it serves no app
    else
        if ((SERVICE)); then STEPS+=(service); fi
        if ((SERVICE && API)); then STEPS+=(api); fi
        if [[ "$RAY_ROLE" == head ]]; then STEPS+=(ray); fi
        if ((PUBLIC)); then STEPS+=(proxy); fi
    fi
fi
has_step() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

# ----------------------------------------------------------------------------- output, failures, commands

STEP="(start)"
STEP_START=$SECONDS
STEP_NO=0
retry_command() { # the original command line, the password masked
    local a out=() mask=0
    for a in "${ORIG_ARGS[@]}"; do
        if ((mask)); then out+=("'***'"); mask=0; continue; fi
        case "$a" in
            --password) out+=("$a"); mask=1 ;;
            --password=*) out+=("--password='***'") ;;
            *) out+=("$(printf '%q' "$a")") ;;
        esac
    done
    printf 'bash %q %s' "$SELF" "${out[*]}"
}
CHILD="${SFM_EC2_BOOTSTRAP_CHILD:-0}" # 1 in the copy that root runs as the service user (the parent reports)
on_exit() {
    local rc=$?
    if ((rc != 0 && rc != 2 && !CHILD)); then
        printf '\nEC2 BOOTSTRAP FAILED in step "%s" (exit %d).\n' "$STEP" "$rc" >&2
        printf 'Fix the problem reported above, then re-run (finished steps are checked and skipped quickly):\n' >&2
        printf '    %s\n' "$(retry_command)" >&2
    fi
}
trap on_exit EXIT

step() {
    STEP="$1"
    STEP_START=$SECONDS
    STEP_NO=$((STEP_NO + 1))
    printf '==> [%d/%d] %s\n' "$STEP_NO" "${#STEPS[@]}" "$STEP"
}
done_step() { printf '    (%s: %ds)\n' "$STEP" "$((SECONDS - STEP_START))"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
fail() { _err "$*"; exit 1; }

ROOT_CMD=()
if ((EUID != 0)); then ROOT_CMD=(sudo); fi

# with_ray_env UNIT_TEXT: on a Ray head (--ray-head) the app's and the API's runs use the cluster
with_ray_env() {
    if [[ "$RAY_ROLE" == head ]]; then
        printf '%s\n' "${1//Environment=HF_HUB_OFFLINE=1/Environment=HF_HUB_OFFLINE=1
Environment=SFM_EXECUTOR=ray
Environment=SFM_RAY_ADDRESS=auto}"
    else
        printf '%s\n' "$1"
    fi
}

# quote ARGS...: the arguments as a shell command line (quoted only where needed)
quote() {
    local a out=()
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("$(printf '%q' "$a")"); fi
    done
    printf '%s' "${out[*]}"
}
# run CMD...: print it (+ prefix); run it unless --dry-run
run() {
    printf '    + %s\n' "$(quote "$@")"
    ((DRY_RUN)) || "$@"
}
# run_root CMD...: the same as root (sudo when not root)
run_root() { run "${ROOT_CMD[@]}" "$@"; }
# as_root CMD...: a read-only command as root (reading root-only files for the checks; never prompts)
as_root() {
    if ((EUID == 0)); then "$@"; else sudo -n "$@"; fi
}
dry_note() { if ((DRY_RUN)); then printf '      (dry run: %s)\n' "$*"; fi; }

# render TEMPLATE KEY VALUE...: the template with each @KEY@ replaced (literally) by VALUE
render() {
    local text
    text="$(<"$1")"
    shift
    while (($# >= 2)); do
        text="${text//"$1"/"$2"}"
        shift 2
    done
    printf '%s\n' "$text"
}

# install_text CONTENT DEST MODE GROUP: write CONTENT to DEST (owner root) unless it is there already.
# Returns 0 when it wrote (or would write), 1 when DEST was identical.
install_text() {
    local content="$1" dest="$2" mode="$3" group="$4" current=""
    if [[ -r "$dest" ]]; then
        current="$(cat "$dest")"
    else
        current="$(as_root cat "$dest" 2>/dev/null || true)"
    fi
    if [[ "$current" == "${content%$'\n'}" ]] &&
        [[ "$(stat -c '%a %U %G' "$dest" 2>/dev/null || true)" == "$mode root $group" ]]; then
        printf '    %s unchanged\n' "$dest"
        return 1
    fi
    if ((DRY_RUN)); then
        printf '    + %sinstall -m %s -o root -g %s <rendered> %s   # content:\n' "${ROOT_CMD[*]/%/ }" "$mode" "$group" "$dest"
        printf '%s\n' "$content" | sed 's/^/        | /'
        return 0
    fi
    local tmp
    tmp="$(umask 077 && mktemp "${TMPDIR:-/tmp}/sfm-ec2.XXXXXX")"
    printf '%s\n' "${content%$'\n'}" >"$tmp"
    run_root install -m "$mode" -o root -g "$group" "$tmp" "$dest"
    rm -f "$tmp"
    return 0
}

# ----------------------------------------------------------------------------- who, what, where

# The service user: --user, else the user behind sudo, else the invoking user, else the repo's owner.
if [[ -z "$SVC_USER" ]]; then
    if [[ -n "${SUDO_USER:-}" && "${SUDO_USER}" != root ]]; then
        SVC_USER="$SUDO_USER"
    elif ((EUID != 0)); then
        SVC_USER="$(id -un)"
    else
        owner="$(stat -c %U "$REPO_ROOT")"
        if [[ "$owner" != root ]]; then SVC_USER="$owner"; fi
    fi
fi
SVC_HOME=""
SVC_GROUP=""
if [[ -n "$SVC_USER" ]] && getent passwd "$SVC_USER" >/dev/null 2>&1; then
    SVC_HOME="$(getent passwd "$SVC_USER" | cut -d: -f6)"
    SVC_GROUP="$(id -gn "$SVC_USER")"
fi

# torch_index SPEC: the PyTorch wheel index for a +cpu / +cuXXX spec (empty for a plain spec)
torch_index() {
    if [[ "$1" =~ \+(cpu|cu[0-9]+)$ ]]; then
        printf 'https://download.pytorch.org/whl/%s\n' "${BASH_REMATCH[1]}"
    fi
}

has_nvidia_pci() { grep -qsx '0x10de' /sys/bus/pci/devices/*/vendor; }

# detect_torch: set TORCH_SPEC / TORCH_INDEX / TORCH_WHY; on a GPU the driver's CUDA version (nvidia-smi)
# picks the wheel. The CPU build is requirements' pin from the PyTorch CPU index: PyPI's Linux torch would
# pull several GB of CUDA libraries.
TORCH_WHY=""
CPU_INDEX=https://download.pytorch.org/whl/cpu
detect_torch() {
    local base="$DEFAULT_TORCH_SPEC" # torch==2.13.0, the pin of requirements.txt
    if [[ -n "$TORCH_SPEC" ]]; then
        TORCH_WHY="given with --torch"
        [[ -n "$TORCH_INDEX" ]] || TORCH_INDEX="$(torch_index "$TORCH_SPEC")"
        return 0
    fi
    if ((FORCE_CPU)); then
        TORCH_SPEC="$base" TORCH_INDEX="$CPU_INDEX" TORCH_WHY="--cpu: CPU build"
        return 0
    fi
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        TORCH_SPEC="$base" TORCH_INDEX="$CPU_INDEX"
        TORCH_WHY="no nvidia-smi: CPU build"
        if has_nvidia_pci; then
            warn "an NVIDIA GPU is attached but nvidia-smi is missing (no driver): installing the CPU torch."
            warn "For the GPU: use an AMI with the driver (AWS Deep Learning Base OSS Nvidia Driver GPU AMI, Ubuntu),"
            warn "or 'sudo apt-get install -y ubuntu-drivers-common && sudo ubuntu-drivers install --gpgpu', reboot, re-run."
        fi
        return 0
    fi
    local out
    if ! out="$(nvidia-smi 2>&1)"; then
        printf '%s\n' "$out" | tail -n 5 >&2
        fail "nvidia-smi failed: the NVIDIA driver is not working (after a driver install, reboot). Fix it and re-run, or pass --cpu for the CPU build"
    fi
    if [[ ! "$out" =~ CUDA\ Version:\ *([0-9]+)\.([0-9]+) ]]; then
        fail "nvidia-smi printed no 'CUDA Version: X.Y'; pass --torch $base+cu128 (or +cu126), or --cpu"
    fi
    local major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}" cu
    local v=$((major * 100 + minor))
    if ((v >= 1208)); then
        cu=cu128
    elif ((v >= 1206)); then
        cu=cu126
    else
        fail "the NVIDIA driver supports CUDA $major.$minor, but torch ${base#torch==} CUDA builds need 12.6 or newer: upgrade the driver (e.g. sudo apt-get install -y nvidia-driver-570-server; reboot) or pass --cpu for the CPU build"
    fi
    local gpu
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
    TORCH_SPEC="$base+$cu"
    TORCH_INDEX="$(torch_index "$TORCH_SPEC")"
    TORCH_WHY="GPU ${gpu:-found}, driver CUDA $major.$minor -> $cu"
}

detect_torch

# Which steps run as the service user (python, weights, data) and which as root (system, service, proxy)
USER_STEPS=()
for s in python weights data; do if has_step "$s"; then USER_STEPS+=("$s"); fi; done
SWITCH_USER=0
if ((EUID == 0)) && [[ -n "$SVC_USER" && "$SVC_USER" != root ]] && ((${#USER_STEPS[@]})); then
    SWITCH_USER=1
fi
needs_root=0
for s in system service ray proxy; do if has_step "$s"; then needs_root=1; fi; done
if [[ -n "$SVC_USER" && -z "$SVC_HOME" ]] && ((!DRY_RUN)) && ((SWITCH_USER || needs_root)); then
    fail "user '$SVC_USER' does not exist (--user NAME: the account the app runs as, e.g. ubuntu)"
fi
if ((needs_root && EUID != 0 && !DRY_RUN)) && ! command -v sudo >/dev/null 2>&1; then
    fail "steps ${STEPS[*]} need root: run as root (with --user NAME for the service) or install sudo"
fi

# ----------------------------------------------------------------------------- step: system

os_release() { # os_release KEY: a field of /etc/os-release (SFM_OS_RELEASE overrides the file, for tests)
    (
        # shellcheck disable=SC1090
        source "${SFM_OS_RELEASE:-/etc/os-release}" 2>/dev/null || true
        eval "printf '%s\n' \"\${$1:-}\""
    )
}

step_system() {
    local os_id os_ver
    os_id="$(os_release ID)"
    os_ver="$(os_release VERSION_ID)"
    case "$os_id:$os_ver" in
        ubuntu:22.04 | ubuntu:24.04) _log "OS: Ubuntu $os_ver (supported)" ;;
        debian:12) _log "OS: Debian 12 (python3.11 from Debian)" ;;
        *) warn "OS '$os_id $os_ver' is untested (written for Ubuntu 22.04/24.04); continuing" ;;
    esac
    if [[ "$(uname -m)" != x86_64 ]]; then
        warn "this is $(uname -m): the pinned wheels (torch, open3d-cpu, pycolmap) are only verified on x86_64"
    fi
    command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: this script needs Ubuntu or Debian"
    local free_gb
    free_gb="$(df -Pk "$REPO_ROOT" | awk 'NR == 2 {print int($4 / 1048576)}')"
    if ((free_gb < 20)); then
        warn "only ${free_gb} GB free on $REPO_ROOT: the venv, weights and data need 15-25 GB (grow the EBS volume)"
    fi
    _log "torch: $TORCH_SPEC${TORCH_INDEX:+ from $TORCH_INDEX} ($TORCH_WHY)"

    # Python 3.11: Debian 12 has it; Ubuntu 22.04 and 24.04 get it from the deadsnakes PPA
    if "$PYTHON_BIN" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        _log "$PYTHON_BIN with venv: ok ($("$PYTHON_BIN" --version 2>&1))"
    elif [[ "$os_id" == ubuntu ]]; then
        if grep -rqs deadsnakes /etc/apt/sources.list.d/; then
            _log "deadsnakes PPA already configured"
        else
            _log "$PYTHON_BIN is missing: adding the deadsnakes PPA (Python 3.11 for Ubuntu)"
            if ! command -v add-apt-repository >/dev/null 2>&1; then
                run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                    -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT_S" software-properties-common
            fi
            run_root add-apt-repository -y ppa:deadsnakes/ppa
        fi
    fi

    # the app's runtime libraries (the same list as setup.sh: setup/common.sh), the tools used here,
    # and nginx + openssl for --public
    DEBIAN_PACKAGES=("${DEBIAN_RUNTIME_PACKAGES[@]}" curl ca-certificates openssl)
    if ((PUBLIC)); then DEBIAN_PACKAGES+=(nginx); fi
    if ((DRY_RUN)); then
        local missing=()
        mapfile -t missing < <(debian_packages_missing)
        if ((${#missing[@]})); then
            run_root apt-get update -q
            run_root apt-get install -y -q "${missing[@]}"
        else
            _log "all Debian packages installed: $(debian_packages_wanted | tr '\n' ' ')"
        fi
    else
        install_debian_packages
    fi

    # when root sets up for another user, that user must own the checkout (the service writes runs/ there)
    if ((EUID == 0)) && [[ -n "$SVC_USER" && "$SVC_USER" != root ]]; then
        if [[ "$(stat -c %U "$REPO_ROOT")" != "$SVC_USER" ]]; then
            run chown -R "$SVC_USER:${SVC_GROUP:-$SVC_USER}" "$REPO_ROOT"
        else
            _log "$REPO_ROOT is owned by $SVC_USER"
        fi
    fi
}

# ----------------------------------------------------------------------------- step: python

step_python() {
    if ((DRY_RUN)); then
        if [[ -x "$VENV_DIR/bin/python" ]]; then
            _log "virtualenv $VENV_DIR exists (create_venv keeps it when it is a working Python 3.11)"
        else
            run "$PYTHON_BIN" -m venv "$VENV_DIR"
        fi
        _log "install_python_requirements (setup/common.sh; skipped when the stamp $VENV_DIR/.requirements.sha256 matches):"
        run "$VENV_DIR/bin/python" -m pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
        run "$VENV_DIR/bin/python" -m pip install -r "$REPO_ROOT/requirements.txt"
        if [[ "$TORCH_SPEC" == *+cu* ]]; then
            run "$VENV_DIR/bin/python" -m pip uninstall -y pycolmap
            run "$VENV_DIR/bin/python" -m pip install "pycolmap-cuda12==$(sed -n 's/^pycolmap==\([^ #]*\).*/\1/p' "$REPO_ROOT/requirements.txt")"
        fi
        return 0
    fi
    create_venv
    install_python_requirements "$TORCH_SPEC" "$TORCH_INDEX"
    if [[ "$TORCH_SPEC" == *+cu* ]]; then
        if "$VENV_DIR/bin/python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
            _log "torch sees the GPU: $("$VENV_DIR/bin/python" -c 'import torch; print(torch.cuda.get_device_name(0))')"
        else
            warn "torch ($TORCH_SPEC) does not see the GPU: check nvidia-smi; the app will run on the CPU"
        fi
    fi
}

# ----------------------------------------------------------------------------- step: weights

step_weights() {
    if ((!DRY_RUN)) && [[ ! -x "$VENV_DIR/bin/python" ]]; then
        fail "no virtualenv at $VENV_DIR: run the python step first (--only python,weights)"
    fi
    if ((DRY_RUN)); then
        run "$VENV_DIR/bin/python" "$REPO_ROOT/setup/fetch_weights.py" --dinov2 "$DINOV2"
    else
        _log "fetch_weights --dinov2 $DINOV2 (sha256-checked; ALIKED, LightGlue, EfficientNet-Lite0, DINOv2)"
        fetch_weights --dinov2 "$DINOV2"
    fi
}

# ----------------------------------------------------------------------------- step: data

SYS_PYTHON="$(command -v python3 || command -v "$PYTHON_BIN" || true)"

kaggle_token() { # where the Kaggle credentials come from, or nothing
    local dir="${KAGGLE_CONFIG_DIR:-$HOME/.kaggle}"
    if [[ -n "${KAGGLE_API_TOKEN:-}" ]]; then
        echo "KAGGLE_API_TOKEN"
    elif [[ -n "${KAGGLE_USERNAME:-}" && -n "${KAGGLE_KEY:-}" ]]; then
        echo "KAGGLE_USERNAME/KAGGLE_KEY"
    elif [[ -f "$dir/kaggle.json" ]]; then
        echo "$dir/kaggle.json"
    elif [[ -f "$dir/access_token" ]]; then
        echo "$dir/access_token"
    fi
}

KAGGLE_BIN=""
ensure_kaggle_cli() { # set KAGGLE_BIN: the kaggle on PATH, else one (pinned) in its own venv, installed if needed
    local venv="${XDG_DATA_HOME:-$HOME/.local/share}/sfm-explorer/kaggle-venv"
    if command -v kaggle >/dev/null 2>&1; then
        KAGGLE_BIN="$(command -v kaggle)"
        _log "Kaggle CLI: $KAGGLE_BIN"
        return 0
    fi
    KAGGLE_BIN="$venv/bin/kaggle"
    if [[ -x "$KAGGLE_BIN" ]]; then
        _log "Kaggle CLI: $KAGGLE_BIN"
        return 0
    fi
    _log "installing the Kaggle CLI (${KAGGLE_PIP[*]}) into its own venv $venv"
    run "$PYTHON_BIN" -m venv "$venv"
    run "$venv/bin/python" -m pip install -q --disable-pip-version-check "${KAGGLE_PIP[@]}"
}

step_data() {
    [[ -n "$SYS_PYTHON" ]] || fail "python3 not found (needed to import data)"
    if ((${#DATA_SOURCES[@]} == 0 && !KAGGLE)); then
        _log "no data asked for (--data PATH_OR_URL, --kaggle)"
        if [[ -n "$(kaggle_token)" ]]; then _log "a Kaggle token is present: --kaggle fetches $KAGGLE_COMPETITION"; fi
        return 0
    fi
    _log "data dir: $DATA_DIR"
    local src
    for src in "${DATA_SOURCES[@]}"; do
        run "$SYS_PYTHON" "$IMPORT_DATA" --data-dir "$DATA_DIR" "$src"
    done
    if ((!KAGGLE)); then return 0; fi

    local dl="$DATA_DIR/.downloads/kaggle" zip token
    zip="$dl/$KAGGLE_COMPETITION.zip"
    if [[ -f "$zip" ]] && "$SYS_PYTHON" -c 'import sys, zipfile; sys.exit(not zipfile.is_zipfile(sys.argv[1]))' "$zip"; then
        _log "$zip already downloaded (delete it to download again)"
    else
        token="$(kaggle_token)"
        if [[ -z "$token" ]]; then
            local msg="--kaggle needs a Kaggle API token: create one at https://www.kaggle.com/settings/api, then put it in ~/.kaggle/kaggle.json (chmod 600) or export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), and re-run"
            if ((DRY_RUN)); then warn "$msg"; else fail "$msg"; fi
        else
            _log "Kaggle token: $token"
        fi
        ensure_kaggle_cli
        if ((!DRY_RUN)); then rm -f "$zip"; fi # a partial download
        if ! run "$KAGGLE_BIN" competitions download "$KAGGLE_COMPETITION" -p "$dl"; then
            fail "kaggle download failed: accept the rules at https://www.kaggle.com/competitions/$KAGGLE_COMPETITION/rules with the token's account, check the token, then re-run"
        fi
        if ((!DRY_RUN)) && [[ ! -f "$zip" ]]; then
            fail "the Kaggle CLI wrote no $zip (found in $dl: $(find "$dl" -maxdepth 1 -type f -printf '%f ' 2>/dev/null))"
        fi
    fi
    run "$SYS_PYTHON" "$IMPORT_DATA" --data-dir "$DATA_DIR" --into "$KAGGLE_COMPETITION" \
        ${KAGGLE_SCENES:+--scenes "$KAGGLE_SCENES"} "$zip"
}

# ----------------------------------------------------------------------------- step: service

require_service_user() {
    local msg=""
    if [[ -z "$SVC_USER" || "$SVC_USER" == root ]]; then
        msg="the service never runs as root: run this script as the app's user (e.g. ubuntu) or pass --user NAME"
    elif [[ -z "$SVC_HOME" ]]; then
        msg="user '$SVC_USER' does not exist (--user)"
    fi
    if [[ -n "$msg" ]]; then
        if ((DRY_RUN)); then warn "$msg"; else fail "$msg"; fi
    fi
}

systemd_running() { [[ -d /run/systemd/system ]]; }

step_service() {
    require_service_user
    [[ "$REPO_ROOT" =~ ^[A-Za-z0-9._/+@-]+$ ]] ||
        fail "the checkout's path '$REPO_ROOT' has characters a systemd unit cannot take unquoted: clone it to e.g. ~/sfm-explorer"
    if [[ ! -f "$REPO_ROOT/streamlit_app.py" ]]; then
        warn "$REPO_ROOT/streamlit_app.py not found: the service will not start until it exists"
    fi
    if ! systemd_running; then
        local msg="systemd is not running here (a container?): pass --no-service and start the app by hand: cd $REPO_ROOT && .venv/bin/python -m streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port $PORT --server.headless true"
        if ((DRY_RUN)); then warn "$msg"; else fail "$msg"; fi
    fi
    local unit changed=0
    unit="$(render "$REPO_ROOT/setup/ec2/$SERVICE_NAME.service" \
        @USER@ "${SVC_USER:-USER}" @GROUP@ "${SVC_GROUP:-${SVC_USER:-USER}}" @REPO@ "$REPO_ROOT" @PORT@ "$PORT")"
    unit="$(with_ray_env "$unit")"
    _log "systemd unit $UNIT_PATH (from setup/ec2/$SERVICE_NAME.service; runs as ${SVC_USER:-?}, 127.0.0.1:$PORT)"
    if install_text "$unit" "$UNIT_PATH" 644 root; then
        changed=1
        run_root systemctl daemon-reload
    fi
    if ((DRY_RUN)) || ! systemctl is-enabled --quiet "$SERVICE_NAME" 2>/dev/null; then
        run_root systemctl enable "$SERVICE_NAME"
    else
        _log "$SERVICE_NAME is enabled (starts at boot)"
    fi
    if ((DRY_RUN)); then
        run_root systemctl restart "$SERVICE_NAME"
        dry_note "restart only when the unit changed or the service is not running"
        return 0
    fi
    if ! systemctl is-active --quiet "$SERVICE_NAME"; then
        run_root systemctl start "$SERVICE_NAME"
    elif ((changed)); then
        run_root systemctl restart "$SERVICE_NAME"
    else
        _log "$SERVICE_NAME is running and its unit is unchanged"
    fi
    # wait for Streamlit's health endpoint
    local i
    for ((i = 0; i < 60; i++)); do
        if curl -fsS --max-time 2 "http://127.0.0.1:$PORT/_stcore/health" >/dev/null 2>&1; then
            _log "the app answers on http://127.0.0.1:$PORT (after ${i}s)"
            return 0
        fi
        sleep 1
    done
    warn "the app does not answer on 127.0.0.1:$PORT after 60 s; see: sudo journalctl -u $SERVICE_NAME -n 50 --no-pager"
}

# ----------------------------------------------------------------------------- step: api (--api)

NEW_API_TOKEN=""
step_api() {
    require_service_user
    if ! systemd_running; then
        local msg="systemd is not running here (a container?): start the API by hand: cd $REPO_ROOT && .venv/bin/python -m backend serve --host 127.0.0.1 --port $API_PORT"
        if ((DRY_RUN)); then warn "$msg"; else fail "$msg"; fi
    fi
    # the token: kept when the env file exists (a re-run changes nothing), else generated and shown once
    if as_root test -s "$API_ENV" 2>/dev/null; then
        _log "API token: keeping the one in $API_ENV (sudo cat $API_ENV to read it)"
    else
        NEW_API_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))' 2>/dev/null ||
            openssl rand -hex 24)"
        if ((DRY_RUN)); then
            printf '    + %sinstall -m 600 -o root -g root <token> %s   # SFM_API_TOKEN=<generated>\n' \
                "${ROOT_CMD[*]/%/ }" "$API_ENV"
        else
            install_text "SFM_API_TOKEN=$NEW_API_TOKEN" "$API_ENV" 600 root || true
        fi
    fi
    local unit changed=0
    unit="$(render "$REPO_ROOT/setup/ec2/$API_SERVICE_NAME.service" \
        @USER@ "${SVC_USER:-USER}" @GROUP@ "${SVC_GROUP:-${SVC_USER:-USER}}" @REPO@ "$REPO_ROOT" @API_PORT@ "$API_PORT")"
    unit="$(with_ray_env "$unit")"
    _log "systemd unit $API_UNIT_PATH (from setup/ec2/$API_SERVICE_NAME.service; 127.0.0.1:$API_PORT)"
    if install_text "$unit" "$API_UNIT_PATH" 644 root; then
        changed=1
        run_root systemctl daemon-reload
    fi
    if ((DRY_RUN)) || ! systemctl is-enabled --quiet "$API_SERVICE_NAME" 2>/dev/null; then
        run_root systemctl enable "$API_SERVICE_NAME"
    fi
    if ((DRY_RUN)); then
        run_root systemctl restart "$API_SERVICE_NAME"
        dry_note "restart only when the unit or the token changed or the service is not running"
        return 0
    fi
    if ! systemctl is-active --quiet "$API_SERVICE_NAME"; then
        run_root systemctl start "$API_SERVICE_NAME"
    elif ((changed)) || [[ -n "$NEW_API_TOKEN" ]]; then
        run_root systemctl restart "$API_SERVICE_NAME"
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        if curl -fsS --max-time 2 "http://127.0.0.1:$API_PORT/openapi.json" >/dev/null 2>&1; then
            _log "the API answers on http://127.0.0.1:$API_PORT (after ${i}s)"
            return 0
        fi
        sleep 1
    done
    warn "the API does not answer on 127.0.0.1:$API_PORT after 60 s; see: sudo journalctl -u $API_SERVICE_NAME -n 50 --no-pager"
}

# ----------------------------------------------------------------------------- step: ray (--ray-head / --ray-worker)

step_ray() {
    require_service_user
    [[ -n "$RAY_ROLE" ]] || fail "the ray step needs --ray-head or --ray-worker ADDRESS"
    local role_args role
    if [[ "$RAY_ROLE" == head ]]; then
        role="head node (port 6379)"
        role_args="--head --port 6379 --include-dashboard false"
    else
        role="worker node joining $RAY_HEAD_ADDRESS"
        role_args="--address $RAY_HEAD_ADDRESS"
    fi
    if ! systemd_running; then
        local msg="systemd is not running here (a container?): start Ray by hand: cd $REPO_ROOT && PYTHONPATH=$REPO_ROOT .venv/bin/ray start $role_args"
        if ((DRY_RUN)); then warn "$msg"; else fail "$msg"; fi
    fi
    local unit changed=0
    unit="$(render "$REPO_ROOT/setup/ec2/$RAY_SERVICE_NAME.service" \
        @USER@ "${SVC_USER:-USER}" @GROUP@ "${SVC_GROUP:-${SVC_USER:-USER}}" @REPO@ "$REPO_ROOT" \
        @ROLE@ "$role" @ROLE_ARGS@ "$role_args")"
    _log "systemd unit $RAY_UNIT_PATH (from setup/ec2/$RAY_SERVICE_NAME.service; Ray $role)"
    if install_text "$unit" "$RAY_UNIT_PATH" 644 root; then
        changed=1
        run_root systemctl daemon-reload
    fi
    if ((DRY_RUN)) || ! systemctl is-enabled --quiet "$RAY_SERVICE_NAME" 2>/dev/null; then
        run_root systemctl enable "$RAY_SERVICE_NAME"
    fi
    if ((DRY_RUN)); then
        run_root systemctl restart "$RAY_SERVICE_NAME"
        dry_note "restart only when the unit changed or the service is not running"
        return 0
    fi
    if ! systemctl is-active --quiet "$RAY_SERVICE_NAME"; then
        run_root systemctl start "$RAY_SERVICE_NAME"
    elif ((changed)); then
        run_root systemctl restart "$RAY_SERVICE_NAME"
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        if "$REPO_ROOT/.venv/bin/ray" status --address "${RAY_HEAD_ADDRESS:-127.0.0.1:6379}" >/dev/null 2>&1; then
            _log "Ray answers at ${RAY_HEAD_ADDRESS:-127.0.0.1:6379} (after ${i}s)"
            return 0
        fi
        sleep 1
    done
    warn "Ray does not answer after 60 s; see: sudo journalctl -u $RAY_SERVICE_NAME -n 50 --no-pager"
}

# ----------------------------------------------------------------------------- step: proxy (--public)

NEW_PASSWORD=""
step_proxy() {
    if ((!DRY_RUN)); then
        command -v nginx >/dev/null 2>&1 || fail "nginx is not installed: run the system step with --public first"
        [[ -d /etc/nginx/sites-enabled ]] || fail "/etc/nginx/sites-enabled missing: this layout is Debian/Ubuntu's nginx"
    fi
    local group=www-data
    getent group "$group" >/dev/null 2>&1 || group=root

    # the password file (basic auth): kept when it already holds this user (and --password, if given, matches)
    local line="" hash="" write=0
    line="$(as_root grep -s "^$AUTH_USER:" "$HTPASSWD" 2>/dev/null || true)"
    if [[ -n "$line" && -n "$PASSWORD" ]]; then
        local salt
        salt="$(cut -d'$' -f3 <<<"${line#*:}")"
        if [[ "$(openssl passwd -apr1 -salt "$salt" -stdin <<<"$PASSWORD")" == "${line#*:}" ]]; then
            _log "basic auth: $HTPASSWD already has user $AUTH_USER with this password"
        else
            write=1
        fi
    elif [[ -n "$line" ]]; then
        _log "basic auth: keeping the existing password of user $AUTH_USER in $HTPASSWD (change it with --password)"
    else
        write=1
    fi
    if ((write)); then
        if [[ -z "$PASSWORD" ]]; then
            if ((DRY_RUN)); then
                PASSWORD="(generated)"
            else
                PASSWORD="$(openssl rand -base64 18 | tr -d '/+=\n')"
            fi
            NEW_PASSWORD="$PASSWORD"
        fi
        if ((DRY_RUN)); then
            local from="--password"
            if [[ -n "$NEW_PASSWORD" ]]; then from="a generated one, printed once at the end"; fi
            printf '    + openssl passwd -apr1 -stdin   # password from %s\n' "$from"
            hash="\$apr1\$..."
        else
            hash="$(openssl passwd -apr1 -stdin <<<"$PASSWORD")"
        fi
        install_text "$AUTH_USER:$hash" "$HTPASSWD" 640 "$group" || true
    fi

    # the site
    local site reload=0 current=""
    local upload_mb
    upload_mb="$(sed -n 's/^ *maxUploadSize *= *\([0-9][0-9]*\).*/\1/p' "$REPO_ROOT/.streamlit/config.toml" 2>/dev/null | head -n 1)"
    site="$(render "$REPO_ROOT/setup/ec2/nginx-$SERVICE_NAME.conf" @PORT@ "$PORT" @HTPASSWD@ "$HTPASSWD" \
        @MAX_BODY@ "$((${upload_mb:-200} + 16))m")"
    current="$(cat "$NGINX_SITE" 2>/dev/null || true)"
    if [[ "$current" == *"managed by Certbot"* ]]; then
        _log "nginx site $NGINX_SITE was edited by certbot (TLS): left as it is"
    elif install_text "$site" "$NGINX_SITE" 644 root; then
        reload=1
    fi
    if [[ "$(readlink "$NGINX_ENABLED" 2>/dev/null || true)" != "$NGINX_SITE" ]]; then
        run_root ln -sfn "$NGINX_SITE" "$NGINX_ENABLED"
        reload=1
    else
        _log "nginx site enabled: $NGINX_ENABLED"
    fi
    if [[ -L "$NGINX_DEFAULT_ENABLED" ]]; then # it also claims default_server on port 80
        run_root rm "$NGINX_DEFAULT_ENABLED"
        reload=1
    fi
    if ((reload || DRY_RUN)); then
        run_root nginx -t -q
    fi
    if ((DRY_RUN)); then
        run_root systemctl enable --now nginx
        run_root systemctl reload nginx
        dry_note "reload only when the site, its link or the password file changed"
        return 0
    fi
    if ! systemd_running; then
        fail "systemd is not running here: start nginx by hand (nginx), or use the SSH tunnel instead of --public"
    fi
    if ! systemctl is-active --quiet nginx; then
        run_root systemctl enable --now nginx
    elif ((reload || write)); then
        run_root systemctl reload nginx
    else
        _log "nginx is running with this site and password file"
    fi
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1/ || true)"
    if [[ "$code" == 401 ]]; then
        _log "nginx on port 80 asks for the password (HTTP 401 without it)"
    else
        warn "http://127.0.0.1/ answered HTTP '$code' (expected 401 before login); check: sudo nginx -t; sudo journalctl -u nginx"
    fi
}

# ----------------------------------------------------------------------------- how to reach it

imds() { # imds PATH: an instance metadata value (IMDSv2), or nothing off EC2
    local token
    token="$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        --connect-timeout 1 --max-time 2 "$IMDS/api/token" 2>/dev/null)" || return 0
    curl -fsS -H "X-aws-ec2-metadata-token: $token" --connect-timeout 1 --max-time 2 "$IMDS/meta-data/$1" 2>/dev/null || true
}

print_access() {
    local host="" login="${SVC_USER:-ubuntu}"
    printf '\n==> SfM Explorer\n'
    if ((DRY_RUN)); then
        _log "(dry run: the public hostname comes from the instance metadata, IMDSv2: PUT $IMDS/api/token, GET $IMDS/meta-data/public-hostname)"
    elif command -v curl >/dev/null 2>&1; then
        host="$(imds public-hostname)"
        [[ -n "$host" ]] || host="$(imds public-ipv4)"
    fi
    [[ -n "$host" ]] || host=PUBLIC_DNS
    if ((SERVICE)); then
        printf '    service: %s (systemd; sudo systemctl status %s; logs: sudo journalctl -u %s -f)\n' \
            "$SERVICE_NAME" "$SERVICE_NAME" "$SERVICE_NAME"
    else
        printf '    no service installed (--no-service); start the app with:\n'
        printf '        cd %q && .venv/bin/python -m streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port %s --server.headless true\n' \
            "$REPO_ROOT" "$PORT"
    fi
    printf '    It listens on 127.0.0.1:%s only. From your computer, open an SSH tunnel:\n' "$PORT"
    printf '        ssh -i ~/.ssh/YOUR_KEY.pem -L %s:localhost:%s %s@%s\n' "$PORT" "$PORT" "$login" "$host"
    printf '    and browse to http://localhost:%s\n' "$PORT"
    if ((API && SERVICE)); then
        printf '    HTTP API (--api): service %s on 127.0.0.1:%s; tunnel it with -L %s:localhost:%s and open\n' \
            "$API_SERVICE_NAME" "$API_PORT" "$API_PORT" "$API_PORT"
        printf '        http://localhost:%s/docs; every request needs Authorization: Bearer <token>\n' "$API_PORT"
        if [[ -n "$NEW_API_TOKEN" ]]; then
            printf '        token: %s   (shown only now; later: sudo cat %s)\n' "$NEW_API_TOKEN" "$API_ENV"
        fi
    fi
    if has_step ray && [[ "$RAY_ROLE" == head ]]; then
        printf '    Ray head (--ray-head): service %s on port 6379. Join workers with\n' "$RAY_SERVICE_NAME"
        printf '        bash setup/ec2_bootstrap.sh --ray-worker THIS_PRIVATE_IP:6379   (on each worker instance)\n'
        printf '    and reconstruct with --executor ray --ray-address auto; allow all TCP between the instances\n'
        printf '    (a security-group rule from the group itself); never open 6379 to the internet\n'
    elif has_step ray && [[ "$RAY_ROLE" == worker ]]; then
        printf '    Ray worker (--ray-worker): service %s, joined %s\n' "$RAY_SERVICE_NAME" "$RAY_HEAD_ADDRESS"
    fi
    if ((!PUBLIC)) && [[ -e "$NGINX_ENABLED" ]]; then
        warn "the public site from an earlier --public run is still enabled on port 80; to close it:"
        warn "sudo rm $NGINX_ENABLED && sudo systemctl reload nginx"
    fi
    if ((PUBLIC)); then
        printf '    Public (--public): http://%s/ through nginx, basic auth user "%s"\n' "$host" "$AUTH_USER"
        if [[ -n "$NEW_PASSWORD" ]]; then
            printf '        password: %s   (shown only now; change it with --password)\n' "$NEW_PASSWORD"
        fi
        printf '        allow inbound TCP 80 in the security group, only from your address (x.x.x.x/32);\n'
        printf '        the password crosses plain HTTP: add TLS with certbot (see setup/ec2/nginx-%s.conf)\n' "$SERVICE_NAME"
    fi
}

# ----------------------------------------------------------------------------- run

if ((DRY_RUN)); then
    printf '==> DRY RUN: nothing is changed; commands are printed with a leading +\n'
fi
if ((!CHILD)); then
    printf '==> SfM Explorer EC2 bootstrap: %s (steps: %s; service user: %s)\n' \
        "$REPO_ROOT" "${STEPS[*]}" "${SVC_USER:-<none>}"
fi

run_step() {
    case "$1" in
        system) step "system packages (apt, Python 3.11)"; step_system ;;
        python) step "Python virtualenv and requirements ($TORCH_SPEC)"; step_python ;;
        weights) step "weights (sha256-checked)"; step_weights ;;
        data) step "data ($DATA_DIR)"; step_data ;;
        service) step "systemd service $SERVICE_NAME"; step_service ;;
        api) step "systemd service $API_SERVICE_NAME (HTTP API)"; step_api ;;
        ray) step "systemd service $RAY_SERVICE_NAME (Ray $RAY_ROLE)"; step_ray ;;
        proxy) step "public access: nginx with basic auth on port 80"; step_proxy ;;
    esac
    done_step
}

user_steps_done=0
for s in "${STEPS[@]}"; do
    if ((SWITCH_USER)) && [[ " ${USER_STEPS[*]} " == *" $s "* ]]; then
        ((user_steps_done)) && continue
        user_steps_done=1
        # root sets up for another user: these steps run as that user (files owned by it, its ~/.kaggle)
        child=(--only "$(
            IFS=,
            echo "${USER_STEPS[*]}"
        )" --user "$SVC_USER" --repo-dir "$REPO_ROOT" --data-dir "$DATA_DIR" --dinov2 "$DINOV2" --torch "$TORCH_SPEC")
        if [[ -n "$TORCH_INDEX" ]]; then child+=(--torch-index "$TORCH_INDEX"); fi
        for d in "${DATA_SOURCES[@]}"; do child+=(--data "$d"); done
        if ((KAGGLE)); then child+=(--kaggle --kaggle-competition "$KAGGLE_COMPETITION"); fi
        if [[ -n "$KAGGLE_SCENES" ]]; then child+=(--kaggle-scenes "$KAGGLE_SCENES"); fi
        STEP="${USER_STEPS[*]} (as $SVC_USER)"
        printf '==> steps %s run as %s:\n' "${USER_STEPS[*]}" "$SVC_USER"
        if ((DRY_RUN)); then
            run runuser -u "$SVC_USER" -- env HOME="${SVC_HOME:-/home/$SVC_USER}" SFM_EC2_BOOTSTRAP_CHILD=1 \
                bash "$SELF" "${child[@]}"
            for u in "${USER_STEPS[@]}"; do run_step "$u"; done
        else
            run runuser -u "$SVC_USER" -- env HOME="$SVC_HOME" SFM_EC2_BOOTSTRAP_CHILD=1 bash "$SELF" "${child[@]}"
            STEP_NO=$((STEP_NO + ${#USER_STEPS[@]}))
        fi
        continue
    fi
    run_step "$s"
done

if has_step service || has_step proxy || has_step ray || [[ -z "$ONLY" ]]; then
    print_access
fi
STEP="(done)"
if ((CHILD)); then
    :
elif ((DRY_RUN)); then
    printf '==> dry run complete: nothing was changed\n'
else
    printf '==> EC2 bootstrap complete in %ds\n' "$SECONDS"
fi
