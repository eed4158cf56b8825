//! The crate's layers stay layers: every `crate::` import in `src/` goes to a module of a lower
//! layer, or of the same layer without closing a circle. The table is read from `src/lib.rs`
//! (between `<!-- layers -->` markers); the README's Layout section must show the same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One `crate::` reference: the file and line it is on, and the two top-level modules.
#[derive(Debug, Clone)]
struct Import {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// Module → layer number, from the rows `| N name | `a`, `b` | ... |` between the markers.
fn layer_table(text: &str) -> BTreeMap<String, u32> {
    let mut table = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim_start_matches("//!").trim();
        if line == "<!-- layers -->" {
            inside = true;
            continue;
        }
        if line == "<!-- /layers -->" {
            break;
        }
        if !inside {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", "N name", "`a`, `b`", "what", ""]
        let Some(number) = cells
            .get(1)
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        for module in cells[2].split(',') {
            table.insert(module.trim().trim_matches('`').to_string(), number);
        }
    }
    table
}

/// The first two columns of every layer row of a Markdown table in `text`.
fn layer_rows(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start_matches("//!").trim())
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let first = cells.get(1)?;
            first
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
                .map(|_| format!("{} | {}", first, cells.get(2).copied().unwrap_or("")))
        })
        .collect()
}

