//! Reading TOML files so that every mistake names the file, the key, the line and what was expected.
//!
//! Both the node configuration and policy files go through [`parse`]; it turns toml's errors (syntax,
//! unknown keys from `deny_unknown_fields`, wrong types) into a [`TomlError`] an operator can act on.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A TOML file that could not be read or did not match what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// The file.
    pub path: PathBuf,
    /// The dotted key the error is about, when known (e.g. `services.app.timeout_ms`).
    pub key: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TomlError {}

impl TomlError {
    /// An error about `key` in `path` found after parsing (a value that has the right type but is
    /// not acceptable).
    pub fn at(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        TomlError { path: path.to_path_buf(), key: Some(key.into()), line: None, message: message.into() }
    }
}

/// Read a file's text (UTF-8), or an error naming the file and why.
pub fn read_text(path: &Path) -> Result<String, TomlError> {
    std::fs::read_to_string(path).map_err(|e| TomlError { path: path.to_path_buf(), key: None, line: None, message: format!("cannot read: {e}") })
}

/// Parse TOML text (from `path`, for messages) into `T`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| describe(path, text, &e))
}

fn describe(path: &Path, text: &str, error: &toml::de::Error) -> TomlError {
    let line = error.span().map(|span| line_of(text, span.start));
    let mut message = error.message().trim().to_string();
    // toml says "unknown field `x`, expected one of …"; the key is the name at the span.
    let key = error.span().and_then(|span| key_at(text, span.start..span.end));
    if message.starts_with("unknown field") {
        message = format!("unknown key ({message})");
    }
    TomlError { path: path.to_path_buf(), key, line, message }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The dotted key whose value or name covers `span`: the table header above it plus the key on its line.
fn key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let trimmed = line_text.trim_start();
    if trimmed.starts_with('[') {
        let header = trimmed.trim_start_matches('[').split(']').next()?.trim();
        return Some(header.to_string());
    }
    let key = trimmed.split('=').next()?.trim().trim_matches('"');
    if key.is_empty() || trimmed.find('=').is_none() {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn err(text: &str) -> TomlError {
        parse::<Outer>(Path::new("x.toml"), text).unwrap_err()
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("name = \"a\"\n\n[inner]\ncount = 1\ncuont = 2\n");
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("inner.cuont"));
        assert!(e.message.contains("unknown key"), "{e}");
        assert!(e.to_string().starts_with("x.toml:5: key `inner.cuont`: unknown key"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err("name = \"a\"\n[inner]\ncount = \"many\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("inner.count"));
        assert!(e.message.contains("expected u32"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("name = \"a\"\nbroken = = 3\n");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn missing_key_is_named() {
        let e = err("[inner]\ncount = 1\n");
        assert!(e.message.contains("name"), "{e}");
    }
}
