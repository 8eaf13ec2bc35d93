//! A real SPIFFE workload, built on the Rust `spiffe` crate's Workload API client and
//! `spiffe-rustls`, that the integration tests (`tests/it/spiffe_clients.rs`) run inside exec
//! tasks and containers to prove skep's per-task identity works for clients skep did not write.
//!
//! It finds the Workload API through `SPIFFE_ENDPOINT_SOCKET`, as any SPIFFE workload does:
//!
//! ```text
//! spiffe_client fetch                          svid <id> / bundle <td> / rotated / jwt ok
//! spiffe_client serve PORT EXPECTED_CLIENT_ID  mTLS server: accepted <peer id>, answers hello
//! spiffe_client connect HOST:PORT SERVER_ID    mTLS client: connected <server id>, the answer
//! ```
//!
//! Every line goes to stdout and is flushed at once (the tests read the task's logs while it
//! runs); a failure prints `error: ...` and exits 1.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use spiffe::{WorkloadApiClient, X509Source};
use spiffe_rustls::{authorizer, mtls_client, mtls_server};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long `fetch` waits for a rotation (renewals come at half the SVID's life).
const ROTATION_WAIT: Duration = Duration::from_secs(120);

/// How long `connect` may take, from the Workload API to the server's answer.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// Prints one line and flushes it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["fetch"] => fetch().await,
        ["serve", port, client_id] => serve(port, client_id).await,
        ["connect", addr, server_id] => connect(addr, server_id).await,
        _ => Err(
            "usage: spiffe_client fetch | serve PORT CLIENT_ID | connect HOST:PORT SERVER_ID"
                .into(),
        ),
    };
    if let Err(e) = result {
        // On stdout, flushed, like every other line: the tests read stdout from the logs.
        say(&format!("error: {e}"));
        std::process::exit(1);
    }
}

/// The SVID and bundle, then a rotation from the stream, then a JWT-SVID validated by the API.
async fn fetch() -> Result<(), Error> {
    let client = WorkloadApiClient::connect_env().await?;
    let mut contexts = client.stream_x509_contexts().await?;
    let first = contexts
        .next()
        .await
        .ok_or("the X.509 stream ended at once")??;
    let svid = first
        .default_svid()
        .ok_or("no SVID in the first X.509 context")?;
    let id = svid.spiffe_id().clone();
    say(&format!("svid {id}"));
    let bundle = first
        .bundle_set()
        .get(id.trust_domain())
        .ok_or("no bundle for the SVID's trust domain")?;
    if bundle.authorities().is_empty() {
        return Err("the bundle has no authorities".into());
    }
    say(&format!("bundle {}", id.trust_domain()));
    let leaf = svid.leaf().as_ref().to_vec();

    tokio::time::timeout(ROTATION_WAIT, async {
        loop {
            let ctx = contexts.next().await.ok_or("the X.509 stream ended")??;
            if let Some(next) = ctx.default_svid()
                && next.leaf().as_ref() != leaf.as_slice()
            {
                if next.spiffe_id() != &id {
                    return Err(format!("rotated to another ID {}", next.spiffe_id()).into());
                }
                return Ok::<(), Error>(());
            }
        }
    })
    .await
    .map_err(|_| "no rotation within the wait")??;
    say("rotated");

    let token = client.fetch_jwt_token(["test"], None).await?;
    let valid = client.validate_jwt_token("test", &token).await?;
    if valid.spiffe_id() != &id {
        return Err(format!("the JWT-SVID names {}", valid.spiffe_id()).into());
    }
    if client.validate_jwt_token("other", &token).await.is_ok() {
        return Err("the JWT-SVID validated for another audience".into());
    }
    say("jwt ok");
    Ok(())
}

/// The SPIFFE ID in a peer's leaf certificate.
fn peer_id(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Result<String, Error> {
    let leaf = certs.and_then(|c| c.first()).ok_or("no peer certificate")?;
    Ok(spiffe::cert::spiffe_id_from_der(leaf.as_ref())?.to_string())
}

/// An mTLS server on 0.0.0.0:`port` that admits exactly `client_id`.
async fn serve(port: &str, client_id: &str) -> Result<(), Error> {
    let source = X509Source::new().await?;
    let config = mtls_server(source)
        .authorize(authorizer::exact([client_id])?)
        .build()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
    say(&format!("listening {port}"));
    loop {
        let (tcp, from) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let answered = async {
                let mut tls = acceptor.accept(tcp).await?;
                let peer = peer_id(tls.get_ref().1.peer_certificates())?;
                say(&format!("accepted {peer}"));
                tls.write_all(format!("hello {peer}\n").as_bytes()).await?;
                tls.shutdown().await?;
                Ok::<(), Error>(())
            };
            if let Err(e) = answered.await {
                say(&format!("refused {from}: {e}"));
            }
        });
    }
}

/// An mTLS client to `addr` that accepts exactly `server_id`; prints the line it reads.
async fn connect(addr: &str, server_id: &str) -> Result<(), Error> {
    tokio::time::timeout(CONNECT_WAIT, talk(addr, server_id))
        .await
        .map_err(|_| format!("no answer from {addr} within {CONNECT_WAIT:?}"))?
}

/// `connect` without its deadline.
async fn talk(addr: &str, server_id: &str) -> Result<(), Error> {
    let source = X509Source::new().await?;
    let config = mtls_client(source)
        .authorize(authorizer::exact([server_id])?)
        .build()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // rustls needs a server name; the SPIFFE verifier checks the ID, not the name.
    let name = rustls::pki_types::ServerName::try_from("skep.spiffe")?;
    let tls = connector.connect(name, tcp).await?;
    let peer = peer_id(tls.get_ref().1.peer_certificates())?;
    say(&format!("connected {peer}"));
    let mut line = String::new();
    BufReader::new(tls).read_line(&mut line).await?;
    say(line.trim_end());
    Ok(())
}
