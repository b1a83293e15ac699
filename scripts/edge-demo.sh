#!/usr/bin/env bash
# Run connected-registry as an IoT Edge module on this machine, without IoT Edge: the edge
# runtime stand-in (workload API on a unix socket, mosquitto as edgeHub on :8883) plays the
# runtime, and the module is started with exactly the variables the runtime gives a module.
# Its configuration comes from the twin (edit it live with the control API printed below).
#
#   scripts/edge-demo.sh [DESIRED.json]     # default: a root registry named "edgedemo"
#
# Needs mosquitto (apt-get install mosquitto). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || { echo "mosquitto is not installed: apt-get install -y mosquitto" >&2; exit 1; }
cargo build --release --bins --quiet
dir=$(mktemp -d /tmp/edge-demo.XXXXXX)
desired=${1:-$dir/desired.json}
if [ $# -eq 0 ]; then
  echo '{"name": "edgedemo", "logging": {"level": "Information"}}' > "$desired"
fi
./target/release/edge-standin --dir "$dir/edge" --desired "$desired" > "$dir/standin.out" 2> "$dir/standin.log" &
standin=$!
trap 'kill $standin 2>/dev/null; wait $standin 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$dir/standin.out" ] && break; sleep 0.1; done
[ -s "$dir/standin.out" ] || { echo "the stand-in did not start:" >&2; cat "$dir/standin.log" >&2; exit 1; }
control=$(head -1 "$dir/standin.out" | sed -E 's/.*"control":"([^"]+)".*/\1/')
cat <<INFO
edge runtime stand-in ready; module identity in $dir/edge/module.env
  the twin:          curl -s $control/twin | jq
  change the config: curl -s -X PATCH $control/twin/desired -d '{"logging":{"level":"Debug"}}'
  telemetry:         curl -s $control/telemetry | jq
  a direct method:   curl -s -X POST $control/methods/status -d '{}' | jq
the module serves the registry on 127.0.0.1:5000 (docker pull 127.0.0.1:5000/...)
INFO
set -a; . "$dir/edge/module.env"; set +a
./target/release/connected-registry serve --listen 127.0.0.1:5000 --data-dir "$dir/data"
