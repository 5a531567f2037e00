//! Renderer tokens: 32 random bytes (hex), each bound to one (frame, extension) and to the
//! extension's namespace, handed only to the shell socket and presented only in a renderer
//! socket's HELLO (never in a URL). Checked in constant time; one live connection per token:
//! a connection presenting a token another still holds takes its place (the page came back
//! while the host held its half-open connection), and the other ends as lost.

use std::sync::{Arc, Mutex, Weak};

use extension_api::abi::Peer;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use super::{PageConnection, ShellHandle};
use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::link::Link;

/// `bytes` random bytes from the operating system, as lowercase hex.
/// Without randomness there is no unguessable token: the caller refuses what needed one.
pub(crate) fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| format!("the operating system gave no random bytes: {error}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

struct Entry {
    token: String,
    frame: Peer,
    extension: String,
    link: Weak<Link>,
    /// The frame's shell.
    shell: ShellHandle,
    /// The renderer socket holding it right now, if one does.
    holder: Option<Weak<PageConnection>>,
    /// Its page broke the protocol: it is refused from now on ([`Tokens::bar`]).
    barred: bool,
    /// The host waits for the first connection (taken by it).
    waiter: Option<oneshot::Sender<Arc<Endpoint>>>,
}

impl Entry {
    fn held_by(&self, connection: &Weak<PageConnection>) -> bool {
        self.holder.as_ref().is_some_and(|holder| Weak::ptr_eq(holder, connection))
    }

    /// The live connection holding it.
    fn socket(&self) -> Option<Arc<PageConnection>> {
        self.holder.as_ref().and_then(Weak::upgrade)
    }
}

/// A token that checked out, for the connection that presented it.
pub(crate) struct Claim {
    pub(crate) token: String,
    pub(crate) frame: Peer,
    pub(crate) link: Weak<Link>,
    pub(crate) shell: ShellHandle,
    /// `Some` for the connection the host waits for; `None` for a page that reconnected.
    pub(crate) waiter: Option<oneshot::Sender<Arc<Endpoint>>>,
    /// The connection that held the token until this one presented it: it is to end first
    /// ([`PageConnection::supersede`]), then this claim is [`Tokens::confirm`]ed.
    pub(crate) superseded: Option<Arc<PageConnection>>,
}

/// Why a HELLO's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("unknown token")]
    Unknown,
    #[error("another connection took its place")]
    Superseded,
    #[error("its page broke the protocol, and the host ended its connection")]
    Barred,
}

/// The live tokens of one server.
#[derive(Default)]
pub(crate) struct Tokens {
    entries: Mutex<Vec<Entry>>,
}

impl Tokens {
    /// A new token for `extension`'s half in `frame`; the receiver gets the endpoint of the
    /// first renderer socket that presents it.
    pub(crate) fn mint(
        &self,
        frame: Peer,
        extension: &str,
        link: Weak<Link>,
        shell: ShellHandle,
    ) -> Result<(String, oneshot::Receiver<Arc<Endpoint>>), String> {
        let token = random_hex(32)?;
        let (sender, receiver) = oneshot::channel();
        let mut entries = lock(&self.entries);
        entries.retain(|entry| !(entry.frame == frame && entry.extension == extension));
        entries.push(Entry {
            token: token.clone(),
            frame,
            extension: extension.to_owned(),
            link,
            shell,
            holder: None,
            barred: false,
            waiter: Some(sender),
        });
        Ok((token, receiver))
    }

    /// Checks a token presented on `extension`'s origin by `connection`, which holds it from
    /// then on (a connection holding it already is handed back, to be ended: see
    /// [`Claim::superseded`]). Every live token is compared (in constant time), whatever
    /// matches, so the time taken says nothing about any of them; a token of another
    /// extension does not match. A barred token stays barred.
    pub(crate) fn claim(
        &self,
        extension: &str,
        presented: &str,
        connection: &Weak<PageConnection>,
    ) -> Result<Claim, Refused> {
        let mut entries = lock(&self.entries);
        let mut found = None;
        for (at, entry) in entries.iter().enumerate() {
            let same: bool = entry.token.as_bytes().ct_eq(presented.as_bytes()).into();
            if same && entry.extension == extension {
                found = Some(at);
            }
        }
        let entry = &mut entries[found.ok_or(Refused::Unknown)?];
        if entry.barred {
            return Err(Refused::Barred);
        }
        let superseded = entry.socket();
        entry.holder = Some(connection.clone());
        Ok(Claim {
            token: entry.token.clone(),
            frame: entry.frame,
            link: entry.link.clone(),
            shell: entry.shell.clone(),
            waiter: entry.waiter.take(),
            superseded,
        })
    }

    /// Once the connection `connection`'s claim superseded has ended: whether `token` is still
    /// live, not barred (the connection it took the place of broke the protocol meanwhile)
    /// and `connection`'s (no later one took its place in turn).
    pub(crate) fn confirm(&self, token: &str, connection: &Weak<PageConnection>) -> Result<(), Refused> {
        let entries = lock(&self.entries);
        let entry = entries.iter().find(|entry| entry.token == token).ok_or(Refused::Unknown)?;
        if entry.barred {
            return Err(Refused::Barred);
        }
        if !entry.held_by(connection) {
            return Err(Refused::Superseded);
        }
        Ok(())
    }

