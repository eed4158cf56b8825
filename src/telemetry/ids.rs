//! Layer 0 (values): request ids and W3C trace context (`traceparent`). A request keeps the
//! client's `x-request-id` or gets a UUIDv4; a valid `traceparent` is continued (same trace, the
//! proxy's span as the new parent), anything else starts a trace.

use std::cell::RefCell;

use bytes::Bytes;
use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

thread_local! {
    /// Ids need to be unique, not secret: a fast generator per thread, seeded from the
    /// operating system's (as OpenTelemetry's SDK makes its ids).
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Runs `f` with this thread's id generator.
pub(crate) fn with_id_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    IDS.with(|r| f(&mut r.borrow_mut()))
}

/// A header value over `text` (visible ASCII) in one allocation, whose clones share it.
fn shared_value<const N: usize>(text: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).unwrap_or(HeaderValue::from_static("-"))
}

/// The two lowercase hex digits of every byte.
pub(super) const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    t
};

/// Writes the lowercase hex of `bytes` into `out` (twice as long).
pub(super) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lowercase hex of `bytes`.
#[cfg(test)]
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Only ASCII hex digits were written.
    String::from_utf8(out).unwrap_or_default()
}

/// A new request id: a random UUID (version 4), lowercase and hyphenated.
pub(crate) fn new_request_id<R: Rng + ?Sized>(rng: &mut R) -> HeaderValue {
    // Two words, not sixteen bytes drawn one by one.
    let bytes = rng.random::<u128>().to_le_bytes();
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf);
    shared_value(buf)
}

/// The trace a request belongs to and the proxy's own span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    /// The proxy's span: the parent the instance sees.
    pub(crate) span_id: [u8; 8],
    /// The caller's span (None: the trace started here).
    pub(crate) parent_id: Option<[u8; 8]>,
    /// W3C trace flags; bit 0 is "sampled".
    pub(crate) flags: u8,
}

// === impl TraceContext ===

impl TraceContext {
    /// Continues the trace of a valid `traceparent` (version 00, or a later version read as
    /// 00 as the W3C recommendation says), else starts one, sampled when `sample_new`.
    pub(crate) fn continue_or_start<R: Rng + ?Sized>(
        traceparent: Option<&HeaderValue>,
        sample_new: bool,
        rng: &mut R,
    ) -> TraceContext {
        let span_id = nonzero(rng);
        match traceparent.and_then(|v| parse(v.as_bytes())) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => {
                let trace_id = loop {
                    let t = rng.random::<u128>().to_le_bytes();
                    if t != [0; 16] {
                        break t;
                    }
                };
                TraceContext {
                    trace_id,
                    span_id,
                    parent_id: None,
                    flags: u8::from(sample_new),
                }
            }
        }
    }

    /// Whether the trace is sampled (exported when an OTLP endpoint is set).
    pub(crate) fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` the instance gets: this trace, the proxy's span as parent.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        // 00-<32 hex>-<16 hex>-<2 hex>
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id, &mut buf[3..35]);
        hex_into(&self.span_id, &mut buf[36..52]);
        hex_into(&[self.flags], &mut buf[53..55]);
        shared_value(buf)
    }
}

fn nonzero<R: Rng + ?Sized>(rng: &mut R) -> [u8; 8] {
    loop {
        let s = rng.random::<u64>().to_le_bytes();
        if s != [0; 8] {
            return s;
        }
    }
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// (trace id, parent id, flags) of a valid `traceparent` (W3C Trace Context, level 1):
/// lowercase hex, ids not all zero, version not `ff`; a version above 00 may carry more fields
/// after the flags.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = unhex::<1>(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let [flags] = unhex::<1>(&v[53..55])?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_parent() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::continue_or_start(Some(&incoming), false, &mut rng());
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t.sampled());
        let out = t.traceparent();
        let out = out.to_str().expect("ascii");
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"), "{out}");
        assert_eq!(&out[36..52], hex(&t.span_id));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn an_invalid_or_missing_traceparent_starts_a_trace() {
        let bad = [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            let v = HeaderValue::from_str(b).expect("header");
            let t = TraceContext::continue_or_start(Some(&v), true, &mut rng());
            assert_eq!(t.parent_id, None, "{b:?} was continued");
            assert_ne!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(t.sampled());
        }
        let t = TraceContext::continue_or_start(None, false, &mut rng());
        assert!(!t.sampled());
        assert!(t.traceparent().to_str().expect("ascii").ends_with("-00"));
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let v = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-later",
        );
        let t = TraceContext::continue_or_start(Some(&v), true, &mut rng());
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!t.sampled());
        // What goes on is version 00.
        assert!(t.traceparent().to_str().expect("ascii").starts_with("00-"));
    }

    #[test]
    fn request_ids_are_uuid_v4_and_differ() {
        let mut r = rng();
        let a = new_request_id(&mut r);
        let b = new_request_id(&mut r);
        assert_ne!(a, b);
        let a = a.to_str().expect("ascii");
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
