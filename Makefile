# Two commands for a fresh Debian machine (see README.md):
#   make run    build and start the server on embedded defaults
#   make test   install what the tests need, then run every check and test
# Both install their prerequisites idempotently (scripts/setup.sh).

CACHE ?= $(HOME)/.cache/kinema
# The setup scripts install into the same cache.
export KINEMA_CACHE := $(CACHE)
export CARGO_TARGET_DIR ?= $(CACHE)/target
export KINEMA_PYTHON ?= $(CACHE)/venv/bin/python
export CARGO_TERM_COLOR ?= never

# Demo credentials for `make run`; override them in the environment.
KINEMA_ACCESS_KEY_ID ?= kinema-demo
KINEMA_SECRET_ACCESS_KEY ?= kinema-demo-secret
LISTEN ?= 127.0.0.1:4566
DATA_DIR ?= $(CACHE)/demo-data
# The demo camera: the 1906 Market Street clip (fetched by setup, prepared
# without B-frames for WebRTC viewers), looped.
DEMO_SOURCE ?= market-street=file://$(CACHE)/assets/market_street_1906_live.mp4

# Where `make install` puts the kinema binary.
PREFIX ?= $(HOME)/.local

.PHONY: setup run install test lint fuzz-corpus bench

setup:
	@bash scripts/setup.sh

run: setup
	cargo build --release -p kinema-server -p gst-plugin-kinema
	@KINEMA_BIN=$(CARGO_TARGET_DIR)/release/kinema LISTEN=$(LISTEN) DATA_DIR=$(DATA_DIR) \
		DEMO_SOURCE=$(DEMO_SOURCE) KINEMA_ACCESS_KEY_ID=$(KINEMA_ACCESS_KEY_ID) \
		KINEMA_SECRET_ACCESS_KEY=$(KINEMA_SECRET_ACCESS_KEY) bash scripts/demo.sh

# Installs the kinema binary (server and CLI) into $(PREFIX)/bin.
install:
	cargo build --release -p kinema-server
	install -D -m 755 $(CARGO_TARGET_DIR)/release/kinema $(PREFIX)/bin/kinema
	@echo "installed $(PREFIX)/bin/kinema"

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test: setup lint
	@$(MAKE) --no-print-directory fuzz-corpus
	cargo build -p gst-plugin-kinema
	cargo test --workspace

# Replays the checked-in fuzz corpus through the MKV reader (libFuzzer build).
fuzz-corpus:
	@bash scripts/fuzz.sh corpus

bench: setup
	cargo build --release -p kinema-server -p kinema-bench
	$(CARGO_TARGET_DIR)/release/kinema-bench $(BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/kinema-bench-datastream
	$(CARGO_TARGET_DIR)/release/kinema-bench-queue
	$(CARGO_TARGET_DIR)/release/kinema-bench-rtsp $(RTSP_BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/kinema-bench-hls $(HLS_BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/kinema-bench-detect $(DETECT_BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/kinema-bench-webrtc $(WEBRTC_BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/kinema-bench-cluster $(CLUSTER_BENCH_ARGS)
