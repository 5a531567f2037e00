//! The store's replication inside an instance: main sequences writes and publishes them; every
//! replica applies them in sequence order and notifies its watchers.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError};

use crate::FrameId;
use crate::abi::{self, PEER_ALL, PEER_MAIN, Peer};
use crate::ipc::{STORE_TOTAL_LIMIT, STORE_VALUE_LIMIT, StoreChange, StoreError, store, store_entry_size};
use crate::message::Message;
use crate::runtime::Replica;
use crate::runtime::context;
use crate::runtime::panic_message;
use crate::runtime::state::{State, Tier, WatcherFn};
use crate::runtime::storage::refusal_error;
use crate::runtime::{Shared, notice};
use crate::wire::{StorageOutcome, StoreSnapshot, StoreUpdate, StoreWrite, WriteRefusal};
use serde_bytes::ByteBuf;

/// What a [`StoreUpdate`] holds besides its key and values, with room to spare: its numbers,
/// field names and headers.
pub(crate) const UPDATE_ENVELOPE: usize = 128;

impl Shared {
    /// Applies a write to main's replica, gives it the next sequence number, and publishes it.
    /// Sequencing and publishing happen under one lock, so updates leave in `seq` order.
    pub(crate) fn sequence_write(
        &self,
        writer: Peer,
        write_id: u64,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let _order = self.store_order.lock().unwrap_or_else(PoisonError::into_inner);
        let update = {
            let mut state = self.state();
            let main = state.halves.get_mut(&PEER_MAIN).ok_or(StoreError::Deactivated)?.tier(Tier::Store);
            // Checked here too, where every write is sequenced: a renderer's write reaches main
            // as bytes, whatever its `set` checked.
            // Its update carries the key and both values: one that would not fit in a message
            // could reach no other replica, so it is refused before it takes a number (a
            // replica in another process would wait for the missing number for ever).
            let old_len = main.replica.values().get(&key).map_or(0, Vec::len);
            let update_size = key.len() + old_len + value.as_ref().map_or(0, Vec::len) + UPDATE_ENVELOPE;
            if !abi::fits(0, update_size) {
                return Err(StoreError::TooLarge { key, size: update_size, limit: abi::MAX_MESSAGE });
            }
            if let Some(bytes) = &value {
                if bytes.len() > STORE_VALUE_LIMIT {
                    return Err(StoreError::TooLarge { key, size: bytes.len(), limit: STORE_VALUE_LIMIT });
                }
                let replaced = main.replica.values().get(&key).map_or(0, |old| store_entry_size(&key, old));
                let size = main.replica.bytes() - replaced + store_entry_size(&key, bytes);
                if size > STORE_TOTAL_LIMIT {
                    return Err(StoreError::Full { key, size, limit: STORE_TOTAL_LIMIT });
                }
            }
            let old = main.replica.write(&key, value.clone());
            main.replica.seq += 1;
            StoreUpdate { seq: main.replica.seq, key, old, new: value, writer, write_id }
        };
        // Broadcast to every replica, main's included (main only notifies its watchers).
        let published = match rmp_serde::to_vec_named(&update) {
            Ok(bytes) => match self.send(notice(abi::kind::STORE_UPDATE, PEER_MAIN, PEER_ALL, &bytes)) {
                abi::status::OK => Ok(()),
                abi::status::TOO_LARGE => {
                    Err(StoreError::TooLarge { key: update.key.clone(), size: bytes.len(), limit: abi::MAX_MESSAGE })
                }
                _ => Err(StoreError::Deactivated),
            },
            Err(error) => Err(StoreError::Serialize { key: update.key.clone(), reason: error.to_string() }),
        };
        if published.is_err() {
            // Not published, so not written: no replica may wait for a number nobody sends.
            // Still under the order lock, so no later write has taken a number meanwhile.
            let mut state = self.state();
            if let Some(main) = state.halves.get_mut(&PEER_MAIN) {
                let tier = main.tier(Tier::Store);
                tier.replica.write(&update.key, update.old);
                tier.replica.seq -= 1;
            }
        }
        published
    }

