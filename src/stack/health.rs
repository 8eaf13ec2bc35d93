//! The `healthcheck` key: `test` as a list (`CMD`, `CMD-SHELL`, `NONE`) or a string (a shell
//! command line), the times as durations, `disable: true` as `NONE`.

use docker_compose_types as dct;

use super::StackError;
use super::building::Building;
use super::context::Ctx;
use super::tree::{child, join, keep, to_int, to_str};
use super::words::millis;
use super::yaml::{Key, Node};
use crate::store::service::HealthCheck;

/// `healthcheck:`, when given.
pub(super) fn healthcheck_key(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    if let Some((hk, hv)) = entry {
        b.spec.task.healthcheck = Some(healthcheck(ctx, &b.owner, &b.base, &hk, hv)?);
    }
    Ok(())
}

/// A service's `healthcheck`: `test` as a list (`CMD`, `CMD-SHELL`, `NONE`) or a string (a
/// shell command line), the times as durations, `disable: true` as `NONE`.
fn healthcheck(
    ctx: &mut Ctx<'_>,
    owner: &str,
    base: &str,
    key: &Key,
    mut node: Node,
) -> Result<HealthCheck, StackError> {
    let path = join(base, "healthcheck");
    keep(
        ctx,
        &mut node,
        owner,
        "healthcheck",
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "disable",
        ],
    );
    if let Some(x) = child(&mut node, "retries") {
        to_int(x);
    }
    for f in ["interval", "timeout", "start_period"] {
        if let Some(x) = child(&mut node, f) {
            to_str(x);
        }
    }
    let mut obj = serde_json::Map::new();
    obj.insert("healthcheck".into(), node.to_json());
    let typed: dct::Service = ctx.typed(key, &path, serde_json::Value::Object(obj))?;
    let h = typed.healthcheck.unwrap_or_default();
    let bad = |reason: String| ctx.invalid_at(key, &path, reason);
    let test = if h.disable {
        vec!["NONE".to_string()]
    } else {
        match h.test {
            Some(dct::HealthcheckTest::Single(line)) => vec!["CMD-SHELL".to_string(), line],
            Some(dct::HealthcheckTest::Multiple(list)) => list,
            None => {
                return Err(bad(
                    "a healthcheck needs a `test` (or `disable: true`)".into()
                ));
            }
        }
    };
    let mut out = HealthCheck::new(test);
    for (what, text, slot) in [
        ("interval", &h.interval, &mut out.interval_ms),
        ("timeout", &h.timeout, &mut out.timeout_ms),
        ("start_period", &h.start_period, &mut out.start_period_ms),
    ] {
        if let Some(t) = text {
            *slot = millis(t.trim()).map_err(|e| bad(format!("{what}: {e}")))?;
        }
    }
    if h.retries != 0 {
        out.retries = u32::try_from(h.retries)
            .map_err(|_| bad(format!("retries: {} is not 1 to 1000", h.retries)))?;
    }
    Ok(out)
}
