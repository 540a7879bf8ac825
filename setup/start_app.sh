#!/usr/bin/env bash
# Start the SfM Explorer app (after `bash setup/setup.sh`).
#
#   bash setup/start_app.sh
#
# 1. Reconstructs the bundled sample scene into runs/sample-church with the command line (progress bars in this
#    terminal; skipped when that run is already finished), so the app opens with a finished run to explore.
# 2. Serves the app on http://127.0.0.1:${PORT:-8501}/?run=sample-church (Ctrl-C stops it).
#
# Environment: PORT (default 8501), ADDRESS (default 127.0.0.1; 0.0.0.0 serves other machines too),
# SFM_RUNS_DIR (where runs are stored, default <repo>/runs), SKIP_SAMPLE=1 (do not reconstruct the sample).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

PY="$REPO_ROOT/.venv/bin/python"
PORT="${PORT:-8501}"
ADDRESS="${ADDRESS:-127.0.0.1}"
RUNS_DIR="${SFM_RUNS_DIR:-$REPO_ROOT/runs}"
SAMPLE_RUN="$RUNS_DIR/sample-church"
SAMPLE="samples/church_imc2024"

if [[ ! -x "$PY" ]] || ! "$PY" -c "import streamlit, backend" 2>/dev/null; then
    printf 'The Python environment is not set up (%s).\nRun first:    bash setup/setup.sh\n' "$PY" >&2
    exit 2
fi

sample_done() {
    "$PY" - "$SAMPLE_RUN" <<'EOF'
import json, sys
from pathlib import Path

p = Path(sys.argv[1]) / "run.json"
try:
    ok = json.loads(p.read_text()).get("status") == "done"
except (OSError, ValueError):
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if [[ "${SKIP_SAMPLE:-0}" == "1" ]]; then
    printf '==> Sample scene: skipped (SKIP_SAMPLE=1)\n'
elif sample_done; then
    printf '==> Sample scene: already reconstructed in %s\n' "$SAMPLE_RUN"
else
    printf '==> Reconstructing the sample scene (16 photos; a few minutes on a CPU) into %s\n' "$SAMPLE_RUN"
    mkdir -p "$RUNS_DIR"
    if ! "$PY" -m backend reconstruct "$SAMPLE/images" --out "$SAMPLE_RUN" --gt "$SAMPLE/gt.csv"; then
        printf '\nThe sample reconstruction failed (reason above); the app starts anyway: upload photos there, or\n' >&2
        printf 'resume the sample run on its page. To retry here:  bash setup/start_app.sh\n\n' >&2
    fi
fi

HOST="$ADDRESS"
[[ "$HOST" == "0.0.0.0" ]] && HOST="127.0.0.1"
printf '\n==> SfM Explorer: open  http://%s:%s/?run=sample-church   (Ctrl-C stops the app)\n\n' "$HOST" "$PORT"
export SFM_RUNS_DIR="$RUNS_DIR"
exec "$PY" -m streamlit run streamlit_app.py --server.address "$ADDRESS" --server.port "$PORT" \
    --server.headless true --browser.gatherUsageStats false
