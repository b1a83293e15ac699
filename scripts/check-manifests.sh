#!/usr/bin/env bash
# Checks the IoT Edge deployment manifests, offline, the way IoT Hub and the device would see them:
#   (a) expands deployment.template.json with iotedgedev (`solution genconfig`) for amd64 and
#       arm64v8, as a developer does before `az iot edge set-modules`;
#   (b) validates every generated manifest and every edge-manifests/*.json against SchemaStore's
#       azure-iot-edge-deployment-2.0.json (draft-04), plus what IoT Hub/edgeAgent enforce and the
#       schema does not: createOptions chunks of at most 512 characters (at most 8) holding one
#       JSON object, no unexpanded ${...}, twin keys free of `.`/`$`/`#`/spaces, twins under 32 KB;
#   (c) starts the real `connected-registry serve` on the connected-registry module's desired
#       properties, so the twin is checked by the node's own parser and validation (unknown keys,
#       password hashes, schedules, token actions...), not by a copy of its schema that could drift.
# iotedgedev itself skips schema validation offline (it fetches the schema from the web), hence (b).
#
# Usage: scripts/check-manifests.sh             everything above
#        scripts/check-manifests.sh FILE...     (b) and (c) on these manifests only
# Environment:
#   IOTEDGE_SCHEMA_DIR     where azure-iot-edge-deployment-2.0.json is (default ../shared/reference/schemas,
#                          beside the repository, else /work/shared/reference/schemas; not vendored)
#   MANIFEST_OUT_DIR       keep the generated manifests there (default: a temporary directory)
#   CONNECTED_REGISTRY_BIN the binary for (c) (default target/release/connected-registry, built if missing)
#   IOTEDGEDEV_VENV        the virtualenv iotedgedev is installed into when it is missing
#                          (default /opt/venv-iotedgedev); IOTEDGEDEV_USE_VENV=1 uses it even when a
#                          global iotedgedev works
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The workplace keeps its shared references beside the repository; a clone elsewhere (a CI
# checkout) finds them at the workplace's own path.
default_schema_dir() {
  for dir in "$ROOT/../shared/reference/schemas" /work/shared/reference/schemas; do
    if [ -f "$dir/azure-iot-edge-deployment-2.0.json" ]; then echo "$dir"; return; fi
  done
  echo "$ROOT/../shared/reference/schemas"
}
SCHEMA_DIR=${IOTEDGE_SCHEMA_DIR:-$(default_schema_dir)}
SCHEMA=$SCHEMA_DIR/azure-iot-edge-deployment-2.0.json
VENV=${IOTEDGEDEV_VENV:-/opt/venv-iotedgedev}
BIN=${CONNECTED_REGISTRY_BIN:-$ROOT/target/release/connected-registry}

fail() {
  echo "check-manifests: error: $*" >&2
  exit 1
}

[ -f "$SCHEMA" ] || fail "the IoT Edge deployment schema $SCHEMA is missing. It is SchemaStore's \
azure-iot-edge-deployment-2.0.json; put it in ../shared/reference/schemas beside the repository \
or point IOTEDGE_SCHEMA_DIR at the directory that holds it."

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -9 "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- tools: Python with jsonschema, and iotedgedev for (a) -----------------------------------
# iotedgedev pins old packages (azure-cli-core <2.35, iotedgehubdev, docker), so when it is missing
# it goes into its own virtualenv rather than next to azure-iot-device and oras.
PY=
IOTEDGEDEV=
if [ "${IOTEDGEDEV_USE_VENV:-0}" != 1 ] && command -v iotedgedev >/dev/null 2>&1 &&
  python3 -c 'import jsonschema, iotedgedev' 2>/dev/null; then
  PY=$(command -v python3)
  IOTEDGEDEV=$(command -v iotedgedev)
else
  # Several checks may start at once on a fresh machine (tests run in parallel): one installs,
  # the others wait for it and then use what it installed.
  exec 9>"$VENV.lock" || fail "cannot create the lock file $VENV.lock"
  flock 9
  if ! { [ -x "$VENV/bin/iotedgedev" ] && "$VENV/bin/python" -c 'import jsonschema, iotedgedev' 2>/dev/null; }; then
    echo "check-manifests: installing iotedgedev and jsonschema into $VENV" >&2
    python3 -m venv "$VENV" || fail "cannot create the virtualenv $VENV (python3 -m venv)"
    "$VENV/bin/pip" install -q --upgrade pip >&2 || fail "cannot upgrade pip in $VENV"
    "$VENV/bin/pip" install -q iotedgedev jsonschema >&2 || fail "pip install iotedgedev jsonschema failed in $VENV"
    "$VENV/bin/pip" check >&2 || fail "pip check found broken requirements in $VENV"
  fi
  flock -u 9
  PY=$VENV/bin/python
  IOTEDGEDEV=$VENV/bin/iotedgedev
fi

# ---- (a) expand the template -------------------------------------------------------------------
MANIFESTS=()
if [ $# -gt 0 ]; then
  for f in "$@"; do
    [ -f "$f" ] || fail "no such manifest: $f"
    MANIFESTS+=("$f")
  done
else
  OUT=${MANIFEST_OUT_DIR:-$WORK/config}
  mkdir -p "$OUT"
  # iotedgedev asks about telemetry on its first run and uploads usage data unless told not to.
  home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
  mkdir -p "$home/.iotedgedev"
  printf '[DEFAULT]\nfirsttime = no\ncollect_telemetry = no\n' >"$home/.iotedgedev/setting.ini"
  # An argon2id hash (from `token create --twin`; its password was thrown away): the node refuses a passwordHash that is not one.
  HASH='$argon2id$v=19$m=19456,t=2,p=1$dafoNhCmtwaqYDOnRJoZbg$+DdXK5Ap9Ep06x2FktEgGH4HZLjMDB+cK/oGXQX8BY8'
  for platform in amd64 arm64v8; do
    echo "check-manifests: iotedgedev solution genconfig -P $platform" >&2
    # From an empty directory so that no developer's .env leaks in; every variable is set here.
    if ! (cd "$WORK" && env -u CONTAINER_TAG -u BYPASS_MODULES -u DOTENV_FILE \
      CONFIG_OUTPUT_DIR="$OUT" \
      CONTAINER_REGISTRY_SERVER=registry.example.com \
      CONTAINER_REGISTRY_USERNAME=edge-pull \
      CONTAINER_REGISTRY_PASSWORD=example-pull-password \
      EDGE_RUNTIME_VERSION=1.5 \
      EDGEAGENT_SCHEMA_VERSION=1.1 \
      EDGEHUB_SCHEMA_VERSION=1.2 \
      CONNECTED_REGISTRY_HOST_DATA_DIR=/srv/connected-registry/data \
      CONNECTED_REGISTRY_NAME=factorya \
      PARENT_ENDPOINT=https://parent.example:443 \
      SYNC_TOKEN_NAME=factorya-sync \
      SYNC_TOKEN_PASSWORD=example-sync-password \
      CLIENT_TOKEN_NAME=line1 \
      CLIENT_TOKEN_PASSWORD_HASH="$HASH" \
      "$IOTEDGEDEV" solution genconfig -f "$ROOT/deployment.template.json" -P "$platform" \
      --fail-on-validation-error >"$WORK/genconfig-$platform.log" 2>&1); then
      cat "$WORK/genconfig-$platform.log" >&2
      fail "iotedgedev solution genconfig -P $platform failed (output above)"
    fi
    out="$OUT/deployment.$platform.json"
    [ -f "$out" ] || { cat "$WORK/genconfig-$platform.log" >&2; fail "genconfig wrote no $out"; }
    MANIFESTS+=("$out")
  done
  for f in "$ROOT"/edge-manifests/*.json; do
    [ -f "$f" ] && MANIFESTS+=("$f")
  done
fi

# ---- (b) schema and IoT Edge rules; extracts each connected-registry twin for (c) ----------------
TWINS=$WORK/twins
mkdir -p "$TWINS"
"$PY" - "$SCHEMA" "$TWINS" "${MANIFESTS[@]}" <<'PYTHON'
import ipaddress, json, os, re, sys
import jsonschema

schema_path, twins_dir, files = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(schema_path) as f:
    schema = json.load(f)
jsonschema.Draft4Validator.check_schema(schema)
validator = jsonschema.Draft4Validator(schema)
# A twin key: no `.`, `$`, `#`, whitespace or control characters, at most 1024 bytes.
BAD_KEY = re.compile(r'[.$#\s\x00-\x1f\x7f]')
failures = 0


def problem(path, msg):
    global failures
    failures += 1
    print(f"{path}: {msg}", file=sys.stderr)


def where(error):
    return "/".join(str(p) for p in error.absolute_path) or "(top)"


def check_twin_keys(path, value, at, depth=1):
    if depth > 10:
        problem(path, f"{at}: nested deeper than 10 levels (IoT Hub twin limit)")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if BAD_KEY.search(k) or len(k.encode()) > 1024:
                problem(path, f"{at}: twin key {k!r} may not contain '.', '$', '#', whitespace or control characters")
            check_twin_keys(path, v, f"{at}/{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if v is None:
                problem(path, f"{at}/{i}: a twin array may not hold null")
            check_twin_keys(path, v, f"{at}/{i}", depth + 1)


for index, path in enumerate(files):
    try:
        with open(path) as f:
            text = f.read()
        manifest = json.loads(text)
    except (OSError, ValueError) as e:
        problem(path, f"not readable JSON: {e}")
        continue
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    for e in errors:
        problem(path, f"schema: at {where(e)}: {e.message}")
    if "${" in text:
        left = sorted(set(re.findall(r"\$\{[^}]*\}", text)))
        problem(path, f"unexpanded placeholders: {', '.join(left)}")
    content = manifest.get("modulesContent", {}) if isinstance(manifest, dict) else {}
    desired = content.get("$edgeAgent", {}).get("properties.desired", {})
    modules = dict(desired.get("systemModules", {}) or {})
    modules.update(desired.get("modules", {}) or {})
    for name, module in modules.items():
        settings = module.get("settings", {}) if isinstance(module, dict) else {}
        chunks = []
        for i in range(0, 100):
            key = "createOptions" if i == 0 else f"createOptions{i:02d}"
            if key not in settings:
                break
            chunks.append(settings[key])
        if not chunks:
            continue
        if len(chunks) > 8:
            problem(path, f"module {name}: {len(chunks)} createOptions chunks; edgeAgent reads at most 8")
        if not all(isinstance(c, str) for c in chunks):
            continue  # the schema check above already says createOptions must be a string
        for i, c in enumerate(chunks):
            if len(c) > 512:
                problem(path, f"module {name}: createOptions chunk {i} is {len(c)} characters; at most 512")
        merged = "".join(chunks)
        if merged == "":
            continue
        try:
            options = json.loads(merged)
            if not isinstance(options, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            problem(path, f"module {name}: createOptions is not a JSON object: {e}")
    # The connected-registry module: its twin is the node's configuration.
    if "connected-registry" not in modules:
        problem(path, "no connected-registry module in $edgeAgent")
        continue
    twin = content.get("connected-registry", {}).get("properties.desired")
    if not isinstance(twin, dict):
        problem(path, 'no modulesContent."connected-registry"."properties.desired" (the node\'s configuration)')
        continue
    check_twin_keys(path, twin, "connected-registry/properties.desired")
    size = len(json.dumps(twin, separators=(",", ":")).encode())
    if size > 32 * 1024:
        problem(path, f"the connected-registry twin is {size} bytes; desired properties are limited to 32 KB")
    # What `serve` refuses on a non-loopback address (the check below listens on loopback).
    listen = twin.get("listen", "127.0.0.1:5000")
    try:
        host = listen.rsplit(":", 1)[0].strip("[]")
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = True  # the node itself reports a bad `listen`
    if not loopback and not (twin.get("clientTokens") or twin.get("syncTokens") or "anonymousPull" in twin):
        problem(path, f"listens on {listen} with no clientTokens, syncTokens or anonymousPull: the node refuses to start")
    # The module expands $IOTEDGE_PARENTHOSTNAME (set by IoT Edge on nested devices) in
    # parent.endpoint from its environment; stand in a host name for the check.
    config = json.loads(json.dumps(twin).replace("$IOTEDGE_PARENTHOSTNAME", "parent.example"))
    with open(os.path.join(twins_dir, f"{index:02d}.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(twins_dir, f"{index:02d}.source"), "w") as f:
        f.write(path)

if failures:
    print(f"check-manifests: {failures} problem(s) in {len(files)} manifest(s)", file=sys.stderr)
    sys.exit(1)
print(f"check-manifests: {len(files)} manifest(s) valid against {os.path.basename(schema_path)} and the IoT Edge rules", file=sys.stderr)
PYTHON

# ---- (c) the node itself accepts each connected-registry twin as its configuration -----------
if [ ! -x "$BIN" ]; then
  echo "check-manifests: building $BIN" >&2
  (cd "$ROOT" && cargo build --release --bin connected-registry) >&2 || fail "cargo build failed"
fi
[ -x "$BIN" ] || fail "no connected-registry binary at $BIN"

for config in "$TWINS"/*.json; do
  source=$(cat "${config%.json}.source")
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  data=$(mktemp -d "$WORK/data.XXXX")
  log=$data.log
  # A clean environment: no IOTEDGE_* or ACR_* variable from the caller changes what is checked.
  env -i PATH="$PATH" HOME="$WORK" "$BIN" serve --config "$config" --listen "127.0.0.1:$port" \
    --data-dir "$data" >"$log" 2>&1 &
  SERVER_PID=$!
  started=0
  for _ in $(seq 1 150); do # up to 15 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      started=1
      break
    fi
    sleep 0.1
  done
  if [ "$started" = 1 ]; then
    sleep 1 # a configuration error found after listening would end it now
    kill -0 "$SERVER_PID" 2>/dev/null || started=0
  fi
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  if [ "$started" != 1 ]; then
    cat "$log" >&2
    fail "$source: connected-registry refused the module twin's desired properties as its configuration (log above)"
  fi
  echo "check-manifests: $source: connected-registry starts on the module twin's configuration" >&2
done
echo "check-manifests: OK (${#MANIFESTS[@]} manifest(s))"
