//! The store: key-value state shared by main and every frame of one extension.
//!
//! Main sequences every write; every replica (main's and one per frame) applies the writes in
//! that order, so all converge. `get` reads the local replica synchronously; `set` and
//! `delete` resolve once the write is sequenced and applied to the local replica (so a
//! renderer reads its own writes after awaiting them). A frame holds the current snapshot
//! before its renderer half's `activate` runs. The store is cleared on deactivate.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{HalfHandle, Sender};
use crate::abi::{self, PEER_MAIN, Peer};
use crate::error::IpcError;
use crate::ipc::Disposer;
use crate::ipc::disposer::Registration;
use crate::runtime::{Tier, Watcher};
use crate::wire::StoreWrite;

/// Largest encoded value a store key may hold.
pub const STORE_VALUE_LIMIT: usize = 1 << 20;

/// Largest the whole store may grow (8 MiB), counting each entry as its key, its encoded
/// value and [`STORE_ENTRY_OVERHEAD`] bytes. A write that would pass it is refused
/// ([`StoreError::Full`]). It keeps a store snapshot within one message, so a frame opened in
/// any process starts with the whole store, and bounds what every frame's replica holds.
pub const STORE_TOTAL_LIMIT: usize = 8 << 20;

/// What each entry counts against [`STORE_TOTAL_LIMIT`] beyond its key and value bytes (its
/// share of a snapshot's encoding, with room to spare).
pub const STORE_ENTRY_OVERHEAD: usize = 16;

/// What an entry counts against [`STORE_TOTAL_LIMIT`].
pub(crate) fn store_entry_size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + STORE_ENTRY_OVERHEAD
}

/// How long a renderer's `set` waits for main to sequence it.
const STORE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A store key whose value has type `T`, declared once and used by both halves.
pub struct StoreKey<T> {
    name: &'static str,
    _value: PhantomData<fn(T) -> T>,
}

impl<T> StoreKey<T> {
    /// Declares the store key called `name`.
    pub const fn new(name: &'static str) -> Self {
        StoreKey { name, _value: PhantomData }
    }
    /// The key's name, as it appears in the store.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for StoreKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for StoreKey<T> {}

/// Anything that names a store key holding `T`: a [`StoreKey<T>`] or a `&str`.
pub trait StoreKeyName<T: ?Sized> {
    /// The key's name.
    fn key_name(&self) -> &str;
}

impl<T> StoreKeyName<T> for StoreKey<T> {
    fn key_name(&self) -> &str {
        self.name
    }
}

impl<T: ?Sized> StoreKeyName<T> for &str {
    fn key_name(&self) -> &str {
        self
    }
}

/// Why a store operation was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The value could not be encoded as MessagePack.
    #[error("cannot store `{}`: the value cannot be serialized: {reason}", crate::error::shown(key))]
    Serialize {
        /// The key being written.
        key: String,
        /// The serializer's error message.
        reason: String,
    },
    /// The encoded value is over [`STORE_VALUE_LIMIT`] (or a write's key and value together
    /// are over the message limit, [`crate::MAX_MESSAGE`]).
    #[error(
        "cannot store `{}`: the value is {size} bytes encoded, over the {limit}-byte limit",
        crate::error::shown(key)
    )]
    TooLarge {
        /// The key being written.
        key: String,
        /// Size of the encoded value, in bytes.
        size: usize,
        /// The limit it exceeds, in bytes.
        limit: usize,
    },
    /// The write would take the store past [`STORE_TOTAL_LIMIT`]. Nothing was written; delete
    /// something first.
    #[error(
        "cannot store `{}`: the store would hold {size} bytes, over its {limit}-byte limit",
        crate::error::shown(key)
    )]
    Full {
        /// The key being written.
        key: String,
        /// The store's size with the write, in bytes.
        size: usize,
        /// The limit, [`STORE_TOTAL_LIMIT`].
        limit: usize,
    },
    /// The stored value does not decode as the requested type.
    #[error("the value of `{}` does not decode as {expected}: {reason}", crate::error::shown(key))]
    Decode {
        /// The key being read.
        key: String,
        /// Name of the type it was decoded as.
        expected: &'static str,
        /// The decoder's error message.
        reason: String,
    },
    /// The half's replica no longer exists: the extension is inactive.
    #[error("the store is gone: the extension is not active")]
    Deactivated,
    /// A renderer's store kept after its frame closed (or reloaded), while the extension stays
    /// active: that half's replica is gone.
    #[error("the store is gone: {frame} is closed (this handle belongs to the renderer half that ran there)")]
    FrameClosed {
        /// The frame the handle's half ran in.
        frame: crate::FrameId,
    },
    /// Main's mailbox is full (main is slower than the writes reaching it), or, for the
    /// persisted tier, the host's queue of writes is (they come faster than the disk syncs
    /// them); nothing was written. A store writer in another process is not told at once: its
    /// write times out.
    #[error("cannot store `{}`: main's mailbox is full", crate::error::shown(key))]
    Overloaded {
        /// The key being written.
        key: String,
    },
    /// The persisted tier cannot be used in this activation: the host could not open or
    /// write the extension's database. The reason names the file and what went wrong; the data
    /// on disk is left as it is (never reset).
    #[error("the persisted storage is unavailable (`{}`): {reason}", crate::error::shown(key))]
    Unavailable {
        /// The key being read or written.
        key: String,
        /// The database file and what went wrong with it.
        reason: String,
    },
    /// Main did not sequence a renderer's write in time (the persisted tier: the write was not
    /// made durable and applied in time; it may still become durable later).
    #[error("main did not sequence the write of `{}` within {timeout:?}", crate::error::shown(key))]
    TimedOut {
        /// The key being written.
        key: String,
        /// How long the write waited.
        timeout: Duration,
    },
}

