//! Comparing a mirrored answer with the live one: status, then JSON structure with numeric
//! tolerance and ignored pointers, or bytes; gRPC answers as V2 `ModelInferResponse` when they
//! decode as one. Pure functions, no I/O.

use serde_json::Value;

/// How answers are compared (`mirror_compare:` in the endpoint file).
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSettings {
    /// Numbers `a` and `b` agree when `|a - b| <= abs + rel * max(|a|, |b|)`. Default 1e-6.
    pub abs_tolerance: f64,
    /// Default 1e-4.
    pub rel_tolerance: f64,
    /// JSON pointers skipped, each with everything below it; a `*` segment matches any key or
    /// index. Default [`DEFAULT_IGNORE`]: what names the deployment, version or request rather
    /// than the prediction.
    pub ignore: Vec<String>,
    /// Largest answer (each side) compared; a larger one is `incomparable`. Default 1 MiB.
    pub max_body_bytes: usize,
}

/// Default `abs_tolerance`.
pub const DEFAULT_ABS_TOLERANCE: f64 = 1e-6;
/// Default `rel_tolerance`.
pub const DEFAULT_REL_TOLERANCE: f64 = 1e-4;
/// Default `ignore`: fields that name who answered or which request, not what was predicted
/// (the Open Inference Protocol's and the built-in server's).
pub const DEFAULT_IGNORE: [&str; 5] = [
    "/model_version",
    "/id",
    "/deployment",
    "/model",
    "/parameters/deployment",
];
/// Default `max_body_bytes` of a compared answer.
pub const DEFAULT_COMPARE_MAX_BYTES: usize = 1024 * 1024;

impl Default for CompareSettings {
    fn default() -> Self {
        CompareSettings {
            abs_tolerance: DEFAULT_ABS_TOLERANCE,
            rel_tolerance: DEFAULT_REL_TOLERANCE,
            ignore: DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect(),
            max_body_bytes: DEFAULT_COMPARE_MAX_BYTES,
        }
    }
}

/// One answer as compared: its status (HTTP, or the gRPC status for gRPC) and body.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Whether the body is gRPC-framed messages.
    pub grpc: bool,
}

/// Where two answers first differ and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// JSON pointer of the first difference (`""`: the whole answer; `/status` for the status).
    pub pointer: String,
    /// The live answer's value there, as JSON text (or a note such as `non-JSON body`).
    pub live: String,
    /// The copy's value there.
    pub copy: String,
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Match,
    Mismatch(Difference),
    /// Not comparable: an answer over the bound, or no answer from the copy. Never a match.
    Incomparable(&'static str),
}

/// A comparison's verdict and the largest numeric difference seen (0 when no number was
/// compared).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub max_difference: f64,
}

/// Compares the copy's answer with the live one.
pub fn compare(live: Answer<'_>, copy: Answer<'_>, settings: &CompareSettings) -> Outcome {
    let incomparable = |why| Outcome {
        verdict: Verdict::Incomparable(why),
        max_difference: 0.0,
    };
    if live.body.len() > settings.max_body_bytes || copy.body.len() > settings.max_body_bytes {
        return incomparable("answer over max_body_bytes");
    }
    if live.status != copy.status {
        return Outcome {
            verdict: Verdict::Mismatch(Difference {
                pointer: "/status".into(),
                live: live.status.to_string(),
                copy: copy.status.to_string(),
            }),
            max_difference: 0.0,
        };
    }
    let parsed = if live.grpc || copy.grpc {
        (grpc_json(live.body), grpc_json(copy.body))
    } else {
        (
            serde_json::from_slice::<Value>(live.body).ok(),
            serde_json::from_slice::<Value>(copy.body).ok(),
        )
    };
    let (a, b) = match parsed {
        (Some(a), Some(b)) => (a, b),
        (a, b) => {
            // Bytes, unless only one side is JSON (then they differ).
            let same = a.is_none() && b.is_none() && live.body == copy.body;
            let verdict = if same {
                Verdict::Match
            } else {
                Verdict::Mismatch(Difference {
                    pointer: String::new(),
                    live: describe_body(live.body, a.is_some()),
                    copy: describe_body(copy.body, b.is_some()),
                })
            };
            return Outcome {
                verdict,
                max_difference: 0.0,
            };
        }
    };
    let ignore: Vec<Vec<&str>> = settings
        .ignore
        .iter()
        .map(|p| p.split('/').skip(1).collect())
        .collect();
    let mut walk = Walk {
        settings,
        ignore: &ignore,
        path: Vec::new(),
        max_difference: 0.0,
    };
    let found = walk.value(&a, &b);
    Outcome {
        verdict: found.map_or(Verdict::Match, Verdict::Mismatch),
        max_difference: walk.max_difference,
    }
}