    /// Main's side of a renderer's write. A write main refuses is answered to its writer, so
    /// its `set` fails at once with the reason.
    pub(crate) fn dispatch_store_write(&self, origin: Peer, payload: &[u8]) {
        let write = match crate::wire::decode::<StoreWrite>(payload) {
            Ok(write) => write,
            Err(error) => return tracing::warn!("dropping an undecodable store write: {error}"),
        };
        let (write_id, written) = (write.write_id, write.key.clone());
        let (key, outcome) = match self.sequence_write(origin, write_id, write.key, write.value) {
            Ok(()) => return,
            Err(StoreError::Full { key, size, limit }) => {
                (key, StorageOutcome::Full { size: size as u64, max: limit as u64 })
            }
            Err(StoreError::TooLarge { key, size, limit }) => {
                (key, StorageOutcome::TooLarge { size: size as u64, max: limit as u64 })
            }
            // Not made either: its writer hears why at once, as for the refusals above (a
            // writer's `set` never waits for an answer that is not coming).
            Err(error) => return self.refuse_unmade(Tier::Store, origin, write_id, written, error),
        };
        self.refuse_write(Tier::Store, origin, WriteRefusal { write_id, key, outcome }, abi::status::OK);
    }

    /// Answers a renderer's write of `tier` that main could not make for a reason other than
    /// the value's (its half gone: the writer's `set` fails `Deactivated`; anything else:
    /// `Unavailable`, with the reason).
    pub(crate) fn refuse_unmade(&self, tier: Tier, writer: Peer, write_id: u64, key: String, error: StoreError) {
        tracing::warn!("a write from {writer} was not made: {error}");
        let (status, reason) = match error {
            StoreError::Deactivated => (abi::status::DEACTIVATED, "main's half is not running".to_owned()),
            error => (abi::status::OK, error.to_string()),
        };
        let refusal = WriteRefusal { write_id, key, outcome: StorageOutcome::Unavailable { reason } };
        self.refuse_write(tier, writer, refusal, status);
    }

    /// Answers a renderer half's write of `tier` that main did not make, to that half only;
    /// `status` other than OK says why instead of the refusal's outcome (as the host's
    /// routing does: DEACTIVATED).
    pub(crate) fn refuse_write(&self, tier: Tier, writer: Peer, refusal: WriteRefusal, status: u32) {
        let kind = match tier {
            Tier::Store => abi::kind::STORE_REFUSAL,
            Tier::Storage => abi::kind::STORAGE_REFUSAL,
        };
        let sent = rmp_serde::to_vec_named(&refusal)
            .map(|bytes| self.send(Message { status, ..notice(kind, PEER_MAIN, writer, &bytes) }));
        if !matches!(sent, Ok(abi::status::OK)) {
            tracing::warn!("the refusal of a write from {writer} could not be sent: {sent:?}");
        }
    }

    /// A renderer half's write of `tier` that main did not make: its `set` fails with the
    /// reason. `status` 0 is main's refusal (its outcome says why); any other is the host's
    /// routing refusing the write on its way (the writer in another process): it fails as
    /// the same refusal fails an in-process writer's `send`.
    pub(crate) fn dispatch_write_refusal(&self, tier: Tier, target: Peer, status: u32, payload: &[u8]) {
        let refusal = match crate::wire::decode::<WriteRefusal>(payload) {
            Ok(refusal) => refusal,
            Err(error) => return tracing::warn!("dropping an undecodable write refusal: {error}"),
        };
        let waiting =
            self.state().halves.get_mut(&target).and_then(|half| half.tier(tier).pending.remove(&refusal.write_id));
        let Some(done) = waiting else { return };
        let error = match status {
            abi::status::OK | abi::status::BUSY | abi::status::TOO_LARGE => refusal_error(refusal.key, refusal.outcome),
            // The host no longer routes for this frame: it is closing.
            abi::status::NO_SUCH_PEER if target != PEER_MAIN => StoreError::FrameClosed { frame: FrameId(target) },
            _ => StoreError::Deactivated,
        };
        let _ = done.send(Err(error));
    }

    /// Main's replica as a snapshot, taken between two sequenced writes.
    pub(crate) fn store_snapshot(&self) -> Option<StoreSnapshot> {
        let _order = self.store_order.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state();
        Some(replica_snapshot(state.halves.get(&PEER_MAIN)?.replica(Tier::Store)))
    }

    /// Seeds the process replica of an instance without main (for the persisted tier, of
    /// main's instance before main starts too), then applies what arrived early.
    pub(crate) fn seed_tier(self: &Arc<Self>, tier: Tier, snapshot: StoreSnapshot) {
        let (ready, effects) = {
            let mut state = self.state();
            let values = snapshot.values.into_iter().map(|(key, value)| (key, value.into_vec())).collect();
            state.process[tier as usize].replica = Some(Replica::new(values, snapshot.seq));
            // What arrived early and now fits, in order; the rest waits.
            let ready = drain_stash(&mut state, tier);
            let effects = apply_to_halves(&mut state, tier, &ready);
            (ready, effects)
        };
        self.notify(ready, effects);
    }

