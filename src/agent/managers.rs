//! The managers as the agent reaches them: the addresses to try (the manager list, leader
//! first) and one `Dispatcher` channel per manager, kept across calls (one TLS handshake, not
//! one per report batch). The task session, the status reports and secret requests all go
//! through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use tonic::transport::Channel;

use super::ManagerList;
use crate::api::v1::dispatcher_client::DispatcherClient;

/// The managers' `Dispatcher` service, from this node.
pub struct Managers {
    tls: Arc<ClientConfig>,
    list: ManagerList,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Managers {
    /// The managers in `list`, reached with `tls`.
    pub fn new(tls: Arc<ClientConfig>, list: ManagerList) -> Self {
        Managers {
            tls,
            list,
            channels: Mutex::default(),
        }
    }

    /// The addresses to try, leader first.
    pub fn candidates(&self) -> Vec<String> {
        self.list.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// A client for the manager at `addr`, on a channel kept across calls.
    pub fn client(&self, addr: &str) -> Option<DispatcherClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Some(crate::net::serve::dispatcher_client(ch.clone()));
        }
        let ch = crate::net::channel(addr, self.tls.clone()).ok()?;
        channels.insert(addr.to_string(), ch.clone());
        Some(crate::net::serve::dispatcher_client(ch))
    }
}
