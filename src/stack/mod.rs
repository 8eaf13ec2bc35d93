//! Stacks: a Compose file turned into the services, networks, secrets and configs skep deploys.
//!
//! ```text
//!  compose files ──read (≤ 1 MiB)──► yaml::parse ──► interpolate ──► merge (later wins)
//!        ──► compose::convert ──► Stack { services: [ServiceSpec], networks, secrets, configs, warnings }
//!                 ├─ objects: top-level secrets, configs and networks; volumes: named
//!                 │  volumes and each service's mounts
//!                 └─ service: one handler per key (endpoints, health, deploy)
//! ```
//!
//! A pure module: files are read through [`Files`] and the environment is a map the caller
//! gives, so the whole loader runs in unit tests and under the fuzzer. The CLI
//! (`skep stack deploy`) sends what comes out through the ordinary Control RPCs; every spec
//! has already passed the manager's own [`crate::spec::service::validate`].
//!
//! What is supported, what is warned about and the `x-skep-runtime` and `x-skep-on-change`
//! extensions are listed in
//! `docs/compose.md`.

mod building;
pub mod compose;
mod context;
mod deploy;
mod endpoints;
mod health;
pub mod interpolate;
mod objects;
mod service;
mod tree;
mod volumes;
mod words;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::secret::SecretBytes;
use crate::store::service::ServiceSpec;

/// The label Docker puts on every object of a stack; skep uses it to find them.
pub const NAMESPACE_LABEL: &str = crate::store::volumes::NAMESPACE_LABEL;

/// Largest Compose file accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Largest `env_file` accepted.
pub const MAX_ENV_FILE_BYTES: usize = 256 * 1024;

/// Most services one stack may have.
pub const MAX_SERVICES: usize = 200;

/// Most Compose files one deploy may merge.
pub const MAX_FILES: usize = 16;

/// Why a stack could not be loaded. The message names the file, the line where the YAML
/// layer gives it, and the key.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The stack name is unusable.
    #[error(
        "invalid stack name {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 40 characters"
    )]
    Name(String),
    /// The file is refused: not YAML, too big a YAML, or not a Compose file skep can deploy.
    #[error("{at}: {reason}")]
    Invalid {
        /// `FILE: line N: KEY.PATH`, as much as is known.
        at: String,
        /// What is wrong and, where possible, what to do.
        reason: String,
    },
}

/// Reads files for the loader: the Compose files, `env_file`s and secret `file`s.
pub trait Files {
    /// The file's bytes, refused if it is larger than `limit`.
    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String>;
}

/// The real file system.
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String> {
        let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        if buf.len() > limit {
            return Err(format!("larger than the {limit} bytes allowed"));
        }
        Ok(buf)
    }
}

/// A network of the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackNetwork {
    /// Its name in the swarm (`<stack>_<key>`, or the `name:` given).
    pub name: String,
    /// Labels, with the stack's namespace label.
    pub labels: BTreeMap<String, String>,
    /// An existing network the stack uses but does not own (`external: true`).
    pub external: bool,
}

/// A named volume the top level declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackVolume {
    /// Its name on the nodes (`<stack>_<key>`, the `name:` given, or the external name).
    pub name: String,
    /// Labels it is created with (the stack's namespace label; none when external: an
    /// existing volume the stack uses but does not own).
    pub labels: BTreeMap<String, String>,
}

/// Where a secret's value comes from.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// An existing secret (`external: true`): the stack uses it, never creates or removes it.
    External,
    /// A value the stack creates the secret from (`file:` or `environment:`).
    Value(SecretBytes),
}

/// A secret of the stack.
#[derive(Clone, Debug)]
pub struct StackSecret {
    /// Its name in the swarm (`<stack>_<key>`, the external name, or the `name:` given).
    pub name: String,
    /// Labels (stack-made secrets carry the namespace label).
    pub labels: BTreeMap<String, String>,
    /// Where the value comes from.
    pub source: SecretSource,
}

/// A loaded stack: everything to create, in file order.
#[derive(Clone, Debug)]
pub struct Stack {
    /// The stack's name.
    pub name: String,
    /// Service specs, named `<stack>_<service>`, validated.
    pub services: Vec<ServiceSpec>,
    /// Networks the services use.
    pub networks: Vec<StackNetwork>,
    /// Secrets the services use.
    pub secrets: Vec<StackSecret>,
    /// Configs the services use (the same objects as secrets, in their own namespace).
    pub configs: Vec<StackSecret>,
    /// Keys skep ignored, variables that were not set: shown to the operator, never silent.
    pub warnings: Vec<String>,
}

/// The longest stack name.
pub const MAX_STACK_NAME_BYTES: usize = 40;

/// Checks a stack name: it prefixes every object, so it must leave room for the rest.
pub fn validate_stack_name(name: &str) -> Result<(), StackError> {
    if crate::spec::name::is_valid(name, MAX_STACK_NAME_BYTES) {
        Ok(())
    } else {
        Err(StackError::Name(name.chars().take(80).collect()))
    }
}

/// Loads the Compose files (merged in order, later files overriding) as stack `stack`, with
/// variables from `env`. Relative `env_file` and secret `file` paths are read from the
/// directory of the first file, as Docker does.
pub fn load(
    paths: &[PathBuf],
    stack: &str,
    env: &BTreeMap<String, String>,
    files: &dyn Files,
) -> Result<Stack, StackError> {
    validate_stack_name(stack)?;
    if paths.is_empty() || paths.len() > MAX_FILES {
        return Err(StackError::Invalid {
            at: "-c".into(),
            reason: format!("give 1 to {MAX_FILES} Compose files"),
        });
    }
    let mut texts = Vec::new();
    for p in paths {
        let bytes = files
            .read(p, MAX_FILE_BYTES)
            .map_err(|reason| StackError::Read {
                path: p.display().to_string(),
                reason,
            })?;
        let text = String::from_utf8(bytes).map_err(|_| StackError::Invalid {
            at: p.display().to_string(),
            reason: "the file is not UTF-8 text".into(),
        })?;
        texts.push((p.display().to_string(), text));
    }
    let dir = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
    compose::load_texts(&texts, stack, env, files, &dir)
}

/// The loader on one in-memory file, reading no other file: the fuzz target's entry point.
#[doc(hidden)]
pub fn load_str_for_fuzz(text: &str) -> Result<Stack, StackError> {
    struct NoFiles;
    impl Files for NoFiles {
        fn read(&self, _: &Path, _: usize) -> Result<Vec<u8>, String> {
            Err("no files in this context".into())
        }
    }
    let env = BTreeMap::from([("HOME".to_string(), "/root".to_string())]);
    compose::load_texts(
        &[("fuzz.yml".into(), text.to_string())],
        "fuzz",
        &env,
        &NoFiles,
        Path::new("."),
    )
}
