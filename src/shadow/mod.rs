//! Layer 0 (values): shadow comparison — how a mirrored answer is judged against the live one
//! (`compare`), and what the judgements found (`evidence`). Neither runs on the request path:
//! the proxy hands both answers to a comparison task.

mod compare;
mod evidence;
mod live;

pub use compare::{
    Answer, CompareSettings, DEFAULT_ABS_TOLERANCE, DEFAULT_COMPARE_MAX_BYTES, DEFAULT_IGNORE,
    DEFAULT_REL_TOLERANCE, Difference, Outcome, Verdict, compare,
};
pub use evidence::{Evidence, KEPT_BODY_BYTES, KEPT_MISMATCHES, Seen, WINDOW};
pub use live::{LiveAnswer, LiveTap, LiveWaiter, join};
