//! The Cedar machinery both policy sets share: loading a schema, the one parse path (size and
//! complexity limits, a big-stack parser thread, strict validation, no templates), entity
//! helpers, and Cedar's diagnostics rendered as `line:column: message`.
//!
//! The limits exist because Cedar 4 has no depth limit of its own: a hundred or so nested
//! parentheses overflow its parser's stack, which aborts the process. So a text is refused when
//! it is over [`MAX_POLICY_BYTES`], nests brackets deeper than [`MAX_NESTING`] or puts more than
//! [`MAX_OPERATORS_PER_POLICY`] operators in one policy, before Cedar sees it.

use std::str::FromStr;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    Authorizer, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Schema, ValidationMode,
    Validator,
};
use sha2::{Digest, Sha256};

/// The largest policy text accepted, in bytes (1 MiB).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// The deepest brackets (`(`, `[`, `{`, counting the policy's own `(` and `{`) may nest.
pub const MAX_NESTING: usize = 32;

/// The most operators one policy may contain (`.`, `!`, `-`, `+`, `*`, comparisons, `&&`, `||`,
/// `in`, `has`, `like`, `is`, `if`). A chain of binary operators nests as deeply as it is long,
/// and Cedar's evaluator needs stack for every level: at this limit an accepted policy still
/// evaluates on a 2 MiB thread (a tokio worker's) in release builds, with room to spare.
/// (Beyond its stack, Cedar stops with a "recursion limit" error, which denies.)
pub const MAX_OPERATORS_PER_POLICY: usize = 200;

/// Stack for the parser thread: ample for [`MAX_NESTING`] and [`MAX_OPERATORS_PER_POLICY`] even
/// in debug builds; only the pages touched are ever committed.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is larger than [`MAX_POLICY_BYTES`].
    #[error(
        "policy text is {size} bytes, over the {limit}-byte limit; remove unused rules or merge \
         similar ones"
    )]
    TooLarge {
        /// Size of the refused text in bytes.
        size: usize,
        /// The limit, [`MAX_POLICY_BYTES`].
        limit: usize,
    },
    /// The text nests too deeply or packs too many operators into one policy, which could
    /// exhaust the stack of the Cedar parser or evaluator.
    #[error("policy is too complex: {message}")]
    TooComplex {
        /// What limit was hit, where, and how to restructure the policy.
        message: String,
    },
    /// The text is not valid Cedar.
    #[error(
        "policy does not parse: {message}; fix the text and check it with `skep policy validate FILE`"
    )]
    Parse {
        /// Cedar's errors, each prefixed with its line:column.
        message: String,
    },
    /// The text parses but does not type-check strictly against its schema, or uses a feature
    /// skep does not support (templates).
    #[error(
        "policy is not valid for skep's schema: {message}; see policies/README.md for the entity \
         model and check the file with `skep policy validate FILE`"
    )]
    Invalid {
        /// Cedar's validation errors, each prefixed with its line:column.
        message: String,
    },
    /// The built-in schema itself failed to load: a bug in skep, not in the policy.
    #[error(
        "skep's built-in policy schema failed to load ({message}); this is a bug in skep, please report it"
    )]
    Schema {
        /// Cedar's error.
        message: String,
    },
}

/// A Cedar schema loaded once per process: its validator, an authorizer and its action
/// entities (added to every request's entity store).
pub(super) struct Loaded {
    pub(super) validator: Validator,
    pub(super) authorizer: Authorizer,
    pub(super) actions: Vec<Entity>,
}

/// A policy text that passed [`Loaded::parse`].
pub(super) struct Parsed {
    /// The text exactly as given.
    pub(super) text: String,
    pub(super) policies: PolicySet,
    /// The strict validator's warnings, each with its line:column.
    pub(super) warnings: Vec<String>,
}

