//! The CLI's connection to a daemon's Control API: gRPC over the node's Unix socket (the
//! node's root administrator), or over mTLS to a manager with an operator certificate
//! (`tcp://HOST:PORT` with `--cert-path` / `SKEP_CERT_PATH` or a context).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};

use crate::api::v1::control_client::ControlClient;

/// The Control API client the commands use: a channel, with the read mode on every call.
pub type Api = ControlClient<tonic::service::interceptor::InterceptedService<Channel, ReadMode>>;

/// How the daemon should read its state for this CLI's calls: linearizably (the default), or
/// its own copy as it is (`--stale`, e.g. to look at a swarm that has lost its quorum).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadMode {
    /// Skip the quorum check; the answer may be out of date.
    pub stale: bool,
}

impl tonic::service::Interceptor for ReadMode {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if self.stale {
            req.metadata_mut().insert(
                crate::api::STALE_HEADER,
                tonic::metadata::MetadataValue::from_static(crate::api::STALE_VALUE),
            );
        }
        Ok(req)
    }
}

/// Where the daemon listens, from `--host` / `SKEP_HOST` / the current context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// `unix:///path/to/skep.sock`
    Unix(PathBuf),
    /// `tcp://IP:PORT`: a manager, reached over mTLS with the operator certificate in
    /// `cert_dir` (`ca.pem`, `cert.pem`, `key.pem`).
    Tcp {
        /// `IP:PORT`.
        addr: String,
        /// The operator's certificate directory.
        cert_dir: Option<PathBuf>,
    },
}

impl Host {
    /// Parses `unix:///path` or `tcp://IP:PORT` (the port defaults to 2377).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                bail!(
                    "invalid --host {text:?}: a unix socket path must be absolute (unix:///var/run/skep.sock)"
                );
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            let with_port = if addr.parse::<std::net::SocketAddr>().is_ok() {
                addr.to_string()
            } else {
                format!("{addr}:{}", crate::net::DEFAULT_PORT)
            };
            crate::net::parse_addr(&with_port)
                .map_err(|e| anyhow!("invalid --host {text:?}: {e} (tcp://IP[:PORT])"))?;
            return Ok(Host::Tcp {
                addr: with_port,
                cert_dir: None,
            });
        }
        bail!("invalid --host {text:?}: expected unix:///path/to/skep.sock or tcp://IP[:PORT]")
    }

    /// The host as the user writes it.
    pub fn url(&self) -> String {
        match self {
            Host::Unix(p) => format!("unix://{}", p.display()),
            Host::Tcp { addr, .. } => format!("tcp://{addr}"),
        }
    }
}

/// A Control API client on `host` (linearizable reads); fails with a message that says what
/// to do when no daemon answers there.
pub async fn connect(host: &Host) -> anyhow::Result<Api> {
    connect_with(host, ReadMode::default()).await
}

/// [`connect`] with a read mode.
pub async fn connect_with(host: &Host, mode: ReadMode) -> anyhow::Result<Api> {
    let channel = match host {
        Host::Unix(path) => connect_unix(path).await.map_err(|e| {
            anyhow!(
                "cannot connect to the skep daemon at {}: is `skep daemon` running? ({})",
                host.url(),
                cause_chain(&e)
            )
        })?,
        Host::Tcp { addr, cert_dir } => {
            let dir = cert_dir.as_deref().ok_or_else(|| {
                anyhow!(
                    "{} needs an operator certificate: give --cert-path DIR (or SKEP_CERT_PATH, or a context) with ca.pem, cert.pem and key.pem",
                    host.url()
                )
            })?;
            connect_tcp(addr, dir)
                .await
                .map_err(|e| anyhow!("cannot connect to the manager at {}: {e:#}", host.url()))?
        }
    };
    // Large swarms list many tasks; the default 4 MiB would cut `service ls` off.
    Ok(ControlClient::with_interceptor(channel, mode)
        .max_decoding_message_size(crate::net::serve::CONTROL_RESPONSE_BYTES)
        .max_encoding_message_size(crate::net::serve::CONTROL_REQUEST_BYTES))
}

/// The operator credentials in `dir`: `ca.pem` (the swarm's root), `cert.pem` (the operator
/// certificate, then any chain), `key.pem` (its PKCS#8 key).
pub fn operator_credentials(dir: &Path) -> anyhow::Result<crate::net::Credentials> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let certs = |name: &str| -> anyhow::Result<Vec<Vec<u8>>> {
        let bytes = read(name)?;
        let blocks = pem::parse_many(&bytes).with_context(|| format!("{name} is not PEM"))?;
        let ders: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.into_contents())
            .collect();
        if ders.is_empty() {
            bail!("{name} holds no certificate");
        }
        Ok(ders)
    };
    let mut chain = certs("cert.pem")?;
    let cert_der = chain.remove(0);
    let roots = certs("ca.pem")?;
    let key = zeroize::Zeroizing::new(read("key.pem")?);
    let key = pem::parse(&*key).context("key.pem is not PEM")?;
    if key.tag() != "PRIVATE KEY" {
        bail!("key.pem must hold a PKCS#8 \"PRIVATE KEY\" (as `skep operator csr` writes it)");
    }
    Ok(crate::net::Credentials {
        cert_der,
        chain,
        key_der: crate::secret::SecretBytes::from(zeroize::Zeroizing::new(key.into_contents())),
        root_der: roots.concat(),
    })
}

async fn connect_tcp(addr: &str, dir: &Path) -> anyhow::Result<Channel> {
    let creds = operator_credentials(dir)?;
    let tls = crate::net::client_config(&creds.root_der, Some(&creds))
        .context("loading the operator certificate")?;
    let channel = crate::net::channel_with_timeout(addr, tls, None)?;
    Ok(channel)
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
    fn parses_tcp_hosts() {
        assert_eq!(
            Host::parse("tcp://10.0.0.1").unwrap(),
            Host::Tcp {
                addr: "10.0.0.1:2377".into(),
                cert_dir: None
            }
        );
        assert_eq!(
            Host::parse("tcp://10.0.0.1:4000/").unwrap().url(),
            "tcp://10.0.0.1:4000"
        );
        assert!(Host::parse("tcp://nowhere").is_err());
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
