//! Hot reload under sustained keep-alive load: every way a file is replaced moves the traffic,
//! every bad file changes nothing, and no request of the live load fails.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Blue and green backends, the proxy on an endpoint file, and 4 keep-alive clients of load.
struct Rig {
    _blue: Backend,
    _green: Backend,
    addrs: (SocketAddr, SocketAddr),
    proxy: Proc,
    load: Load,
}

fn file(addrs: (SocketAddr, SocketAddr), blue: u8, green: u8) -> String {
    EndpointFile::new()
        .deployment("blue", &[addrs.0], Some(blue))
        .deployment("green", &[addrs.1], Some(green))
        .yaml()
}

async fn backends() -> (Backend, Backend, (SocketAddr, SocketAddr)) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let addrs = (blue.addr, green.addr);
    (blue, green, addrs)
}

impl Rig {
    async fn start() -> Rig {
        let (blue, green, addrs) = backends().await;
        let proxy = Proc::proxy(&file(addrs, 100, 0));
        Self::with(blue, green, proxy).await
    }

    async fn with(blue: Backend, green: Backend, proxy: Proc) -> Rig {
        let addrs = (blue.addr, green.addr);
        let load = Load::start(proxy.url("/score"), 4);
        let rig = Rig {
            _blue: blue,
            _green: green,
            addrs,
            proxy,
            load,
        };
        // The load runs and is served by blue before anything changes.
        rig.load
            .wait_for_only("blue", Instant::now(), Duration::from_secs(5))
            .await;
        rig
    }

    fn path(&self) -> PathBuf {
        self.proxy.config.clone().unwrap()
    }

    fn content(&self, blue: u8, green: u8) -> String {
        file(self.addrs, blue, green)
    }

    async fn errors(&self) -> f64 {
        self.proxy
            .metric("scoregate_config_reloads_total{result=\"error\"}")
            .await
    }

    /// Stops the load and asserts that not one request failed.
    async fn finish(self) {
        self.load
            .stop_without_failures(100, "load across reloads")
            .await;
    }
}

const SWITCH: Duration = Duration::from_secs(5);