impl Loaded {
    /// Loads `schema_text`; the error is Cedar's, rendered.
    pub(super) fn new(schema_text: &str) -> Result<Loaded, String> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_text)
            .map_err(|e| render_diagnostic(&DetailedError::from(&e), schema_text))?;
        let actions = schema
            .action_entities()
            .map_err(|e| format!("action entities: {e}"))?
            .iter()
            .cloned()
            .collect();
        Ok(Loaded {
            validator: Validator::new(schema),
            authorizer: Authorizer::new(),
            actions,
        })
    }

    pub(super) fn schema(&self) -> &Schema {
        self.validator.schema()
    }

    /// The one parse path for every policy set: refuses text over [`MAX_POLICY_BYTES`] or too
    /// complex ([`parse_bounded`]), syntax errors, policy templates (with `no_templates` as the
    /// message) and anything the strict validator rejects; errors quote Cedar with line:column.
    pub(super) fn parse(
        &'static self,
        text: &str,
        no_templates: &'static str,
    ) -> Result<Parsed, PolicyError> {
        parse_bounded(text, move |t| self.parse_on_this_thread(t, no_templates))
    }

    fn parse_on_this_thread(
        &self,
        text: String,
        no_templates: &str,
    ) -> Result<Parsed, PolicyError> {
        let policies = PolicySet::from_str(&text).map_err(|errors| PolicyError::Parse {
            message: render_all(errors.iter().map(DetailedError::from), &text),
        })?;
        if policies.templates().next().is_some() {
            return Err(PolicyError::Invalid {
                message: no_templates.to_string(),
            });
        }
        let result = self.validator.validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Invalid {
                message: render_all(result.validation_errors().map(DetailedError::from), &text),
            });
        }
        let warnings = result
            .validation_warnings()
            .map(|w| render_diagnostic(&DetailedError::from(w), &text))
            .collect();
        Ok(Parsed {
            text,
            policies,
            warnings,
        })
    }
}

/// The process-wide model in `cell`, or why the built-in schema failed to load.
pub(super) fn loaded<T>(cell: &'static Result<T, String>) -> Result<&'static T, PolicyError> {
    cell.as_ref().map_err(|message| PolicyError::Schema {
        message: message.clone(),
    })
}

/// The entity type `name` (e.g. `Skep::Node`).
pub(super) fn entity_type(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("entity type {name}: {e}"))
}

/// Parses a policy text within skep's limits: at most [`MAX_POLICY_BYTES`], nesting and
/// operators bounded ([`check_complexity`]), and the Cedar parse itself ([`on_big_stack`])
/// on a thread whose stack covers the deepest text let through: Cedar's parser recurses once
/// per nesting level with large frames (tens of KiB per bracket in debug builds).
pub(super) fn parse_bounded<T: Send + 'static>(
    text: &str,
    parse: impl Fn(String) -> Result<T, PolicyError> + Clone + Send + 'static,
) -> Result<T, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: text.len(),
            limit: MAX_POLICY_BYTES,
        });
    }
    check_complexity(text)?;
    let owned = text.to_string();
    let on_thread = parse.clone();
    on_big_stack(move || on_thread(owned)).unwrap_or_else(|| parse(text.to_string()))
}

/// Runs a Cedar parse on a thread whose stack comfortably covers the deepest text
/// [`check_complexity`] lets through. `None` if no thread could be had (resource exhaustion:
/// the nesting limits keep the parse within an ordinary stack in release builds, so the caller
/// parses on its own thread then); a panic in the parser becomes a parse error.
fn on_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Option<Result<T, PolicyError>> {
    let handle = std::thread::Builder::new()
        .name("skep-policy-parse".to_string())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(f)
        .ok()?;
    Some(handle.join().unwrap_or_else(|_| {
        Err(PolicyError::Parse {
            message: "the Cedar parser failed unexpectedly on this text (please report it as a \
                      bug in skep, with the text)"
                .to_string(),
        })
    }))
}