/// A body in a difference: JSON as is, anything else by length and start.
fn describe_body(body: &[u8], json: bool) -> String {
    let kind = if json { "JSON" } else { "non-JSON" };
    let start = String::from_utf8_lossy(&body[..body.len().min(64)]).into_owned();
    format!("{kind} body of {} bytes: {start:?}", body.len())
}

struct Walk<'a> {
    settings: &'a CompareSettings,
    ignore: &'a [Vec<&'a str>],
    path: Vec<String>,
    max_difference: f64,
}

impl Walk<'_> {
    fn pointer(&self) -> String {
        self.path
            .iter()
            .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
            .collect()
    }

    fn ignored(&self) -> bool {
        self.ignore.iter().any(|p| {
            p.len() <= self.path.len()
                && p.iter().zip(&self.path).all(|(want, seg)| {
                    *want == "*" || want.replace("~1", "/").replace("~0", "~") == *seg
                })
        })
    }

    fn differ(&self, a: &Value, b: &Value) -> Option<Difference> {
        Some(Difference {
            pointer: self.pointer(),
            live: cut(a.to_string()),
            copy: cut(b.to_string()),
        })
    }

    /// The first difference below the current path, in document order.
    fn value(&mut self, a: &Value, b: &Value) -> Option<Difference> {
        if self.ignored() {
            return None;
        }
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                let diff = (x - y).abs();
                if diff.is_finite() && diff > self.max_difference {
                    self.max_difference = diff;
                }
                let bound = self.settings.abs_tolerance
                    + self.settings.rel_tolerance * x.abs().max(y.abs());
                if diff <= bound || x == y {
                    None
                } else {
                    self.differ(a, b)
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return self.differ(
                        &Value::String(format!("array of {}", x.len())),
                        &Value::String(format!("array of {}", y.len())),
                    );
                }
                let mut first = None;
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    self.path.push(i.to_string());
                    let d = self.value(x, y);
                    self.path.pop();
                    // Keep walking for the largest difference, report the first.
                    first = first.or(d);
                }
                first
            }
            (Value::Object(x), Value::Object(y)) => {
                let mut first = None;
                for (k, xv) in x {
                    self.path.push(k.clone());
                    let d = match y.get(k) {
                        Some(yv) => self.value(xv, yv),
                        None if self.ignored() => None,
                        None => self.differ(xv, &Value::String("(absent)".into())),
                    };
                    self.path.pop();
                    first = first.or(d);
                }
                for (k, yv) in y {
                    if !x.contains_key(k) {
                        self.path.push(k.clone());
                        if !self.ignored() {
                            first = first.or(self.differ(&Value::String("(absent)".into()), yv));
                        }
                        self.path.pop();
                    }
                }
                first
            }
            _ if a == b => None,
            _ => self.differ(a, b),
        }
    }
}

/// A value shown in a difference, cut to 200 characters.
fn cut(mut s: String) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// gRPC-framed messages as JSON: each a V2 `ModelInferResponse` (outputs with their data,
/// typed or raw), or `None` when a message is compressed or is not one.
fn grpc_json(body: &[u8]) -> Option<Value> {
    use prost::Message;
    let mut messages = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let msg = rest.get(5..5 + len)?;
        let r = crate::grpc::ModelInferResponse::decode(msg).ok()?;
        messages.push(infer_response_json(&r)?);
        rest = &rest[5 + len..];
    }
    Some(match messages.len() {
        1 => messages.pop()?,
        _ => Value::Array(messages),
    })
}

fn infer_response_json(r: &crate::grpc::ModelInferResponse) -> Option<Value> {
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for (i, o) in r.outputs.iter().enumerate() {
        let data = match r.raw_output_contents.get(i) {
            Some(raw) => raw_data(&o.datatype, raw)?,
            None => typed_data(o.contents.as_ref()),
        };
        outputs.push(serde_json::json!({
            "name": o.name,
            "datatype": o.datatype,
            "shape": o.shape,
            "data": data,
        }));
    }
    Some(serde_json::json!({
        "model_name": r.model_name,
        "model_version": r.model_version,
        "id": r.id,
        "outputs": outputs,
    }))
}