fn rename_over(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_in_place() {
    let rig = Rig::start().await;
    let t = Instant::now();
    std::fs::write(rig.path(), rig.content(0, 100)).unwrap();
    rig.load.wait_for_only("green", t, SWITCH).await;
    let t = Instant::now();
    std::fs::write(rig.path(), rig.content(100, 0)).unwrap();
    rig.load.wait_for_only("blue", t, SWITCH).await;
    assert_eq!(rig.proxy.metric("scoregate_config_generation").await, 3.0);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_over_like_mv_and_sed_i() {
    let rig = Rig::start().await;
    let t = Instant::now();
    rename_over(&rig.path(), &rig.content(0, 100));
    rig.load.wait_for_only("green", t, SWITCH).await;
    rig.proxy.wait_log("generation=2 traffic=blue=0 green=100");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_the_way_vim_writes() {
    let rig = Rig::start().await;
    let path = rig.path();
    let backup = path.with_extension("yaml~");
    let t = Instant::now();
    std::fs::rename(&path, &backup).unwrap();
    std::fs::write(&path, rig.content(0, 100)).unwrap();
    std::fs::remove_file(&backup).unwrap();
    rig.load.wait_for_only("green", t, SWITCH).await;
    rig.finish().await;
}

/// The kubelet's ConfigMap volume: `endpoint.yaml -> ..data/endpoint.yaml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory, swaps `..data` with
/// a rename and deletes the old directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap() {
    let (blue, green, addrs) = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let publish = |stamp: &str, content: &str| {
        let ts = d.join(stamp);
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("endpoint.yaml"), content).unwrap();
        std::os::unix::fs::symlink(stamp, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    };
    publish("..2026_11_22_01_00_00.000000001", &file(addrs, 100, 0));
    std::os::unix::fs::symlink("..data/endpoint.yaml", d.join("endpoint.yaml")).unwrap();
    let path = d.join("endpoint.yaml");
    let proxy = Proc::spawn(
        &["run", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let rig = Rig::with(blue, green, proxy).await;

    let t = Instant::now();
    publish("..2026_11_22_01_01_00.000000002", &file(addrs, 0, 100));
    std::fs::remove_dir_all(d.join("..2026_11_22_01_00_00.000000001")).unwrap();
    rig.load.wait_for_only("green", t, SWITCH).await;

    let t = Instant::now();
    publish("..2026_11_22_01_02_00.000000003", &file(addrs, 100, 0));
    std::fs::remove_dir_all(d.join("..2026_11_22_01_01_00.000000002")).unwrap();
    rig.load.wait_for_only("blue", t, SWITCH).await;
    assert_eq!(rig.errors().await, 0.0);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_change_nothing_and_the_next_valid_write_applies() {
    let rig = Rig::start().await;
    let path = rig.path();
    let valid = rig.content(0, 100);
    let truncated = &valid[..valid.len() / 2];
    let mut errors = rig.errors().await;
    assert_eq!(errors, 0.0);
    for bad in [
        "traffic: [blue, {",
        "",
        truncated,
        "\u{0}\u{1}garbage\u{ff}",
    ] {
        let t = Instant::now();
        rename_over(&path, bad);
        // The error is counted, and blue keeps serving meanwhile.
        let deadline = Instant::now() + SWITCH;
        while rig.errors().await == errors {
            assert!(
                Instant::now() < deadline,
                "no reload error counted for {bad:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        errors = rig.errors().await;
        rig.load.assert_only_after("blue", t).await;
        assert_eq!(
            rig.proxy
                .metric("scoregate_config_last_reload_success")
                .await,
            0.0
        );
        assert_eq!(rig.proxy.metric("scoregate_config_generation").await, 1.0);
    }
    rig.proxy
        .wait_log("endpoint file not applied; generation 1 keeps serving");
    rig.proxy.wait_log(&format!("{}:1:", path.display()));

    let t = Instant::now();
    rename_over(&path, &valid);
    rig.load.wait_for_only("green", t, SWITCH).await;
    assert_eq!(
        rig.proxy
            .metric("scoregate_config_last_reload_success")
            .await,
        1.0
    );
    assert_eq!(rig.proxy.metric("scoregate_config_generation").await, 2.0);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_then_recreated() {
    let rig = Rig::start().await;
    let path = rig.path();
    let t = Instant::now();
    std::fs::remove_file(&path).unwrap();
    let deadline = Instant::now() + SWITCH;
    while rig.errors().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "deleting the file was not counted as a failed reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.load.assert_only_after("blue", t).await;
    rig.proxy.wait_log("cannot read the file");

    let t = Instant::now();
    std::fs::write(&path, rig.content(0, 100)).unwrap();
    rig.load.wait_for_only("green", t, SWITCH).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rapid_flips_end_on_the_last_write() {
    let rig = Rig::start().await;
    let path = rig.path();
    let (to_green, to_blue) = (rig.content(0, 100), rig.content(100, 0));
    for i in 0..50 {
        rename_over(&path, if i % 2 == 0 { &to_green } else { &to_blue });
        tokio::time::sleep(Duration::from_millis(if i % 5 == 0 { 150 } else { 10 })).await;
    }
    // The 50th write (i = 49) was blue; end on green with one more write.
    let t = Instant::now();
    rename_over(&path, &to_green);
    rig.load.wait_for_only("green", t, SWITCH).await;
    assert_eq!(rig.errors().await, 0.0);
    let generation = rig.proxy.metric("scoregate_config_generation").await;
    assert!(
        generation >= 10.0,
        "only {generation} generations for 51 writes with pauses"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_and_the_periodic_check_catches_what_no_event_shows() {
    let (blue, green, addrs) = backends().await;
    // The endpoint file is a symlink into another directory, which the watcher does not watch:
    // changes to the target raise no event in the file's own directory.
    let real = tempfile::tempdir().unwrap();
    let link = tempfile::tempdir().unwrap();
    let target = real.path().join("endpoint.yaml");
    std::fs::write(&target, file(addrs, 100, 0)).unwrap();
    let path = link.path().join("endpoint.yaml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let proxy = Proc::spawn(
        &["run", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let rig = Rig::with(blue, green, proxy).await;
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &rig.proxy.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };

    // SIGHUP with unchanged content: a counted, successful reload; no new generation.
    hup();
    let deadline = Instant::now() + SWITCH;
    while rig
        .proxy
        .metric("scoregate_config_reloads_total{result=\"success\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.proxy.metric("scoregate_config_generation").await, 1.0);

    // SIGHUP after a change: applied well within the periodic check's interval.
    rename_over(&target, &file(addrs, 0, 100));
    let t = Instant::now();
    hup();
    let took = rig.load.wait_for_only("green", t, SWITCH).await;
    assert!(took < Duration::from_millis(1000), "SIGHUP took {took:?}");

    // No event, no signal: the periodic content check applies it within a few seconds.
    let t = Instant::now();
    rename_over(&target, &file(addrs, 100, 0));
    rig.load
        .wait_for_only("blue", t, Duration::from_secs(6))
        .await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_kept_with_a_warning() {
    let rig = Rig::start().await;
    let t = Instant::now();
    let changed = rig.content(0, 100).replace(
        "listen: 127.0.0.1:0\nadmin_listen",
        "listen: 127.0.0.1:1\nadmin_listen",
    );
    rename_over(&rig.path(), &changed);
    rig.load.wait_for_only("green", t, SWITCH).await;
    rig.proxy
        .wait_log("listen and admin_listen are read at start only");
    rig.finish().await;
}
