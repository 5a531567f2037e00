//! A half's life in the instance: activation (a new generation), deactivation (bounded), and
//! removal, each ending the requests that involve it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::task::AbortHandle;

use crate::InvokeErrorKind;
use crate::abi::{PEER_MAIN, Peer};
use crate::error::BoxError;
use crate::ipc::{Main, Renderer};
use crate::runtime::requests::{Failed, closing_kind};
use crate::runtime::state::{Deactivator, Half, Tier};
use crate::runtime::{Shared, context, panic_message};
use crate::wire::Completion;

/// Creates the author's halves; the export macro fills it with the author's types.
#[derive(Clone, Copy)]
pub struct Factory {
    pub(crate) activate_main: fn(Main) -> BoxFuture<'static, Result<Deactivator, BoxError>>,
    pub(crate) activate_renderer: fn(Renderer) -> BoxFuture<'static, Result<Deactivator, BoxError>>,
}

impl Failed<AbortHandle> {
    /// Fails the waits with `kind` and stops the handler runs. Called outside the state lock.
    pub(crate) fn settle(self, kind: InvokeErrorKind) {
        for task in self.tasks {
            task.abort();
        }
        for waiter in self.waiters {
            waiter.fail(kind);
        }
    }

    /// Stops the handler runs and drops the waits: their invokers learn their half was shut
    /// down. Called outside the state lock.
    fn drop_all(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    /// Starts a half afresh (a new generation) and runs its `activate` in a task the half owns,
    /// so closing the half before activation finishes stops it.
    pub(crate) fn spawn_activation(self: &Arc<Self>, completion: u64, peer: Peer) {
        let generation = self.next_id();
        let (replaced, failed, taken) = {
            let mut state = self.state();
            // A half activated again while running replaces the old one: its requests end.
            let (failed, taken) = if state.halves.contains_key(&peer) {
                (Some(state.requests.fail_involving(peer)), Some(state.requests.take_half(peer)))
            } else {
                (None, None)
            };
            let mut half = Half::new(generation);
            // A frame starts with the current store: the snapshot is there before `activate`.
            // Main starts its persisted tier from the host's seed.
            if peer != PEER_MAIN {
                state.renderers_started += 1;
                for tier in [Tier::Store, Tier::Storage] {
                    let from = match state.halves.get(&PEER_MAIN) {
                        Some(main) => Some(main.replica(tier)),
                        None => state.process[tier as usize].replica.as_ref(),
                    };
                    if let Some(replica) = from {
                        half.tier(tier).replica = replica.clone();
                    }
                }
            } else if let Some(seed) = &state.process[Tier::Storage as usize].replica {
                half.tier(Tier::Storage).replica = seed.clone();
            }
            (state.halves.insert(peer, half), failed, taken)
        };
        if let Some(failed) = failed {
            failed.settle(closing_kind(peer));
        }
        if let Some(taken) = taken {
            taken.drop_all();
        }
        if let Some(old) = replaced {
            tracing::warn!("half {peer} was activated again while running; the old one is shut down");
            old.shut_down();
        }
        let half = self.half(peer, generation);
        let activation = if peer == PEER_MAIN {
            (self.factory.activate_main)(Main::new(half.clone()))
        } else {
            (self.factory.activate_renderer)(Renderer::new(half.clone()))
        };
        let scoped = context::scope(half, AssertUnwindSafe(activation).catch_unwind());
        let shared = self.clone();
        let mut state = self.state();
        // Spawned under the lock, so the task cannot finish before its handle is stored.
        let task = self.runtime.spawn(async move {
            let result = match scoped.await {
                Ok(Ok(user)) => {
                    let mut state = shared.state();
                    match state.half_mut(peer, generation) {
                        Some(half) => {
                            half.activated(user);
                            Completion::Done
                        }
                        None => {
                            drop(state);
                            // The half was closed meanwhile: nothing to keep (dropped unlocked).
                            drop(user);
                            Completion::Failed { reason: "the half was closed while it activated".into() }
                        }
                    }
                }
                Ok(Err(error)) => {
                    shared.remove_half(peer, generation);
                    Completion::Failed { reason: error_chain(error.as_ref()) }
                }
                Err(panic) => {
                    shared.remove_half(peer, generation);
                    Completion::Panicked { message: panic_message(panic.as_ref()) }
                }
            };
            shared.complete(completion, &result);
        });
        if let Some(half) = state.half_mut(peer, generation) {
            half.activating(task.abort_handle());
        }
    }

    /// Runs a half's `deactivate` (bounded), then drops the half: the generation is fixed now,
    /// so a late deactivation never removes a half opened after it.
    pub(crate) fn spawn_deactivation(self: &Arc<Self>, completion: u64, peer: Peer, timeout_ms: u64) {
        let kind = closing_kind(peer);
        let started = {
            let mut state = self.state();
            match state.halves.get_mut(&peer) {
                // No request within the instance reaches or leaves the half from now on, and
                // those in flight fail now, as the host fails the ones it routed.
                Some(half) => {
                    half.start_closing();
                    Some((half.generation(), state.requests.fail_involving(peer)))
                }
                None => None,
            }
        };
        let Some((generation, failed)) = started else {
            self.complete(completion, &Completion::Done);
            return;
        };
        failed.settle(kind);
        let shared = self.clone();
        self.runtime.spawn(async move {
            // Invokes this half is waiting on can never be answered now.
            let (waiting, user) = {
                let mut state = shared.state();
                match state.half_mut(peer, generation).map(Half::take_deactivator) {
                    Some(user) => (state.requests.take_waits_of(peer), user),
                    None => Default::default(),
                }
            };
            for waiter in waiting {
                waiter.fail(kind);
            }
            let result = match user {
                None => Completion::Done,
                Some(deactivate) => {
                    let half = shared.half(peer, generation);
                    let run = context::scope(half, AssertUnwindSafe(deactivate()).catch_unwind());
                    match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
                        Ok(Ok(())) => Completion::Done,
                        Ok(Err(panic)) => Completion::Panicked { message: panic_message(panic.as_ref()) },
                        Err(_) => Completion::TimedOut { timeout_ms },
                    }
                }
            };
            shared.remove_half(peer, generation);
            shared.complete(completion, &result);
        });
    }

    /// Removes the half if it is still generation `generation`, with everything it runs.
    /// Requests within the instance from and to it fail with it (a frame whose `activate`
    /// failed, say, never gets a `CloseFrame` to do it).
    pub(crate) fn remove_half(&self, peer: Peer, generation: u64) {
        let removed = {
            let mut state = self.state();
            if state.is_current(peer, generation) {
                let failed = state.requests.fail_involving(peer);
                let taken = state.requests.take_half(peer);
                state.halves.remove(&peer).map(|half| (half, failed, taken))
            } else {
                None
            }
        };
        // Outside the lock: dropping listeners and tasks may run author destructors.
        if let Some((half, failed, taken)) = removed {
            failed.settle(closing_kind(peer));
            taken.drop_all();
            half.shut_down();
        }
    }
}

/// The message of an error and of its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
