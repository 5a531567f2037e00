//! Renderer tokens: 32 random bytes (hex), each bound to one (frame, extension) and to the
//! extension's namespace, handed only to the shell socket and presented only in a renderer
//! socket's HELLO (never in a URL). Checked in constant time; one live connection per token.

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
    /// A renderer socket holds it right now.
    connected: bool,
    /// Its page broke the protocol: it is refused from now on ([`Tokens::bar`]).
    barred: bool,
    /// The host waits for the first connection (taken by it).
    waiter: Option<oneshot::Sender<Arc<Endpoint>>>,
    /// The renderer socket holding it, once it is connected (for [`Tokens::sever`]).
    socket: Weak<PageConnection>,
}

/// A token that checked out, for the connection that presented it.
pub(crate) struct Claim {
    pub(crate) token: String,
    pub(crate) frame: Peer,
    pub(crate) link: Weak<Link>,
    pub(crate) shell: ShellHandle,
    /// `Some` for the connection the host waits for; `None` for a page that reconnected.
    pub(crate) waiter: Option<oneshot::Sender<Arc<Endpoint>>>,
}

/// Why a HELLO's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("unknown token")]
    Unknown,
    #[error("already connected")]
    AlreadyConnected,
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
            connected: false,
            barred: false,
            waiter: Some(sender),
            socket: Weak::new(),
        });
        Ok((token, receiver))
    }

    /// Checks a token presented on `extension`'s origin. Every live token is compared (in
    /// constant time), whatever matches, so the time taken says nothing about any of them; a
    /// token of another extension does not match.
    pub(crate) fn claim(&self, extension: &str, presented: &str) -> Result<Claim, Refused> {
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
        if entry.connected {
            return Err(Refused::AlreadyConnected);
        }
        entry.connected = true;
        Ok(Claim {
            token: entry.token.clone(),
            frame: entry.frame,
            link: entry.link.clone(),
            shell: entry.shell.clone(),
            waiter: entry.waiter.take(),
        })
    }

    /// The connection that held `token` ended: the token may connect again (a page reloaded).
    pub(crate) fn release(&self, token: &str) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|entry| entry.token == token) {
            entry.connected = false;
        }
    }

    /// The connection that held `token` ended for a protocol violation: it is refused from
    /// now on (it stays listed, so that the half's retirement still removes its iframe).
    pub(crate) fn bar(&self, token: &str) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|entry| entry.token == token) {
            entry.connected = false;
            entry.barred = true;
        }
    }

    /// `connection` is the renderer socket that claimed `token`.
    pub(crate) fn attach(&self, token: &str, connection: &Arc<PageConnection>) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|entry| entry.token == token) {
            entry.socket = Arc::downgrade(connection);
        }
    }

    /// Drops the renderer sockets of `extension`'s pages as a network failure would (no close
    /// frame): how the suite loses a page's connection. How many it dropped.
    pub(crate) fn sever(&self, extension: &str) -> usize {
        let sockets: Vec<Arc<PageConnection>> = lock(&self.entries)
            .iter()
            .filter(|entry| entry.connected && entry.extension == extension)
            .filter_map(|entry| entry.socket.upgrade())
            .collect();
        for socket in &sockets {
            socket.sever();
        }
        sockets.len()
    }

    /// The writer flushes of `extension`'s connected pages that found nothing to flush.
    pub(crate) fn idle_flushes(&self, extension: &str) -> u64 {
        lock(&self.entries)
            .iter()
            .filter(|entry| entry.extension == extension)
            .filter_map(|entry| entry.socket.upgrade())
            .map(|socket| socket.idle_flushes())
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

        assert_eq!(tokens.claim("y", &token).err(), Some(Refused::Unknown), "x's token on y's origin");
        assert_eq!(tokens.claim("x", "").err(), Some(Refused::Unknown));
        assert_eq!(tokens.claim("x", &token[..63]).err(), Some(Refused::Unknown));
        let claim = tokens.claim("x", &token).unwrap();
        assert_eq!(claim.frame, 3);
        assert!(claim.waiter.is_some());
        assert_eq!(tokens.claim("x", &token).err(), Some(Refused::AlreadyConnected));
        tokens.release(&token);
        assert!(tokens.claim("x", &token).unwrap().waiter.is_none(), "a reconnection has no waiter");

        tokens.bar(&token);
        assert_eq!(tokens.claim("x", &token).err(), Some(Refused::Barred), "after a violation");
        tokens.revoke(&token);
        tokens.release(&token);
        assert_eq!(tokens.claim("x", &token).err(), Some(Refused::Unknown));
        tokens.revoke_frame(3);
        assert_eq!(tokens.len(), 0);
    }
}