    /// Applies a sequenced write to every replica in this instance and notifies watchers.
    pub(crate) fn dispatch_store_update(self: &Arc<Self>, tier: Tier, payload: &[u8]) {
        match crate::wire::decode::<StoreUpdate>(payload) {
            Ok(update) => self.apply_store_update(tier, update),
            Err(error) => tracing::warn!("dropping an undecodable store update: {error}"),
        }
    }

    fn apply_store_update(self: &Arc<Self>, tier: Tier, update: StoreUpdate) {
        // Ordering and application happen under one lock hold, whichever thread seeds or
        // applies: no update can slip between a seed and the stash it drains.
        let (ready, effects) = {
            let mut state = self.state();
            let ready = if state.halves.contains_key(&PEER_MAIN) {
                // Main's replica was written when main sequenced the write.
                vec![update]
            } else {
                // This process's replica, which frames opened here start from. Until the host
                // seeds it, and whenever a write is missing, updates wait in order.
                state.process[tier as usize].stash.insert(update.seq, update);
                drain_stash(&mut state, tier)
            };
            let effects = apply_to_halves(&mut state, tier, &ready);
            (ready, effects)
        };
        self.notify(ready, effects);
    }

    /// Resolves the writers' pending `set`s and calls the watchers, outside the lock.
    pub(crate) fn notify(self: &Arc<Self>, updates: Vec<StoreUpdate>, effects: Vec<Effects>) {
        for (update, effects) in updates.into_iter().zip(effects) {
            if let Some(done) = effects.resolved {
                let _ = done.send(Ok(()));
            }
            let change = StoreChange {
                key: update.key,
                writer: store::writer(update.writer),
                seq: update.seq,
                old: update.old,
                new: update.new,
            };
            for (peer, generation, callback) in effects.watchers {
                let half = self.half(peer, generation);
                let outcome =
                    std::panic::catch_unwind(AssertUnwindSafe(|| context::sync_scope(half, || callback(&change))));
                if let Err(panic) = outcome {
                    tracing::error!(key = %change.key, "a store watcher panicked: {}", panic_message(panic.as_ref()));
                }
            }
        }
    }
}

/// A replica as a snapshot.
pub(crate) fn replica_snapshot(replica: &Replica) -> StoreSnapshot {
    let values = replica.values().iter().map(|(key, value)| (key.clone(), ByteBuf::from(value.clone()))).collect();
    StoreSnapshot { values, seq: replica.seq }
}

/// What applying one update asks for once the lock is released.
pub(crate) struct Effects {
    resolved: Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    /// (half, its generation, watcher), main first.
    watchers: Vec<(Peer, u64, WatcherFn)>,
}

/// Applies, to the process replica, every stashed update that follows it without a gap, and
/// returns them in order. Nothing applies before the seed.
fn drain_stash(state: &mut State, tier: Tier) -> Vec<StoreUpdate> {
    let mut ready = Vec::new();
    let process = &mut state.process[tier as usize];
    let Some(replica) = process.replica.as_mut() else { return ready };
    while let Some((&seq, _)) = process.stash.first_key_value() {
        if seq <= replica.seq {
            process.stash.pop_first();
            continue;
        }
        if seq != replica.seq + 1 {
            break;
        }
        let Some((_, update)) = process.stash.pop_first() else { break };
        replica.write(&update.key, update.new.clone());
        replica.seq = update.seq;
        ready.push(update);
    }
    ready
}

/// Applies updates, in order, to the frame halves' replicas, and collects what to notify.
pub(crate) fn apply_to_halves(state: &mut State, tier: Tier, updates: &[StoreUpdate]) -> Vec<Effects> {
    let mut all = Vec::with_capacity(updates.len());
    for update in updates {
        let mut effects = Effects { resolved: None, watchers: Vec::new() };
        let changed = update.old != update.new;
        for (peer, half) in state.halves.iter_mut() {
            let generation = half.generation();
            let half = half.tier(tier);
            if *peer != PEER_MAIN {
                // A frame opened after this write holds it in its snapshot already.
                if update.seq <= half.replica.seq {
                    continue;
                }
                if update.seq != half.replica.seq + 1 {
                    tracing::error!("frame {peer} missed store writes {}..{}", half.replica.seq + 1, update.seq);
                }
                half.replica.write(&update.key, update.new.clone());
                half.replica.seq = update.seq;
            }
            if *peer == update.writer {
                effects.resolved = half.pending.remove(&update.write_id);
            }
            if changed {
                let watchers = half
                    .watchers
                    .iter()
                    .filter(|watcher| watcher.key.as_ref().is_none_or(|key| *key == update.key))
                    .map(|watcher| (*peer, generation, watcher.callback.clone()));
                effects.watchers.extend(watchers);
            }
        }
        effects.watchers.sort_by_key(|(peer, _, _)| *peer);
        all.push(effects);
    }
    all
}
