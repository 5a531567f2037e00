//! The persisted tier inside an instance. It replicates like the store (see `store.rs`), with
//! one step more: main sequences every write and sends it to the host (`STORAGE_COMMIT`),
//! which commits writes in groups and answers each, in order (`STORAGE_COMMITTED`). Only then
//! does main apply a write to its replica, number it and publish it (`STORAGE_UPDATE`): every
//! replica holds durable writes only, in main's order, and a write that was refused (a limit,
//! an unavailable database) never takes a sequence number.

use std::sync::{Arc, PoisonError};

use tokio::sync::oneshot;

use crate::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN, Peer};
use crate::ipc::{STORE_TOTAL_LIMIT, STORE_VALUE_LIMIT, StoreError};
use crate::runtime::state::Tier;
use crate::runtime::store::replica_snapshot;
use crate::runtime::{Shared, notice};
use crate::wire::{
    StorageCommit, StorageCommitted, StorageOutcome, StorageSeed, StoreUpdate, StoreWrite, WriteRefusal,
};

/// A write main sent to the host and waits to hear of.
pub(crate) struct Commit {
    id: u64,
    writer: Peer,
    write_id: u64,
    key: String,
    value: Option<Vec<u8>>,
    /// Main's own `set`, resolved when the host answers.
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Shared {
    /// The value limit of the persisted tier (the host's, from the seed).
    pub(crate) fn storage_value_limit(&self) -> usize {
        match self.state().storage.value_limit {
            0 => STORE_VALUE_LIMIT,
            limit => usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// Why the persisted tier cannot be used in this activation, if it cannot.
    pub(crate) fn storage_unavailable(&self) -> Option<String> {
        self.state().storage.unavailable.clone()
    }

    /// Main sequences a write of the persisted tier: it goes to the host, in this order, and
    /// is applied once the host says it is durable.
    pub(crate) fn sequence_storage_write(
        &self,
        writer: Peer,
        write_id: u64,
        key: String,
        value: Option<Vec<u8>>,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        let _order = self.storage_order.lock().unwrap_or_else(PoisonError::into_inner);
        let id = self.next_id();
        let commit = StorageCommit { id, key: key.clone(), value: value.clone() };
        {
            let mut state = self.state();
            let Some(main) = state.halves.get_mut(&PEER_MAIN) else {
                return Err(StoreError::Deactivated);
            };
            // Its update, published once durable, carries the key and both values: one that
            // would not fit in a message is refused now, before it is made durable and could
            // reach no other replica.
            let old_len = main.tier(Tier::Storage).replica.values().get(&key).map_or(0, Vec::len);
            let update_size =
                key.len() + old_len + value.as_ref().map_or(0, Vec::len) + crate::runtime::store::UPDATE_ENVELOPE;
            if !abi::fits(0, update_size) {
                return Err(StoreError::TooLarge { key, size: update_size, limit: abi::MAX_MESSAGE });
            }
            if let Some(reason) = &state.storage.unavailable {
                return Err(StoreError::Unavailable { key, reason: reason.clone() });
            }
            let limit = usize::try_from(state.storage.value_limit).unwrap_or(usize::MAX);
            if let Some(bytes) = &value
                && bytes.len() > limit
            {
                return Err(StoreError::TooLarge { key, size: bytes.len(), limit });
            }
            state.storage.commits.push_back(Commit { id, writer, write_id, key: key.clone(), value, done });
        }
        let bytes = rmp_serde::to_vec_named(&commit)
            .map_err(|error| StoreError::Serialize { key: key.clone(), reason: error.to_string() });
        let status = match &bytes {
            Ok(bytes) => self.send(notice(abi::kind::STORAGE_COMMIT, PEER_MAIN, PEER_HOST, bytes)),
            Err(_) => abi::status::INVALID,
        };
        if status == abi::status::OK {
            return Ok(());
        }
        // Not sent: forget it (it is the last one queued, under the order lock).
        let mut state = self.state();
        if let Some(at) = state.storage.commits.iter().rposition(|commit| commit.id == id) {
            state.storage.commits.remove(at);
        }
        bytes?;
        Err(match status {
            abi::status::BUSY => StoreError::Overloaded { key },
            abi::status::TOO_LARGE => {
                StoreError::TooLarge { key, size: commit.value.map_or(0, |v| v.len()), limit: abi::MAX_MESSAGE }
            }
            _ => StoreError::Deactivated,
        })
    }

    /// Main's side of a renderer's write of the persisted tier. One that cannot be sent to the
    /// host is answered to its writer at once.
    pub(crate) fn dispatch_storage_write(&self, origin: Peer, payload: &[u8]) {
        let write = match crate::wire::decode::<StoreWrite>(payload) {
            Ok(write) => write,
            Err(error) => return tracing::warn!("dropping an undecodable storage write: {error}"),
        };
        let (write_id, key) = (write.write_id, write.key.clone());
        let outcome = match self.sequence_storage_write(origin, write_id, write.key, write.value, None) {
            Ok(()) => return,
            Err(StoreError::TooLarge { size, limit, .. }) => {
                StorageOutcome::TooLarge { size: size as u64, max: limit as u64 }
            }
            Err(StoreError::Unavailable { reason, .. }) => StorageOutcome::Unavailable { reason },
            Err(StoreError::Overloaded { .. }) => StorageOutcome::Overloaded,
            // Not made either: its writer hears why at once (a `set` never waits for an
            // answer that is not coming).
            Err(error) => return self.refuse_unmade(Tier::Storage, origin, write_id, key, error),
        };
        self.refuse_write(Tier::Storage, origin, WriteRefusal { write_id, key, outcome }, abi::status::OK);
    }

    /// The host's answer to main's commits: each durable write is applied to main's replica,
    /// numbered and published; each refused one is answered to its writer.
    pub(crate) fn dispatch_storage_committed(self: &Arc<Self>, payload: &[u8]) {
        let committed = match crate::wire::decode::<StorageCommitted>(payload) {
            Ok(committed) => committed,
            Err(error) => return tracing::warn!("dropping an undecodable storage answer: {error}"),
        };
        let _order = self.storage_order.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, outcome) in committed.outcomes {
            let (commit, update) = {
                let mut state = self.state();
                // The host answers in order; anything before `id` was lost with a previous
                // connection and is never answered now.
                let Some(at) = state.storage.commits.iter().position(|commit| commit.id == id) else {
                    tracing::warn!("an answer for storage commit {id}, which main is not waiting for");
                    continue;
                };
                let mut answered: Vec<Commit> = state.storage.commits.drain(..=at).collect();
                let mut commit = answered.pop();
                if !answered.is_empty() {
                    // Never answered: their `set`s fail (dropped) rather than wait.
                    tracing::warn!("{} storage commits before {id} were never answered", answered.len());
                }
                let update = match (&outcome, commit.as_mut(), state.halves.get_mut(&PEER_MAIN)) {
                    (StorageOutcome::Committed, Some(commit), Some(main)) => {
                        let main = main.tier(Tier::Storage);
                        let old = main.replica.write(&commit.key, commit.value.clone());
                        main.replica.seq += 1;
                        Some(StoreUpdate {
                            seq: main.replica.seq,
                            key: commit.key.clone(),
                            old,
                            new: commit.value.take(),
                            writer: commit.writer,
                            write_id: commit.write_id,
                        })
                    }
                    _ => None,
                };
                (commit, update)
            };
            let Some(mut commit) = commit else { continue };
            if let Some(update) = &update {
                // To every replica, main's included (main only notifies its watchers).
                let status = rmp_serde::to_vec_named(update)
                    .map(|bytes| self.send(notice(abi::kind::STORAGE_UPDATE, PEER_MAIN, PEER_ALL, &bytes)));
                if !matches!(status, Ok(abi::status::OK)) {
                    tracing::debug!("storage update {} not published ({status:?})", update.seq);
                }
            }
            let committed = outcome == StorageOutcome::Committed;
            if let Some(done) = commit.done.take() {
                let _ = done.send(if committed { Ok(()) } else { Err(refusal_error(commit.key, outcome)) });
            } else if !committed && commit.writer != PEER_MAIN {
                let refusal = WriteRefusal { write_id: commit.write_id, key: commit.key, outcome };
                self.refuse_write(Tier::Storage, commit.writer, refusal, abi::status::OK);
            } else if committed && update.is_none() {
                tracing::debug!("storage commit {id} was durable after main stopped");
            }
        }
    }

    /// What an instance in another process starts its persisted tier from: main's replica, and
    /// what the host told main.
    pub(crate) fn storage_seed(&self) -> Option<StorageSeed> {
        let _order = self.storage_order.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state();
        let main = state.halves.get(&PEER_MAIN)?;
        Some(StorageSeed {
            snapshot: replica_snapshot(main.replica(Tier::Storage)),
            unavailable: state.storage.unavailable.clone(),
            value_limit: state.storage.value_limit,
            total_limit: state.storage.total_limit,
            stored_version: state.storage.stored_version.clone(),
        })
    }

    /// Seeds the persisted tier (main's instance before main starts, or an instance without
    /// main before its first frame).
    pub(crate) fn seed_storage(self: &Arc<Self>, seed: StorageSeed) {
        {
            let mut state = self.state();
            state.storage.unavailable = seed.unavailable;
            state.storage.value_limit = seed.value_limit.min(STORE_TOTAL_LIMIT as u64);
            state.storage.total_limit = seed.total_limit.min(STORE_TOTAL_LIMIT as u64);
            state.storage.stored_version = seed.stored_version;
        }
        self.seed_tier(Tier::Storage, seed.snapshot);
    }
}

/// The error a write that was not written fails with.
pub(crate) fn refusal_error(key: String, outcome: StorageOutcome) -> StoreError {
    let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
    match outcome {
        StorageOutcome::TooLarge { size: value, max } => {
            StoreError::TooLarge { key, size: size(value), limit: size(max) }
        }
        StorageOutcome::Full { size: total, max } => StoreError::Full { key, size: size(total), limit: size(max) },
        StorageOutcome::Unavailable { reason } => StoreError::Unavailable { key, reason },
        StorageOutcome::Overloaded => StoreError::Overloaded { key },
        // Not a refusal; never sent as one.
        StorageOutcome::Committed => StoreError::Unavailable { key, reason: "committed".into() },
    }
}
