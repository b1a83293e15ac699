#!/usr/bin/env python3
"""bench/sync_gen_oci.py — write the sync benchmark's images as one OCI image layout, by hand.

Usage: sync_gen_oci.py LAYOUT_DIR SMALL_COUNT SMALL_MIB BIG_LAYERS BIG_LAYER_MIB

Writes, under LAYOUT_DIR (an OCI image layout that `skopeo copy oci:LAYOUT_DIR:REF` reads):
  refs app0 .. app{SMALL_COUNT-1}: one uncompressed tar layer holding SMALL_MIB MiB of random bytes
  ref  big: BIG_LAYERS uncompressed tar layers of BIG_LAYER_MIB MiB of random bytes each
Every image has its own config (its diff_ids differ), so no blob is shared between images: a sync
has to move every byte. Layers are `application/vnd.oci.image.layer.v1.tar` (uncompressed), so
`skopeo copy --preserve-digests` pushes them as they are and nobody spends time on gzip.

Prints one line per ref: "<ref> <manifest digest> <total bytes of config + layers>".
"""

import hashlib
import json
import os
import sys
import tarfile

CHUNK = 4 << 20


def write_blob(layout, data_writer):
    """Stream a blob into blobs/sha256 via a temp file; returns (digest, size)."""
    tmp = os.path.join(layout, "blobs", "sha256", ".tmp")
    h = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as f:
        class Sink:
            def write(self, b):
                nonlocal size
                h.update(b)
                f.write(b)
                size += len(b)
                return len(b)
        data_writer(Sink())
    hexd = h.hexdigest()
    os.replace(tmp, os.path.join(layout, "blobs", "sha256", hexd))
    return "sha256:" + hexd, size


def random_layer(mib, name):
    """A tar stream with one file of `mib` MiB of random bytes (deterministic header, mtime 0)."""
    def writer(sink):
        info = tarfile.TarInfo(name)
        info.size = mib << 20
        info.mtime = 0
        info.mode = 0o644
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        sink.write(header)
        left = info.size
        while left:
            n = min(CHUNK, left)
            sink.write(os.urandom(n))
            left -= n
        # data is a multiple of 512 already (MiB sizes); end-of-archive = two zero blocks
        sink.write(b"\0" * 1024)
    return writer


def bytes_writer(b):
    return lambda sink: sink.write(b)


def image(layout, ref, layer_mibs):
    layers = []
    for i, mib in enumerate(layer_mibs):
        d, s = write_blob(layout, random_layer(mib, f"data/{ref}-{i}.bin"))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"bench": ref}},
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
    }, separators=(",", ":")).encode()
    cd, cs = write_blob(layout, bytes_writer(config))
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    }, separators=(",", ":")).encode()
    md, ms = write_blob(layout, bytes_writer(manifest))
    total = cs + sum(l["size"] for l in layers)
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": ref}}, total


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    layout = sys.argv[1]
    small_count, small_mib, big_layers, big_mib = map(int, sys.argv[2:6])
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    jobs = [(f"app{i}", [small_mib]) for i in range(small_count)] + [("big", [big_mib] * big_layers)]
    for ref, mibs in jobs:
        desc, total = image(layout, ref, mibs)
        index["manifests"].append(desc)
        print(ref, desc["digest"], total, flush=True)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
