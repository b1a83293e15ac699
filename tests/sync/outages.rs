//! Outages: the parent stalls or goes away mid-sync, a `connected-registry` parent is killed
//! and comes back, the child is killed mid-sync. Clients polling the child never see a tag
//! whose content is incomplete, and sync finishes on its own.

use super::*;

/// The parent stalls, then goes away mid-sync (connections cut, new ones refused): local pulls
/// keep working, a client polling the child never sees a tag whose content is incomplete, the
/// status says `ParentUnreachable`, and when the parent comes back sync finishes on its own.
#[test]
fn fault_parent_gone_mid_sync_no_half_synced_tag_and_resume() {
    let work = tmp();
    let parent = Distribution::start();
    let base_layer = random_bytes(200, 64 * KIB);
    let mut images = Vec::new();
    for i in 0..4u64 {
        images.push(Image::new(
            "linux/amd64",
            &[base_layer.clone(), random_bytes(201 + i, 160 * KIB)],
        ));
    }
    let tagged: Vec<(String, &Image)> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (format!("v{i}"), img))
        .collect();
    let seed: Vec<(&str, &Image)> = tagged.iter().map(|(t, i)| (t.as_str(), *i)).collect();
    skopeo_seed(work.path(), &parent.host(), "steady/app", &seed);
    let expected: BTreeMap<String, String> = tagged
        .iter()
        .map(|(t, i)| (t.clone(), i.digest.clone()))
        .collect();

    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(128 * 1024));
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["steady/app"], "concurrency": 2}),
    );
    let c = child.base();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_child(
        c.clone(),
        "steady/app".into(),
        expected.clone(),
        stop.clone(),
    );

    // Let part of it arrive: at least one tag (of four) complete here.
    assert!(
        wait_until(Duration::from_secs(30), || {
            !tags(&c, "steady/app").unwrap_or_default().is_empty()
        }),
        "no tag arrived\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    let local_pulls_work = |phase: &str| {
        let t = Instant::now();
        let visible = tags(&c, "steady/app").unwrap_or_default();
        for tag in &visible {
            let img = tagged.iter().find(|(t, _)| t == tag).unwrap().1;
            assert_serves(&c, "steady/app", tag, img, None);
        }
        assert_eq!(get(&c, "/v2/").status, 200);
        let took = t.elapsed();
        println!("{phase}: local pulls of {visible:?} took {took:?}");
        assert!(!visible.is_empty(), "{phase}: nothing to pull");
        assert!(
            took < Duration::from_secs(3),
            "{phase}: local pulls took {took:?}"
        );
    };

    // The parent slows to 1 KiB/s.
    proxy.throttle(Some(1024));
    std::thread::sleep(Duration::from_millis(1500));
    local_pulls_work("parent at 1 KiB/s");

    // The parent hangs: bytes stop, connections stay open.
    proxy.stall(true);
    std::thread::sleep(Duration::from_millis(1500));
    local_pulls_work("parent stalled");

    // The parent goes away.
    proxy.set_down(true);
    proxy.cut();
    proxy.stall(false);
    let unreachable = wait_until(Duration::from_secs(20), || {
        detail_codes(&status(&c))
            .iter()
            .any(|code| code == "ParentUnreachable")
    });
    assert!(
        unreachable,
        "statusDetails never showed ParentUnreachable{}",
        diag(&child)
    );
    let s = status(&c);
    println!(
        "while the parent is down: connectionState {}, details {:?}",
        s["connectionState"],
        detail_codes(&s)
    );
    assert!(
        s["connectionState"] == "Offline" || s["connectionState"] == "Unhealthy",
        "connectionState with the parent down: {}",
        s["connectionState"]
    );
    local_pulls_work("parent down");
    let synced_while_down = tags(&c, "steady/app").unwrap_or_default();
    assert!(
        synced_while_down.len() < 4,
        "the test needs the sync to be cut short: {synced_while_down:?}"
    );

    // Back: sync resumes by itself.
    let back = Instant::now();
    proxy.throttle(None);
    proxy.set_down(false);
    for (tag, img) in &tagged {
        wait_for_tag(
            &child,
            "steady/app",
            tag,
            &img.digest,
            Duration::from_secs(45),
        );
    }
    println!(
        "resumed and finished {:?} after the parent came back",
        back.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let w = watcher.join().unwrap();
    println!("watcher: {} tag checks", w.checks);
    assert!(
        w.violations.is_empty(),
        "a client saw incomplete content: {:#?}",
        w.violations
    );
    assert!(
        w.checks >= 20,
        "the watcher made too few checks ({})",
        w.checks
    );
    for (tag, img) in &tagged {
        assert_serves(&c, "steady/app", tag, img, None);
    }
}