/// One applied write, as a watcher sees it on its replica.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreChange {
    /// The key written.
    pub key: String,
    /// Who wrote it.
    pub writer: Sender,
    /// Its place in main's order of writes.
    pub seq: u64,
    pub(crate) old: Option<Vec<u8>>,
    pub(crate) new: Option<Vec<u8>>,
}

impl StoreChange {
    /// The value before the write (`None` if the key was absent).
    pub fn old_value<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        decode(&self.key, self.old.as_deref())
    }

    /// The value after the write (`None` if it deleted the key).
    pub fn new_value<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        decode(&self.key, self.new.as_deref())
    }

    /// Whether the write deleted the key.
    pub fn is_delete(&self) -> bool {
        self.new.is_none()
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    bytes
        .map(|bytes| {
            crate::wire::decode(bytes).map_err(|error| StoreError::Decode {
                key: key.to_owned(),
                expected: std::any::type_name::<T>(),
                reason: error.to_string(),
            })
        })
        .transpose()
}

/// A half's view of the extension's store (`Main::store()`, `Renderer::store()`) or of its
/// persisted tier (`Main::storage()`, `Renderer::storage()`); cheap to clone.
///
/// Both have the same shape. The store lives in memory and is cleared on deactivate. The
/// persisted tier is kept by the host in a database: it survives deactivation, host restarts
/// and crashes, and its `set` and `delete` resolve only once the write is committed and synced.
#[derive(Clone)]
pub struct Store {
    half: HalfHandle,
    tier: Tier,
}

impl Store {
    pub(crate) fn new(half: HalfHandle) -> Store {
        Store { half, tier: Tier::Store }
    }

    pub(crate) fn persisted(half: HalfHandle) -> Store {
        Store { half, tier: Tier::Storage }
    }

    /// Whether this is the persisted tier.
    pub fn is_persisted(&self) -> bool {
        self.tier == Tier::Storage
    }

