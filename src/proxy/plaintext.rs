//! Who still sends plaintext: the answer to "what blocks a move to STRICT?" (admin
//! `/plaintext`). One entry per client address, updated once per plaintext connection,
//! capped in size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// At most this many client addresses are remembered; the oldest is forgotten first.
const MAX_CLIENTS: usize = 1024;

/// One client address seen sending plaintext.
#[derive(Debug, Clone, Serialize)]
pub struct PlaintextClient {
    pub address: IpAddr,
    /// Sidecar ports it reached.
    pub ports: Vec<u16>,
    /// Plaintext connections passed to the app (PERMISSIVE/DISABLE).
    pub accepted: u64,
    /// Plaintext connections reset (STRICT).
    pub rejected: u64,
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
}

#[derive(Debug, Default)]
pub struct PlaintextLog {
    clients: Mutex<HashMap<IpAddr, PlaintextClient>>,
}

impl PlaintextLog {
    /// Records one plaintext connection from `address` to `port`.
    pub fn record(&self, address: IpAddr, port: u16, rejected: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(&address) && clients.len() >= MAX_CLIENTS {
            if let Some(oldest) = clients
                .values()
                .min_by_key(|c| c.last_seen_unix)
                .map(|c| c.address)
            {
                clients.remove(&oldest);
            }
        }
        let entry = clients.entry(address).or_insert_with(|| PlaintextClient {
            address,
            ports: Vec::new(),
            accepted: 0,
            rejected: 0,
            first_seen_unix: now,
            last_seen_unix: now,
        });
        if !entry.ports.contains(&port) {
            entry.ports.push(port);
            entry.ports.sort_unstable();
        }
        if rejected {
            entry.rejected += 1;
        } else {
            entry.accepted += 1;
        }
        entry.last_seen_unix = now;
    }

    /// Every client, most recently seen first.
    pub fn clients(&self) -> Vec<PlaintextClient> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = clients.values().cloned().collect();
        list.sort_by(|a, b| {
            b.last_seen_unix
                .cmp(&a.last_seen_unix)
                .then(a.address.cmp(&b.address))
        });
        list
    }
}
