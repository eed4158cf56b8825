//! Layer 0 (values): the last failed requests, kept so that an operator (the admin listener's
//! `/failures`, `scoregate rollout`) can name them by request id and find them in the access
//! log. Recording is lock-free and never waits: the request path pushes into a bounded queue
//! that drops its oldest entry when full.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use crossbeam_queue::ArrayQueue;

/// How many failed requests are kept.
const KEPT: usize = 64;

/// One failed request: an answer of 500 or more, a gRPC status meaning the server failed, or
/// an error scoregate made itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailedRequest {
    /// When it ended.
    pub(crate) time: SystemTime,
    /// Its `x-request-id` (the client's, or the one the proxy made).
    pub(crate) request_id: String,
    /// The deployment it was routed to, when it was.
    pub(crate) deployment: Option<String>,
    /// The HTTP status the client got.
    pub(crate) status: u16,
    /// The gRPC status code the client got, for a gRPC call.
    pub(crate) grpc_status: Option<u32>,
    /// Scoregate's own reason, when scoregate made the error (like `timeout`).
    pub(crate) error: Option<&'static str>,
    /// The instance that answered or was tried, when one was.
    pub(crate) instance: Option<String>,
}

/// The last [`KEPT`] failed requests.
///
/// `record` pushes into a lock-free [`ArrayQueue`] (`force_push`: a full queue drops its
/// oldest entry). `recent` drains that queue into a second structure, a [`VecDeque`] of the
/// same bound behind a mutex that only readers take, and returns a copy of it: what one reader
/// drained stays there for the next one, and the order is the order of recording.
#[derive(Debug)]
pub(crate) struct FailedRequests {
    /// Written by the request path.
    incoming: ArrayQueue<FailedRequest>,
    /// What readers have drained so far, oldest first, at most [`KEPT`].
    drained: Mutex<VecDeque<FailedRequest>>,
}

impl Default for FailedRequests {
    fn default() -> Self {
        FailedRequests {
            incoming: ArrayQueue::new(KEPT),
            drained: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }
}

// === impl FailedRequests ===

impl FailedRequests {
    /// Keeps `f` as the newest failed request, dropping the oldest when [`KEPT`] are kept.
    /// Never blocks.
    pub(crate) fn record(&self, f: FailedRequest) {
        let _ = self.incoming.force_push(f);
    }

    /// The kept failed requests, oldest first (the order they were recorded in).
    pub(crate) fn recent(&self) -> Vec<FailedRequest> {
        let mut drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(f) = self.incoming.pop() {
            if drained.len() == KEPT {
                drained.pop_front();
            }
            drained.push_back(f);
        }
        drained.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn failed(i: u64) -> FailedRequest {
        FailedRequest {
            time: UNIX_EPOCH + Duration::from_secs(i),
            request_id: format!("id-{i}"),
            deployment: Some("green".into()),
            status: 503,
            grpc_status: None,
            error: None,
            instance: None,
        }
    }

    fn ids(list: &[FailedRequest]) -> Vec<String> {
        list.iter().map(|f| f.request_id.clone()).collect()
    }

    #[test]
    fn keeps_the_last_64_oldest_first() {
        let r = FailedRequests::default();
        assert!(r.recent().is_empty());
        for i in 0..10 {
            r.record(failed(i));
        }
        let want: Vec<String> = (0..10).map(|i| format!("id-{i}")).collect();
        assert_eq!(ids(&r.recent()), want);
        // Reading loses nothing for the next reader.
        assert_eq!(ids(&r.recent()), want);
        for i in 10..100 {
            r.record(failed(i));
            if i == 50 {
                // A read in the middle: what it drained is merged with what comes later.
                assert_eq!(r.recent().len(), 51);
            }
        }
        let want: Vec<String> = (36..100).map(|i| format!("id-{i}")).collect();
        assert_eq!(ids(&r.recent()), want);
        assert_eq!(r.recent().len(), KEPT);
    }

    #[test]
    fn concurrent_writers_and_readers_keep_the_bound() {
        let r = Arc::new(FailedRequests::default());
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        r.record(failed(w * 10_000 + i));
                    }
                })
            })
            .collect();
        for _ in 0..100 {
            assert!(r.recent().len() <= KEPT);
        }
        for w in writers {
            w.join().expect("writer");
        }
        let last = r.recent();
        assert_eq!(last.len(), KEPT);
        // Each writer's entries stay in the order it recorded them.
        for w in 0..4u64 {
            let mine: Vec<SystemTime> = last
                .iter()
                .filter(|f| f.time >= UNIX_EPOCH + Duration::from_secs(w * 10_000))
                .filter(|f| f.time < UNIX_EPOCH + Duration::from_secs((w + 1) * 10_000))
                .map(|f| f.time)
                .collect();
            assert!(mine.windows(2).all(|p| p[0] < p[1]), "writer {w}");
        }
    }
}
