#!/usr/bin/env python3
"""Drive edge-standin with Microsoft's own azure-iot-device SDK (v2, sync API), to prove the
stand-in speaks the real IoT Edge protocol: workload-API signing and trust bundle (or the
EdgeHubConnectionString fallback), MQTT over TLS to the gateway, twin GET, reported patch,
desired patch, output telemetry and a direct method.

Run by tests/edge_standin.rs with the module's environment (module.env) plus CONTROL_URL (the
stand-in's control API). Progress goes to stdout as `STEP <name>` lines; at
`STEP awaiting-method` the Rust test calls the `ping` method through the control API. Any
failure raises, so the exit status is non-zero and the traceback is on stderr. Exit status 3
means the SDK is missing.
"""

import json
import os
import queue
import sys
import urllib.request

try:
    from azure.iot.device import IoTHubModuleClient, Message, MethodResponse
except ImportError as e:  # a missing SDK is a failure, never a skip
    print(
        f"azure-iot-device is not installed for {sys.executable} ({e}); "
        "install it with: pip install azure-iot-device==2.14.0",
        file=sys.stderr,
    )
    sys.exit(3)

CONTROL = os.environ["CONTROL_URL"].rstrip("/")
WAIT = 30  # seconds for anything the stand-in or the SDK delivers


def step(name):
    print(f"STEP {name}", flush=True)


def control(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(CONTROL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=WAIT) as resp:
        return json.loads(resp.read() or b"null")


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    step("connected")

    # The full twin, seeded by the test through --desired.
    twin = client.get_twin()
    desired = twin["desired"]
    expect(desired.get("fidelity", {}).get("seeded") == "yes", f"seeded desired property missing: {twin}")
    expect(isinstance(desired.get("$version"), int), f"desired $version missing: {twin}")
    expect("reported" in twin, f"twin has no reported section: {twin}")
    step("twin")

    # A reported patch; edgeHub answers 204 and the twin shows it.
    client.patch_twin_reported_properties({"fidelity": {"reported": "yes", "count": 2}, "status": "ok"})
    reported = control("GET", "/twin")["reported"]
    expect(reported.get("fidelity") == {"reported": "yes", "count": 2}, f"reported patch not applied: {reported}")
    step("reported")

    # A desired patch sent by "IoT Hub" reaches the module with its $version.
    patches = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    new_desired = control("PATCH", "/twin/desired", {"fidelity": {"patched": 42}})
    patch = patches.get(timeout=WAIT)
    expect(patch.get("fidelity") == {"patched": 42}, f"unexpected desired patch: {patch}")
    expect(patch.get("$version") == new_desired["$version"], f"patch version {patch} vs {new_desired}")
    step("desired")

    # Telemetry on an output, with system and custom properties.
    msg = Message(
        json.dumps({"temperature": 21.5, "unit": "C"}),
        content_type="application/json",
        content_encoding="utf-8",
    )
    msg.custom_properties["fidelity-prop"] = "a value&with=odd/chars"
    client.send_message_to_output(msg, "telemetry")
    step("telemetry")

    # A direct method called by the test through the control API.
    method_requests = queue.Queue()
    client.on_method_request_received = method_requests.put
    step("awaiting-method")
    request = method_requests.get(timeout=WAIT)
    expect(request.name == "ping", f"unexpected method {request.name}")
    client.send_method_response(
        MethodResponse.create_from_method_request(request, 200, {"pong": request.payload})
    )
    step("method-answered")

    client.shutdown()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
