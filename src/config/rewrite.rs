//! `scoregate traffic`'s edit of the endpoint file: only the characters of the `traffic:`
//! weights change (and new entries are added after the last one), so comments, order and quoting
//! stay byte for byte. Where to write comes from the byte offsets of the file's YAML tree.

use std::path::Path;

use super::yaml::{self, Kind, Node};
use super::{ConfigError, Loaded, parse_str};

/// Why the `traffic:` map could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("cannot find {0} in the file to rewrite it")]
    NotFound(String),
}

/// One edit: the bytes `start..end` of the text become `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

/// The byte-order mark (kept where it is, outside what the parser sees), the text after it and
/// its tree; the file as it is must be valid, its errors first.
fn read<'a>(
    src: &'a str,
    path: &Path,
) -> Result<(&'static str, &'a str, Option<Node>), RewriteError> {
    let (bom, src) = match src.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", src),
    };
    parse_str(src, path)?;
    let tree = yaml::parse(src).map_err(|errors| ConfigError {
        path: path.to_path_buf(),
        errors,
    })?;
    Ok((bom, src, tree))
}

/// The top-level entry `key`, if any.
fn top_level<'t>(tree: &'t Option<Node>, key: &str) -> Option<&'t (Node, Node)> {
    match tree.as_ref().map(|root| &root.kind) {
        Some(Kind::Map(entries)) => entries.iter().find(|(k, _)| k.text() == Some(key)),
        _ => None,
    }
}

/// Returns `src` with the `traffic:` weights of `weights` set (others untouched) and validates
/// the result as `check` does; `path` is used for messages and `keys_file`.
pub fn rewrite_traffic(
    src: &str,
    path: &Path,
    weights: &[(String, u8)],
) -> Result<(String, Loaded), RewriteError> {
    let (bom, src, tree) = read(src, path)?;
    let traffic = top_level(&tree, "traffic");
    let entries: &[(Node, Node)] = match traffic {
        Some((
            _,
            Node {
                kind: Kind::Map(entries),
                ..
            },
        )) => entries,
        _ => &[],
    };
    let weight_of = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.text() == Some(name))
            .map(|(_, v)| v)
    };
    let mut edits = Vec::new();
    let mut missing = Vec::new();
    for (name, w) in weights {
        match weight_of(name) {
            Some(v) => edits.push(Edit {
                start: v.offset,
                end: v.end,
                text: w.to_string(),
            }),
            None => missing.push((name.as_str(), *w)),
        }
    }
    if !missing.is_empty() {
        edits.push(add_entries(src, traffic, &missing)?);
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = src.to_string();
    for Edit { start, end, text } in edits {
        if out.get(start..end).is_none() {
            return Err(RewriteError::NotFound("the `traffic:` weights".into()));
        }
        out.replace_range(start..end, &text);
    }
    let checked = parse_str(&out, path)?;
    Ok((format!("{bom}{out}"), checked))
}

/// Returns `src` with `mirror_traffic:` set to `mirrors` (a flow map, `{}` when empty;
/// added at the end when absent) and, with `compare`, `mirror_compare: {}` added when the file
/// has none; everything else byte for byte, validated as `check` does. For `rollout --shadow`.
pub fn rewrite_mirror(
    src: &str,
    path: &Path,
    mirrors: &[(String, u8)],
    compare: bool,
) -> Result<(String, Loaded), RewriteError> {
    let (bom, src, tree) = read(src, path)?;
    let map: Vec<String> = mirrors.iter().map(|(n, p)| format!("{n}: {p}")).collect();
    let map = format!("{{{}}}", map.join(", "));
    let entry = top_level(&tree, "mirror_traffic");
    let mut out = src.to_string();
    match entry {
        Some((_, value)) if matches!(value.kind, Kind::Map(_)) => {
            // A block map ends at its last value (what follows on that line stays); a flow
            // map at its closing brace.
            let flow = src.get(value.offset..).is_some_and(|t| t.starts_with('{'));
            let end = match &value.kind {
                Kind::Map(entries) if !flow => entries.last().map_or(value.end, |(_, v)| v.end),
                _ => value.end,
            };
            if out.get(value.offset..end).is_none() {
                return Err(RewriteError::NotFound("the `mirror_traffic:` map".into()));
            }
            out.replace_range(value.offset..end, &map);
        }
        Some(_) => return Err(RewriteError::NotFound("`mirror_traffic:` as a map".into())),
        None => {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("mirror_traffic: {map}\n"));
        }
    }
    if compare && top_level(&tree, "mirror_compare").is_none() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("mirror_compare: {}\n");
    }
    let checked = parse_str(&out, path)?;
    Ok((format!("{bom}{out}"), checked))
}