/// A connected-registry parent killed with -9 while the child follows its feed: local pulls keep
/// working, status says `ParentUnreachable`; the parent restarts on the same port and a new push
/// reaches the child without anyone touching it.
#[test]
fn fault_connected_parent_killed_and_back() {
    let mut root = Registry::start();
    let r = root.url("");
    let v1 = Image::new("linux/amd64", &[random_bytes(301, 16 * KIB)]);
    push_image(&r, "kill/app", "v1", &v1);
    let child = Node::child(&r, json!({"repositories": ["kill/**"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "kill/app",
        "v1",
        &v1.digest,
        Duration::from_secs(30),
    );

    root.kill9();
    assert!(
        wait_until(Duration::from_secs(20), || {
            detail_codes(&status(&c))
                .iter()
                .any(|code| code == "ParentUnreachable")
        }),
        "statusDetails never showed ParentUnreachable{}",
        diag(&child)
    );
    assert_serves(&c, "kill/app", "v1", &v1, None);
    let detail = status(&c)["statusDetails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "ParentUnreachable")
        .cloned()
        .unwrap();
    assert!(
        detail["timestamp"].is_string() && detail["description"].is_string(),
        "{detail}"
    );

    root.restart();
    let v2 = Image::new("linux/amd64", &[random_bytes(302, 16 * KIB)]);
    push_image(&r, "kill/app", "v2", &v2);
    let took = wait_for_tag(
        &child,
        "kill/app",
        "v2",
        &v2.digest,
        Duration::from_secs(45),
    );
    println!("sync resumed {took:?} after the parent came back");
    assert_serves(&c, "kill/app", "v2", &v2, None);
    assert_serves(&c, "kill/app", "v1", &v1, None);
}

/// `kill -9` of the child mid-download (throttled 2 MiB blob): after a restart the download
/// resumes from the partial file with `Range` and finishes; the parent serves the blob about
/// once in total.
#[test]
fn fault_child_killed_mid_sync_restarts_and_finishes() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(401, 2 * MIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", &[layer.clone(), random_bytes(402, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "crash/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(512 * 1024));
    let mut child = Node::child(&proxy.endpoint(), json!({"repositories": ["crash/app"]}));
    let partial = child.data_path(&format!("partial/sha256-{}", &layer_digest[7..]));

    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 700 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    assert!(
        wait_until(Duration::from_secs(5), || partial
            .metadata()
            .map(|m| m.len() > 0)
            .unwrap_or(false)),
        "no partial download at {partial:?}"
    );
    child.kill9();
    let on_disk = partial.metadata().map(|m| m.len()).unwrap_or(0);
    let served_before = blob_gets(&proxy.requests(), &layer_digest)[0].response_bytes;
    println!(
        "killed with {on_disk} bytes of {} on disk ({served_before} served)",
        layer.len()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", child.port)).is_err(),
        "the child is down"
    );
    let n_before = proxy.request_count();
    proxy.throttle(None);
    child.restart();

    wait_for_tag(
        &child,
        "crash/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.base(), "crash/app", "v1", &img, None);
    let after: Vec<Request> = proxy.requests()[n_before..].to_vec();
    let gets = blob_gets(&after, &layer_digest);
    let log = proxy_log(&proxy);
    assert!(!gets.is_empty(), "{log}");
    let n = range_start(&gets[0]).unwrap_or(0);
    assert!(
        n > 0,
        "after the restart the download started over instead of resuming\n{log}"
    );
    assert!(
        n <= on_disk,
        "resumed at {n} but only {on_disk} bytes were on disk"
    );
    assert_eq!(gets[0].status, Some(206), "{log}");
    let total: u64 = blob_gets(&proxy.requests(), &layer_digest)
        .iter()
        .map(|r| r.response_bytes)
        .sum();
    println!(
        "layer {} bytes; served {total} bytes in total; resumed at {n}",
        layer.len()
    );
    assert!(
        total <= layer.len() as u64 + layer.len() as u64 / 10,
        "the parent served {total} bytes for a {}-byte blob\n{log}",
        layer.len()
    );
    assert!(
        !partial.exists(),
        "the partial file {partial:?} is left behind"
    );
}
