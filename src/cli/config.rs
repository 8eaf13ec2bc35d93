//! `skep config create|ls|inspect|rm|update|rollback|rollout`: Swarm's configs. They are the
//! same versioned objects as secrets in their own namespace, through the same RPCs and the
//! same code ([`super::secret`]); only the help differs, and `inspect` shows a config's data.

use clap::Subcommand;

use super::secret::{
    CreateArgs, InspectArgs, Kind, LsArgs, RmArgs, RollbackArgs, RolloutArgs, SecretCommand,
    UpdateArgs,
};

type Api = super::client::Api;

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Create a config from a file or STDIN as content.
    Create(CreateArgs),
    /// List configs.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more configs, their data included.
    Inspect(InspectArgs),
    /// Remove one or more configs.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Add a new version from a file or STDIN, and roll it out (tasks that follow it are
    /// replaced by their service's update policy, or keep the old one with on-change=none).
    Update(UpdateArgs),
    /// Make the previous kept version current again, and roll it out.
    Rollback(RollbackArgs),
    /// Show the rollout of the current version; pause or continue it.
    Rollout(RolloutArgs),
}

impl ConfigCommand {
    /// The same operation on a config.
    fn into_shared(self) -> SecretCommand {
        match self {
            ConfigCommand::Create(a) => SecretCommand::Create(a),
            ConfigCommand::Ls(a) => SecretCommand::Ls(a),
            ConfigCommand::Inspect(a) => SecretCommand::Inspect(a),
            ConfigCommand::Rm(a) => SecretCommand::Rm(a),
            ConfigCommand::Update(a) => SecretCommand::Update(a),
            ConfigCommand::Rollback(a) => SecretCommand::Rollback(a),
            ConfigCommand::Rollout(a) => SecretCommand::Rollout(a),
        }
    }
}

/// Refuses bad arguments before connecting.
pub(super) fn check(cmd: &ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Create(a) => super::secret::check_create(a, Kind::Config),
        _ => Ok(()),
    }
}

pub(super) async fn run(api: &mut Api, cmd: ConfigCommand) -> anyhow::Result<()> {
    super::secret::run(api, cmd.into_shared(), Kind::Config).await
}
