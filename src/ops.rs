//! Layer 6 (tools): operator edits of the endpoint file (`scoregate traffic`, `swap`, and the steps of
//! `rollout`): compute new weights, rewrite only the `traffic:` map (`config::rewrite_traffic`)
//! and replace the file atomically, so a running proxy never sees a half-written file. Beside
//! the data path: the proxy picks the change up through hot reload.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, EndpointConfig, RewriteError};

/// Why an edit was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Rewrite(#[from] RewriteError),
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The live weights of a file's deployments, in table order (`traffic:` order first).
pub(crate) fn weights(cfg: &EndpointConfig) -> Vec<(String, u8)> {
    cfg.deployments
        .iter()
        .map(|d| (d.name.clone(), d.weight))
        .collect()
}

/// `blue=90 green=10` (with `unit` after each number, like `%`).
pub(crate) fn show(weights: &[(String, u8)], unit: &str) -> String {
    weights
        .iter()
        .map(|(n, w)| format!("{n}={w}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses `name=weight` arguments.
pub(crate) fn parse_assignments(
    path: &Path,
    args: &[String],
) -> Result<Vec<(String, u8)>, OpsError> {
    let mut seen = std::collections::BTreeSet::new();
    for a in args {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        if !seen.insert(name) {
            return Err(OpsError::Refused {
                path: path.to_path_buf(),
                message: format!("`{name}` is named twice"),
            });
        }
    }
    args.iter()
        .map(|a| {
            let refuse = |message: String| OpsError::Refused {
                path: path.to_path_buf(),
                message,
            };
            let (name, w) = a
                .split_once('=')
                .ok_or_else(|| refuse(format!("`{a}` is not name=weight, like green=10")))?;
            let w: u8 = w.parse().ok().filter(|w| *w <= 100).ok_or_else(|| {
                refuse(format!(
                    "weight `{w}` of `{name}` is not an integer from 0 to 100"
                ))
            })?;
            Ok((name.to_string(), w))
        })
        .collect()
}

/// Sets the given weights (others stay), validates as `check` does and replaces the file.
/// Returns the resulting weights.
pub(crate) fn set_weights(
    path: &Path,
    assign: &[(String, u8)],
) -> Result<Vec<(String, u8)>, OpsError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        errors: vec![config::Diagnostic {
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let current = config::parse_str(&src, path)?;
    for (name, _) in assign {
        if !current.config.deployments.iter().any(|d| &d.name == name) {
            let known: Vec<&str> = current
                .config
                .deployments
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            return Err(OpsError::Refused {
                path: path.to_path_buf(),
                message: format!(
                    "`{name}` is not a deployment (deployments: {})",
                    known.join(", ")
                ),
            });
        }
    }
    let (text, loaded) = config::rewrite_traffic(&src, path, assign)?;
    if text != src {
        write_atomically(path, text.as_bytes())?;
    }
    Ok(weights(&loaded.config))
}

/// Replaces `path` with `bytes`: a temporary file in the same directory, fsync, the original's
/// permissions, rename, fsync of the directory. A symlink is followed, so the file it points to
/// is replaced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OpsError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let fail = |source| OpsError::Write {
        path: target.clone(),
        source,
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.scoregate-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(&target) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, &target)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// `swap`: the deployment at 0% and the one at 100% trade weights.
pub(crate) fn swap(path: &Path) -> Result<Vec<(String, u8)>, OpsError> {
    let loaded = config::load_file(path)?;
    let w = weights(&loaded.config);
    let refuse = |message: String| OpsError::Refused {
        path: path.to_path_buf(),
        message,
    };
    let shape: Vec<String> = w.iter().map(|(n, w)| format!("{n}={w}")).collect();
    if w.len() != 2 {
        return Err(refuse(format!(
            "swap needs exactly two deployments, one at 100% and one at 0%; the file has {} ({})",
            w.len(),
            shape.join(" ")
        )));
    }
    let (a, b) = (&w[0], &w[1]);
    if !matches!((a.1, b.1), (100, 0) | (0, 100)) {
        return Err(refuse(format!(
            "swap needs one deployment at 100% and the other at 0%; the file has {}: use `scoregate traffic` to set other weights",
            shape.join(" ")
        )));
    }
    set_weights(path, &[(a.0.clone(), b.1), (b.0.clone(), a.1)])
}

/// The weights with `name` at `percent`: what `name` gains is taken from the others in
/// proportion to their weights (what it loses is given to them likewise, equally if they are
/// all at 0); the rounding remainder is taken from (or given to) the largest.
pub(crate) fn step_weights(current: &[(String, u8)], name: &str, percent: u8) -> Vec<(String, u8)> {
    let percent = percent.min(100);
    let old = current
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, w)| *w);
    let others: Vec<usize> = (0..current.len())
        .filter(|&i| current[i].0 != name)
        .collect();
    let mut out: Vec<(String, u8)> = current.to_vec();
    if let Some(i) = out.iter().position(|(n, _)| n == name) {
        out[i].1 = percent;
    }
    if others.is_empty() {
        return out;
    }
    let base: i64 = others.iter().map(|&i| i64::from(current[i].1)).sum();
    // Positive: taken from the others; negative: given to them.
    let delta = i64::from(percent) - i64::from(old);
    let mut moved = 0i64;
    for &i in &others {
        let part = (delta * i64::from(current[i].1))
            .checked_div(base)
            .unwrap_or(delta / others.len() as i64);
        out[i].1 = (i64::from(current[i].1) - part).clamp(0, 100) as u8;
        moved += part;
    }
    // The remainder from (or to) the largest of the others.
    let largest = others
        .iter()
        .copied()
        .max_by_key(|&i| (out[i].1, std::cmp::Reverse(i)))
        .unwrap_or(others[0]);
    out[largest].1 = (i64::from(out[largest].1) - (delta - moved)).clamp(0, 100) as u8;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &[(&str, u8)]) -> Vec<(String, u8)> {
        v.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn steps_take_from_the_others_in_proportion() {
        assert_eq!(
            step_weights(&w(&[("blue", 100), ("green", 0)]), "green", 10),
            w(&[("blue", 90), ("green", 10)])
        );
        assert_eq!(
            step_weights(&w(&[("blue", 60), ("red", 40), ("green", 0)]), "green", 50),
            w(&[("blue", 30), ("red", 20), ("green", 50)])
        );
        // Green gains 23: 15.33 from blue, 7.67 from red; the remainder from the largest.
        assert_eq!(
            step_weights(&w(&[("blue", 60), ("red", 30), ("green", 10)]), "green", 33),
            w(&[("blue", 44), ("red", 23), ("green", 33)])
        );
        // Going down gives back in proportion.
        assert_eq!(
            step_weights(&w(&[("blue", 30), ("red", 20), ("green", 50)]), "green", 0),
            w(&[("blue", 60), ("red", 40), ("green", 0)])
        );
        assert_eq!(
            step_weights(&w(&[("blue", 0), ("red", 0), ("green", 100)]), "green", 50),
            w(&[("blue", 25), ("red", 25), ("green", 50)])
        );
        assert_eq!(
            step_weights(&w(&[("blue", 50), ("green", 50)]), "green", 100),
            w(&[("blue", 0), ("green", 100)])
        );
    }
}