    /// The connection `connection`, which held `token`, ended: the token may connect again (a
    /// page reloaded). Nothing changes if another connection has taken its place.
    pub(crate) fn release(&self, token: &str, connection: &Weak<PageConnection>) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|entry| entry.token == token) {
            if entry.held_by(connection) {
                entry.holder = None;
            }
        }
    }

    /// The connection `connection`, which held `token`, ended for a protocol violation: the
    /// token is refused from now on (it stays listed, so that the half's retirement still
    /// removes its iframe), also to a connection that took its place meanwhile (see
    /// [`Tokens::confirm`]).
    pub(crate) fn bar(&self, token: &str, connection: &Weak<PageConnection>) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|entry| entry.token == token) {
            if entry.held_by(connection) {
                entry.holder = None;
            }
            entry.barred = true;
        }
    }

    /// Voids `token`, unless another connection than `connection` holds it (it took the place
    /// of `connection`, whose half the host is ending: the new one's half is to run). Whether
    /// it did.
    pub(crate) fn revoke_for(&self, token: &str, connection: &Weak<PageConnection>) -> bool {
        let mut entries = lock(&self.entries);
        let held_by_another =
            entries.iter().any(|entry| entry.token == token && entry.socket().is_some() && !entry.held_by(connection));
        if held_by_another {
            return false;
        }
        entries.retain(|entry| entry.token != token);
        true
    }

    /// Drops the renderer sockets of `extension`'s pages as a network failure would (no close
    /// frame): how the suite loses a page's connection. How many it dropped.
    pub(crate) fn sever(&self, extension: &str) -> usize {
        let sockets: Vec<Arc<PageConnection>> =
            lock(&self.entries).iter().filter(|entry| entry.extension == extension).filter_map(Entry::socket).collect();
        for socket in &sockets {
            socket.sever();
        }
        sockets.len()
    }

    /// The writer flushes of `extension`'s connected pages that found nothing to flush.
    pub(crate) fn idle_flushes(&self, extension: &str) -> u64 {
        self.sum_over_pages(extension, PageConnection::idle_flushes)
    }

    /// The messages of `extension`'s connected pages that main's thread read itself.
    pub(crate) fn main_reads(&self, extension: &str) -> u64 {
        self.sum_over_pages(extension, PageConnection::main_reads)
    }

    /// A count of `extension`'s connected pages', summed (for the suite).
    fn sum_over_pages(&self, extension: &str, count: impl Fn(&PageConnection) -> u64) -> u64 {
        lock(&self.entries)
            .iter()
            .filter(|entry| entry.extension == extension)
            .filter_map(Entry::socket)
            .map(|socket| count(&socket))
            .sum()
    }

    /// The half is not meant to run there any more: `token` is void.
    pub(crate) fn revoke(&self, token: &str) {
        lock(&self.entries).retain(|entry| entry.token != token);
    }

    /// `extension`'s half is not meant to run in `frame` any more: its token is void. Whether
    /// there was one.
    pub(crate) fn revoke_half(&self, frame: Peer, extension: &str) -> bool {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|entry| !(entry.frame == frame && entry.extension == extension));
        entries.len() != before
    }

    /// Frame `frame` closed: its tokens are void.
    pub(crate) fn revoke_frame(&self, frame: Peer) {
        lock(&self.entries).retain(|entry| entry.frame != frame);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_extension_and_connects_once_at_a_time() {
        let tokens = Tokens::default();
        let (token, _receiver) = tokens.mint(3, "x", Weak::new(), ShellHandle::detached()).unwrap();
        assert_eq!(token.len(), 64);
        let (other, _other_receiver) = tokens.mint(3, "y", Weak::new(), ShellHandle::detached()).unwrap();
        assert_ne!(token, other);

        assert_eq!(tokens.claim("y", &token, &Weak::new()).err(), Some(Refused::Unknown), "x's token on y's origin");
        assert_eq!(tokens.claim("x", "", &Weak::new()).err(), Some(Refused::Unknown));
        assert_eq!(tokens.claim("x", &token[..63], &Weak::new()).err(), Some(Refused::Unknown));
        let claim = tokens.claim("x", &token, &Weak::new()).unwrap();
        assert_eq!(claim.frame, 3);
        assert!(claim.waiter.is_some());
        assert!(claim.superseded.is_none());
        let again = tokens.claim("x", &token, &Weak::new()).unwrap();
        assert!(again.waiter.is_none(), "a reconnection has no waiter");

        tokens.bar(&token, &Weak::new());
        assert_eq!(tokens.claim("x", &token, &Weak::new()).err(), Some(Refused::Barred), "after a violation");
        tokens.revoke(&token);
        assert_eq!(tokens.claim("x", &token, &Weak::new()).err(), Some(Refused::Unknown));
        tokens.revoke_frame(3);
        assert_eq!(tokens.len(), 0);
    }
}
