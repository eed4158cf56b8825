//! Layer 0 (values): the access log — one line per [`Record`], JSON (the default) or text like
//! nginx's, and the [`Writer`] that appends the lines to a file (or stdout) from its own thread,
//! through a bounded queue, and follows the file when it is rotated.
//!
//! # JSON (the default)
//!
//! One object per line. Every key is always there, `null` when absent, in this order:
//!
//! ```text
//! {"time":"2026-12-03T07:40:43.123Z","request_id":"5f0c6e1e-8d4b-4c1a-9e7e-2b1d0c9a7f31","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","parent_span_id":null,"type":"live","client":"203.0.113.7:52114","method":"POST","path":"/v1/score","protocol":"HTTP/1.1","status":200,"grpc_status":null,"deployment":"model-b","instance":"10.0.0.12:8080","route":"weighted","bytes_in":512,"bytes_out":1834,"duration_to_headers_ms":12.345,"duration_ms":14.002,"upstream_connect_ms":null,"retried":false,"mirrored":["model-c"],"shadow_result":null,"error":null,"completed":true}
//! ```
//!
//! `time` is the arrival (RFC 3339, UTC, milliseconds); durations are milliseconds with three
//! decimals; `path` has the query only with `log_query`; `shadow_result` is set only on a
//! `mirror` record whose answer was compared.
//!
//! # Text
//!
//! One line, fields separated by one space, `-` for an absent (or empty) field:
//!
//! ```text
//! TIME REQUEST_ID CLIENT "METHOD PATH PROTOCOL" STATUS GRPC_STATUS DEPLOYMENT INSTANCE ROUTE BYTES_IN BYTES_OUT TO_HEADERS_MS DURATION_MS CONNECT_MS retried=BOOL mirrored=A,B TYPE SHADOW_RESULT ERROR completed=BOOL TRACE_ID SPAN_ID
//! 2026-12-03T07:40:43.123Z 5f0c6e1e-8d4b-4c1a-9e7e-2b1d0c9a7f31 203.0.113.7:52114 "POST /v1/score HTTP/1.1" 200 - model-b 10.0.0.12:8080 weighted 512 1834 12.345 14.002 - retried=false mirrored=model-c live - - completed=true 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7
//! ```
//!
//! Strings that come from the client (request id, method, path) have every byte that is not
//! visible ASCII, and `"` and `\`, written as `\xHH` (as nginx does), so a line always has the
//! same 24 space-separated fields.
//!
//! # The writer
//!
//! [`Writer::log`] only queues the record (capacity 16384; a full queue drops it). The thread
//! "access-log" drains the queue in rounds — format every record queued, one `write(2)` for the
//! round, sleep 10 ms — so that while requests keep coming senders never find it waiting and
//! never make a wake-up syscall; after 1 s without a line it blocks on the queue. Once a second
//! (and on [`Writer::reopen`]) it checks that the path still names the open file and reopens it
//! when not, so logrotate's `create` mode needs no signal. A file that cannot be opened is
//! retried once a second; lines meanwhile, and lines whose write fails (a full disk), are
//! dropped and counted, with one warning per episode.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use prometheus::IntCounter;

use super::ids::{HEX_PAIRS, hex_into};
use super::record::{Kind, Record};
use crate::metrics::TelemetryMetrics;

/// Records the queue holds; one more is dropped (`log_dropped_queue_full`).
const QUEUE_CAPACITY: usize = 16_384;
/// The pause between drain rounds while lines keep coming.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// After this long without a line the thread blocks on the queue instead of polling it.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How often the path is checked for rotation, and a file that could not be opened retried.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A buffer this large is written without waiting for the end of the drain round.
const WRITE_AT: usize = 256 * 1024;

/// The line format. Default: JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// Space-separated fields, nginx-like.
    Text,
}

/// How lines are written: format and whether the query string is kept (default: JSON, no
/// query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LineOptions {
    pub(crate) format: Format,
    /// Log the path with its query string (which may hold what clients consider private).
    pub(crate) log_query: bool,
}

/// Appends `record` as one line, ending in `\n`, to `out`.
pub(crate) fn write_line(record: &Record, opts: LineOptions, out: &mut Vec<u8>) {
    // A line is about 500 bytes: one growth check instead of one per field.
    out.reserve(768);
    match opts.format {
        Format::Json => json_line(record, opts.log_query, out),
        Format::Text => text_line(record, opts.log_query, out),
    }
}

// === the formats ===

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Longest path (with its query) logged: a line stays small whatever a client sends, so the
/// queue's memory stays bounded (16,384 lines of at most about 3 KiB).
const MAX_LOGGED_TARGET: usize = 2048;

/// The path, with the query when `log_query`, cut to [`MAX_LOGGED_TARGET`] bytes (at a
/// character boundary).
fn target(record: &Record, log_query: bool) -> &str {
    let t = match record.uri.path_and_query() {
        Some(pq) if log_query => pq.as_str(),
        _ => record.uri.path(),
    };
    if t.len() <= MAX_LOGGED_TARGET {
        return t;
    }
    let mut end = MAX_LOGGED_TARGET;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    &t[..end]
}

/// A header value as text: as is when visible ASCII, else lossy UTF-8.
fn header_text(v: &HeaderValue) -> Cow<'_, str> {
    match v.to_str() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v.as_bytes()),
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Live => "live",
        Kind::Mirror { .. } => "mirror",
    }
}

