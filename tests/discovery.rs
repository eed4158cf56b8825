//! DNS discovery through the system resolver: the proxy runs in a private mount namespace
//! whose `/etc/hosts` (and `nsswitch.conf`: files only) the test writes, so a host name
//! resolves to addresses the test controls, on 127.x loopback addresses.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// `scoregate run --config FILE` in a private mount namespace seeing the three given files.
fn run_in_namespace(hosts: &Path, nsswitch: &Path, resolv: &Path, file: &Path) -> Proc {
    proxy_in_namespace(
        [hosts, nsswitch, resolv],
        &["run", "--config", file.to_str().unwrap()],
    )
}

/// Three backends on 127.0.0.2, .3 and .4, all on one port (as pods behind one Service).
async fn three_on_one_port() -> (Backend, Backend, Backend, u16) {
    for _ in 0..20 {
        let first = Backend::on("b2", Behavior::default(), "127.0.0.2:0".parse().unwrap())
            .await
            .unwrap();
        let port = first.addr.port();
        let at = |ip: &str| format!("{ip}:{port}").parse::<SocketAddr>().unwrap();
        let (Ok(b3), Ok(b4)) = (
            Backend::on("b3", Behavior::default(), at("127.0.0.3")).await,
            Backend::on("b4", Behavior::default(), at("127.0.0.4")).await,
        ) else {
            continue;
        };
        return (first, b3, b4, port);
    }
    panic!("no port free on 127.0.0.2-4");
}

/// Rewrites the file in place (same inode), so the bind mount sees the new content.
fn write_hosts(path: &Path, ips: &[&str]) {
    let mut s = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        s.push_str(&format!("{ip} scoring.test\n"));
    }
    std::fs::write(path, s).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_name_stands_for_all_its_addresses_and_follows_them() {
    if !namespaces_work() {
        // `localhost_is_discovered_through_the_system_resolver` still runs.
        eprintln!("SKIPPED: no private mount namespace here (`unshare -m` needs root)");
        return;
    }
    let (b2, b3, b4, port) = three_on_one_port().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let nsswitch = dir.path().join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    write_hosts(&hosts, &["127.0.0.2", "127.0.0.3"]);
    let name = format!("scoring.test:{port}");
    let file = dir.path().join("endpoint.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndns_refresh_ms: 200\n\
             traffic: {{blue: 100}}\ndeployments:\n  blue:\n    instances: [{name}]\n"
        ),
    )
    .unwrap();
    let proxy = run_in_namespace(&hosts, &nsswitch, &resolv, &file);
    let config = async || admin_get(&proxy, "/config").await.json();

    // Both addresses of the name take traffic; the third, not in the hosts file, none.
    let load = Load::start(proxy.url("/score"), 4);
    wait_until("traffic on .2 and .3", Duration::from_secs(5), async || {
        b2.seen().len() > 20 && b3.seen().len() > 20
    })
    .await;
    assert!(b4.seen().is_empty());
    let c = config().await;
    let expected = |ips: &[&str]| -> serde_json::Value {
        ips.iter().map(|ip| format!("{ip}:{port}")).collect()
    };
    assert_eq!(
        c["dns"][&name]["addresses"],
        expected(&["127.0.0.2", "127.0.0.3"])
    );
    assert_eq!(
        c["deployments"]["blue"]["instances"][0]["discovered_from"],
        *name
    );
    assert_eq!(c["generation"], 1);

    // A pod goes, another comes: .2 drains, .4 gets traffic, without editing the file.
    write_hosts(&hosts, &["127.0.0.3", "127.0.0.4"]);
    wait_until("traffic on .4", Duration::from_secs(5), async || {
        b4.seen().len() > 20
    })
    .await;
    let on_two = b2.seen().len();
    let (three, four) = (b3.seen().len(), b4.seen().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b2.seen().len(),
        on_two,
        "the removed address still got requests"
    );
    assert!(b3.seen().len() > three && b4.seen().len() > four);
    let c = config().await;
    assert_eq!(
        c["dns"][&name]["addresses"],
        expected(&["127.0.0.3", "127.0.0.4"])
    );
    assert_eq!(c["generation"], 1, "discovery is not a new file generation");

    // The name stops resolving: the last addresses keep serving; the failure is reported.
    write_hosts(&hosts, &[]);
    let series = format!("scoregate_dns_lookup_errors_total{{name=\"{name}\"}}");
    wait_until(
        "a counted lookup error",
        Duration::from_secs(5),
        async || proxy.metrics().await.contains(&series),
    )
    .await;
    let (three, four) = (b3.seen().len(), b4.seen().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b3.seen().len() > three && b4.seen().len() > four);
    let c = config().await;
    assert!(c["dns"][&name]["error"].is_string(), "{c}");
    assert_eq!(
        c["dns"][&name]["addresses"],
        expected(&["127.0.0.3", "127.0.0.4"])
    );
    assert!(proxy.log().contains("cannot resolve instance name"));

    load.stop_without_failures(200, "load through the name")
        .await;
}

