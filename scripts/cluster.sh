#!/usr/bin/env bash
# Starts a Kinema cluster on this machine, on loopback only: three NATS
# servers clustered with JetStream (every stream kept three times), an
# S3-compatible server (moto, in memory: the video is gone when it stops),
# three Kinema nodes and HAProxy in front of them. Producers and readers
# use the balancer at http://127.0.0.1:4566 like a single server.
# Ctrl-C stops everything. For a real deployment, see samples/cluster.toml.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
WORK="${KINEMA_CLUSTER_DIR:-$CACHE/cluster}"
export KINEMA_ACCESS_KEY_ID="${KINEMA_ACCESS_KEY_ID:-kinema-demo}"
export KINEMA_SECRET_ACCESS_KEY="${KINEMA_SECRET_ACCESS_KEY:-kinema-demo-secret}"

bash "$ROOT/scripts/setup.sh"
cargo build --release -p kinema-server -p gst-plugin-kinema
mkdir -p "$WORK"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "cluster: nothing listens on $1 ($2)" >&2
  exit 1
}

routes='"nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223", "nats-route://127.0.0.1:6224"'
for i in 0 1 2; do
  cat > "$WORK/nats$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4222 + i))
jetstream { store_dir: "$WORK/nats$i" }
cluster { name: kinema, listen: 127.0.0.1:$((6222 + i)), routes: [$routes] }
CONF
  nats-server -c "$WORK/nats$i.conf" > "$WORK/nats$i.log" 2>&1 &
  pids+=($!)
done
"$CACHE/venv/bin/python" -m moto.server -H 127.0.0.1 -p 9000 > "$WORK/s3.log" 2>&1 &
pids+=($!)
for p in 4222 4223 4224; do wait_port "$p" nats-server; done
wait_port 9000 "S3 (moto)"
curl -sS -f -X PUT http://127.0.0.1:9000/kinema > /dev/null

servers=""
for i in 0 1 2; do
  port=$((4567 + i))
  cat > "$WORK/node$i.toml" <<CONF
[webrtc]
turn_listen = "127.0.0.1:$((3478 + i))"

[cluster]
node = "node$i"
nats_urls = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
replicas = 3
s3_bucket = "kinema"
s3_endpoint = "http://127.0.0.1:9000"
s3_access_key_id = "moto"
s3_secret_access_key = "moto"
CONF
  "$CARGO_TARGET_DIR/release/kinema" serve --listen "127.0.0.1:$port" \
    --data-dir "$WORK/node$i" --config "$WORK/node$i.toml" > "$WORK/node$i.log" 2>&1 &
  pids+=($!)
  servers+="  server node$i 127.0.0.1:$port check inter 500 fall 2 rise 1"$'\n'
done
for p in 4567 4568 4569; do wait_port "$p" kinema; done

cat > "$WORK/haproxy.cfg" <<CONF
global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 300s
  timeout server 300s
  timeout tunnel 1h
  retries 2
  option redispatch
frontend kinema
  bind 127.0.0.1:4566
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /health
$servers
CONF
haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
pids+=($!)
wait_port 4566 haproxy

echo "cluster: up. endpoint http://127.0.0.1:4566 (nodes on 4567-4569, NATS on 4222-4224, S3 on 9000)"
echo "cluster: access key $KINEMA_ACCESS_KEY_ID  secret $KINEMA_SECRET_ACCESS_KEY; logs in $WORK"
wait -n "${pids[@]}"
echo "cluster: a process stopped; see the logs in $WORK" >&2
