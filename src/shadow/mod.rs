//! Layer 0 (values): shadow comparison — how a mirrored answer is judged against the live one
//! (`compare`). Pure: the request path hands it both answers off the live path.

mod compare;

pub use compare::{
    Answer, CompareSettings, DEFAULT_ABS_TOLERANCE, DEFAULT_COMPARE_MAX_BYTES,
    DEFAULT_REL_TOLERANCE, Difference, Outcome, Verdict, compare,
};
