//! The rules for secrets themselves, shared by the CLI, the Compose loader and the manager: a
//! secret's name, the bounds of its value, and the `--secret` reference syntax. Pure: the
//! manager resolves references against its state.

use crate::store::service::{OnChange, SecretRef};

/// Largest secret value, as Docker: 500 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// Where secrets are mounted in a task.
pub const SECRETS_DIR: &str = super::secret_target::SECRETS_DIR;

/// The longest secret (and network) name.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a secret name as Docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_name_of(name, "secret")
}

/// Checks the name of a `what` ("secret" or "config"): the same rule for both.
pub fn validate_name_of(name: &str, what: &str) -> Result<(), String> {
    if super::name::is_valid(name, MAX_NAME_BYTES) {
        Ok(())
    } else {
        Err(format!(
            "name: {} is not a valid {what} name (letters, digits, '_', '.' and '-', \
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

/// Parses a `--secret` value: `NAME[@N]`, or
/// `source=NAME[@N],target=PATH,uid=N,gid=N,mode=0NNN,on-change=rotate|signal:SIG|restart|none`
/// with Docker's defaults (`/run/secrets/NAME`, root, 0444) and skep's (follow the current
/// version, rotate in place). A relative target is under `/run/secrets`. The secret ID is left
/// empty: the manager resolves the name (and checks the target) in
/// `manager::secrets::resolve_refs`. The error says which part is wrong.
pub fn parse_secret_spec(text: &str) -> Result<SecretRef, String> {
    parse_ref(text, false)
}

/// Parses a `--config` value as [`parse_secret_spec`] does a secret's, with Docker's default
/// target `/NAME` (a relative target is under `/`) and skep's default `on-change=restart` (a
/// config is bound at a path of the task's own file system, where it cannot be swapped
/// atomically: see [`super::config_target`]).
pub fn parse_config_spec(text: &str) -> Result<SecretRef, String> {
    parse_ref(text, true)
}

/// `NAME` or `NAME@N`.
fn name_and_pin(v: &str, config: bool) -> Result<(String, Option<u64>), String> {
    let (name, pin) = match v.split_once('@') {
        Some((n, p)) => {
            let n_ok = p.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!(
                    "{}: version {} is not a number from 1",
                    crate::util::quote(n),
                    crate::util::quote(p)
                )
            })?;
            (n, Some(n_ok))
        }
        None => (v, None),
    };
    if config {
        super::config_target::validate_name(name)?;
    } else {
        validate_name(name)?;
    }
    Ok((name.to_string(), pin))
}

fn parse_ref(text: &str, config: bool) -> Result<SecretRef, String> {
    let mut r = SecretRef::new("");
    if config {
        r.on_change = OnChange::Restart;
    }
    let mut name = None;
    let mut target = None;
    if !text.contains('=') {
        name = Some(name_and_pin(text, config)?);
    } else {
        for field in text.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("{} is not KEY=VALUE", crate::util::quote(field)))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("{k}={} is not a number", crate::util::quote(v)))
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => name = Some(name_and_pin(v, config)?),
                "target" | "dst" | "destination" => target = Some(v.to_string()),
                "uid" => r.uid = num(v)?,
                "gid" => r.gid = num(v)?,
                "mode" => {
                    r.mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| {
                            format!("mode={} is not an octal file mode", crate::util::quote(v))
                        })?
                }
                "on-change" | "on_change" => r.on_change = parse_on_change(v)?,
                other => return Err(format!("unknown field {}", crate::util::quote(other))),
            }
        }
    }
    let (name, pin) = name.ok_or("source=NAME is required")?;
    r.secret_name = name.clone();
    r.pinned = pin;
    r.target = if config {
        super::config_target::absolute(target.as_deref(), &name)?
    } else {
        match target {
            None => format!("{SECRETS_DIR}/{name}"),
            Some(t) if t.starts_with('/') => t,
            Some(t) if !t.is_empty() => format!("{SECRETS_DIR}/{t}"),
            Some(_) => return Err("target is empty".into()),
        }
    };
    if config && matches!(r.on_change, OnChange::Rotate | OnChange::Signal(_)) {
        return Err(format!(
            "config {name}: on-change={} is for secrets; a config is bound at a path of the \
             task's own file system, where it cannot be replaced atomically: use \
             on-change=restart (the default) or none",
            r.on_change
        ));
    }
    Ok(r)
}

/// The signals the exec runtime's init helper passes on to the task (any other would end the
/// helper, and the task with it): the only ones `on-change=signal:SIG` may name for an exec
/// task.
pub use skep_init::EXEC_SIGNALS;

/// Whether the exec runtime passes on the signal named `name` (canonical, `SIGHUP`).
pub fn exec_forwards(name: &str) -> bool {
    EXEC_SIGNALS.iter().any(|s| s.as_str() == name)
}

/// Parses `rotate`, `signal:SIG` (`SIGHUP`, `HUP` or `hup`; not a number), `restart` or `none`.
pub fn parse_on_change(v: &str) -> Result<OnChange, String> {
    let lower = v.trim().to_ascii_lowercase();
    match lower.as_str() {
        "rotate" => Ok(OnChange::Rotate),
        "restart" => Ok(OnChange::Restart),
        "none" => Ok(OnChange::None),
        _ => match lower.strip_prefix("signal:") {
            Some(sig) => signal_name(sig).map(OnChange::Signal),
            None => Err(format!(
                "on-change={} is not one of rotate, signal:SIG, restart, none",
                crate::util::quote(v)
            )),
        },
    }
}

/// The canonical name (`SIGHUP`) of a signal given as `SIGHUP`, `HUP` or `hup`. SIGKILL and
/// SIGSTOP are refused: they cannot tell a program to reread a file.
pub fn signal_name(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match full.parse::<nix::sys::signal::Signal>() {
        Ok(nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP) => Err(format!(
            "signal {full} cannot be caught, so it cannot tell a task to reread a file; use on-change=restart"
        )),
        Ok(sig) => Ok(sig.as_str().to_string()),
        Err(_) => Err(format!(
            "{} is not a signal name (e.g. SIGHUP, SIGUSR1)",
            crate::util::quote(text)
        )),
    }
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

    #[test]
    fn versions_and_on_change_parse() {
        let r = parse_secret_spec("db@2").unwrap();
        assert_eq!((r.secret_name.as_str(), r.pinned), ("db", Some(2)));
        let r = parse_secret_spec("source=db,on-change=signal:hup,target=x").unwrap();
        assert_eq!(r.on_change, OnChange::Signal("SIGHUP".into()));
        assert_eq!(r.target, "/run/secrets/x");
        assert_eq!(parse_secret_spec("db").unwrap().on_change, OnChange::Rotate);
        for (bad, says) in [
            ("db@0", "not a number from 1"),
            ("db@x", "not a number from 1"),
            ("source=db,on-change=signal:SIGNOPE", "not a signal name"),
            ("source=db,on-change=signal:KILL", "cannot be caught"),
            ("source=db,on-change=sometimes", "not one of"),
        ] {
            let e = parse_secret_spec(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let c =
            parse_config_spec("source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0440").unwrap();
        assert_eq!(
            (c.target.as_str(), c.mode, &c.on_change),
            ("/etc/nginx/nginx.conf", 0o440, &OnChange::Restart)
        );
        assert_eq!(parse_config_spec("app").unwrap().target, "/app");
        let e = parse_config_spec("source=c,on-change=rotate").unwrap_err();
        assert!(e.contains("cannot be replaced atomically"), "{e}");
    }
}
