"""Drives the real `oras` Python SDK (0.2.43) for tests/clients.rs.

usage: oras_client.py HOST MODE WORKDIR
  MODE=referrer: push an artifact (custom layer and config media types) to <repo>:v1, then a
                 second artifact that refers to it (subject) to <repo>:sig, then pull <repo>:v1
                 into WORKDIR/pulled.
  MODE=chunked:  push WORKDIR/big.bin with do_chunked=True, chunk_size=1 MiB to <repo>:chunked,
                 then pull it into WORKDIR/pulled.
  MODE=simple:   push WORKDIR/deployment.json to <repo>:v1 and pull it into WORKDIR/pulled; a
                 refused request prints {"error": status, "body": text} instead of failing.
With ORAS_USER and ORAS_PASSWORD set, the client logs in with them (Basic at the token realm).
The repository is read from WORKDIR/repo. Prints one JSON object with what the SDK saw.
"""

import json
import os
import sys

import oras.client
import oras.oci

host, mode, work = sys.argv[1], sys.argv[2], sys.argv[3]
repo = open(os.path.join(work, "repo")).read().strip()
client = oras.client.OrasClient(hostname=host, insecure=True)
if os.environ.get("ORAS_USER"):
    client.auth.set_basic_auth(os.environ["ORAS_USER"], os.environ["ORAS_PASSWORD"])
# oras resolves relative paths against the working directory.
os.chdir(work)
out = {"version": oras.__version__}


def pushed(resp):
    assert resp.status_code == 201, (resp.status_code, resp.text)
    return {
        "status": resp.status_code,
        "digest": resp.headers.get("Docker-Content-Digest"),
        "subject": resp.headers.get("OCI-Subject"),
    }


if mode == "referrer":
    ref = f"{host}/{repo}:v1"
    out["artifact"] = pushed(
        client.push(
            target=ref,
            files=["deployment.json:application/vnd.example.deployment+json"],
            manifest_config="config.json:application/vnd.example.deployment.config.v1+json",
            manifest_annotations={"org.example.kind": "deployment"},
            disable_path_validation=True,
        )
    )
    subject = oras.oci.Subject.from_manifest(client.get_manifest(ref))
    out["subject_from_sdk"] = {
        "mediaType": subject.mediaType,
        "digest": subject.digest,
        "size": subject.size,
    }
    out["referrer"] = pushed(
        client.push(
            target=f"{host}/{repo}:sig",
            files=["signature.txt:application/vnd.example.signature.v1"],
            manifest_config="/dev/null:application/vnd.example.signature.config.v1+json",
            manifest_annotations={"org.example.signed-by": "tests"},
            subject=subject,
            disable_path_validation=True,
        )
    )
    out["pulled"] = client.pull(target=ref, outdir="pulled")
    out["tags"] = client.get_tags(f"{host}/{repo}")
elif mode == "chunked":
    ref = f"{host}/{repo}:chunked"
    out["artifact"] = pushed(
        client.push(
            target=ref,
            files=["big.bin"],
            do_chunked=True,
            chunk_size=1 << 20,
            disable_path_validation=True,
        )
    )
    out["pulled"] = client.pull(target=ref, outdir="pulled")
elif mode == "simple":
    ref = f"{host}/{repo}:v1"
    try:
        resp = client.push(
            target=ref,
            files=["deployment.json:application/vnd.example.deployment+json"],
            disable_path_validation=True,
        )
        out["artifact"] = pushed(resp)
    except Exception as e:  # the SDK raises on a refused request
        out["push_error"] = str(e)
    try:
        out["pulled"] = client.pull(target=ref, outdir="pulled")
    except Exception as e:
        out["pull_error"] = str(e)
else:
    sys.exit(f"unknown mode {mode}")

print(json.dumps(out))
