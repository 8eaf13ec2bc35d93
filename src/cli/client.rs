//! The CLI's connection to a daemon's Control API: gRPC over the node's Unix socket.
//! (`tcp://` with an operator certificate comes later.)

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};

use crate::api::v1::control_client::ControlClient;

/// Where the daemon listens, from `--host` / `SKEP_HOST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// `unix:///path/to/skep.sock`
    Unix(PathBuf),
}

impl Host {
    /// Parses `unix:///path`. `tcp://` is recognised and refused until it is supported.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                bail!(
                    "invalid --host {text:?}: a unix socket path must be absolute (unix:///var/run/skep.sock)"
                );
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if text.starts_with("tcp://") {
            bail!(
                "--host {text:?}: tcp:// hosts are not supported yet; use the node's local socket (unix:///var/run/skep.sock)"
            );
        }
        bail!("invalid --host {text:?}: expected unix:///path/to/skep.sock")
    }

    /// The host as the user writes it.
    pub fn url(&self) -> String {
        match self {
            Host::Unix(p) => format!("unix://{}", p.display()),
        }
    }
}

/// A Control API client on `host`; fails with a message that says what to do when no daemon
/// answers there.
pub async fn connect(host: &Host) -> anyhow::Result<ControlClient<Channel>> {
    let Host::Unix(path) = host;
    let channel = connect_unix(path).await.map_err(|e| {
        anyhow!(
            "cannot connect to the skep daemon at {}: is `skep daemon` running? ({})",
            host.url(),
            cause_chain(&e)
        )
    })?;
    // Large swarms list many tasks; the default 4 MiB would cut `service ls` off.
    Ok(ControlClient::new(channel).max_decoding_message_size(256 << 20))
}

async fn connect_unix(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    // The URI is a placeholder that tonic requires; the connector below ignores it.
    let endpoint = Endpoint::try_from("http://[::]:50051").context("building the endpoint")?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// The innermost message of an error chain: for a failed connect, the OS error.
fn cause_chain(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

/// A daemon's refusal as the user should see it: its message alone.
pub fn status(s: tonic::Status) -> anyhow::Error {
    let msg = s.message();
    if msg.is_empty() {
        anyhow!("the daemon answered {:?} without a message", s.code())
    } else {
        anyhow!("{msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_hosts() {
        let h = Host::parse("unix:///var/run/skep.sock").unwrap();
        assert_eq!(h, Host::Unix(PathBuf::from("/var/run/skep.sock")));
        assert_eq!(h.url(), "unix:///var/run/skep.sock");
    }

    #[test]
    fn refuses_tcp_for_now() {
        let e = Host::parse("tcp://10.0.0.1:2376").unwrap_err().to_string();
        assert!(e.contains("tcp:// hosts are not supported yet"), "{e}");
    }

    #[test]
    fn refuses_other_hosts() {
        assert!(Host::parse("unix://relative.sock").is_err());
        assert!(Host::parse("/var/run/skep.sock").is_err());
        assert!(Host::parse("http://x").is_err());
    }

    #[test]
    fn status_prints_the_message_only() {
        let e = status(tonic::Status::failed_precondition("swarm is locked"));
        assert_eq!(e.to_string(), "swarm is locked");
    }

    #[tokio::test]
    async fn missing_socket_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::Unix(dir.path().join("nope.sock"));
        let e = connect(&host).await.unwrap_err().to_string();
        assert!(
            e.starts_with("cannot connect to the skep daemon at unix:///"),
            "{e}"
        );
        assert!(e.contains("is `skep daemon` running?"), "{e}");
    }
}