    /// For the persisted tier: the version of the extension that ran with this data before
    /// this activation (`None` for new data, and for the store). An extension that changed the
    /// types of its values reads this to migrate them.
    pub fn stored_version(&self) -> Option<String> {
        let shared = self.half.upgrade()?;
        if self.tier != Tier::Storage {
            return None;
        }
        shared.state().storage.stored_version.clone()
    }

    fn unavailable(&self, shared: &crate::runtime::Shared, key: &str) -> Result<(), StoreError> {
        match self.tier {
            Tier::Storage => match shared.storage_unavailable() {
                Some(reason) => Err(StoreError::Unavailable { key: key.to_owned(), reason }),
                None => Ok(()),
            },
            Tier::Store => Ok(()),
        }
    }

    /// The value of `key` in this half's replica.
    pub fn get<T, K>(&self, key: K) -> Result<Option<T>, StoreError>
    where
        T: DeserializeOwned,
        K: StoreKeyName<T>,
    {
        let key = key.key_name();
        let shared = self.half.upgrade().ok_or(StoreError::Deactivated)?;
        self.unavailable(&shared, key)?;
        let bytes = {
            let mut state = shared.state();
            let half = state.half_mut(self.half.peer(), self.half.generation()).ok_or_else(|| self.gone())?;
            half.tier(self.tier).replica.values().get(key).cloned()
        };
        decode(key, bytes.as_deref())
    }

    /// Why this half's replica is gone.
    fn gone(&self) -> StoreError {
        match self.half.closed_frame() {
            Some(frame) => StoreError::FrameClosed { frame },
            None => StoreError::Deactivated,
        }
    }

    /// The keys in this half's replica, in order.
    pub fn keys(&self) -> Vec<String> {
        self.with_replica(|replica| replica.values().keys().cloned().collect()).unwrap_or_default()
    }

    /// The last write (in main's order) this replica has applied; 0 before any.
    pub fn seq(&self) -> u64 {
        self.with_replica(|replica| replica.seq).unwrap_or_default()
    }

    fn with_replica<R>(&self, f: impl FnOnce(&crate::runtime::Replica) -> R) -> Option<R> {
        let shared = self.half.upgrade()?;
        let mut state = shared.state();
        state.half_mut(self.half.peer(), self.half.generation()).map(|half| f(&half.tier(self.tier).replica))
    }

    /// Sets `key` to `value`. A value that cannot be serialized, or is over
    /// [`STORE_VALUE_LIMIT`] (the persisted tier: the host's value limit), is refused here, and
    /// nothing is written. The write is sent by this call; the future resolves once it is
    /// sequenced and applied to this half's replica (the persisted tier: once it is durable).
    pub fn set<T, K>(
        &self,
        key: K,
        value: &T,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static + use<T, K>
    where
        T: Serialize + ?Sized,
        K: StoreKeyName<T>,
    {
        let key = key.key_name().to_owned();
        let limit = match (self.tier, self.half.upgrade()) {
            (Tier::Storage, Some(shared)) => shared.storage_value_limit(),
            _ => STORE_VALUE_LIMIT,
        };
        let encoded = rmp_serde::to_vec_named(value)
            .map_err(|error| StoreError::Serialize { key: key.clone(), reason: error.to_string() })
            .and_then(|bytes| match bytes.len() {
                size if size > limit => Err(StoreError::TooLarge { key: key.clone(), size, limit }),
                _ => Ok(bytes),
            });
        let sent = encoded.and_then(|bytes| self.write(key, Some(bytes)));
        async move { sent?.await }
    }

    /// Deletes `key`. Resolves like [`Store::set`].
    pub fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send + 'static + use<> {
        let sent = self.write(key.to_owned(), None);
        async move { sent?.await }
    }