/// Without a namespace: `localhost` through the real resolver reaches an instance on 127.0.0.1,
/// and `/config` shows what the name resolved to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_is_discovered_through_the_system_resolver() {
    let blue = Backend::start("blue").await;
    let port = blue.addr.port();
    let name = format!("localhost:{port}");
    let proxy = Proc::proxy(&format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic: {{blue: 100}}\n\
         deployments:\n  blue:\n    instances: [{name}]\n"
    ));
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(blue.seen().len(), 1);
    let c = admin_get(&proxy, "/config").await.json();
    let addrs = c["dns"][&name]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        addrs.contains(&serde_json::json!(format!("127.0.0.1:{port}"))),
        "{c}"
    );
    assert_eq!(c["dns"][&name]["error"], serde_json::Value::Null);
}

/// A DNS server that never answers holds back neither the start nor a weights change: names
/// new to the file get at most 2 s, names already known are not looked up on a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resolver_that_never_answers_does_not_hold_back_a_reload() {
    if !namespaces_work() {
        eprintln!("SKIPPED: no private mount namespace here (`unshare -m` needs root)");
        return;
    }
    let (b2, _b3, _b4, port) = three_on_one_port().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, &["127.0.0.2"]);
    let nsswitch = dir.path().join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files dns\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    // The silent DNS server: a UDP socket on port 53 (resolv.conf names no port) that never
    // reads, so every query to it waits out glibc's timeouts (5 s, twice).
    let silent53 = std::net::UdpSocket::bind("127.0.0.53:53")
        .or_else(|_| std::net::UdpSocket::bind("127.0.0.54:53"));
    let Ok(silent53) = silent53 else {
        eprintln!("SKIPPED: cannot bind a UDP socket on port 53");
        return;
    };
    let ns = silent53.local_addr().unwrap().ip();
    std::fs::write(
        &resolv,
        format!("nameserver {ns}\noptions timeout:5 attempts:2\n"),
    )
    .unwrap();
    let file = dir.path().join("endpoint.yaml");
    let endpoint = |blue: u8, green: u8| {
        format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
             traffic: {{blue: {blue}, green: {green}}}\ndeployments:\n\
             \x20 blue:\n    instances: [scoring.test:{port}]\n\
             \x20 green:\n    instances: [silent.test:{port}, 127.0.0.2:{port}]\n"
        )
    };
    std::fs::write(&file, endpoint(100, 0)).unwrap();
    let started = Instant::now();
    let proxy = run_in_namespace(&hosts, &nsswitch, &resolv, &file);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start took {:?}",
        started.elapsed()
    );
    let config = async || admin_get(&proxy, "/config").await.json();
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    let c = config().await;
    let silent_name = format!("silent.test:{port}");
    let error = c["dns"][&silent_name]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no answer within 2s"), "{c}");

    // A weights change goes live at once: the silent name is known, not looked up again.
    let edited = Instant::now();
    std::fs::write(&file, endpoint(50, 50)).unwrap();
    wait_until("the new weights", Duration::from_secs(3), async || {
        config().await["traffic"]["green"] == 50
    })
    .await;
    assert!(
        edited.elapsed() < Duration::from_secs(3),
        "{:?}",
        edited.elapsed()
    );
    // Green's written address serves meanwhile.
    let a = get(
        &client(),
        &proxy.url("/score"),
        &[("x-api-version", "green")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(b2.seen().len() >= 2);
    drop(silent53);
}
