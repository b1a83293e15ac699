//! Large blobs stream through the server in bounded memory: a 2 GiB monolithic push, a full pull
//! and a pull as 4 concurrent range requests, with the server's peak RSS (VmHWM) under 64 MiB
//! for the whole run. The test never holds the blob in memory either: it is generated, hashed and
//! compared piece by piece. Throughput is printed, not asserted.

use crate::common;

use common::support;

use std::io::Read;
use std::time::Instant;

use common::Registry;
use support::{client, hash_reader, header, Gen, MIB};

const GIB: u64 = 1024 * MIB;
const RSS_LIMIT: u64 = 64 * MIB;

fn mib_per_s(bytes: u64, since: Instant) -> f64 {
    bytes as f64 / MIB as f64 / since.elapsed().as_secs_f64()
}

fn assert_peak_rss(reg: &Registry, phase: &str) -> u64 {
    let peak = reg.peak_rss_bytes();
    println!(
        "streaming: after {phase}: server peak RSS {:.1} MiB, current RSS {:.1} MiB",
        peak as f64 / MIB as f64,
        reg.rss_bytes() as f64 / MIB as f64
    );
    assert!(
        peak < RSS_LIMIT,
        "server peak RSS {} MiB during {phase} exceeds {} MiB",
        peak / MIB,
        RSS_LIMIT / MIB
    );
    peak
}

#[test]
fn two_gib_blob_streams_in_bounded_memory() {
    let reg = Registry::start();
    let c = client();
    let repo = "big/stream";
    let gen = Gen::new(0x2_0000_0000, 2 * GIB);
    println!(
        "streaming: server RSS at start {:.1} MiB",
        reg.rss_bytes() as f64 / MIB as f64
    );

    let t = Instant::now();
    let digest = gen.digest();
    println!(
        "streaming: generated and hashed 2 GiB in the test at {:.0} MiB/s",
        mib_per_s(gen.len, t)
    );

    // Push: one monolithic POST ?digest= with a streamed, sized body.
    let t = Instant::now();
    let r = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(gen.body_from(0))
        .send()
        .unwrap();
    let push_rate = mib_per_s(gen.len, t);
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    println!(
        "streaming: push 2 GiB in {:.2} s = {push_rate:.0} MiB/s (incl. verify + fsync)",
        t.elapsed().as_secs_f64()
    );
    assert_peak_rss(&reg, "the push");
    assert!(
        support::largest_file(&reg.data_path("tmp")) == 0,
        "temp file left behind"
    );

    // Pull: one GET, streamed and hashed.
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let t = Instant::now();
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "content-length"), gen.len.to_string());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let (got, len) = hash_reader(r).unwrap();
    let pull_rate = mib_per_s(gen.len, t);
    assert_eq!(len, gen.len, "pulled length");
    assert_eq!(got, digest, "pulled bytes do not hash to the digest");
    println!(
        "streaming: pull 2 GiB in {:.2} s = {pull_rate:.0} MiB/s (client hashes as it reads)",
        t.elapsed().as_secs_f64()
    );
    assert_peak_rss(&reg, "the pull");

    // Pull as 4 concurrent range requests, one quarter each, compared byte for byte with what
    // the generator says is at those offsets.
    let quarter = gen.len / 4;
    let t = Instant::now();
    let workers: Vec<_> = (0..4u64)
        .map(|q| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (start, end) = (q * quarter, (q + 1) * quarter - 1);
                let mut r = client()
                    .get(url)
                    .header("range", format!("bytes={start}-{end}"))
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 206, "quarter {q}");
                assert_eq!(
                    header(&r, "content-range"),
                    format!("bytes {start}-{end}/{}", gen.len)
                );
                assert_eq!(header(&r, "content-length"), quarter.to_string());
                let mut got = vec![0u8; MIB as usize];
                let mut want = vec![0u8; MIB as usize];
                let mut pos = start;
                loop {
                    let n = r.read(&mut got).unwrap();
                    if n == 0 {
                        break;
                    }
                    assert!(pos + n as u64 <= end + 1, "quarter {q}: too many bytes");
                    gen.fill_at(pos, &mut want[..n]);
                    assert!(
                        got[..n] == want[..n],
                        "quarter {q}: wrong bytes in {pos}..{}",
                        pos + n as u64
                    );
                    pos += n as u64;
                }
                assert_eq!(pos, end + 1, "quarter {q}: short body");
                pos - start
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, gen.len);
    println!(
        "streaming: 4 concurrent range pulls of 512 MiB in {:.2} s = {:.0} MiB/s total",
        t.elapsed().as_secs_f64(),
        mib_per_s(total, t)
    );
    let peak = assert_peak_rss(&reg, "the range pulls");
    println!(
        "streaming: server peak RSS over the whole run {:.1} MiB (limit {} MiB)",
        peak as f64 / MIB as f64,
        RSS_LIMIT / MIB
    );
}
