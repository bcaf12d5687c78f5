//! The inbound server's session ticket key, bound to the trust bundle and to the clients'
//! certificates (see [`super::resumption`] for the whole design).
//!
//! It wraps rustls' stateless aws-lc-rs ticketer (AEAD tickets, key rotated every 6 hours)
//! and adds two rules:
//!
//! - the key is replaced whenever the trust bundle changes, so tickets issued before are not
//!   even decrypted;
//! - a ticket whose client chain is expired, or is not anchored by the current bundle, is
//!   declined. Declining is what rustls does with any ticket it cannot use: the handshake goes
//!   on as a full one, the client presents its current certificate, and the verifier judges
//!   it. A client with a renewed certificate is served; one whose only certificate is expired
//!   or untrusted fails with the verifier's reason (`expired`, `unknown_issuer`).
//!
//! To see the client chain, [`ticket_client_chain`] reads the ticket plaintext rustls 0.23
//! encodes (its `ServerSessionValue`). rustls gives no other way to the chain of a ticket
//! before resuming it. A plaintext that does not parse as expected (a future rustls with
//! another layout) only declines the ticket: resumption stops, authentication never weakens
//! (tests/resumption.rs would show the first).

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::server::ProducesTickets;
use rustls::time_provider::TimeProvider;
use rustls_pki_types::CertificateDer;

use crate::identity::{CertStore, Identity, PeerRole};

/// The ticket key of [`super::server_config_with_time`]; see the module documentation.
pub(crate) struct IdentityTicketer {
    store: CertStore,
    time: Arc<dyn TimeProvider>,
    key: RwLock<Key>,
}

/// The inner ticketer and the bundle it was made for.
struct Key {
    bundle: Option<[u8; 32]>,
    /// `None` if no key could be made (then no ticket is issued or accepted).
    tickets: Option<Arc<dyn ProducesTickets>>,
}

/// rustls' `Ticketer` lifetime: a ticket outlives its key by at most this.
const FALLBACK_LIFETIME_SECS: u32 = 6 * 60 * 60;

impl IdentityTicketer {
    pub(crate) fn new(store: CertStore, time: Arc<dyn TimeProvider>) -> IdentityTicketer {
        let bundle = store.current().map(|i| i.bundle.fingerprint());
        IdentityTicketer {
            store,
            time,
            key: RwLock::new(Key {
                bundle,
                tickets: new_key(),
            }),
        }
    }

    /// The key for the current bundle (made now if the bundle changed), and the identity.
    fn current(&self) -> Option<(Arc<dyn ProducesTickets>, Arc<Identity>)> {
        let identity = self.store.current()?;
        let bundle = Some(identity.bundle.fingerprint());
        {
            let key = self.key.read().unwrap_or_else(|e| e.into_inner());
            if key.bundle == bundle {
                return Some((key.tickets.clone()?, identity));
            }
        }
        let mut key = self.key.write().unwrap_or_else(|e| e.into_inner());
        if key.bundle != bundle {
            tracing::info!(
                "trust bundle changed: new session ticket key, earlier tickets are void"
            );
            *key = Key {
                bundle,
                tickets: new_key(),
            };
        }
        Some((key.tickets.clone()?, identity))
    }
}

fn new_key() -> Option<Arc<dyn ProducesTickets>> {
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(tickets) => Some(tickets),
        Err(e) => {
            tracing::warn!(error = %e, "no session ticket key; clients will not resume");
            None
        }
    }
}

impl fmt::Debug for IdentityTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityTicketer")
            .field("trust_domain", &self.store.trust_domain())
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for IdentityTicketer {
    fn enabled(&self) -> bool {
        // Always: were it false, rustls would resume from its stateful session storage,
        // which this type does not guard (the config turns that storage off too).
        true
    }

    fn lifetime(&self) -> u32 {
        let key = self.key.read().unwrap_or_else(|e| e.into_inner());
        key.tickets
            .as_ref()
            .map_or(FALLBACK_LIFETIME_SECS, |t| t.lifetime())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (tickets, _) = self.current()?;
        tickets.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (tickets, identity) = self.current()?;
        let plain = tickets.decrypt(cipher)?;
        let Some(chain) = ticket_client_chain(&plain) else {
            tracing::debug!("declined a session ticket without a readable client chain");
            return None;
        };
        let now = self.time.current_time()?;
        match super::resumption::judge_chain(&identity.bundle, PeerRole::Client, &chain, now) {
            Ok(()) => Some(plain),
            Err(e) => {
                tracing::debug!(
                    reason = super::failure_reason(&e),
                    error = %e,
                    "declined a session ticket; the client gets a full handshake"
                );
                None
            }
        }
    }
}

