//! An endpoint: one instance of an extension in one process, where some of its halves run.
//! It holds the instance's key, the halves placed there, the control commands waiting for
//! their completion, and the transport that reaches the instance.
//!
//! An endpoint knows nothing of its link (the namespace) nor of how messages come in: the
//! inbound side maps a key to the link and the endpoint, and routing calls down into it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use extension_api::abi::{self, PEER_MAIN, Peer};
use extension_api::message::{self, Message};
use extension_api::wire::{self, Completion, Control, StorageOutcome, StoreWrite, WriteRefusal};
use foldhash::HashMap;
use tokio::sync::oneshot;

use crate::core::lock;
use crate::remote::Role;
use crate::transport::Transport;

/// One instance of an extension, in this process or in a child.
pub(crate) struct Endpoint {
    pub(crate) key: u64,
    /// The halves that run here (main and/or frames), and those that ran here.
    peers: RwLock<Placed>,
    transport: Transport,
    /// Set once `destroy` starts: nothing more is sent to the instance.
    destroyed: AtomicBool,
    /// Control commands awaiting their completion, by completion number.
    completions: Mutex<HashMap<u64, oneshot::Sender<Completion>>>,
    next_completion: AtomicU64,
}

/// The halves placed at an endpoint.
#[derive(Default)]
struct Placed {
    /// Routed for now.
    running: BTreeSet<Peer>,
    /// Every half ever placed here: a closing one (unplaced, its `deactivate` running) may
    /// still ask, and is told why its request goes nowhere.
    ran: BTreeSet<Peer>,
}

