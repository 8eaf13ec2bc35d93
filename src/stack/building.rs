//! A service under construction: where it stands in the file, what the top level declares,
//! and what its keys have set so far. Each key handler takes one of these.

use super::StackError;
use super::context::Ctx;
use super::objects::Declared;
use super::tree::join;
use super::yaml::{Key, Node};
use crate::store::service::ServiceSpec;

/// One service key's handler. It is called in its turn whether or not the key is there
/// (`None`), so a handler can also set what its key's absence means.
pub(super) type Handler =
    fn(&mut Ctx<'_>, &mut Building<'_>, Option<(Key, Node)>) -> Result<(), StackError>;

/// A service as its keys build it.
pub(super) struct Building<'d> {
    /// The top-level secrets, configs and networks a service may name.
    pub declared: &'d Declared,
    /// `service NAME`, for warnings.
    pub owner: String,
    /// `services.NAME`, for error positions.
    pub base: String,
    /// `entrypoint`, until it is joined to `command` (exec) or refused (docker).
    pub entrypoint: Vec<String>,
    /// The spec so far.
    pub spec: ServiceSpec,
    /// Keys of the networks it joins, in the file's terms.
    pub network_keys: Vec<String>,
    /// Keys of the secrets it uses, in the file's terms.
    pub secret_keys: Vec<String>,
    /// Keys of the configs it uses, in the file's terms.
    pub config_keys: Vec<String>,
}

impl Building<'_> {
    /// `services.NAME.KEY`.
    pub fn path(&self, key: &str) -> String {
        join(&self.base, key)
    }

    /// Types one key's value through the crate's `Service` struct.
    pub fn typed(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        entry: Option<&(Key, Node)>,
    ) -> Result<Option<docker_compose_types::Service>, StackError> {
        let Some((k, v)) = entry else {
            return Ok(None);
        };
        let mut obj = serde_json::Map::new();
        obj.insert(name.to_string(), v.to_json());
        ctx.typed(k, &self.path(name), serde_json::Value::Object(obj))
            .map(Some)
    }
}