/// The client certificate chain in the plaintext of a rustls 0.23 TLS 1.3 ticket, or `None`
/// if the plaintext does not read as one (see the module documentation). The layout, in TLS
/// presentation syntax: `has_sni: u8`, [`sni: opaque<0..2^8-1>`], `version: u16` (0x0304),
/// `cipher_suite: u16`, `secret: opaque<0..2^8-1>`, `extended_ms: u8`, `has_chain: u8`,
/// [`chain: opaque<0..2^24-1>` of `cert: opaque<1..2^24-1>`], then fields not read here.
pub(crate) fn ticket_client_chain(plain: &[u8]) -> Option<Vec<CertificateDer<'_>>> {
    const TLS13: u16 = 0x0304;
    let mut r = Reader(plain);
    match r.u8()? {
        0 => {}
        1 => {
            let len = r.u8()?;
            r.take(usize::from(len))?;
        }
        _ => return None,
    }
    if r.u16()? != TLS13 {
        return None;
    }
    let _suite = r.u16()?;
    let secret = r.u8()?;
    r.take(usize::from(secret))?;
    let _extended_ms = r.u8()?;
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut list = Reader(r.take(len)?);
    let mut chain = Vec::new();
    while !list.0.is_empty() {
        let len = list.u24()?;
        chain.push(CertificateDer::from(list.take(len)?));
    }
    (!chain.is_empty()).then_some(chain)
}

/// A cursor over bytes whose every read fails (`None`) past the end instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext laid out as rustls 0.23 encodes it, with `certs` as the client chain.
    fn plaintext(sni: Option<&str>, certs: Option<&[&[u8]]>) -> Vec<u8> {
        let mut p = Vec::new();
        match sni {
            Some(name) => {
                p.push(1);
                p.push(name.len() as u8);
                p.extend_from_slice(name.as_bytes());
            }
            None => p.push(0),
        }
        p.extend_from_slice(&[0x03, 0x04, 0x13, 0x01]);
        p.push(32);
        p.extend_from_slice(&[7u8; 32]);
        p.push(0);
        match certs {
            Some(certs) => {
                p.push(1);
                let body: Vec<u8> = certs
                    .iter()
                    .flat_map(|c| {
                        let n = c.len();
                        [(n >> 16) as u8, (n >> 8) as u8, n as u8]
                            .into_iter()
                            .chain(c.iter().copied())
                    })
                    .collect();
                let n = body.len();
                p.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                p.extend_from_slice(&body);
            }
            None => p.push(0),
        }
        // alpn (none), application data (empty), creation time, age offset: not read.
        p.extend_from_slice(&[0, 0, 0]);
        p.extend_from_slice(&[0u8; 12]);
        p
    }

    #[test]
    fn reads_the_client_chain() {
        let leaf: &[u8] = b"leaf-der";
        let inter: &[u8] = b"intermediate-der";
        for sni in [None, Some("age.default.svc.cluster.local")] {
            let p = plaintext(sni, Some(&[leaf, inter]));
            let chain = ticket_client_chain(&p).unwrap();
            assert_eq!(chain.len(), 2);
            assert_eq!(chain[0].as_ref(), leaf);
            assert_eq!(chain[1].as_ref(), inter);
        }
    }

    #[test]
    fn declines_what_it_cannot_read() {
        assert!(
            ticket_client_chain(&plaintext(None, None)).is_none(),
            "no chain"
        );
        assert!(
            ticket_client_chain(&plaintext(None, Some(&[]))).is_none(),
            "empty chain"
        );
        let good = plaintext(None, Some(&[b"leaf-der"]));
        for n in 0..good.len() - 15 {
            // Every truncation inside the parsed prefix fails cleanly.
            assert!(
                ticket_client_chain(&good[..n]).is_none(),
                "truncated at {n}"
            );
        }
        let mut tls12 = good.clone();
        tls12[2] = 0x03;
        assert!(ticket_client_chain(&tls12).is_none(), "another version");
        let mut odd = good;
        odd[0] = 2;
        assert!(ticket_client_chain(&odd).is_none(), "bad presence flag");
    }
}
