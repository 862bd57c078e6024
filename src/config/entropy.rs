//! The `[entropy]` table: the entropy ring's inputs besides the OS generator.

use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Value;

use super::ConfigError;
use super::value::{Origin, rebase};

/// Extra inputs of the entropy ring, from the `[entropy]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntropyConfig {
    /// Paths read besides the OS generator, in order.
    pub sources: Vec<EntropySource>,
}

/// One path the entropy ring reads: a device, a regular file or a FIFO.
#[derive(Debug, Clone, PartialEq)]
pub struct EntropySource {
    /// Where the bytes come from.
    pub path: PathBuf,
    /// Claimed min-entropy per byte (0 < H ≤ 8); sets the health tests' cutoffs.
    pub min_entropy: f64,
}

// min_entropy is validated to be a finite number, so equality is reflexive.
impl Eq for EntropySource {}

impl EntropySource {
    /// Claimed min-entropy per byte when the config gives none: low enough that a raw,
    /// unwhitened hardware source passes, high enough that a stuck or badly biased one fails.
    pub const DEFAULT_MIN_ENTROPY: f64 = 4.0;
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "an [entropy] table")]
pub(super) struct RawEntropy {
    sources: Option<Value>,
    min_entropy: Option<Value>,
}

impl EntropyConfig {
    pub(super) fn from_raw(raw: RawEntropy, o: &Origin<'_>) -> Result<EntropyConfig, ConfigError> {
        let min_entropy = |field: &str, v: Value| {
            let h = match v {
                Value::Float(f) => f,
                Value::Integer(n) => n as f64,
                other => {
                    return Err(o.err(
                        field,
                        format!("expected a number, got {}", other.type_str()),
                    ));
                }
            };
            if h > 0.0 && h <= 8.0 {
                Ok(h)
            } else {
                Err(o.err(
                    field,
                    format!("must be greater than 0 and at most 8 bits per byte (got {h})"),
                ))
            }
        };
        let default_h = match raw.min_entropy {
            Some(v) => min_entropy("entropy.min_entropy", v)?,
            None => EntropySource::DEFAULT_MIN_ENTROPY,
        };
        let mut c = EntropyConfig::default();
        let Some(v) = raw.sources else {
            return Ok(c);
        };
        let Value::Array(items) = v else {
            return Err(o.err(
                "entropy.sources",
                format!(
                    "expected an array of paths or {{ path, min_entropy }} tables, got {}",
                    v.type_str()
                ),
            ));
        };
        for (i, item) in items.into_iter().enumerate() {
            let field = format!("entropy.sources[{i}]");
            let source = match item {
                Value::Table(mut t) => {
                    let path = t
                        .remove("path")
                        .ok_or_else(|| o.err(&field, "missing path"))?;
                    let path = o.path(&format!("{field}.path"), path)?;
                    let h = match t.remove("min_entropy") {
                        Some(v) => min_entropy(&format!("{field}.min_entropy"), v)?,
                        None => default_h,
                    };
                    if let Some(k) = t.keys().next() {
                        return Err(o.err(
                            &field,
                            format!("unknown field `{k}` (expected path, min_entropy)"),
                        ));
                    }
                    EntropySource {
                        path,
                        min_entropy: h,
                    }
                }
                other => EntropySource {
                    path: o.path(&field, other)?,
                    min_entropy: default_h,
                },
            };
            c.sources.push(source);
        }
        Ok(c)
    }

    /// Resolves relative source paths against `base`, the config file's directory.
    pub(super) fn rebase(&mut self, base: &Path) {
        for s in &mut self.sources {
            rebase(&mut s.path, base);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::Config;
    use super::super::testutil::{TempDir, err, parse};
    use super::*;

    #[test]
    fn entropy_table() {
        let c = parse(
            "[entropy]\nmin_entropy = 5\nsources = [\"/dev/hwrng\", { path = \"/dev/qrandom0\", min_entropy = 6.5 }]",
        )
        .unwrap();
        assert_eq!(
            c.entropy.sources,
            [
                EntropySource {
                    path: PathBuf::from("/dev/hwrng"),
                    min_entropy: 5.0
                },
                EntropySource {
                    path: PathBuf::from("/dev/qrandom0"),
                    min_entropy: 6.5
                },
            ]
        );
        let c = parse("[entropy]\nsources = [\"/dev/hwrng\"]").unwrap();
        assert_eq!(
            c.entropy.sources[0].min_entropy,
            EntropySource::DEFAULT_MIN_ENTROPY
        );
        assert!(parse("").unwrap().entropy.sources.is_empty());
        for (text, expect) in [
            (
                "[entropy]\nsources = \"/dev/hwrng\"",
                "config /etc/qnet/qnet.toml: entropy.sources: expected an array of paths or { path, min_entropy } tables, got string",
            ),
            (
                "[entropy]\nsources = [1]",
                "config /etc/qnet/qnet.toml: entropy.sources[0]: expected a string, got integer",
            ),
            (
                "[entropy]\nsources = [\"\"]",
                "config /etc/qnet/qnet.toml: entropy.sources[0]: must not be empty",
            ),
            (
                "[entropy]\nsources = [{ min_entropy = 3.0 }]",
                "config /etc/qnet/qnet.toml: entropy.sources[0]: missing path",
            ),
            (
                "[entropy]\nsources = [\"/a\", { path = \"/b\", min_entropy = 9.0 }]",
                "config /etc/qnet/qnet.toml: entropy.sources[1].min_entropy: must be greater than 0 and at most 8 bits per byte (got 9)",
            ),
            (
                "[entropy]\nsources = [{ path = \"/b\", bits = 2 }]",
                "config /etc/qnet/qnet.toml: entropy.sources[0]: unknown field `bits` (expected path, min_entropy)",
            ),
            (
                "[entropy]\nmin_entropy = 0",
                "config /etc/qnet/qnet.toml: entropy.min_entropy: must be greater than 0 and at most 8 bits per byte (got 0)",
            ),
            (
                "[entropy]\nmin_entropy = \"high\"",
                "config /etc/qnet/qnet.toml: entropy.min_entropy: expected a number, got string",
            ),
            (
                "[entropy]\nmin_entropy = nan",
                "config /etc/qnet/qnet.toml: entropy.min_entropy: must be greater than 0 and at most 8 bits per byte (got NaN)",
            ),
        ] {
            assert_eq!(err(text), expect, "{text}");
        }
        assert!(err("[entropy]\nsource = []").contains("unknown field `source`"));
    }

    #[test]
    fn entropy_source_paths_are_rebased() {
        let dir = TempDir::new("entropy");
        let path = dir.write(
            "etc/qnet.toml",
            "[entropy]\nsources = [\"fifo\", { path = \"/dev/hwrng\" }]\n",
        );
        let c = Config::from_path(&path).unwrap();
        assert_eq!(c.entropy.sources[0].path, dir.0.join("etc/fifo"));
        assert_eq!(c.entropy.sources[1].path, PathBuf::from("/dev/hwrng"));
    }
}
