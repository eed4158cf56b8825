//! Hostile HTTP/2 clients cost bounded work: a raw h2 client (the h2 crate) floods the proxy
//! with streams it resets at once (rapid reset, CVE-2023-44487), and raw frames send a header
//! block that never ends (a CONTINUATION flood, past the 64 KiB header list limit); each time
//! the proxy cuts the connection off, the instance sees none of it, and a well-behaved client
//! is still served.

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

/// An HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field without indexing, with a new name (lengths < 127).
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_others_are_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the header block:
    // 4 MiB of header fields against a 64 KiB limit.
    let mut first = vec![0x82, 0x87, 0x84]; // :method GET, :scheme https, :path /
    first.extend(literal(b":authority", b"x"));
    out.extend(frame(0x1, 0x1, 1, &first)); // END_STREAM, no END_HEADERS
    let filler: Vec<u8> = (0..128)
        .flat_map(|i| literal(format!("x-flood-{i:03}").as_bytes(), &[b'a'; 100]))
        .collect();
    let mut sent = out.len();
    let written = tcp.write_all(&out).await;
    assert!(written.is_ok());
    let mut cut_off = false;
    for _ in 0..256 {
        if tcp.write_all(&frame(0x9, 0, 1, &filler)).await.is_err() {
            cut_off = true;
            break;
        }
        sent += filler.len() + 9;
    }
    // Whatever was written, the proxy answers with GOAWAY (frame type 7) or closes.
    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    // The frames the proxy sent: SETTINGS, its ack, then GOAWAY (type 7).
    let mut goaway = false;
    let mut at = 0;
    while at + 9 <= seen.len() {
        let len = (usize::from(seen[at]) << 16)
            | (usize::from(seen[at + 1]) << 8)
            | usize::from(seen[at + 2]);
        goaway |= seen[at + 3] == 0x7;
        at += 9 + len;
    }
    assert!(cut_off || goaway, "the flood was taken whole: {sent} bytes");
    assert_eq!(blue.count(), 0, "the flooded request reached the instance");
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    eprintln!("continuation flood: cut off after {sent} bytes (GOAWAY seen: {goaway})");
}
