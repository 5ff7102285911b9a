#!/usr/bin/env bash
# `make run`: starts the server with the demo camera, waits until it
# answers, then prints what a person opens. Ctrl-C stops the server.
# Every setting comes from the Makefile (see its variables).
set -euo pipefail
: "${KINEMA_BIN:?}" "${LISTEN:?}" "${DATA_DIR:?}" "${DEMO_SOURCE:?}"
"$KINEMA_BIN" serve --listen "$LISTEN" --data-dir "$DATA_DIR" \
  --config samples/demo.toml --source "$DEMO_SOURCE" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null' INT TERM
url="http://$LISTEN"
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "$url/health" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit 1; }
  sleep 0.1
done
stream="${DEMO_SOURCE%%=*}"
cat >&2 <<MSG

  Kinema is up at $url (data in $DATA_DIR)
  key: $KINEMA_ACCESS_KEY_ID   secret: $KINEMA_SECRET_ACCESS_KEY

  live view:        $url/web/viewer.html#name=$stream&key=$KINEMA_ACCESS_KEY_ID&secret=$KINEMA_SECRET_ACCESS_KEY
  bicycle events:   AWS_ACCESS_KEY_ID=$KINEMA_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$KINEMA_SECRET_ACCESS_KEY \\
                      $KINEMA_BIN events tail --endpoint $url
  events archive:   $DATA_DIR/objects/buckets/kinema-events/ (gzipped JSON lines, every 10 s)
  the kinema CLI:   $KINEMA_BIN  (or \`make install\`: ~/.local/bin/kinema)
  camera element:   GST_PLUGIN_PATH=$(dirname "$KINEMA_BIN") gst-inspect-1.0 kinemasink

MSG
wait "$server"