fn typed_data(c: Option<&crate::grpc::InferTensorContents>) -> Value {
    let Some(c) = c else {
        return Value::Array(Vec::new());
    };
    let v: Vec<Value> = if !c.fp64_contents.is_empty() {
        c.fp64_contents.iter().map(|x| Value::from(*x)).collect()
    } else if !c.fp32_contents.is_empty() {
        c.fp32_contents
            .iter()
            .map(|x| Value::from(f64::from(*x)))
            .collect()
    } else if !c.int64_contents.is_empty() {
        c.int64_contents.iter().map(|x| Value::from(*x)).collect()
    } else if !c.int_contents.is_empty() {
        c.int_contents.iter().map(|x| Value::from(*x)).collect()
    } else if !c.uint64_contents.is_empty() {
        c.uint64_contents.iter().map(|x| Value::from(*x)).collect()
    } else if !c.uint_contents.is_empty() {
        c.uint_contents.iter().map(|x| Value::from(*x)).collect()
    } else if !c.bool_contents.is_empty() {
        c.bool_contents.iter().map(|x| Value::from(*x)).collect()
    } else {
        c.bytes_contents
            .iter()
            .map(|x| Value::from(String::from_utf8_lossy(x).into_owned()))
            .collect()
    };
    Value::Array(v)
}