fn shadow_result(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Live => None,
        Kind::Mirror { result } => result,
    }
}

/// RFC 3339, UTC, milliseconds. humantime panics before 1970 and fails from the year 10000:
/// the time is kept between the two. The text up to the second is made once a second and
/// kept (as nginx keeps its formatted time).
fn put_time(t: SystemTime, out: &mut Vec<u8>) {
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    let last = UNIX_EPOCH.checked_add(LAST).unwrap_or(UNIX_EPOCH);
    let t = t.clamp(UNIX_EPOCH, last);
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|cached| {
        let (at, mut text) = cached.get();
        if at != secs || text[0] == 0 {
            // `2026-12-03T07:40:43Z`: the seconds' text, without the `Z`.
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            let mut buf = Vec::with_capacity(24);
            if write!(buf, "{}", humantime::format_rfc3339_seconds(whole)).is_err()
                || buf.len() != 20
            {
                buf = b"1970-01-01T00:00:00Z".to_vec();
            }
            text.copy_from_slice(&buf[..19]);
            cached.set((secs, text));
        }
        out.extend_from_slice(&text);
    });
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

thread_local! {
    /// The last second formatted (Unix seconds, `YYYY-MM-DDTHH:MM:SS`).
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((0, [0; 19])) };
}

fn put_u64(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (rounded to the microsecond).
fn put_ms(d: Duration, out: &mut Vec<u8>) {
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000));
    put_u64(micros / 1000, out);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `ip:port`, `[ip6]:port`: no escaping needed.
fn put_client(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(u64::from(octet), out);
            }
            out.push(b':');
            put_u64(u64::from(a.port()), out);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Lowercase hex of an id (at most 16 bytes).
fn put_hex(bytes: &[u8], out: &mut Vec<u8>) {
    let bytes = &bytes[..bytes.len().min(16)];
    let mut buf = [0u8; 32];
    hex_into(bytes, &mut buf);
    out.extend_from_slice(&buf[..2 * bytes.len()]);
}

