#!/usr/bin/env bash
# Set up SfM Explorer on Debian 12: system packages, .venv, Python requirements, network weights.
#
#   bash setup/setup.sh [--no-apt] [--no-weights] [--dinov2 small|base|small,base|none] [--torch SPEC]
#
#   --no-apt         skip the Debian packages (when you cannot be root; see setup/common.sh for the list)
#   --no-weights     skip fetching weights (the app and many tests then cannot run)
#   --dinov2 WHICH   optional DINOv2 models to fetch from the Hugging Face hub (default: small)
#   --torch SPEC     install this torch first, e.g. torch==2.13.0+cu128 (index derived from +cuXXX)
#
# Idempotent: a second run checks everything and changes nothing (a few seconds).
# Works from any folder.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"
# shellcheck source=setup/common.sh
source "$SCRIPT_DIR/common.sh"

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

DO_APT=1
DO_WEIGHTS=1
DINOV2=small
TORCH_SPEC=""
ORIG_ARGS=("$@")
while (($#)); do
    case "$1" in
        --no-apt) DO_APT=0 ;;
        --no-weights) DO_WEIGHTS=0 ;;
        --dinov2) DINOV2="${2:?--dinov2 needs a value: small, base, small,base or none}"; shift ;;
        --dinov2=*) DINOV2="${1#*=}" ;;
        --torch) TORCH_SPEC="${2:?--torch needs a spec such as torch==2.13.0+cu128}"; shift ;;
        --torch=*) TORCH_SPEC="${1#*=}" ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'unknown option: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

STEP="(start)"
STEP_START=$SECONDS
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        printf '\nSETUP FAILED in step "%s" (exit %d).\n' "$STEP" "$rc" >&2
        printf 'Fix the problem reported above, then re-run (finished steps are skipped quickly):\n' >&2
        printf '    bash %s/setup/setup.sh %s\n' "$REPO_ROOT" "${ORIG_ARGS[*]}" >&2
    fi
}
trap on_exit EXIT

step() {
    STEP="$1"
    STEP_START=$SECONDS
    printf '==> %s\n' "$STEP"
}
done_step() { printf '    (%s: %ds)\n' "$STEP" "$((SECONDS - STEP_START))"; }

if ((DO_APT)); then
    step "Debian packages"
    install_debian_packages
    done_step
else
    printf '==> Debian packages: skipped (--no-apt)\n'
fi

step "Python virtualenv (.venv)"
create_venv
done_step

step "Python requirements"
install_python_requirements "$TORCH_SPEC"
done_step

step "browser for tests (chromium)"
if ((DO_APT)); then
    install_playwright_python
else
    install_playwright_python || printf '    WARNING: browser tests will fail until chromium is installed\n'
fi
done_step

if ((DO_WEIGHTS)); then
    step "network weights (weights/)"
    fetch_weights --dinov2 "$DINOV2"
    done_step
else
    printf '==> network weights: skipped (--no-weights)\n'
fi

STEP="(done)"
printf '==> setup complete in %ds (tests: .venv/bin/python -m pytest -q --durations=15 tests)\n' "$SECONDS"