/// Little-endian raw contents of `datatype` as numbers (`None`: a type not decoded).
fn raw_data(datatype: &str, raw: &[u8]) -> Option<Value> {
    fn each<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> Value) -> Option<Value> {
        if !raw.len().is_multiple_of(N) {
            return None;
        }
        Some(Value::Array(
            raw.chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N])))
                .collect(),
        ))
    }
    match datatype {
        "FP64" => each::<8>(raw, |b| Value::from(f64::from_le_bytes(b))),
        "FP32" => each::<4>(raw, |b| Value::from(f64::from(f32::from_le_bytes(b)))),
        "INT64" => each::<8>(raw, |b| Value::from(i64::from_le_bytes(b))),
        "INT32" => each::<4>(raw, |b| Value::from(i32::from_le_bytes(b))),
        "UINT64" => each::<8>(raw, |b| Value::from(u64::from_le_bytes(b))),
        "UINT32" => each::<4>(raw, |b| Value::from(u32::from_le_bytes(b))),
        "BOOL" => each::<1>(raw, |b| Value::from(b[0] != 0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status,
            body: body.as_bytes(),
            grpc: false,
        }
    }

    fn with(ignore: &[&str]) -> CompareSettings {
        CompareSettings {
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            ..CompareSettings::default()
        }
    }

    fn verdict(a: &str, b: &str, s: &CompareSettings) -> Verdict {
        compare(json(200, a), json(200, b), s).verdict
    }

    #[test]
    fn numbers_agree_within_the_tolerances_and_differ_past_them() {
        let s = CompareSettings::default();
        assert_eq!(
            verdict(
                r#"{"predictions":[6.0]}"#,
                r#"{"predictions":[6.0000001]}"#,
                &s
            ),
            Verdict::Match
        );
        // Relative: 1e-4 of 1000 is 0.1.
        assert_eq!(verdict("[1000.0]", "[1000.09]", &s), Verdict::Match);
        let out = compare(
            json(200, r#"{"predictions":[6.0, 2.0]}"#),
            json(200, r#"{"predictions":[6.3, 2.0]}"#),
            &s,
        );
        match out.verdict {
            Verdict::Mismatch(d) => {
                assert_eq!(d.pointer, "/predictions/0");
                assert_eq!((d.live.as_str(), d.copy.as_str()), ("6.0", "6.3"));
            }
            v => panic!("{v:?}"),
        }
        assert!((out.max_difference - 0.3).abs() < 1e-9);
    }

    #[test]
    fn structure_strings_booleans_and_statuses_must_be_equal() {
        let s = CompareSettings::default();
        assert!(
            matches!(verdict(r#"{"a":"x"}"#, r#"{"a":"y"}"#, &s), Verdict::Mismatch(d) if d.pointer == "/a")
        );
        assert!(matches!(
            verdict(r#"{"a":true}"#, r#"{"a":false}"#, &s),
            Verdict::Mismatch(_)
        ));
        assert!(
            matches!(verdict("[1,2]", "[1,2,3]", &s), Verdict::Mismatch(d) if d.pointer.is_empty())
        );
        assert!(
            matches!(verdict(r#"{"a":1}"#, r#"{"a":1,"b":2}"#, &s), Verdict::Mismatch(d) if d.pointer == "/b")
        );
        let out = compare(json(200, "{}"), json(500, "{}"), &s);
        assert!(
            matches!(out.verdict, Verdict::Mismatch(d) if d.pointer == "/status" && d.copy == "500")
        );
    }

    #[test]
    fn ignored_pointers_and_wildcards_are_skipped() {
        let a = r#"{"id":"1","model_version":"v1","outputs":[{"name":"p","data":[1.0]}],"x/y":1}"#;
        let b = r#"{"id":"2","model_version":"v2","outputs":[{"name":"q","data":[1.0]}],"x/y":2}"#;
        assert!(
            matches!(verdict(a, b, &with(&["/id", "/model_version"])), Verdict::Mismatch(d) if d.pointer == "/outputs/0/name")
        );
        assert_eq!(
            verdict(
                a,
                b,
                &with(&["/id", "/model_version", "/outputs/*/name", "/x~1y"])
            ),
            Verdict::Match
        );
        // An ignored key may be absent on one side.
        assert_eq!(
            verdict(r#"{"id":"1","v":1}"#, r#"{"v":1}"#, &with(&["/id"])),
            Verdict::Match
        );
    }

    #[test]
    fn other_bodies_compare_by_bytes_and_big_ones_are_incomparable() {
        let s = CompareSettings::default();
        assert_eq!(verdict("plain text", "plain text", &s), Verdict::Match);
        assert!(matches!(
            verdict("plain text", "other text", &s),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            verdict("{}", "not json", &s),
            Verdict::Mismatch(_)
        ));
        let small = CompareSettings {
            max_body_bytes: 4,
            ..CompareSettings::default()
        };
        assert!(matches!(
            verdict("[1, 2, 3]", "[1, 2, 3]", &small),
            Verdict::Incomparable(_)
        ));
    }

    fn frame(r: &crate::grpc::ModelInferResponse) -> Vec<u8> {
        use prost::Message;
        let msg = r.encode_to_vec();
        let mut out = vec![0];
        out.extend((msg.len() as u32).to_be_bytes());
        out.extend(msg);
        out
    }

    fn response(id: &str, typed: Option<f64>, raw: Option<f64>) -> crate::grpc::ModelInferResponse {
        use crate::grpc::model_infer_response::InferOutputTensor;
        crate::grpc::ModelInferResponse {
            model_name: "scorer".into(),
            id: id.into(),
            outputs: vec![InferOutputTensor {
                name: "predictions".into(),
                datatype: "FP64".into(),
                shape: vec![1],
                contents: typed.map(|v| crate::grpc::InferTensorContents {
                    fp64_contents: vec![v],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            raw_output_contents: raw
                .map(|v| vec![v.to_le_bytes().to_vec()])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn grpc_answers_compare_as_model_infer_responses_typed_or_raw() {
        let s = with(&["/id"]);
        fn grpc(body: &[u8]) -> Answer<'_> {
            Answer {
                status: 0,
                body,
                grpc: true,
            }
        }
        let typed = frame(&response("a", Some(6.0), None));
        let raw = frame(&response("b", None, Some(6.00000001)));
        let off = frame(&response("c", Some(6.3), None));
        assert_eq!(
            compare(grpc(&typed), grpc(&raw), &s).verdict,
            Verdict::Match
        );
        match compare(grpc(&typed), grpc(&off), &s).verdict {
            Verdict::Mismatch(d) => assert_eq!(d.pointer, "/outputs/0/data/0"),
            v => panic!("{v:?}"),
        }
        // Not a ModelInferResponse: bytes.
        assert_eq!(
            compare(
                grpc(&[0, 0, 0, 0, 1, 0xff]),
                grpc(&[0, 0, 0, 0, 1, 0xff]),
                &s
            )
            .verdict,
            Verdict::Match
        );
    }
}