/// `Type::"id"`.
pub(super) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// Hex SHA-256 of `text`: the identity of a policy text in the cluster state and the cache.
pub fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Refuses text whose brackets nest deeper than [`MAX_NESTING`] or one of whose policies has
/// more than [`MAX_OPERATORS_PER_POLICY`] operators, before Cedar sees it: Cedar (4.14) has no
/// depth limit of its own and recurses once per nesting level when parsing and dropping a
/// policy, so deep enough text would overflow the stack and abort the process.
///
/// A light lexer is enough: it skips `//` comments and string literals and counts brackets and
/// operator tokens; policies end at a `;` outside brackets.
fn check_complexity(text: &str) -> Result<(), PolicyError> {
    let bytes = text.as_bytes();
    let too_complex = |at: usize, what: String| PolicyError::TooComplex {
        message: {
            let (line, column) = line_column(text, at);
            format!("{line}:{column}: {what}")
        },
    };
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut policy_start = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let mut width = 1;
        let mut operator = false;
        match b {
            b'/' if next == Some(b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                policy_start.get_or_insert(i);
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_complex(
                        i,
                        format!(
                            "brackets nest more than {MAX_NESTING} deep; flatten the condition \
                             (e.g. `a && b` instead of nested `if`s or parentheses) or split it \
                             into several policies"
                        ),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                operators = 0;
                policy_start = None;
                i += 1;
                continue;
            }
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                operator = true;
                if next == Some(b'=') || (matches!(b, b'&' | b'|') && next == Some(b)) {
                    width = 2;
                }
            }
            b'.' | b'+' | b'-' | b'*' => operator = true,
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                while i + width < bytes.len()
                    && (bytes[i + width].is_ascii_alphanumeric() || bytes[i + width] == b'_')
                {
                    width += 1;
                }
                operator = matches!(
                    &bytes[i..i + width],
                    b"if" | b"in" | b"has" | b"like" | b"is"
                );
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            policy_start.get_or_insert(i);
        }
        if operator {
            operators += 1;
            if operators > MAX_OPERATORS_PER_POLICY {
                return Err(too_complex(
                    policy_start.unwrap_or(i),
                    format!(
                        "this policy has more than {MAX_OPERATORS_PER_POLICY} operators; split it \
                         into several policies (any applicable forbid denies, any applicable \
                         permit allows) or test set membership with `[..].contains(x)`"
                    ),
                ));
            }
        }
        i += width;
    }
    Ok(())
}

/// Renders several Cedar diagnostics (and their related ones) as `line:col: message` joined
/// with "; ".
fn render_all(errors: impl Iterator<Item = DetailedError>, text: &str) -> String {
    let mut out = Vec::new();
    for error in errors {
        push_rendered(&error, text, &mut out);
    }
    if out.is_empty() {
        out.push("unknown error".to_string());
    }
    out.join("; ")
}

fn push_rendered(error: &DetailedError, text: &str, out: &mut Vec<String>) {
    let rendered = render_diagnostic(error, text);
    if !out.contains(&rendered) {
        out.push(rendered);
    }
    for related in &error.related {
        push_rendered(related, text, out);
    }
}

/// One Cedar diagnostic as `line:col: message (help)`, quoting the text it points at.
fn render_diagnostic(error: &DetailedError, text: &str) -> String {
    let mut s = String::new();
    if let Some(label) = error.source_locations.first() {
        let (line, column) = line_column(text, label.loc.start);
        s.push_str(&format!("{line}:{column}: "));
        s.push_str(&error.message);
        let snippet = text
            .get(label.loc.start..label.loc.end.min(text.len()))
            .unwrap_or("")
            .trim();
        if !snippet.is_empty()
            && !snippet.contains('\n')
            && snippet.chars().count() <= 60
            && !error.message.contains(&format!("`{snippet}`"))
        {
            s.push_str(&format!(" (at `{snippet}`)"));
        }
    } else {
        s.push_str(&error.message);
    }
    if let Some(help) = &error.help {
        s.push_str(&format!(" (help: {help})"));
    }
    s
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_handles_unicode_and_bounds() {
        assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
        assert_eq!(line_column("ab\ncé\nx", 5), (2, 2)); // inside é: clamps back
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