    /// Sends a write; returns what waits for it to be applied here.
    fn write(
        &self,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<impl Future<Output = Result<(), StoreError>> + Send + 'static + use<>, StoreError> {
        let shared = self.half.upgrade().ok_or(StoreError::Deactivated)?;
        self.unavailable(&shared, &key)?;
        let (peer, generation, tier) = (self.half.peer(), self.half.generation(), self.tier);
        if peer == PEER_MAIN && tier == Tier::Store {
            // Main is the sequencer: applied to its replica now.
            shared.sequence_write(PEER_MAIN, 0, key, value)?;
            return Ok(futures_util::future::Either::Left(std::future::ready(Ok(()))));
        }
        let write_id = shared.next_id();
        let (done, applied) = tokio::sync::oneshot::channel();
        if peer == PEER_MAIN {
            // Main sequences it, and it is applied once the host says it is durable.
            if shared.state().half_mut(peer, generation).is_none() {
                return Err(self.gone());
            }
            shared.sequence_storage_write(PEER_MAIN, 0, key.clone(), value, Some(done))?;
        } else {
            {
                let mut state = shared.state();
                let half = state.half_mut(peer, generation).ok_or_else(|| self.gone())?;
                half.tier(tier).pending.insert(write_id, done);
            }
            let write = StoreWrite { write_id, key: key.clone(), value };
            let bytes = rmp_serde::to_vec_named(&write)
                .map_err(|error| StoreError::Serialize { key: key.clone(), reason: error.to_string() })?;
            let kind = if tier == Tier::Store { abi::kind::STORE_WRITE } else { abi::kind::STORAGE_WRITE };
            let status = shared.send(crate::runtime::notice(kind, peer, PEER_MAIN, &bytes));
            if status != abi::status::OK {
                if let Some(half) = shared.state().half_mut(peer, generation) {
                    half.tier(tier).pending.remove(&write_id);
                }
                return Err(match status {
                    abi::status::BUSY => StoreError::Overloaded { key },
                    abi::status::TOO_LARGE => StoreError::TooLarge { key, size: bytes.len(), limit: abi::MAX_MESSAGE },
                    // The host no longer routes for this frame: it is closing.
                    abi::status::NO_SUCH_PEER => self.gone(),
                    _ => StoreError::Deactivated,
                });
            }
        }
        let weak = self.half.weak();
        let store = self.clone();
        Ok(futures_util::future::Either::Right(async move {
            match tokio::time::timeout(STORE_WRITE_TIMEOUT, applied).await {
                Ok(Ok(result)) => result,
                // The half shut down before the write came back.
                Ok(Err(_)) => Err(store.gone()),
                Err(_) => {
                    if let Some(shared) = weak.upgrade()
                        && let Some(half) = shared.state().half_mut(peer, generation)
                    {
                        half.tier(tier).pending.remove(&write_id);
                    }
                    Err(StoreError::TimedOut { key, timeout: STORE_WRITE_TIMEOUT })
                }
            }
        }))
    }

    /// Calls `watcher` once for every write to `key` applied to this replica that changes it.
    pub fn watch(
        &self,
        key: &str,
        watcher: impl Fn(&StoreChange) + Send + Sync + 'static,
    ) -> Result<Disposer, IpcError> {
        self.add_watcher(Some(key.to_owned()), Arc::new(watcher))
    }

    /// Calls `watcher` once for every write applied to this replica that changes a value.
    pub fn watch_all(&self, watcher: impl Fn(&StoreChange) + Send + Sync + 'static) -> Result<Disposer, IpcError> {
        self.add_watcher(None, Arc::new(watcher))
    }

    fn add_watcher(
        &self,
        key: Option<String>,
        callback: Arc<dyn Fn(&StoreChange) + Send + Sync>,
    ) -> Result<Disposer, IpcError> {
        let shared = self.half.shared("watch")?;
        let id = shared.next_id();
        let mut state = shared.state();
        let half = state.half_mut(self.half.peer(), self.half.generation()).ok_or_else(|| self.half.gone("watch"))?;
        half.tier(self.tier).watchers.push(Watcher { id, key, callback });
        Ok(self.half.disposer(Registration::Watcher { id }))
    }
}

/// The peer a store update names as its writer, for watchers.
pub(crate) fn writer(peer: Peer) -> Sender {
    crate::message::sender_of(peer)
}
