//! The endpoint file as a tree of YAML nodes, each with its position, built from the events of
//! saphyr-parser. Repeated keys are kept (so that they can be reported); plain scalars are
//! resolved per the YAML 1.2 core schema only when asked ([`Node::scalar`]). Aliases and
//! application tags are refused.

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};

use super::Diagnostic;

/// Deepest nesting of maps and lists read (an endpoint file needs 4).
const MAX_DEPTH: usize = 64;

/// Where a node starts: 1-based line and column (in characters), and byte offset in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
}

impl Pos {
    /// The start of the file, where findings about the file as a whole are reported.
    pub(crate) const START: Pos = Pos {
        line: 1,
        column: 1,
        offset: 0,
    };
}

/// One node of the file.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub line: usize,
    pub column: usize,
    /// Byte offset of the node's first character.
    pub offset: usize,
    /// Byte offset just past the node (past the closing bracket of a flow collection).
    pub end: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// Entries in file order, repeated keys included.
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    /// `plain` is false for quoted and block scalars and for `!!str`: always strings.
    Scalar {
        text: String,
        plain: bool,
    },
}

/// A scalar's value under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub(crate) fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
            offset: self.offset,
        }
    }

    /// The scalar's value, resolved; `None` for a map or a list.
    pub(crate) fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => Some(resolve(text)),
            Kind::Scalar { text, plain: false } => Some(Scalar::Str(text)),
            _ => None,
        }
    }

    /// The scalar's text as written (quotes removed); `None` for a map or a list.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Nothing at all after the key (`traffic:` then the next line): read as an empty map or
    /// list where one is expected.
    pub(crate) fn is_empty_plain(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if text.is_empty())
    }
}

/// Core schema resolution of a plain scalar (YAML 1.2, 10.3.2).
fn resolve(t: &str) -> Scalar<'_> {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        "true" | "True" | "TRUE" => Scalar::Bool(true),
        "false" | "False" | "FALSE" => Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Scalar::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Scalar::Float(f64::NAN),
        _ => match int(t) {
            Some(i) => Scalar::Int(i),
            None => float(t).map_or(Scalar::Str(t), Scalar::Float),
        },
    }
}