/// The edit that adds `missing` entries to `traffic:` (the key and its value, when present),
/// in the style of the map: after the last entry, or as a new `traffic:` at the end.
fn add_entries(
    src: &str,
    traffic: Option<&(Node, Node)>,
    missing: &[(&str, u8)],
) -> Result<Edit, RewriteError> {
    let insert = |at: usize, text: String| Edit {
        start: at,
        end: at,
        text,
    };
    let lines = |indent: usize| -> String {
        let indent = " ".repeat(indent);
        missing
            .iter()
            .map(|(n, w)| format!("\n{indent}{n}: {w}"))
            .collect()
    };
    // The end of the line holding `at` (before its newline), a comment included.
    let line_end = |at: usize| {
        let rest = src.get(at..).unwrap_or("");
        rest.find('\n').map_or(src.len(), |i| at + i)
    };
    let Some((key, value)) = traffic else {
        let mut add = String::new();
        if !src.is_empty() && !src.ends_with('\n') {
            add.push('\n');
        }
        add.push_str("traffic:");
        add.push_str(&lines(2));
        add.push('\n');
        return Ok(insert(src.len(), add));
    };
    let flow_map = src.get(value.offset..).is_some_and(|t| t.starts_with('{'));
    match &value.kind {
        // `traffic: {}`: fill the flow map.
        Kind::Map(entries) if entries.is_empty() => {
            let close = src
                .get(value.offset..value.end)
                .and_then(|t| t.rfind('}'))
                .ok_or_else(|| RewriteError::NotFound("the end of `traffic: {}`".into()))?;
            let body: Vec<String> = missing.iter().map(|(n, w)| format!("{n}: {w}")).collect();
            Ok(insert(value.offset + close, body.join(", ")))
        }
        // After the last weight, before anything else on its line: a comment stays with its
        // entry in flow style; in block style the new lines go after it.
        Kind::Map(entries) => {
            let Some((last_key, last)) = entries.last() else {
                return Err(RewriteError::NotFound("`traffic:`".into()));
            };
            if flow_map {
                let text = missing.iter().map(|(n, w)| format!(", {n}: {w}")).collect();
                Ok(insert(last.end, text))
            } else {
                Ok(insert(line_end(last.end), lines(last_key.column - 1)))
            }
        }
        // `traffic:` with nothing after it: a block map under the key.
        Kind::Scalar { text, .. } if text.is_empty() => {
            Ok(insert(line_end(key.end), lines(key.column + 1)))
        }
        _ => Err(RewriteError::NotFound("`traffic:` as a map".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENTS: &str = "deployments:\n  blue:\n    instances: [127.0.0.1:9001]\n  green:\n    instances: [127.0.0.1:9101]\n";

    fn set(src: &str, weights: &[(&str, u8)]) -> String {
        let weights: Vec<(String, u8)> = weights.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        match rewrite_traffic(src, Path::new("t.yaml"), &weights) {
            Ok((out, _)) => out,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_mirror_is_set_replaced_and_cleared_leaving_the_rest() {
        let src = "# blue live, green shadowed\ntraffic: {blue: 100, green: 0}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n  green: {instances: [127.0.0.1:9002]}\n";
        let mirror = |src: &str, m: &[(&str, u8)]| {
            let m: Vec<(String, u8)> = m.iter().map(|(n, p)| (n.to_string(), *p)).collect();
            rewrite_mirror(src, Path::new("t.yaml"), &m, false)
        };
        let (added, loaded) = mirror(src, &[("green", 100)]).unwrap();
        assert_eq!(added, format!("{src}mirror_traffic: {{green: 100}}\n"));
        assert_eq!(loaded.config.mirrors[0].percent, 100);
        let (cleared, loaded) = mirror(&added, &[]).unwrap();
        assert_eq!(cleared, format!("{src}mirror_traffic: {{}}\n"));
        assert!(loaded.config.mirrors.is_empty());
        let block = format!("{src}mirror_traffic:\n  green: 10   # a tenth\n");
        let (set, _) = mirror(&block, &[("green", 50)]).unwrap();
        assert_eq!(
            set,
            format!("{src}mirror_traffic:\n  {{green: 50}}   # a tenth\n")
        );
        // With a comparison: `mirror_compare: {}` (its defaults) unless the file has one.
        let m = [("green".to_string(), 100)];
        let (compared, loaded) = rewrite_mirror(src, Path::new("t.yaml"), &m, true).unwrap();
        assert!(compared.ends_with("mirror_traffic: {green: 100}\nmirror_compare: {}\n"));
        assert!(loaded.config.mirror_compare.is_some());
        let (again, _) = rewrite_mirror(&compared, Path::new("t.yaml"), &m, true).unwrap();
        assert_eq!(again, compared);
        // A live deployment cannot be mirrored: refused with the file's error.
        assert!(mirror(src, &[("blue", 100)]).is_err());
    }

    #[test]
    fn only_the_weights_change_byte_for_byte() {
        let src = format!(
            "# «détection» — multi-byte text before the weights\nname: fraud   # shown\n\
             traffic:\n  # live weights\n  blue: 100   # v1\n  'green': 0  # v2, quoted\n{DEPLOYMENTS}\
             # trailing comment without newline"
        );
        let want = src
            .replace("blue: 100   # v1", "blue: 90   # v1")
            .replace("'green': 0  # v2", "'green': 10  # v2");
        assert_eq!(set(&src, &[("blue", 90), ("green", 10)]), want);
        // Setting the same weights changes nothing.
        assert_eq!(set(&src, &[("blue", 100)]), src);
    }

    #[test]
    fn a_weight_is_replaced_whole_however_it_is_written() {
        let src = format!("traffic: {{blue: 0x64, \"green\": +0}}   # flow\n{DEPLOYMENTS}");
        assert_eq!(
            set(&src, &[("blue", 90), ("green", 10)]),
            format!("traffic: {{blue: 90, \"green\": 10}}   # flow\n{DEPLOYMENTS}")
        );
    }

    #[test]
    fn missing_entries_are_added_in_the_style_of_the_map() {
        // Block: a new line after the last entry (and its comment), at its indentation.
        let src = format!("traffic:\n    blue: 100   # v1\n{DEPLOYMENTS}");
        assert_eq!(
            set(&src, &[("blue", 90), ("green", 10)]),
            format!("traffic:\n    blue: 90   # v1\n    green: 10\n{DEPLOYMENTS}")
        );
        // Flow: after the last entry.
        let src = format!("traffic: {{blue: 100}}\n{DEPLOYMENTS}");
        assert_eq!(
            set(&src, &[("green", 0)]),
            format!("traffic: {{blue: 100, green: 0}}\n{DEPLOYMENTS}")
        );
        // An empty flow map is filled.
        let src = format!("traffic: {{}}\n{DEPLOYMENTS}");
        assert_eq!(
            set(&src, &[("blue", 100), ("green", 0)]),
            format!("traffic: {{blue: 100, green: 0}}\n{DEPLOYMENTS}")
        );
        // `traffic:` with nothing after it gets a block map.
        let src = format!("traffic:   # none yet\n{DEPLOYMENTS}");
        assert_eq!(
            set(&src, &[("blue", 100)]),
            format!("traffic:   # none yet\n  blue: 100\n{DEPLOYMENTS}")
        );
        // No `traffic:` at all: one is added at the end, after a missing final newline.
        let src = DEPLOYMENTS.trim_end();
        assert_eq!(
            set(src, &[("blue", 100)]),
            format!("{DEPLOYMENTS}traffic:\n  blue: 100\n")
        );
    }

    #[test]
    fn an_invalid_file_or_result_is_refused_with_its_errors() {
        let src = format!("traffic:\n  blue: 90\n{DEPLOYMENTS}");
        let weights = [("green".to_string(), 20)];
        match rewrite_traffic(&src, Path::new("t.yaml"), &weights) {
            Err(RewriteError::Invalid(e)) => assert_eq!(
                e.to_string(),
                "t.yaml:1:1: traffic weights sum to 90 (blue=90); they must sum to exactly 100, \
                 or all be 0"
            ),
            other => panic!("expected the file's errors, got {other:?}"),
        }
        let src = format!("traffic:\n  blue: 100\n{DEPLOYMENTS}");
        match rewrite_traffic(&src, Path::new("t.yaml"), &weights) {
            Err(RewriteError::Invalid(e)) => assert_eq!(
                e.to_string(),
                "t.yaml:1:1: traffic weights sum to 120 (blue=100 + green=20); they must sum to \
                 exactly 100, or all be 0"
            ),
            other => panic!("expected the result's errors, got {other:?}"),
        }
    }
}
