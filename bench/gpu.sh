#!/usr/bin/env bash
# The GPU bench, as it ran on a lent GPU machine that reaches no network (bench/RESULTS.md, "On a GPU machine").
#
#   bash bench/gpu.sh pack            here: wheels + weights + scenes into .gpu/p1 ... .gpu/pN (<= 44 MB each)
#   bash bench/gpu.sh store N         there: keep piece N in /tmp/gpu (one call per piece: a call carries 64 MiB)
#   bash bench/gpu.sh smoke           there: unpack what has arrived, install the wheels, one fast run on reichstag
#   bash bench/gpu.sh bench           there: unpack everything, LightGlue's pairs per second (python -m
#                                     bench.matcher_rate), then python -m bench; results_gpu.json and
#                                     matcher_rate_gpu.json to $OUT
#
# On a machine with a network and CUDA, none of this is needed: `bash setup/setup.sh --torch torch==2.13.0+cu128`
# then `python -m bench`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STORE=/tmp/gpu
DATA_SRC=${SFM_DATA_DIR:-../shared/data}
SCENES=temple_ring_middlebury,reichstag_imc2020,church_imc2024,fox_instant_ngp,lego_nerf_synthetic

unpack() {  # a truncated stream unpacks every whole member before the cut
    mkdir -p "$STORE/x"
    cat "$STORE"/part.* | tar -x -C "$STORE/x" 2>/dev/null || true
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STORE/site" \
        "$STORE"/x/wheels/*.whl
    mkdir -p "$STORE/x/data"
    ln -sfn "$PWD/samples/church_imc2024" "$STORE/x/data/church_imc2024"
}

env_there() {
    export PYTHONPATH=$STORE/site SFM_WEIGHTS_DIR=$STORE/x/weights SFM_DATA_DIR=$STORE/x/data PYTHONUNBUFFERED=1
}

case "${1:-}" in
pack)
    rm -rf .gpu && mkdir -p .gpu/stage/wheels .gpu/stage/weights .gpu/stage/data
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/stage/wheels pycolmap==4.2.1 kornia==0.9.0 kornia_rs==0.2.0 efficientnet-lite-pytorch==0.1.0
    for w in efficientnet-lite0.pth xfeat.pt aliked-n16.pth xfeat-lighterglue.pt aliked_lightglue.pth; do
        cp weights/$w .gpu/stage/weights/
    done
    for s in temple_ring_middlebury reichstag_imc2020 fox_instant_ngp lego_nerf_synthetic; do
        cp -r "$DATA_SRC/$s" .gpu/stage/data/
    done
    # order: what the smoke run needs first
    (cd .gpu/stage && tar -cf ../all.tar wheels weights/efficientnet-lite0.pth weights/xfeat.pt \
        weights/aliked-n16.pth data/temple_ring_middlebury data/reichstag_imc2020 weights/xfeat-lighterglue.pt \
        weights/aliked_lightglue.pth data/fox_instant_ngp data/lego_nerf_synthetic)
    (cd .gpu && split -b 44M -d -a 1 all.tar part.)
    for f in .gpu/part.*; do n=$((${f##*.} + 1)); mkdir -p ".gpu/p$n"; mv "$f" ".gpu/p$n/"; done
    rm -rf .gpu/stage .gpu/all.tar
    ls -la .gpu/p*
    ;;
store)
    mkdir -p $STORE && cp ".gpu/p$2"/part.* $STORE/ && ls -la $STORE
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    ;;
smoke)
    unpack && env_there
    python3 -c "import torch, pycolmap, kornia; print(torch.__version__, torch.cuda.is_available(), pycolmap.__version__, kornia.__version__)"
    python3 -m backend reconstruct "$SFM_DATA_DIR/reichstag_imc2020/images" --out /tmp/smoke --preset fast --quiet
    python3 -m backend reconstruct "$SFM_DATA_DIR/reichstag_imc2020/images" --out /tmp/smoke2 --preset fast \
        --features aliked-n16 --matcher nn-ratio --quiet
    python3 -c "import json; r = json.load(open('/tmp/smoke2/run.json')); print(r['summary'], r.get('device'))"
    ;;
bench)
    unpack && env_there
    b() { python3 -m bench --out /tmp/bout --timeout 240 --naive-timeout 240 "$@" || true
          cp /tmp/bout/results.json "$OUT/results_gpu.json" || true; }
    # LightGlue's pairs per second at 2048 keypoints, pair by pair against batched (issue 25): about a minute
    python3 -m bench.matcher_rate --pairs 96 --batch-sizes 8,16,32 --out "$OUT/matcher_rate_gpu.json" || true
    b --scenes $SCENES --configs fast,colmap-sift,balanced
    b --scenes $SCENES --configs naive,accurate
    b --scenes temple_ring_middlebury,reichstag_imc2020 \
        --configs "fast/aliked-n16+lightglue@640x1024,fast/xfeat+lighterglue@640x1024,fast/xfeat+nn-ratio@640x1024"
    ;;
*) sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
