//! Blob downloads: whole, resumed with `Range`, a corrupted partial file, a cut through a TCP
//! proxy, and one bandwidth limit shared by concurrent downloads.

use super::*;

#[tokio::test]
async fn download_blob_whole_resumed_and_complete() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    let layer = random_bytes(3 * 1024 * 1024 + 123, 1);
    let (_, digest) = push.image("demo/big", &["v1"], &layer).await;
    let client = client_for(&reg.url(), None);
    let tmp = tempfile::tempdir().unwrap();

    // Whole, into a directory that does not exist yet.
    let whole = tmp.path().join("new/dir/whole.partial");
    let n = client
        .download_blob("demo/big", &digest, &whole)
        .await
        .unwrap();
    assert_eq!(n, layer.len() as u64);
    assert_eq!(sha256_file(&whole), digest);

    // Resumed from the first N bytes.
    let resumed = tmp.path().join("resumed.partial");
    let first = 1_234_567;
    std::fs::write(&resumed, &layer[..first]).unwrap();
    let n = client
        .download_blob("demo/big", &digest, &resumed)
        .await
        .unwrap();
    assert_eq!(
        n,
        (layer.len() - first) as u64,
        "only the rest is transferred"
    );
    assert_eq!(std::fs::read(&resumed).unwrap(), layer);

    // Already complete: distribution answers 416 to the Range; the file is only verified.
    let n = client
        .download_blob("demo/big", &digest, &resumed)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(sha256_file(&resumed), digest);

    // A blob the parent does not have.
    let missing = Digest::sha256_of(b"missing");
    let err = client
        .download_blob("demo/big", &missing, &tmp.path().join("missing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ProtocolError", "{err}");
}

#[tokio::test]
async fn corrupted_partial_is_a_digest_mismatch_and_is_removed() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    let layer = random_bytes(600_000, 2);
    let (_, digest) = push.image("demo/corrupt", &["v1"], &layer).await;
    let client = client_for(&reg.url(), None);
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("blob.partial");

    let mut wrong = layer[..100_000].to_vec();
    wrong[0] ^= 0xff;
    wrong[99_999] ^= 0x01;
    std::fs::write(&partial, &wrong).unwrap();
    let err = client
        .download_blob("demo/corrupt", &digest, &partial)
        .await
        .unwrap_err();
    match &err {
        SyncError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &digest.to_string());
            assert_ne!(actual, expected);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), "DigestMismatch");
    assert!(!partial.exists(), "the bad partial file is deleted");

    // The next attempt starts over and succeeds.
    let n = client
        .download_blob("demo/corrupt", &digest, &partial)
        .await
        .unwrap();
    assert_eq!(n, layer.len() as u64);
    assert_eq!(sha256_file(&partial), digest);
}

/// A TCP proxy that forwards at most `budget` bytes from the parent to the client over all
/// connections, then cuts every connection.
struct CuttingProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CuttingProxy {
    async fn start(upstream: String, budget: u64) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let left = Arc::new(AtomicU64::new(budget));
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let left = left.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut down_r, mut down_w) = down.split();
                    let (mut up_r, mut up_w) = up.split();
                    let requests = tokio::io::copy(&mut down_r, &mut up_w);
                    let answers = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match up_r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let allowed = left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                                    Some(l.saturating_sub(n as u64))
                                })
                                .unwrap();
                            let send = (n as u64).min(allowed) as usize;
                            if send > 0 && down_w.write_all(&buf[..send]).await.is_err() {
                                return;
                            }
                            if send < n {
                                return; // budget spent: cut
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = answers => {}
                    }
                });
            }
        });
        CuttingProxy { port, task }
    }
}

#[tokio::test]
async fn download_cut_midway_keeps_the_partial_and_resumes_with_range() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    let layer = random_bytes(2 * 1024 * 1024, 3);
    let (_, digest) = push.image("demo/cut", &["v1"], &layer).await;
    let upstream = reg.host();
    let proxy = CuttingProxy::start(upstream, 700_000).await;
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("cut.partial");

    let through_proxy = client_for(&format!("http://127.0.0.1:{}", proxy.port), None);
    let err = through_proxy
        .download_blob("demo/cut", &digest, &partial)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TransferFailed", "{err}");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(
        kept > 500_000 && kept < 700_000,
        "the bytes received before the cut stay on disk: {kept}"
    );
    assert_eq!(std::fs::read(&partial).unwrap(), layer[..kept as usize]);

    let direct = client_for(&reg.url(), None);
    let n = direct
        .download_blob("demo/cut", &digest, &partial)
        .await
        .unwrap();
    assert_eq!(
        n,
        layer.len() as u64 - kept,
        "resumed where the cut left off"
    );
    assert_eq!(std::fs::read(&partial).unwrap(), layer);
}

#[tokio::test]
async fn bandwidth_limit_is_shared_by_concurrent_downloads() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    let a = random_bytes(256 * 1024, 4);
    let b = random_bytes(256 * 1024, 5);
    let (_, da) = push.image("demo/bw", &["a"], &a).await;
    let (_, db) = push.image("demo/bw", &["b"], &b).await;
    let client = Arc::new(
        ParentClient::new(ParentOptions {
            endpoint: reg.url(),
            credentials: None,
            ca_pem: None,
            bandwidth_limit: Some(256 * 1024),
        })
        .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (tmp.path().join("a"), tmp.path().join("b"));
    let start = Instant::now();
    let (ra, rb) = tokio::join!(
        client.download_blob("demo/bw", &da, &pa),
        client.download_blob("demo/bw", &db, &pb)
    );
    let took = start.elapsed();
    assert_eq!(ra.unwrap() + rb.unwrap(), 512 * 1024);
    assert_eq!(sha256_file(&pa), da);
    assert_eq!(sha256_file(&pb), db);
    // 512 KiB at 256 KiB/s with a 64 KiB burst: at least ~1.75 s together (each alone would
    // need only ~0.75 s).
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