/// `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+` (too large for i128: not an integer).
fn int(t: &str) -> Option<i128> {
    let radix = |body: &str, radix: u32| {
        (!body.is_empty() && body.chars().all(|c| c.is_digit(radix)))
            .then(|| i128::from_str_radix(body, radix).ok())
            .flatten()
    };
    if let Some(hex) = t.strip_prefix("0x") {
        return radix(hex, 16);
    }
    if let Some(oct) = t.strip_prefix("0o") {
        return radix(oct, 8);
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    let v = radix(digits, 10)?;
    Some(if t.starts_with('-') { -v } else { v })
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn float(t: &str) -> Option<f64> {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let s = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let mantissa_ok = digits(whole)
        && fraction.is_none_or(digits)
        && (!whole.is_empty() || fraction.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    (mantissa_ok && exponent_ok)
        .then(|| t.parse::<f64>().ok())
        .flatten()
}

/// Byte offsets of the parser's character indexes.
struct Offsets {
    len: usize,
    /// Byte offset of each character; `None` when the text is ASCII (the index is the offset).
    chars: Option<Vec<usize>>,
}

impl Offsets {
    fn new(src: &str) -> Offsets {
        let chars = (!src.is_ascii()).then(|| src.char_indices().map(|(b, _)| b).collect());
        Offsets {
            len: src.len(),
            chars,
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.chars {
            None => char_index.min(self.len),
            Some(c) => c.get(char_index).copied().unwrap_or(self.len),
        }
    }

    fn pos(&self, m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
            offset: self.byte(m.index()),
        }
    }

    fn diagnostic(&self, m: &Marker, message: impl Into<String>) -> Diagnostic {
        let p = self.pos(m);
        Diagnostic {
            line: p.line,
            column: p.column,
            message: message.into(),
        }
    }
}

/// A map or list being read.
struct Open {
    start: Pos,
    kind: Kind,
    /// A map's key waiting for its value.
    key: Option<Node>,
}

/// Parses `src` into its one document; `Ok(None)` when it holds none (comments only). A syntax
/// error stops the read; aliases and application tags are all reported, then the read stops.
pub(crate) fn parse(src: &str) -> Result<Option<Node>, Vec<Diagnostic>> {
    let at = Offsets::new(src);
    let mut open: Vec<Open> = Vec::new();
    let mut root = None;
    let mut refused = Vec::new();
    let mut documents = 0;
    for event in Parser::new_from_str(src) {
        let (event, span) = event.map_err(|e| vec![at.diagnostic(e.marker(), e.info())])?;
        let start = at.pos(&span.start);
        let node = |kind| Node {
            kind,
            line: start.line,
            column: start.column,
            offset: start.offset,
            end: at.byte(span.end.index()),
        };
        let done = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(vec![at.diagnostic(
                        &span.start,
                        "a second YAML document (`---`): an endpoint file holds one",
                    )]);
                }
                continue;
            }
            Event::Alias(_) => {
                refused.push(at.diagnostic(
                    &span.start,
                    "aliases (`*name`) are not supported in an endpoint file: write the value out",
                ));
                node(Kind::Scalar {
                    text: String::new(),
                    plain: true,
                })
            }
            Event::Scalar(text, style, _, tag) => {
                let is_str = tag.as_deref().is_some_and(|t| core(t) == Some("str"));
                if let Some(t) = tag.as_deref().filter(|t| core(t).is_none()) {
                    refused.push(refuse_tag(&at, &span.start, t));
                }
                node(Kind::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain && !is_str,
                })
            }
            Event::MappingStart(_, ref tag) | Event::SequenceStart(_, ref tag) => {
                if let Some(t) = tag.as_deref().filter(|t| core(t).is_none()) {
                    refused.push(refuse_tag(&at, &span.start, t));
                }
                if open.len() >= MAX_DEPTH {
                    return Err(vec![at.diagnostic(
                        &span.start,
                        format!("maps and lists nested deeper than {MAX_DEPTH} levels"),
                    )]);
                }
                let kind = match event {
                    Event::MappingStart(..) => Kind::Map(Vec::new()),
                    _ => Kind::Seq(Vec::new()),
                };
                open.push(Open {
                    start,
                    kind,
                    key: None,
                });
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let Some(mut done) = open.pop() else { continue };
                if let (Kind::Map(entries), Some(key)) = (&mut done.kind, done.key.take()) {
                    let value = Node {
                        kind: Kind::Scalar {
                            text: String::new(),
                            plain: true,
                        },
                        end: key.end,
                        ..key.clone()
                    };
                    entries.push((key, value));
                }
                Node {
                    kind: done.kind,
                    line: done.start.line,
                    column: done.start.column,
                    offset: done.start.offset,
                    end: at.byte(span.end.index()),
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        match open.last_mut() {
            None => root = Some(done),
            Some(parent) => match &mut parent.kind {
                Kind::Map(entries) => match parent.key.take() {
                    Some(key) => entries.push((key, done)),
                    None => parent.key = Some(done),
                },
                Kind::Seq(items) => items.push(done),
                Kind::Scalar { .. } => {}
            },
        }
    }
    if refused.is_empty() {
        Ok(root)
    } else {
        Err(refused)
    }
}

/// The name of a tag of the core schema (`!!str` is `str`); `None` for any other tag.
fn core(tag: &Tag) -> Option<&str> {
    tag.is_yaml_core_schema().then_some(tag.suffix.as_str())
}

fn refuse_tag(at: &Offsets, m: &Marker, tag: &Tag) -> Diagnostic {
    at.diagnostic(
        m,
        format!("the tag `{tag}` is not supported in an endpoint file: remove it"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_per_the_core_schema() {
        for (t, want) in [
            ("", Scalar::Null),
            ("~", Scalar::Null),
            ("NULL", Scalar::Null),
            ("True", Scalar::Bool(true)),
            ("false", Scalar::Bool(false)),
            ("90", Scalar::Int(90)),
            ("-1", Scalar::Int(-1)),
            ("+5", Scalar::Int(5)),
            ("007", Scalar::Int(7)),
            ("0x1F", Scalar::Int(31)),
            ("0o17", Scalar::Int(15)),
            ("90.5", Scalar::Float(90.5)),
            ("1e3", Scalar::Float(1000.0)),
            (".5", Scalar::Float(0.5)),
            ("-.inf", Scalar::Float(f64::NEG_INFINITY)),
            ("yes", Scalar::Str("yes")),
            ("0b101", Scalar::Str("0b101")),
            ("1_000", Scalar::Str("1_000")),
            ("inf", Scalar::Str("inf")),
            ("127.0.0.1:9001", Scalar::Str("127.0.0.1:9001")),
            ("0x", Scalar::Str("0x")),
            ("-", Scalar::Str("-")),
            (".", Scalar::Str(".")),
        ] {
            assert_eq!(resolve(t), want, "{t:?}");
        }
        assert!(matches!(resolve(".nan"), Scalar::Float(f) if f.is_nan()));
    }

    #[test]
    fn positions_are_1_based_and_offsets_are_bytes() {
        let src = "# «é»\nblue: 'x'\n";
        let Some(Node {
            kind: Kind::Map(entries),
            ..
        }) = parse(src).expect("valid")
        else {
            panic!("a map")
        };
        let (k, v) = &entries[0];
        assert_eq!(
            (k.line, k.column, k.offset),
            (2, 1, src.find("blue").unwrap_or(0))
        );
        assert_eq!((v.line, v.column), (2, 7));
        assert_eq!(&src[v.offset..v.end], "'x'");
        assert_eq!(v.scalar(), Some(Scalar::Str("x")));
    }
}