/// The top-level module a source file belongs to (`src/routing/compile.rs` → `routing`).
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// `text` with comments and the contents of string and character literals blanked out (new
/// lines kept, so positions and line numbers stay), so that only code is searched.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            for _ in i..=j {
                out.push(' ');
            }
            i = j + 1;
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match end {
                Some(e) => {
                    for _ in i..=e {
                        out.push(' ');
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_')
}

/// Every reference in `text` to a top-level module of the crate: `crate::name` (also
/// `$crate::name`), and `super::name` where the `super` chain climbs to the crate root.
/// `depth` is how deep the file's module sits (`src/x.rs`: 1, `src/x/y.rs`: 2); inline `mod`
/// blocks add to it. Grouped imports (`use crate::{a, b::c}`) count each name.
fn crate_refs(text: &str, depth: usize) -> Vec<(usize, String)> {
    let code = code_only(text);
    let bytes = code.as_bytes();
    let line_at = |pos: usize| code[..pos].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    // Inline modules: (brace depth at which the module's block opened).
    let mut modules: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if bytes[i] == b'{' {
            braces += 1;
            i += 1;
            continue;
        }
        if bytes[i] == b'}' {
            if modules.last() == Some(&braces) {
                modules.pop();
            }
            braces = braces.saturating_sub(1);
            i += 1;
            continue;
        }
        if word_start && rest.starts_with("mod ") {
            let name = ident(rest[4..].trim_start());
            let after = rest[4..].trim_start()[name.len()..].trim_start();
            if !name.is_empty() && after.starts_with('{') {
                modules.push(braces + 1);
            }
        }
        // A path that starts at the crate root: `crate::` or enough `super::`.
        let root_path = if word_start && rest.starts_with("crate::") {
            Some("crate::".len())
        } else if word_start && rest.starts_with("super::") {
            let mut len = 0;
            let mut supers = 0;
            while code[i + len..].starts_with("super::") {
                len += "super::".len();
                supers += 1;
            }
            (supers >= depth + modules.len()).then_some(len)
        } else {
            None
        };
        let Some(len) = root_path else {
            i += 1;
            continue;
        };
        let at = i + len;
        let after = &code[at..];
        if let Some(group) = after.strip_prefix('{') {
            let mut level = 1;
            let mut expect_name = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => level += 1,
                    '}' => {
                        level -= 1;
                        if level == 0 {
                            break;
                        }
                    }
                    ',' if level == 1 => expect_name = true,
                    c if expect_name && level == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        let name = ident(&group[j..]);
                        if name != "self" {
                            out.push((line_at(at + 1 + j), name));
                        }
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(after);
            if !name.is_empty() {
                out.push((line_at(i), name));
            }
        }
        i = at;
    }
    out
}

/// How deep a file's module sits below the crate root.
fn depth_of(path: &Path) -> usize {
    let parts: Vec<_> = path.components().skip(1).collect();
    let last_is_mod = path.file_name().is_some_and(|f| f == "mod.rs");
    parts.len() - usize::from(last_is_mod)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every import between two different top-level modules of the crate in `files`.
fn imports(files: &[(String, String)]) -> Vec<Import> {
    let mut out = Vec::new();
    for (file, text) in files {
        let Some(from) = module_of(Path::new(file), Path::new("src")) else {
            continue;
        };
        for (line, to) in crate_refs(text, depth_of(Path::new(file))) {
            if to != from {
                out.push(Import {
                    file: file.clone(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    out
}

/// Every breach of the layering, one line each: an import of an unknown module, an import
/// that goes up a layer, or a circle of imports.
fn breaches(table: &BTreeMap<String, u32>, imports: &[Import]) -> Vec<String> {
    let mut out = Vec::new();
    for i in imports {
        match (table.get(&i.from), table.get(&i.to)) {
            (None, _) => out.push(format!(
                "{}:{}: module `{}` is not in the layer table of src/lib.rs",
                i.file, i.line, i.from
            )),
            (_, None) => out.push(format!(
                "{}:{}: `{}` is not a module in the layer table of src/lib.rs",
                i.file, i.line, i.to
            )),
            (Some(a), Some(b)) if b > a => out.push(format!(
                "{}:{}: `{}` (layer {a}) imports `{}` (layer {b}), a layer above it",
                i.file, i.line, i.from, i.to
            )),
            _ => {}
        }
    }
    // Circles: depth-first search over the module graph.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        graph.entry(&i.from).or_default().insert(&i.to);
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for &start in graph.keys() {
        let mut path: Vec<&str> = Vec::new();
        if let Some(circle) = find_circle(&graph, start, &mut path, &mut done) {
            let (a, b) = (circle[0], circle[1]);
            let at = imports
                .iter()
                .find(|i| i.from == a && i.to == b)
                .map(|i| format!("{}:{}", i.file, i.line))
                .unwrap_or_default();
            out.push(format!(
                "{at}: the imports close a circle: {}",
                circle.join(" -> ")
            ));
            break;
        }
    }
    out
}

fn find_circle<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    node: &'a str,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    if let Some(pos) = path.iter().position(|n| *n == node) {
        let mut circle = path[pos..].to_vec();
        circle.push(node);
        return Some(circle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node);
    for &next in graph.get(node).into_iter().flatten() {
        if let Some(c) = find_circle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node);
    None
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn imports_only_go_down_the_layers_and_close_no_circle() {
    let lib = read("src/lib.rs");
    let table = layer_table(&lib);
    assert!(table.len() > 10, "no layer table in src/lib.rs: {table:?}");
    let mut paths = Vec::new();
    rust_files(Path::new("src"), &mut paths);
    paths.sort();
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| (p.display().to_string(), read(&p.display().to_string())))
        .collect();
    // Every module of the crate has a layer, and every layer's module exists.
    let modules: BTreeSet<String> = paths
        .iter()
        .filter_map(|p| module_of(p, Path::new("src")))
        .collect();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        modules, listed,
        "src/ and the layer table of src/lib.rs differ"
    );
    let found = imports(&files);
    assert!(found.len() > 30, "too few imports read: {found:?}");
    let bad = breaches(&table, &found);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_readme_shows_the_same_layer_table() {
    let lib = layer_rows(&read("src/lib.rs"));
    let readme = layer_rows(&read("README.md"));
    assert!(!lib.is_empty());
    assert_eq!(
        readme, lib,
        "README.md's Layout table differs from src/lib.rs"
    );
}

const TABLE: &str = "//! <!-- layers -->\n//! | layer | modules | what |\n//! | --- | --- | --- |\n//! | 0 values | `error`, `addr` | x |\n//! | 3 route | `routing`, `upstream` | x |\n//! | 4 request | `proxy` | x |\n//! <!-- /layers -->\n";

fn check(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    breaches(&layer_table(TABLE), &imports(&files))
}

#[test]
fn an_upward_import_is_named_with_its_file_and_line() {
    let bad = check(&[
        (
            "src/addr.rs",
            "//! crate::proxy in a comment is fine\nuse std::fmt;\n",
        ),
        (
            "src/routing/compile.rs",
            "use crate::addr::InstanceAddr;\nuse crate::{error::E,\n    proxy::Proxy};\n",
        ),
    ]);
    assert_eq!(
        bad,
        [
            "src/routing/compile.rs:3: `routing` (layer 3) imports `proxy` (layer 4), a layer above it"
        ]
    );
}

#[test]
fn a_circle_within_a_layer_is_refused() {
    let bad = check(&[
        (
            "src/routing/mod.rs",
            "fn f() { crate::upstream::send(); }\n",
        ),
        ("src/upstream/mod.rs", "\nuse crate::routing::Table;\n"),
    ]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].contains("close a circle") && bad[0].contains("routing -> upstream -> routing"),
        "{bad:?}"
    );
}

#[test]
fn an_unknown_module_is_refused() {
    let bad = check(&[("src/addr.rs", "use crate::telemetry::Span;\n")]);
    assert_eq!(
        bad,
        ["src/addr.rs:1: `telemetry` is not a module in the layer table of src/lib.rs"]
    );
}

#[test]
fn super_paths_to_the_root_strings_and_macros_are_read_as_code_is() {
    let bad = check(&[
        (
            "src/addr.rs",
            "fn f() { let url = \"http://x\"; crate::routing::f(); }\n",
        ),
        ("src/routing/mod.rs", "use super::proxy::Proxy;\n"),
        (
            "src/routing/compile.rs",
            "use super::Table;\nmod tests {\n    use super::*;\n    use super::super::super::upstream::X;\n}\nmacro_rules! m { () => { $crate::proxy::y() } }\n",
        ),
        (
            "src/upstream/mod.rs",
            "/* crate::proxy */ const S: &str = \"crate::proxy\";\n",
        ),
    ]);
    assert_eq!(
        bad,
        [
            "src/addr.rs:1: `addr` (layer 0) imports `routing` (layer 3), a layer above it",
            "src/routing/mod.rs:1: `routing` (layer 3) imports `proxy` (layer 4), a layer above it",
            "src/routing/compile.rs:6: `routing` (layer 3) imports `proxy` (layer 4), a layer above it",
        ]
    );
}
