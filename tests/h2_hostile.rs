//! Hostile HTTP/2 clients cost bounded work: a raw h2 client (the h2 crate) floods the proxy
//! with streams it resets at once (rapid reset, CVE-2023-44487), while a well-behaved client
//! is still served and the instance is not flooded with the cancelled requests.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_still_served() {
    let blue = Backend::delayed("blue", Duration::from_millis(100)).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (attacker, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut attacker = Some(attacker);
    let started = Instant::now();
    let mut opened = 0u32;
    // Up to 20,000 streams, each reset right after it is opened.
    while opened < 20_000 && started.elapsed() < Duration::from_secs(10) {
        let Some(c) = attacker.take() else { break };
        let Ok(mut ready) = c.ready().await else {
            break;
        };
        let req = http::Request::get(format!("http://{}/score", proxy.addr))
            .body(())
            .expect("request");
        let Ok((_response, mut stream)) = ready.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
        attacker = Some(ready);
    }
    // The proxy closed the attacker's connection long before the flood ended.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        opened < 20_000 && ended.is_ok(),
        "the connection survived {opened} reset streams"
    );
    // Another client is served meanwhile and after.
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    // The instance saw few of the cancelled requests (the count includes the good one).
    assert!(
        blue.count() <= 1 + opened as usize / 4,
        "{} of {opened} cancelled requests reached the instance",
        blue.count()
    );
    eprintln!(
        "rapid reset: connection closed after {opened} streams; {} reached the instance",
        blue.count()
    );
}