fn put_bool(b: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as `\n`, `\r`, `\t` or
/// `\u00XX` (DEL too, so that a line never moves a terminal's cursor).
fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most strings need nothing: one pass without branches (vectorized), one copy.
    let plain = !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn json_line(r: &Record, log_query: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    put_time(r.start, out);
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(&header_text(&r.request_id), out);
    out.extend_from_slice(b",\"trace_id\":\"");
    put_hex(&r.trace.trace_id, out);
    out.extend_from_slice(b"\",\"span_id\":\"");
    put_hex(&r.trace.span_id, out);
    out.extend_from_slice(b"\",\"parent_span_id\":");
    match &r.trace.parent_id {
        Some(p) => {
            out.push(b'"');
            put_hex(p, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind_label(r.kind).as_bytes());
    out.extend_from_slice(b"\",\"client\":\"");
    put_client(&r.client, out);
    out.extend_from_slice(b"\",\"method\":");
    json_known(r.method.as_str(), out);
    out.extend_from_slice(b",\"path\":");
    json_str(target(r, log_query), out);
    out.extend_from_slice(b",\"protocol\":");
    json_known(r.protocol.label(), out);
    out.extend_from_slice(b",\"status\":");
    put_u64(u64::from(r.status), out);
    out.extend_from_slice(b",\"grpc_status\":");
    match r.grpc_status {
        Some(c) => put_u64(u64::from(c), out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"deployment\":");
    json_opt_known(r.deployment.as_deref(), out);
    out.extend_from_slice(b",\"instance\":");
    json_opt_known(r.instance.as_deref(), out);
    out.extend_from_slice(b",\"route\":");
    json_opt_known(r.route.map(|x| x.label()), out);
    out.extend_from_slice(b",\"bytes_in\":");
    put_u64(r.bytes_in, out);
    out.extend_from_slice(b",\"bytes_out\":");
    put_u64(r.bytes_out, out);
    out.extend_from_slice(b",\"duration_to_headers_ms\":");
    put_ms(r.to_headers, out);
    out.extend_from_slice(b",\"duration_ms\":");
    put_ms(r.duration, out);
    out.extend_from_slice(b",\"upstream_connect_ms\":");
    match r.connect {
        Some(d) => put_ms(d, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"retried\":");
    put_bool(r.retried, out);
    out.extend_from_slice(b",\"mirrored\":[");
    for (i, m) in r.mirrored.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_known(m, out);
    }
    out.extend_from_slice(b"],\"shadow_result\":");
    json_opt_known(shadow_result(r.kind), out);
    out.extend_from_slice(b",\"error\":");
    json_opt_known(r.error, out);
    out.extend_from_slice(b",\"completed\":");
    put_bool(r.completed, out);
    out.extend_from_slice(b"}\n");
}

/// A string that needs no escaping, as JSON: a fixed label, an HTTP method (a token: no `"`,
/// `\\` or control character), or a name or address from the endpoint file (checked when it
/// was read). Anything else goes through [`json_str`]; so does this, should the rule break.
fn json_known(s: &str, out: &mut Vec<u8>) {
    if s.bytes()
        .all(|b| b > 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json_str(s, out);
    }
}

fn json_opt_known(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => json_known(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// One text field: bytes that are not visible ASCII, and `"` and `\`, as `\xHH`; `-` when
/// empty.
fn text_field(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.is_empty() {
        out.push(b'-');
        return;
    }
    let visible = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\';
    if bytes.iter().fold(true, |all, &b| all & visible(b)) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if visible(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(b"\\x");
        out.push(HEX_UPPER[(b >> 4) as usize]);
        out.push(HEX_UPPER[(b & 0xf) as usize]);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn text_opt(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => text_field(s.as_bytes(), out),
        None => out.push(b'-'),
    }
}

fn text_line(r: &Record, log_query: bool, out: &mut Vec<u8>) {
    put_time(r.start, out);
    out.push(b' ');
    text_field(r.request_id.as_bytes(), out);
    out.push(b' ');
    put_client(&r.client, out);
    out.extend_from_slice(b" \"");
    text_field(r.method.as_str().as_bytes(), out);
    out.push(b' ');
    text_field(target(r, log_query).as_bytes(), out);
    out.push(b' ');
    out.extend_from_slice(r.protocol.label().as_bytes());
    out.extend_from_slice(b"\" ");
    put_u64(u64::from(r.status), out);
    out.push(b' ');
    match r.grpc_status {
        Some(c) => put_u64(u64::from(c), out),
        None => out.push(b'-'),
    }
    out.push(b' ');
    text_opt(r.deployment.as_deref(), out);
    out.push(b' ');
    text_opt(r.instance.as_deref(), out);
    out.push(b' ');
    text_opt(r.route.map(|x| x.label()), out);
    out.push(b' ');
    put_u64(r.bytes_in, out);
    out.push(b' ');
    put_u64(r.bytes_out, out);
    out.push(b' ');
    put_ms(r.to_headers, out);
    out.push(b' ');
    put_ms(r.duration, out);
    out.push(b' ');
    match r.connect {
        Some(d) => put_ms(d, out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" retried=");
    put_bool(r.retried, out);
    out.extend_from_slice(b" mirrored=");
    if r.mirrored.is_empty() {
        out.push(b'-');
    }
    for (i, m) in r.mirrored.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        text_field(m.as_bytes(), out);
    }
    out.push(b' ');
    out.extend_from_slice(kind_label(r.kind).as_bytes());
    out.push(b' ');
    text_opt(shadow_result(r.kind), out);
    out.push(b' ');
    text_opt(r.error, out);
    out.extend_from_slice(b" completed=");
    put_bool(r.completed, out);
    out.push(b' ');
    put_hex(&r.trace.trace_id, out);
    out.push(b' ');
    put_hex(&r.trace.span_id, out);
    out.push(b'\n');
}

// === the writer ===

/// Line buffers kept for reuse.
const SPARE_LINES: usize = 1024;
/// A buffer grown past this (a long line) is not kept.
const SPARE_MAX_BYTES: usize = 4096;

/// What the writer thread is sent.
enum Item {
    /// One formatted line (its buffer goes back to `spare` once copied).
    Line(Vec<u8>),
    /// Wakes the thread to act on the reopen flag.
    Wake,
    /// Answered once every line queued before it is written (or dropped).
    Flush(SyncSender<()>),
}

/// One log file (or stdout for `-`) and its writer thread, which ends once the last `Arc` is
/// dropped and the queue is written.
pub(crate) struct Writer {
    path: PathBuf,
    tx: SyncSender<Item>,
    /// Line buffers back from the writer thread, for the next lines: an allocation made on
    /// one thread and freed on another misses the allocator's per-thread cache both ways.
    spare: Arc<crossbeam_queue::ArrayQueue<Vec<u8>>>,
    reopen: Arc<AtomicBool>,
    queue_full: IntCounter,
    write_error: IntCounter,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

impl Writer {
    /// Starts the writer of `path` (`-`: stdout). Never fails: a file that cannot be opened is
    /// retried once a second, its lines dropped meanwhile (`log_dropped_write_error`). The file
    /// is opened to append, created with mode 0644 (less the umask).
    pub(crate) fn open(path: PathBuf, metrics: TelemetryMetrics) -> Arc<Writer> {
        let (writer, rx) = Writer::unstarted(path, &metrics, QUEUE_CAPACITY);
        writer.start(rx, metrics);
        writer
    }

    fn unstarted(
        path: PathBuf,
        metrics: &TelemetryMetrics,
        capacity: usize,
    ) -> (Arc<Writer>, Receiver<Item>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let writer = Writer {
            path,
            tx,
            spare: Arc::new(crossbeam_queue::ArrayQueue::new(SPARE_LINES)),
            reopen: Arc::new(AtomicBool::new(false)),
            queue_full: metrics.log_dropped_queue_full.clone(),
            write_error: metrics.log_dropped_write_error.clone(),
        };
        (Arc::new(writer), rx)
    }

    fn start(&self, rx: Receiver<Item>, metrics: TelemetryMetrics) {
        let worker = Worker {
            path: self.path.clone(),
            rx,
            spare: self.spare.clone(),
            reopen: self.reopen.clone(),
            metrics,
            sink: Sink::Closed,
            buf: Vec::with_capacity(64 * 1024),
            lines: 0,
            next_check: Instant::now() + CHECK_EVERY,
            open_failing: false,
            write_failing: false,
            torn: false,
        };
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            // The queue's receiver is gone with the closure: every line counts as dropped.
            tracing::warn!(path = %self.path.display(), error = %e,
                "access log: cannot start the writer thread; lines are dropped");
        }
    }

    /// The file written (`-`: stdout).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` to be written; never blocks nor makes a syscall (unless the thread is
    /// idle and waiting). A full queue drops it (`log_dropped_queue_full`).
    pub(crate) fn log(&self, record: &Record, opts: LineOptions) {
        // Formatted here, into a buffer the writer gave back: nothing the request holds (its
        // head's bytes, its ids) is kept past it, and no allocation crosses threads.
        let mut line = self.spare.pop().unwrap_or_default();
        write_line(record, opts, &mut line);
        match self.tx.try_send(Item::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(Item::Line(line))) => {
                self.queue_full.inc();
                self.give_back(line);
            }
            Err(TrySendError::Full(_)) => self.queue_full.inc(),
            Err(TrySendError::Disconnected(_)) => self.write_error.inc(),
        }
    }

    /// A line buffer back to `spare`, emptied.
    fn give_back(&self, mut line: Vec<u8>) {
        if line.capacity() <= SPARE_MAX_BYTES {
            line.clear();
            let _ = self.spare.push(line);
        }
    }

    /// Reopens the file (SIGUSR1, as nginx): lines written after go to the file at the path,
    /// created if the old one was moved away. Lines queued before may go to either.
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // A full queue means the thread is busy: it sees the flag within a round.
        let _ = self.tx.try_send(Item::Wake);
    }

    /// Waits until every line queued before the call is written or dropped, at most
    /// `timeout`; false when it timed out. For a graceful shutdown: the thread is not waited
    /// for when the process exits. Blocks the calling thread.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut item = Item::Flush(ack_tx);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Where lines go.
enum Sink {
    Stdout,
    /// An open file and its (device, inode), to tell when the path names another.
    File {
        file: File,
        id: (u64, u64),
    },
    /// Not open: lines are dropped until an attempt succeeds.
    Closed,
}

/// The writer thread's state.
struct Worker {
    path: PathBuf,
    rx: Receiver<Item>,
    /// Where line buffers go back once copied.
    spare: Arc<crossbeam_queue::ArrayQueue<Vec<u8>>>,
    reopen: Arc<AtomicBool>,
    metrics: TelemetryMetrics,
    sink: Sink,
    /// Lines formatted and not yet written, and how many.
    buf: Vec<u8>,
    lines: u64,
    /// When the path is next checked (rotation, or an open to retry).
    next_check: Instant,
    /// In a failure episode (warned once): the file cannot be (re)opened / written.
    open_failing: bool,
    write_failing: bool,
    /// A failed write left part of a line: the next write starts a new line.
    torn: bool,
}

fn open_append(path: &Path) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

/// Writes all of `buf`; on an error, how much was written and the error.
fn write_all_counted(w: &mut dyn Write, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

impl Worker {
    fn run(mut self) {
        if self.path.as_os_str() == "-" {
            self.sink = Sink::Stdout;
        } else {
            self.open();
        }
        loop {
            // Idle: block until a line comes, waking once a second for the checks.
            match self.rx.recv_timeout(CHECK_EVERY) {
                Ok(item) => self.take(item),
                Err(RecvTimeoutError::Timeout) => {
                    self.check();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Busy: drain in rounds, one write per round, and pause between rounds, so that
            // senders never find the thread waiting (no wake-up syscall per line).
            let mut last_line = Instant::now();
            let mut closed = false;
            loop {
                let mut got = false;
                loop {
                    match self.rx.try_recv() {
                        Ok(item) => {
                            got = true;
                            self.take(item);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                self.write_out();
                if closed {
                    break;
                }
                let now = Instant::now();
                if self.reopen.load(Ordering::Acquire) || now >= self.next_check {
                    self.check();
                }
                if got {
                    last_line = now;
                } else if now.duration_since(last_line) >= IDLE_AFTER {
                    break;
                }
                std::thread::sleep(BUSY_PAUSE);
            }
            if closed {
                break;
            }
        }
        // Every Writer is gone and the queue is drained: what is left is written; the file
        // closes when `self` drops.
        self.write_out();
    }

    fn take(&mut self, item: Item) {
        match item {
            Item::Line(mut line) => {
                if matches!(self.sink, Sink::Closed) {
                    self.metrics.log_dropped_write_error.inc();
                } else {
                    self.buf.extend_from_slice(&line);
                    self.lines += 1;
                    if self.buf.len() >= WRITE_AT {
                        self.write_out();
                    }
                }
                if line.capacity() <= SPARE_MAX_BYTES {
                    line.clear();
                    let _ = self.spare.push(line);
                }
            }
            Item::Wake => {}
            Item::Flush(ack) => {
                self.write_out();
                let _ = ack.try_send(());
            }
        }
    }

    /// Writes the buffer: its lines are counted written, or dropped when the write fails.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.lines);
        let mut stdout;
        let w: &mut dyn Write = match &mut self.sink {
            Sink::File { file, .. } => file,
            Sink::Stdout => {
                stdout = io::stdout().lock();
                &mut stdout
            }
            Sink::Closed => {
                // Not reached: lines are not formatted while closed.
                self.metrics.log_dropped_write_error.inc_by(lines);
                self.buf.clear();
                return;
            }
        };
        let mut result = Ok(());
        if self.torn {
            result = write_all_counted(w, b"\n").map_err(|(_, e)| (0, e));
        }
        if result.is_ok() {
            self.torn = false;
            result = write_all_counted(w, &self.buf)
                .and_then(|()| w.flush().map_err(|e| (self.buf.len(), e)));
        }
        match result {
            Ok(()) => {
                self.metrics.log_written.inc_by(lines);
                if self.write_failing {
                    self.write_failing = false;
                    tracing::info!(path = %self.path.display(), "access log: writing again");
                }
            }
            Err((done, e)) => {
                let whole = self.buf[..done].iter().filter(|&&b| b == b'\n').count() as u64;
                let whole = whole.min(lines);
                self.metrics.log_written.inc_by(whole);
                self.metrics.log_dropped_write_error.inc_by(lines - whole);
                if done > 0 && self.buf[done - 1] != b'\n' {
                    self.torn = true;
                }
                if !self.write_failing {
                    self.write_failing = true;
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "access log: cannot write; lines are dropped until a write succeeds");
                }
            }
        }
        self.buf.clear();
    }

    /// Once a second, and when a reopen is asked for: opens a file that could not be opened,
    /// reopens one whose path now names another file (or none), or any when asked.
    fn check(&mut self) {
        self.write_out();
        let asked = self.reopen.swap(false, Ordering::AcqRel);
        self.next_check = Instant::now() + CHECK_EVERY;
        let moved = match &self.sink {
            Sink::Stdout => return,
            Sink::Closed => return self.open(),
            Sink::File { id, .. } => match std::fs::metadata(&self.path) {
                Ok(meta) => (meta.dev(), meta.ino()) != *id,
                Err(_) => true,
            },
        };
        if asked || moved {
            self.open();
        }
    }

    /// Opens the path (again). When it fails, a file open before stays open.
    fn open(&mut self) {
        match open_append(&self.path) {
            Ok((file, id)) => {
                self.sink = Sink::File { file, id };
                self.torn = false;
                if self.open_failing {
                    self.open_failing = false;
                    tracing::info!(path = %self.path.display(), "access log: file open again");
                }
            }
            Err(e) => {
                if !self.open_failing {
                    self.open_failing = true;
                    let what = match self.sink {
                        Sink::File { .. } => "lines go on to the file open before",
                        _ => "lines are dropped until it can be",
                    };
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "access log: cannot open the file (retried every second); {what}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::{Method, Uri};

    use super::*;
    use crate::metrics::Metrics;
    use crate::telemetry::{Protocol, Route, TraceContext};

    fn sample_record() -> Record {
        Record {
            kind: Kind::Live,
            start: humantime::parse_rfc3339("2026-12-03T07:40:43.123456Z").expect("time"),
            request_id: HeaderValue::from_static("5f0c6e1e-8d4b-4c1a-9e7e-2b1d0c9a7f31"),
            trace: TraceContext {
                trace_id: [
                    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e,
                    0x0e, 0x47, 0x36,
                ],
                span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                parent_id: Some([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
                flags: 1,
            },
            client: "203.0.113.7:52114".parse().expect("addr"),
            method: Method::POST,
            uri: Uri::from_static("/v1/score?user=42&debug=1"),
            protocol: Protocol::Http11,
            status: 200,
            grpc_status: None,
            deployment: Some("model-b".into()),
            instance: Some("10.0.0.12:8080".into()),
            route: Some(Route::Weighted),
            bytes_in: 512,
            bytes_out: 1834,
            to_headers: Duration::from_micros(12_345),
            duration: Duration::from_micros(14_002),
            connect: Some(Duration::from_micros(1_234)),
            retried: false,
            mirrored: vec!["model-c".into(), "model-d".into()],
            error: None,
            completed: true,
        }
    }

    /// A mirror copy's record with every optional field absent (or set the other way).
    fn sparse_record() -> Record {
        Record {
            kind: Kind::Mirror {
                result: Some("mismatch"),
            },
            trace: TraceContext {
                parent_id: None,
                ..sample_record().trace
            },
            client: "[2001:db8::7]:443".parse().expect("addr"),
            method: Method::GET,
            uri: Uri::from_static("/"),
            protocol: Protocol::Grpc,
            status: 502,
            grpc_status: Some(14),
            deployment: None,
            instance: None,
            route: None,
            connect: None,
            retried: true,
            mirrored: Vec::new(),
            error: Some("connect_failed"),
            completed: false,
            ..sample_record()
        }
    }

    fn line(r: &Record, format: Format, log_query: bool) -> String {
        let mut out = Vec::new();
        write_line(r, LineOptions { format, log_query }, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        String::from_utf8(out).expect("utf-8")
    }

    fn json(r: &Record, log_query: bool) -> (String, serde_json::Value) {
        let text = line(r, Format::Json, log_query);
        let v = serde_json::from_str(&text).expect("a JSON object");
        (text, v)
    }

    const KEYS: [&str; 26] = [
        "time",
        "request_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "type",
        "client",
        "method",
        "path",
        "protocol",
        "status",
        "grpc_status",
        "deployment",
        "instance",
        "route",
        "bytes_in",
        "bytes_out",
        "duration_to_headers_ms",
        "duration_ms",
        "upstream_connect_ms",
        "retried",
        "mirrored",
        "shadow_result",
        "error",
        "completed",
        "",
    ];

    fn text_fields(text: &str) -> Vec<&str> {
        text.trim_end_matches('\n').split(' ').collect()
    }

    #[test]
    fn a_json_line_holds_every_field_in_order() {
        let r = sample_record();
        let (text, v) = json(&r, false);
        assert_eq!(v["time"], "2026-12-03T07:40:43.123Z");
        assert_eq!(v["request_id"], "5f0c6e1e-8d4b-4c1a-9e7e-2b1d0c9a7f31");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["parent_span_id"], "1122334455667788");
        assert_eq!(v["type"], "live");
        assert_eq!(v["client"], "203.0.113.7:52114");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/v1/score");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["grpc_status"], serde_json::Value::Null);
        assert_eq!(v["deployment"], "model-b");
        assert_eq!(v["instance"], "10.0.0.12:8080");
        assert_eq!(v["route"], "weighted");
        assert_eq!(v["bytes_in"], 512);
        assert_eq!(v["bytes_out"], 1834);
        assert_eq!(v["duration_to_headers_ms"], 12.345);
        assert_eq!(v["duration_ms"], 14.002);
        assert_eq!(v["upstream_connect_ms"], 1.234);
        assert_eq!(v["retried"], false);
        assert_eq!(v["mirrored"], serde_json::json!(["model-c", "model-d"]));
        assert_eq!(v["shadow_result"], serde_json::Value::Null);
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["completed"], true);
        // Every key, no other, in the documented order.
        let keys = &KEYS[..KEYS.len() - 1];
        assert_eq!(v.as_object().expect("object").len(), keys.len());
        let mut at = 0;
        for k in keys {
            let found = text[at..].find(&format!("\"{k}\":"));
            at += found.unwrap_or_else(|| panic!("{k} out of order in {text}"));
        }
        // Three decimals, always.
        assert!(
            text.contains("\"duration_to_headers_ms\":12.345,"),
            "{text}"
        );
    }

    #[test]
    fn absent_fields_are_null_and_a_mirror_record_has_its_result() {
        let r = sparse_record();
        let (_, v) = json(&r, true);
        let null = serde_json::Value::Null;
        assert_eq!(v["parent_span_id"], null);
        assert_eq!(v["type"], "mirror");
        assert_eq!(v["client"], "[2001:db8::7]:443");
        assert_eq!(v["path"], "/");
        assert_eq!(v["protocol"], "gRPC");
        assert_eq!(v["status"], 502);
        assert_eq!(v["grpc_status"], 14);
        assert_eq!(v["deployment"], null);
        assert_eq!(v["instance"], null);
        assert_eq!(v["route"], null);
        assert_eq!(v["upstream_connect_ms"], null);
        assert_eq!(v["retried"], true);
        assert_eq!(v["mirrored"], serde_json::json!([]));
        assert_eq!(v["shadow_result"], "mismatch");
        assert_eq!(v["error"], "connect_failed");
        assert_eq!(v["completed"], false);
        assert_eq!(v.as_object().expect("object").len(), KEYS.len() - 1);

        let t = line(&r, Format::Text, true);
        let f = text_fields(&t);
        assert_eq!(f.len(), 24, "{t}");
        assert_eq!(
            f[3..],
            [
                "\"GET",
                "/",
                "gRPC\"",
                "502",
                "14",
                "-",
                "-",
                "-",
                "512",
                "1834",
                "12.345",
                "14.002",
                "-",
                "retried=true",
                "mirrored=-",
                "mirror",
                "mismatch",
                "connect_failed",
                "completed=false",
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "00f067aa0ba902b7",
            ]
        );
    }

    #[test]
    fn a_text_line_has_every_field_in_order() {
        let t = line(&sample_record(), Format::Text, false);
        assert_eq!(
            t,
            "2026-12-03T07:40:43.123Z 5f0c6e1e-8d4b-4c1a-9e7e-2b1d0c9a7f31 203.0.113.7:52114 \
             \"POST /v1/score HTTP/1.1\" 200 - model-b 10.0.0.12:8080 weighted 512 1834 12.345 \
             14.002 1.234 retried=false mirrored=model-c,model-d live - - completed=true \
             4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7\n"
        );
    }

    #[test]
    fn the_module_docs_show_real_lines() {
        let mut r = sample_record();
        r.trace.parent_id = None;
        r.connect = None;
        r.mirrored.truncate(1);
        let docs = include_str!("access_log.rs");
        let example = |start: &str| {
            let found = docs
                .lines()
                .find_map(|l| l.strip_prefix("//! ").filter(|l| l.starts_with(start)));
            format!("{}\n", found.expect("an example line"))
        };
        assert_eq!(line(&r, Format::Json, false), example("{\"time\""));
        assert_eq!(line(&r, Format::Text, false), example("2026-"));
    }

    #[test]
    fn the_query_is_logged_only_with_log_query() {
        let r = sample_record();
        assert_eq!(json(&r, false).1["path"], "/v1/score");
        assert_eq!(json(&r, true).1["path"], "/v1/score?user=42&debug=1");
        assert_eq!(text_fields(&line(&r, Format::Text, false))[4], "/v1/score");
        assert_eq!(
            text_fields(&line(&r, Format::Text, true))[4],
            "/v1/score?user=42&debug=1"
        );
    }

    #[test]
    fn durations_have_three_decimals_rounded_to_the_microsecond() {
        let cases = [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(499), "0.000"),
            (Duration::from_nanos(999_600), "1.000"),
            (Duration::from_millis(12), "12.000"),
            (Duration::from_micros(3_600_000_007), "3600000.007"),
        ];
        for (d, want) in cases {
            let mut out = Vec::new();
            put_ms(d, &mut out);
            assert_eq!(String::from_utf8(out).expect("ascii"), want, "{d:?}");
        }
    }

    #[test]
    fn times_out_of_range_do_not_panic() {
        let mut r = sample_record();
        r.start = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(json(&r, false).1["time"], "1970-01-01T00:00:00.000Z");
        r.start = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(json(&r, false).1["time"], "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_long_path_is_cut_so_that_a_line_stays_small() {
        let mut r = sample_record();
        let long = format!("/{}", "a".repeat(10_000));
        r.uri = http::Uri::try_from(format!("{long}?q=1")).expect("uri");
        let (line, v) = json(&r, true);
        assert_eq!(v["path"].as_str().map(str::len), Some(MAX_LOGGED_TARGET));
        assert!(line.len() < MAX_LOGGED_TARGET + 1024, "{}", line.len());
        let mut text = Vec::new();
        write_line(
            &r,
            LineOptions {
                format: Format::Text,
                log_query: true,
            },
            &mut text,
        );
        assert!(text.len() < MAX_LOGGED_TARGET + 1024);
    }

    #[test]
    fn hostile_request_ids_and_paths_are_escaped() {
        let mut r = sample_record();
        let id: &[u8] = b"a\"b\\c d\te{}'<>\xff\xc3\xa9,\"request_id\":\"x";
        r.request_id = HeaderValue::from_bytes(id).expect("a header value");
        // The path may hold `"`, `\` and UTF-8; the query `\`.
        r.uri = Uri::try_from("/a\"b\\c{d}/caf\u{e9}?q=\\x").expect("uri");
        r.method = Method::from_bytes(b"PURGE").expect("method");

        let (_, v) = json(&r, true);
        assert_eq!(v["request_id"], *String::from_utf8_lossy(id));
        assert_eq!(v["path"], "/a\"b\\c{d}/caf\u{e9}?q=\\x");
        assert_eq!(v["method"], "PURGE");
        assert_eq!(v.as_object().expect("object").len(), KEYS.len() - 1);

        let t = line(&r, Format::Text, true);
        let f = text_fields(&t);
        assert_eq!(f.len(), 24, "{t}");
        assert_eq!(
            f[1],
            "a\\x22b\\x5Cc\\x20d\\x09e{}'<>\\xFF\\xC3\\xA9,\\x22request_id\\x22:\\x22x"
        );
        assert_eq!(f[3], "\"PURGE");
        assert_eq!(f[4], "/a\\x22b\\x5Cc{d}/caf\\xC3\\xA9?q=\\x5Cx");
        // The only quotes left are the request line's two.
        assert_eq!(t.matches('"').count(), 2, "{t}");

        // Control characters (which a header cannot hold, but a name could) in JSON.
        let mut out = Vec::new();
        json_str("a\u{1}b\nc\u{7f}", &mut out);
        assert_eq!(out, b"\"a\\u0001b\\nc\\u007f\"");
        let mut out = Vec::new();
        text_field(b"", &mut out);
        assert_eq!(out, b"-");
    }

    #[test]
    fn every_text_line_has_24_fields() {
        let mut empty_id = sample_record();
        empty_id.request_id = HeaderValue::from_static("");
        for r in [sample_record(), sparse_record(), empty_id] {
            for log_query in [false, true] {
                let t = line(&r, Format::Text, log_query);
                assert_eq!(text_fields(&t).len(), 24, "{t}");
                assert!(!t.contains("  "), "{t}");
            }
        }
    }

    #[test]
    fn write_line_timing() {
        let r = sample_record();
        let mut out = Vec::with_capacity(1024);
        for format in [Format::Json, Format::Text] {
            let opts = LineOptions {
                format,
                log_query: false,
            };
            let n = 20_000u32;
            let t0 = Instant::now();
            for _ in 0..n {
                out.clear();
                write_line(std::hint::black_box(&r), opts, &mut out);
                std::hint::black_box(&out);
            }
            let per = t0.elapsed() / n;
            println!("write_line {format:?}: {} ns per line", per.as_nanos());
        }
    }

    // === the writer ===

    fn metrics() -> TelemetryMetrics {
        Metrics::new().telemetry.clone()
    }

    fn rec(id: &str) -> Box<Record> {
        let mut r = sample_record();
        r.request_id = HeaderValue::from_str(id).expect("id");
        Box::new(r)
    }

    /// Polls `done` every 5 ms for at most 5 s.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The request ids of a file's lines, each line parsed; none when there is no file.
    fn ids_in(path: &Path) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                v["request_id"].as_str().expect("request_id").to_string()
            })
            .collect()
    }

    fn json_opts() -> LineOptions {
        LineOptions::default()
    }

    #[test]
    fn ten_thousand_records_make_ten_thousand_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let m = metrics();
        let w = Writer::open(path.clone(), m.clone());
        assert_eq!(w.path(), path);
        for i in 0..10_000 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        wait_until("10,000 lines", || m.log_written.get() == 10_000);
        let ids = ids_in(&path);
        assert_eq!(ids.len(), 10_000);
        assert_eq!(ids[0], "r0");
        assert_eq!(ids[9_999], "r9999");
        assert_eq!(m.log_dropped_queue_full.get(), 0);
        assert_eq!(m.log_dropped_write_error.get(), 0);
        let mode = std::fs::metadata(&path).expect("file").mode() & 0o777;
        assert_eq!(mode & !0o644, 0, "mode {mode:o}");
    }

    /// Writes, moves the file away as logrotate does, writes on until a new file is at the
    /// path, and checks the two files hold every line once.
    fn rotation(signal: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let m = metrics();
        let w = Writer::open(path.clone(), m.clone());
        let mut sent = 0u64;
        let mut send = |n: u64| {
            for _ in 0..n {
                w.log(&rec(&format!("r{sent}")), json_opts());
                sent += 1;
            }
        };
        send(100);
        wait_until("the first lines", || m.log_written.get() == 100);
        std::fs::rename(&path, &rotated).expect("rename");
        if signal {
            w.reopen();
        }
        let t0 = Instant::now();
        wait_until("a new file at the path", || {
            send(10);
            !ids_in(&path).is_empty()
        });
        let took = t0.elapsed();
        send(100);
        wait_until("every line", || m.log_written.get() == sent);
        let (old, new) = (ids_in(&rotated), ids_in(&path));
        assert!(old.len() >= 100 && !new.is_empty());
        let mut seen = HashMap::new();
        for id in old.iter().chain(&new) {
            *seen.entry(id.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.len() as u64, sent);
        assert!(seen.values().all(|&n| n == 1), "a line written twice");
        assert_eq!(m.log_dropped_write_error.get(), 0);
        if signal {
            // Without the signal it takes up to the 1 s check.
            assert!(took < Duration::from_millis(900), "reopen took {took:?}");
        }
    }

    #[test]
    fn a_file_moved_away_is_followed_without_a_signal() {
        rotation(false);
    }

    #[test]
    fn reopen_after_a_move_writes_to_a_new_file() {
        rotation(true);
    }

    #[test]
    fn a_full_disk_drops_and_counts_and_never_blocks() {
        let m = metrics();
        let w = Writer::open(PathBuf::from("/dev/full"), m.clone());
        let t0 = Instant::now();
        for i in 0..10_000 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        wait_until("the lines counted dropped", || {
            m.log_dropped_write_error.get() + m.log_dropped_queue_full.get() == 10_000
        });
        assert_eq!(m.log_written.get(), 0);
        assert_eq!(m.log_dropped_write_error.get(), 10_000);
    }

    #[test]
    fn a_path_that_cannot_be_opened_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("logs");
        let path = sub.join("access.log");
        let m = metrics();
        let w = Writer::open(path.clone(), m.clone());
        for i in 0..10 {
            w.log(&rec(&format!("lost{i}")), json_opts());
        }
        wait_until("dropped lines", || m.log_dropped_write_error.get() == 10);
        std::fs::create_dir(&sub).expect("mkdir");
        let t0 = Instant::now();
        let mut i = 0;
        wait_until("lines again", || {
            w.log(&rec(&format!("r{i}")), json_opts());
            i += 1;
            m.log_written.get() > 0
        });
        assert!(
            t0.elapsed() < Duration::from_millis(2_500),
            "{:?}",
            t0.elapsed()
        );
        let ids = ids_in(&path);
        assert!(ids.iter().all(|id| id.starts_with('r')), "{ids:?}");

        // A path under a regular file.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").expect("file");
        let m = metrics();
        let w = Writer::open(plain.join("access.log"), m.clone());
        for i in 0..5 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        wait_until("dropped lines", || m.log_dropped_write_error.get() == 5);
        assert_eq!(m.log_written.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let m = metrics();
        let (w, rx) = Writer::unstarted(path.clone(), &m, 2);
        for i in 0..3 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        assert_eq!(m.log_dropped_queue_full.get(), 1);
        w.start(rx, m.clone());
        wait_until("the queued lines", || m.log_written.get() == 2);
        assert_eq!(ids_in(&path), ["r0", "r1"]);
    }

    #[test]
    fn dropping_the_writer_writes_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let m = metrics();
        let w = Writer::open(path.clone(), m.clone());
        for i in 0..5_000 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        drop(w);
        wait_until("the queue written", || m.log_written.get() == 5_000);
        assert_eq!(ids_in(&path).len(), 5_000);
    }

    #[test]
    fn flush_waits_for_the_lines_queued_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let m = metrics();
        let w = Writer::open(path.clone(), m.clone());
        for i in 0..100 {
            w.log(&rec(&format!("r{i}")), json_opts());
        }
        assert!(w.flush(Duration::from_secs(5)));
        assert_eq!(m.log_written.get(), 100);
        assert_eq!(ids_in(&path).len(), 100);
    }
}
