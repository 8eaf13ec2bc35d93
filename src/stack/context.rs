//! The loader's context: the file names for error positions, the stack name, the
//! environment, the files it may read, and the warnings gathered on the way.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::yaml::{Key, Node};
use super::{Files, StackError};

/// What the loader works with: the file names, the environment, the files, the warnings.
pub(super) struct Ctx<'a> {
    pub names: Vec<String>,
    pub stack: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub files: &'a dyn Files,
    pub dir: &'a Path,
    pub warnings: Vec<String>,
}

impl Ctx<'_> {
    pub fn file(&self, i: usize) -> &str {
        self.names.get(i).map_or("?", String::as_str)
    }

    /// `FILE: line N: PATH`.
    pub fn at(&self, file: usize, line: u64, path: &str) -> String {
        let mut at = self.file(file).to_string();
        if line > 0 {
            at.push_str(&format!(": line {line}"));
        }
        if !path.is_empty() {
            at.push_str(&format!(": {path}"));
        }
        at
    }

    pub fn invalid_at(&self, key: &Key, path: &str, reason: impl Into<String>) -> StackError {
        StackError::Invalid {
            at: self.at(key.file, key.line, path),
            reason: reason.into(),
        }
    }

    pub fn invalid_node(&self, node: &Node, path: &str, reason: impl Into<String>) -> StackError {
        StackError::Invalid {
            at: self.at(node.file, node.line, path),
            reason: reason.into(),
        }
    }

    pub fn warn(&mut self, text: String) {
        if !self.warnings.contains(&text) {
            self.warnings.push(text);
        }
    }

    pub fn unsupported(&mut self, owner: &str, key: &str, why: &str) {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        self.warn(format!(
            "{owner}: key `{key}` is not supported by skep and is ignored{why}"
        ));
    }

    /// Types one value through a `docker-compose-types` struct.
    pub fn typed<T: DeserializeOwned>(
        &self,
        key: &Key,
        path: &str,
        json: serde_json::Value,
    ) -> Result<T, StackError> {
        serde_json::from_value(json).map_err(|e| self.invalid_at(key, path, e.to_string()))
    }
}