/// Why a control command did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("the instance refused the command (status {0})")]
    Refused(u32),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl Endpoint {
    /// An endpoint for the instance `key` reached through `transport`, with no half placed.
    pub(crate) fn new(key: u64, transport: Transport) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            key,
            peers: RwLock::new(Placed::default()),
            transport,
            destroyed: AtomicBool::new(false),
            completions: Mutex::new(HashMap::default()),
            next_completion: AtomicU64::new(1),
        })
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    pub(crate) fn hosts(&self, peer: Peer) -> bool {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).running.contains(&peer)
    }

    /// Whether `peer` runs here or ran here before (it may be closing: unplaced, its
    /// `deactivate` still running).
    pub(crate) fn has_run(&self, peer: Peer) -> bool {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).ran.contains(&peer)
    }

    pub(crate) fn place(&self, peer: Peer) {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        peers.running.insert(peer);
        peers.ran.insert(peer);
    }

    pub(crate) fn unplace(&self, peer: Peer) -> bool {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).running.remove(&peer)
    }

    /// `peer`'s close has ended here (its `deactivate` returned, or the host stopped waiting
    /// for it): it is no longer remembered, so an endpoint whose halves come and go (an
    /// isolated extension's, as frames open and close) does not grow with every frame it ever
    /// had. Its late requests, if any, go unanswered, as a forged origin's.
    pub(crate) fn forget(&self, peer: Peer) {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        if !peers.running.contains(&peer) {
            peers.ran.remove(&peer);
        }
    }

    /// How many halves are remembered here (running or closing).
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).ran.len()
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).running.iter().copied().collect()
    }

    /// The role of the child process this endpoint runs in, if any.
    pub(crate) fn child_role(&self) -> Option<&Role> {
        self.transport.child_role()
    }

    /// Hands a message to the instance; returns a status code.
    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        if self.destroyed.load(Ordering::Acquire) {
            return abi::status::DEACTIVATED;
        }
        self.transport.deliver(message)
    }

    /// Answers a request this instance sent (from another process) that routing refused with
    /// `status`, so its invoker learns why at once instead of waiting for its timeout: with the
    /// kind an in-process caller gets from its own `send`. The answer goes back here, where the
    /// request came from, and only if its origin is a half that runs or ran here: a closing
    /// half (its `deactivate` asking) is answered too, a forged origin is not, and no answer
    /// ever reaches another instance.
    pub(crate) fn refuse_invoke(&self, message: &Message<'_>, status: u32) {
        if !self.has_run(message.origin) {
            return;
        }
        let (kind, why) = message::refusal(status);
        let reply = message::Reply::error(kind, why);
        self.deliver(&Message::reply(message.target, message.origin, message.request_id, &reply));
    }

    /// Answers a renderer half's write (of the store or the persisted tier) this instance sent
    /// that routing refused with `status`: main never sees it, so the writer's `set` would wait
    /// for its timeout. Answered as [`Endpoint::refuse_invoke`] answers requests (here, for a
    /// half that runs or ran here), with a refusal carrying the route's `status`, which the
    /// writer reads as an in-process writer reads its `send`'s. A write whose payload does not
    /// decode names no write to answer (main would drop it too, with a warning).
    pub(crate) fn refuse_write(&self, message: &Message<'_>, status: u32) {
        let kind = match message.kind {
            abi::kind::STORE_WRITE => abi::kind::STORE_REFUSAL,
            abi::kind::STORAGE_WRITE => abi::kind::STORAGE_REFUSAL,
            _ => return,
        };
        if !self.has_run(message.origin) {
            return;
        }
        let Ok(write) = wire::decode::<StoreWrite>(message.payload) else { return };
        let outcome = match status {
            abi::status::BUSY => StorageOutcome::Overloaded,
            abi::status::TOO_LARGE => StorageOutcome::TooLarge {
                size: u64::try_from(message.payload.len()).unwrap_or(u64::MAX),
                max: u64::try_from(abi::MAX_MESSAGE).unwrap_or(u64::MAX),
            },
            _ => StorageOutcome::Unavailable { reason: message::status_text(status).to_owned() },
        };
        let refusal = WriteRefusal { write_id: write.write_id, key: write.key, outcome };
        let Ok(payload) = rmp_serde::to_vec_named(&refusal) else { return };
        self.deliver(&Message {
            kind,
            status,
            origin: PEER_MAIN,
            target: message.origin,
            request_id: 0,
            channel: "",
            payload: &payload,
        });
    }

    /// Sends a control command and waits for its completion.
    pub(crate) async fn control(
        &self,
        command: impl FnOnce(u64) -> Control,
        timeout: Duration,
    ) -> Result<Completion, ControlError> {
        let completion = self.next_completion.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.completions).insert(completion, sender);
        // Removes the waiter however this ends: answered, refused, timed out or dropped.
        let _waiter = CompletionGuard { endpoint: self, completion };
        let command = command(completion);
        if self.destroyed.load(Ordering::Acquire) {
            return Err(ControlError::Refused(abi::status::DEACTIVATED));
        }
        let status = self.transport.control(command);
        if status != abi::status::OK {
            return Err(ControlError::Refused(status));
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(completion)) => Ok(completion),
            _ => Err(ControlError::TimedOut(timeout)),
        }
    }

    /// Finishes a control command (the instance's answer, from whichever transport).
    pub(crate) fn complete(&self, completion: u64, result: Completion) {
        let waiter = lock(&self.completions).remove(&completion);
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    /// Fails every command still waiting (the instance or its process went away).
    pub(crate) fn fail_completions(&self, reason: &str) {
        let waiting: Vec<_> = lock(&self.completions).drain().map(|(_, waiter)| waiter).collect();
        for waiter in waiting {
            let _ = waiter.send(Completion::Failed { reason: reason.to_owned() });
        }
    }

    /// The instance went away on its own (a web page's socket closed): nothing more is sent
    /// to it, it speaks for no half, and every command still waiting fails with `reason`.
    pub(crate) fn retire(&self, reason: &str) {
        self.destroyed.store(true, Ordering::Release);
        self.peers.write().unwrap_or_else(PoisonError::into_inner).running.clear();
        self.fail_completions(reason);
    }

    /// Stops the instance for good: every task of the extension is dropped (its thread joined,
    /// or its process told to). Returns false if it did not stop cleanly in time.
    pub(crate) async fn destroy(&self) -> bool {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return true;
        }
        let stopped = self.transport.destroy().await;
        // Stopped or abandoned, it speaks for no half any more. A child's instance whose destroy
        // was not confirmed in time keeps its key at the connection's reader, which routes the
        // key's late packets to this endpoint for as long as it lives (teardown holds it while
        // it destroys the others): with no half placed, every one of them is refused, the
        // persisted tier's commits (routed while deactivating) included.
        self.peers.write().unwrap_or_else(PoisonError::into_inner).running.clear();
        self.fail_completions("the instance was destroyed");
        stopped
    }
}

/// Forgets a control command's waiter when its wait ends, however it ends.
struct CompletionGuard<'a> {
    endpoint: &'a Endpoint,
    completion: u64,
}

impl Drop for CompletionGuard<'_> {
    fn drop(&mut self) {
        lock(&self.endpoint.completions).remove(&self.completion);
    }
}
