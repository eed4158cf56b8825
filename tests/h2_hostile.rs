//! Hostile HTTP/2 clients cost bounded work. Raw h2 clients (the h2 crate, or frames written by
//! hand) flood the proxy with streams they reset at once (rapid reset, CVE-2023-44487), send a
//! header block that never ends (a CONTINUATION flood, past the 64 KiB header list limit), open
//! more streams than the advertised 256, and send PING and SETTINGS frames without reading the
//! acks. Each time the proxy cuts the connection off, refuses the excess or pushes back, the
//! instance sees none of the excess, memory stays bounded, and a well-behaved client is served.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_still_served() {
    let blue = Backend::delayed("blue", Duration::from_millis(100)).await;
    let proxy = proxy_for(&blue);
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

/// The proxy in front of one instance.
fn proxy_for(blue: &Backend) -> Proc {
    Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    )
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
    use tokio::io::AsyncWriteExt;
    let blue = Backend::start("blue").await;
    let proxy = proxy_for(&blue);
    let mut tcp = open_raw(proxy.addr).await;
    let mut out = Vec::new();
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the header block:
    // 4 MiB of header fields against a 64 KiB limit.
    let mut first = vec![0x82, 0x87, 0x84]; // :method GET, :scheme https, :path /
    first.extend(literal(b":authority", b"x"));
    out.extend(frame(0x1, 0x1, 1, &first)); // END_STREAM, no END_HEADERS
    let filler: Vec<u8> = (0..128)
        .flat_map(|i| literal(format!("x-flood-{i:03}").as_bytes(), &[b'a'; 100]))
        .collect();
    let mut sent = out.len() + 33;
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
    let (seen, ended) = read_until_quiet(&mut tcp, Duration::from_millis(500)).await;
    cut_off |= ended;
    let goaway = frames(&seen).iter().any(|f| f.0 == 0x7);
    assert!(cut_off || goaway, "the flood was taken whole: {sent} bytes");
    assert_eq!(blue.count(), 0, "the flooded request reached the instance");
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    eprintln!("continuation flood: cut off after {sent} bytes (GOAWAY seen: {goaway})");
}

/// The frames in `bytes` (type, flags, stream, payload), as far as they are whole.
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        if at + 9 + len > bytes.len() {
            break;
        }
        let stream =
            u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                & 0x7fff_ffff;
        out.push((
            bytes[at + 3],
            bytes[at + 4],
            stream,
            bytes[at + 9..at + 9 + len].to_vec(),
        ));
        at += 9 + len;
    }
    out
}

/// How long a raw client waits for more of the proxy's answer.
const QUIET: Duration = Duration::from_millis(400);

/// A raw HTTP/2 connection to `addr` that has sent the preface and an empty SETTINGS frame.
async fn open_raw(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    tcp.write_all(&out).await.expect("preface");
    tcp
}

/// Reads what the proxy sends until `quiet` passes without a byte (false) or the connection
/// ends (true).
async fn read_until_quiet(tcp: &mut tokio::net::TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(quiet, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (seen, false),
        }
    }
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_never_reach_the_instance() {
    use tokio::io::AsyncWriteExt;
    let blue = Backend::delayed("blue", Duration::from_millis(1500)).await;
    let proxy = proxy_for(&blue);
    let mut tcp = open_raw(proxy.addr).await;
    // The proxy's SETTINGS advertise its stream limit (identifier 0x3).
    let hello = frames(&read_until_quiet(&mut tcp, QUIET).await.0);
    let advertised = hello
        .iter()
        .filter(|f| f.0 == 0x4 && f.1 & 0x1 == 0)
        .flat_map(|f| f.3.chunks(6).map(|s| s.to_vec()).collect::<Vec<_>>())
        .find(|s| s.len() == 6 && s[..2] == [0, 3])
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(advertised, Some(256), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // A client that ignores it: 400 requests at once on one connection.
    let mut flood = frame(0x4, 0x1, 0, &[]); // SETTINGS ACK
    for i in 0..400u32 {
        let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
        block.extend(literal(b":authority", b"x"));
        flood.extend(frame(0x1, 0x5, 2 * i + 1, &block)); // END_STREAM | END_HEADERS
    }
    tcp.write_all(&flood).await.expect("streams");
    let answer = frames(&read_until_quiet(&mut tcp, 2 * QUIET).await.0);
    let refused = answer
        .iter()
        .filter(|f| f.0 == 0x3 && f.3 == 7u32.to_be_bytes())
        .count();
    // While they are held, another client is served.
    let other = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(other.status, 200);
    assert!(
        refused >= 400 - 256,
        "{refused} of 400 streams refused (REFUSED_STREAM) with a limit of 256"
    );
    assert!(
        blue.max_concurrent() <= 256 + 1,
        "the instance held {} requests at once",
        blue.max_concurrent()
    );
    eprintln!(
        "too many streams: {refused} of 400 refused; the instance held {} at once",
        blue.max_concurrent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_cost_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    let blue = Backend::start("blue").await;
    let proxy = proxy_for(&blue);
    let warm = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(warm.status, 200);
    let before = rss_kib(proxy.pid());
    // Two attackers that never read: one sends PINGs, the other SETTINGS, each demanding an
    // answer (PING ack, SETTINGS ack), 64 MiB worth of frames in all if the proxy took them.
    let mut attackers = Vec::new();
    for kind in [0x6u8, 0x4u8] {
        let mut tcp = open_raw(proxy.addr).await;
        attackers.push(tokio::spawn(async move {
            let one = match kind {
                0x6 => frame(0x6, 0, 0, &[7; 8]),
                _ => frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]), // INITIAL_WINDOW_SIZE 65536
            };
            let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
            let mut written = 0usize;
            let until = Instant::now() + Duration::from_secs(3);
            while written < 32 << 20 && Instant::now() < until {
                match tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&batch)).await
                {
                    Ok(Ok(())) => written += batch.len(),
                    Ok(Err(_)) => break,
                    Err(_) => {} // the proxy stopped reading: it is pushing back
                }
            }
            (written, tcp)
        }));
    }
    // Meanwhile other clients are served.
    let c = client();
    for _ in 0..20 {
        let a = get(&c, &proxy.url("/score"), &[]).await;
        assert_eq!(a.status, 200);
    }
    let mut written = Vec::new();
    let mut held = Vec::new();
    for a in attackers {
        let (n, tcp) = a.await.expect("attacker");
        written.push(n);
        held.push(tcp);
    }
    let after = rss_kib(proxy.pid());
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} KiB under the floods (wrote {written:?} bytes)"
    );
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200);
    eprintln!("ping/settings floods: wrote {written:?} bytes; memory grew {grown} KiB");
    drop(held);
}
