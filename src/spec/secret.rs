//! The rules for secrets themselves, shared by the CLI, the Compose loader and the manager: a
//! secret's name, the bounds of its value, and the `--secret` reference syntax. Pure: the
//! manager resolves references against its state.

use crate::store::service::SecretRef;

/// Largest secret value, as Docker: 500 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// Where secrets are mounted in a task.
pub const SECRETS_DIR: &str = super::secret_target::SECRETS_DIR;

/// The longest secret (and network) name.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a secret name as Docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if super::name::is_valid(name, MAX_NAME_BYTES) {
        Ok(())
    } else {
        Err(format!(
            "name: {} is not a valid secret name (letters, digits, '_', '.' and '-', \
             starting with a letter or digit, at most 64 characters)",
            crate::util::quote(name)
        ))
    }
}

/// Checks the size of a secret value (1 byte to 500 KiB). Never shows the value.
pub fn validate_value(value: &[u8]) -> Result<(), String> {
    if value.is_empty() {
        return Err("value: a secret cannot be empty".into());
    }
    if value.len() > MAX_SECRET_SIZE {
        return Err(format!(
            "value: a secret is at most 500 KiB ({MAX_SECRET_SIZE} bytes); this one has {} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Parses a `--secret` value: `NAME`, or `source=NAME,target=PATH,uid=N,gid=N,mode=0NNN` with
/// Docker's defaults (`/run/secrets/NAME`, root, 0444). A relative target is under
/// `/run/secrets`. The secret ID is left empty: the manager resolves the name (and checks the
/// target) in `manager::secrets::resolve_refs`. The error says which part is wrong.
pub fn parse_secret_spec(text: &str) -> Result<SecretRef, String> {
    if !text.contains('=') {
        validate_name(text)?;
        return Ok(SecretRef::new(text));
    }
    let mut name = None;
    let mut target = None;
    let mut r = SecretRef::new("");
    for field in text.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("{field:?} is not KEY=VALUE"))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => name = Some(v.to_string()),
            "target" | "dst" | "destination" => target = Some(v.to_string()),
            "uid" => r.uid = num(v)?,
            "gid" => r.gid = num(v)?,
            "mode" => {
                r.mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("mode={v:?} is not an octal file mode"))?
            }
            other => return Err(format!("unknown field {other:?}")),
        }
    }
    let name = name.ok_or("source=NAME is required")?;
    validate_name(&name)?;
    r.secret_name = name.clone();
    r.target = match target {
        None => format!("{SECRETS_DIR}/{name}"),
        Some(t) if t.starts_with('/') => t,
        Some(t) if !t.is_empty() => format!("{SECRETS_DIR}/{t}"),
        Some(_) => return Err("target is empty".into()),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker() {
        for ok in ["a", "db_password", "A.b-c_9", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_a", "-a", ".a", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_bounded_and_never_shown() {
        assert!(validate_value(b"").is_err());
        assert!(validate_value(b"x").is_ok());
        assert!(validate_value(&vec![b'q'; MAX_SECRET_SIZE]).is_ok());
        let e = validate_value(&vec![b'q'; MAX_SECRET_SIZE + 1]).unwrap_err();
        assert!(!e.contains("qqq"), "{e}");
    }
}
