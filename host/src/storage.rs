//! The persisted tier's database: one `redb` file per extension in the host's data directory
//! (`<data dir>/<name>.redb`), named by the identity the host holds, never by anything the
//! extension sends. Each file has one writer thread, which commits whatever writes are queued
//! in one transaction (one sync for the group), then answers every write of the group.
//!
//! A file that cannot be opened (corrupt, unreadable, locked by another host) makes the tier
//! unavailable for that extension's activation, with the file and the reason; the file is left
//! as it is, never reset. A missing file is new data: it is created on the first write (under a
//! temporary name, renamed into place once complete, so a crash never leaves a half-made file).

// `redb::Error` is large (160 bytes); it is returned only on the rare path where a database
// fails, and turned into a message at once.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use extension_api::STORE_ENTRY_OVERHEAD;
use extension_api::abi;
use extension_api::wire::{StorageCommit, StorageCommitted, StorageOutcome, StorageSeed, StoreSnapshot};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableError};
use serde::Serialize;

use crate::core::lock;

/// Each key's MessagePack value.
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// Who the data belongs to: `name`, and the `version` that last ran with it.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 4096;

/// How long, at most, the writer waits for more writes when fewer are queued than it committed
/// last time (many writers, whose next writes are on their way): an eighth of the last commit's
/// time, so a slow disk gathers fuller groups and a fast one hardly waits. A lone writer never
/// waits (its groups are of one).
const GATHER_SHARE: u32 = 8;
const GATHER_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// Most writes (and bytes of keys and values) waiting for one extension's writer: past them a
/// write is refused as overloaded (`BUSY`), so a main half writing faster than the disk syncs
/// cannot grow the host's memory without bound.
const MAX_QUEUED: u64 = 65_536;
const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// How much of the persisted tier an extension may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) value: u64,
    pub(crate) total: u64,
}

/// An extension's use of its persisted tier, as inspect shows it: as the host last saw it
/// (zero until the extension's first activation in this host reads its file).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageUsage {
    /// The extension's database file (it may not exist yet: it is created on the first write).
    pub file: PathBuf,
    /// Keys stored.
    pub keys: u64,
    /// Bytes counted against the total limit (keys, values and 16 bytes an entry).
    pub bytes: u64,
    /// The limit on one encoded value, in bytes.
    pub value_limit: u64,
    /// The limit on `bytes`.
    pub total_limit: u64,
    /// Why the tier is unavailable, if it is (the file and the reason).
    pub error: Option<String>,
}

/// Every extension's database of one host.
pub(crate) struct Storage {
    dir: PathBuf,
    limits: Limits,
    databases: Mutex<HashMap<String, Arc<ExtensionDb>>>,
}

impl Storage {
    pub(crate) fn new(dir: PathBuf, limits: Limits) -> Storage {
        Storage { dir, limits, databases: Mutex::new(HashMap::new()) }
    }

    /// The file holding `name`'s data.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        // Extension names are ASCII letters, digits, `-` and `_` (checked at load): a file name.
        self.dir.join(format!("{name}.redb"))
    }

    /// `name`'s database, with its writer thread started.
    pub(crate) fn database(&self, name: &str) -> Arc<ExtensionDb> {
        let mut databases = lock(&self.databases);
        if let Some(db) = databases.get(name).filter(|db| db.is_open()) {
            return db.clone();
        }
        let db = ExtensionDb::start(name, self.dir.clone(), self.file(name), self.limits);
        databases.insert(name.to_owned(), db.clone());
        db
    }

    /// What inspect shows for `name`.
    pub(crate) fn usage(&self, name: &str) -> StorageUsage {
        let known = lock(&self.databases).get(name).map(|db| lock(&db.usage).clone());
        let mut usage = known.unwrap_or_default();
        usage.file = self.file(name);
        usage.value_limit = self.limits.value;
        usage.total_limit = self.limits.total;
        usage
    }

    /// Closes `name`'s database (its writer finishes what is queued first), releasing the file.
    pub(crate) fn close(&self, name: &str) {
        let db = lock(&self.databases).remove(name);
        if let Some(db) = db {
            db.close();
        }
    }

    /// Deletes `name`'s data: its file is removed (after what is queued is committed). A file
    /// another host process has open is refused, not removed under it: that host would go on
    /// acknowledging writes to a deleted file. The file is removed while this host holds its
    /// lock, so no other host opens it meanwhile. (A damaged file is removed: purging is how
    /// its data is given up.)
    pub(crate) fn purge(&self, name: &str) -> Result<(), String> {
        self.close(name);
        let file = self.file(name);
        // (redb can panic on a damaged file: that is a file to remove.)
        let held = match std::panic::catch_unwind(|| Database::open(&file))
            .unwrap_or(Err(redb::DatabaseError::RepairAborted))
        {
            Ok(database) => Some(database),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(format!(
                    "cannot purge `{}`: {}",
                    file.display(),
                    describe_open_error(redb::DatabaseError::DatabaseAlreadyOpen)
                ));
            }
            Err(_) => None,
        };
        let removed = fs::remove_file(&file);
        drop(held);
        let _ = fs::remove_file(file.with_extension("redb.new"));
        match removed {
            Ok(()) => {
                tracing::info!(extension = %name, "purged its persisted data (`{}`)", file.display());
                sync_dir(&self.dir);
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(format!("cannot remove `{}`: {error}", file.display())),
        }
    }

    /// Closes every database.
    pub(crate) fn close_all(&self) {
        let databases: Vec<_> = lock(&self.databases).drain().map(|(_, db)| db).collect();
        for db in databases {
            db.close();
        }
    }
}

/// Whoever a commit's outcome goes back to (main's namespace, which delivers it to main): the
/// writer thread answers through this, and knows nothing else of routing.
pub(crate) trait CommitAnswers: Send + Sync {
    /// Delivers the encoded `StorageCommitted` of one run of writes.
    fn answer_commits(&self, payload: &[u8]);
}

/// Where a commit is answered: weak, so a namespace that went away is simply not answered.
type Answers = Weak<dyn CommitAnswers>;

enum Job {
    Commit { answers: Answers, commit: StorageCommit },
    Seed { version: String, reply: tokio::sync::oneshot::Sender<StorageSeed> },
}

/// One extension's database and its writer thread.
pub(crate) struct ExtensionDb {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Writes queued and not yet committed, and their bytes.
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    usage: Mutex<StorageUsage>,
}

impl ExtensionDb {
    fn start(name: &str, dir: PathBuf, file: PathBuf, limits: Limits) -> Arc<ExtensionDb> {
        let (sender, receiver) = mpsc::channel();
        let db = Arc::new(ExtensionDb {
            jobs: Mutex::new(Some(sender)),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            thread: Mutex::new(None),
            usage: Mutex::new(StorageUsage::default()),
        });
        let mut writer = Writer {
            name: name.to_owned(),
            dir,
            file,
            limits,
            database: None,
            version: String::new(),
            keys: 0,
            bytes: 0,
            shared: Arc::downgrade(&db),
            last_commit: std::time::Duration::ZERO,
        };
        let spawned = std::thread::Builder::new().name(format!("storage:{name}")).spawn(move || writer.run(receiver));
        match spawned {
            Ok(thread) => *lock(&db.thread) = Some(thread),
            Err(error) => {
                tracing::error!(extension = %name, "cannot start the storage writer thread: {error}");
                *lock(&db.jobs) = None;
            }
        }
        db
    }

    fn is_open(&self) -> bool {
        lock(&self.jobs).is_some()
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        match lock(&self.jobs).as_ref() {
            Some(jobs) => jobs.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        }
    }

    /// Queues a write; `answers` (main's namespace) is answered once it is durable (or why not). Returns a
    /// status: `BUSY` past the queue's bounds, `DEACTIVATED` once the database is closed.
    pub(crate) fn commit(&self, answers: Answers, commit: StorageCommit) -> u32 {
        let size = commit_size(&commit);
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let bytes = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if queued >= MAX_QUEUED || (queued > 0 && bytes + size > MAX_QUEUED_BYTES) {
            self.dequeued(1, size);
            return abi::status::BUSY;
        }
        match self.send(Job::Commit { answers, commit }) {
            Ok(()) => abi::status::OK,
            Err(_) => {
                self.dequeued(1, size);
                abi::status::DEACTIVATED
            }
        }
    }

    fn dequeued(&self, writes: u64, bytes: u64) {
        self.queued.fetch_sub(writes, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// What main's persisted tier starts from, read after every write queued before.
    pub(crate) async fn seed(&self, version: &str, limits: Limits) -> StorageSeed {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unavailable = |reason: &str| StorageSeed {
            unavailable: Some(reason.to_owned()),
            value_limit: limits.value,
            total_limit: limits.total,
            ..StorageSeed::default()
        };
        if self.send(Job::Seed { version: version.to_owned(), reply }).is_err() {
            return unavailable("the storage writer is not running");
        }
        answer.await.unwrap_or_else(|_| unavailable("the storage writer stopped"))
    }

    fn close(&self) {
        *lock(&self.jobs) = None;
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("a storage writer thread panicked");
        }
    }
}

/// The writer thread's state: the open database (if any) and the usage it holds.
struct Writer {
    name: String,
    dir: PathBuf,
    file: PathBuf,
    limits: Limits,
    database: Option<Database>,
    /// The version of the extension that runs now (from the last seed).
    version: String,
    keys: u64,
    bytes: u64,
    shared: Weak<ExtensionDb>,
    /// How long the last group took to commit (and sync).
    last_commit: std::time::Duration,
}

/// What a queued write counts against [`MAX_QUEUED_BYTES`].
fn commit_size(commit: &StorageCommit) -> u64 {
    (commit.key.len() + commit.value.as_ref().map_or(0, Vec::len)) as u64
}

fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len() + STORE_ENTRY_OVERHEAD) as u64
}

impl Writer {
    fn run(&mut self, jobs: mpsc::Receiver<Job>) {
        // The size of the last group: writers that were waiting together then are likely to
        // write again together now (see `GATHER`).
        let mut last_group = 0;
        while let Ok(first) = jobs.recv() {
            let mut group = Vec::new();
            let mut next = Some(first);
            let mut deadline = None;
            loop {
                match next.take() {
                    Some(Job::Commit { answers, commit }) => group.push((answers, commit)),
                    Some(Job::Seed { version, reply }) => {
                        // What was queued before the seed is committed first.
                        self.commit_group(std::mem::take(&mut group));
                        let _ = reply.send(self.seed(version));
                    }
                    None => {}
                }
                if group.len() >= MAX_GROUP {
                    break;
                }
                next = jobs.try_recv().ok();
                if next.is_some() || group.is_empty() || group.len() >= last_group {
                    if next.is_none() {
                        break;
                    }
                    continue;
                }
                // Fewer than last time: the others are likely on their way (their answers just
                // went out). Wait a moment for them rather than pay a sync of their own.
                let gather = (self.last_commit / GATHER_SHARE).min(GATHER_MAX);
                let until = *deadline.get_or_insert_with(|| std::time::Instant::now() + gather);
                let left = until.saturating_duration_since(std::time::Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(job) => next = Some(job),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                last_group = group.len();
            }
            self.commit_group(group);
        }
        // Closed: dropping the database releases the file and its lock.
        self.database = None;
    }

    fn publish_usage(&self, error: Option<String>) {
        if let Some(shared) = self.shared.upgrade() {
            let mut usage = lock(&shared.usage);
            usage.keys = self.keys;
            usage.bytes = self.bytes;
            usage.error = error;
        }
    }

    /// Opens the file if it exists. `Ok(false)`: there is no data yet.
    fn open_existing(&mut self) -> Result<bool, String> {
        if self.database.is_some() {
            return Ok(true);
        }
        match fs::metadata(&self.file) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(self.reason(error)),
        }
        let file = self.file.clone();
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| Database::open(&file)));
        let database = match opened {
            Ok(Ok(database)) => database,
            Ok(Err(error)) => return Err(self.reason(describe_open_error(error))),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(self.reason(format!(
                    "it cannot be opened as a database (it is damaged: {message}); it was left as it is"
                )));
            }
        };
        self.check_owner(&database)?;
        let (keys, bytes) = usage_of(&database).map_err(|error| self.reason(error))?;
        (self.keys, self.bytes) = (keys, bytes);
        self.database = Some(database);
        Ok(true)
    }

    /// Creates the file (new data): under a temporary name, renamed into place once made.
    fn create(&mut self) -> Result<(), String> {
        fs::create_dir_all(&self.dir)
            .map_err(|error| format!("cannot create the data directory `{}`: {error}", self.dir.display()))?;
        let fresh = self.file.with_extension("redb.new");
        let _ = fs::remove_file(&fresh);
        let made = Database::create(&fresh).map_err(|error| self.reason(error))?;
        let txn = made.begin_write().map_err(|error| self.reason(error))?;
        {
            let mut meta = txn.open_table(META).map_err(|error| self.reason(error))?;
            meta.insert("name", self.name.as_str()).map_err(|error| self.reason(error))?;
            meta.insert("version", self.version.as_str()).map_err(|error| self.reason(error))?;
            txn.open_table(VALUES).map_err(|error| self.reason(error))?;
        }
        txn.commit().map_err(|error| self.reason(error))?;
        drop(made);
        fs::rename(&fresh, &self.file).map_err(|error| self.reason(error))?;
        sync_dir(&self.dir);
        let database = Database::open(&self.file).map_err(|error| self.reason(describe_open_error(error)))?;
        (self.keys, self.bytes) = (0, 0);
        self.database = Some(database);
        tracing::info!(extension = %self.name, "created its database `{}`", self.file.display());
        Ok(())
    }

    fn reason(&self, error: impl std::fmt::Display) -> String {
        format!("`{}`: {error}", self.file.display())
    }

    fn seed(&mut self, version: String) -> StorageSeed {
        self.version = version;
        let mut seed =
            StorageSeed { value_limit: self.limits.value, total_limit: self.limits.total, ..StorageSeed::default() };
        match self.open_existing().and_then(|exists| if exists { self.read_all().map(Some) } else { Ok(None) }) {
            Ok(Some((snapshot, stored_version))) => {
                seed.snapshot = snapshot;
                if stored_version.as_deref() != Some(self.version.as_str()) {
                    self.record_version();
                }
                seed.stored_version = stored_version;
                self.publish_usage(None);
            }
            Ok(None) => self.publish_usage(None),
            Err(reason) => {
                tracing::error!(extension = %self.name, "its persisted storage is unavailable: {reason}");
                // Opened again at the next activation; the file stays as it is.
                self.database = None;
                self.publish_usage(Some(reason.clone()));
                seed.unavailable = Some(reason);
            }
        }
        seed
    }

    fn read_all(&self) -> Result<(StoreSnapshot, Option<String>), String> {
        let Some(database) = &self.database else { return Ok((StoreSnapshot::default(), None)) };
        let read = || -> Result<(StoreSnapshot, Option<String>), redb::Error> {
            let txn = database.begin_read()?;
            let mut snapshot = StoreSnapshot::default();
            match txn.open_table(VALUES) {
                Ok(table) => {
                    for entry in table.iter()? {
                        let (key, value) = entry?;
                        snapshot.values.insert(key.value().to_owned(), serde_bytes::ByteBuf::from(value.value()));
                    }
                }
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(error) => return Err(error.into()),
            }
            let version = match txn.open_table(META) {
                Ok(meta) => meta.get("version")?.map(|version| version.value().to_owned()),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(error) => return Err(error.into()),
            };
            Ok((snapshot, version))
        };
        read().map_err(|error| self.reason(error))
    }

    /// The extension name stored with the data: a file holding another extension's data (moved
    /// by hand, or a name reaching the same file) is refused, never served or relabelled.
    fn check_owner(&self, database: &Database) -> Result<(), String> {
        let stored = || -> Result<Option<String>, redb::Error> {
            let txn = database.begin_read()?;
            match txn.open_table(META) {
                Ok(meta) => Ok(meta.get("name")?.map(|name| name.value().to_owned())),
                Err(TableError::TableDoesNotExist(_)) => Ok(None),
                Err(error) => Err(error.into()),
            }
        };
        match stored().map_err(|error| self.reason(error))? {
            Some(owner) if owner != self.name => Err(self.reason(format!(
                "it holds the data of extension `{owner}`, not `{}`; it was left as it is",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// Stores the running version with the data (what the next activation migrates from).
    fn record_version(&self) {
        let Some(database) = &self.database else { return };
        let write = || -> Result<(), redb::Error> {
            let txn = database.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert("name", self.name.as_str())?;
                meta.insert("version", self.version.as_str())?;
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(error) = write() {
            tracing::warn!(extension = %self.name, "cannot record its version in `{}`: {error}", self.file.display());
        }
    }

    /// Commits a group of writes in one transaction, then answers each.
    fn commit_group(&mut self, group: Vec<(Answers, StorageCommit)>) {
        if group.is_empty() {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            let bytes = group.iter().map(|(_, commit)| commit_size(commit)).sum();
            shared.dequeued(group.len() as u64, bytes);
        }
        let started = std::time::Instant::now();
        let applied = self.apply(&group);
        self.last_commit = started.elapsed();
        let outcomes = match applied {
            Ok(outcomes) => outcomes,
            Err(reason) => {
                tracing::error!(extension = %self.name, writes = group.len(), "storage writes failed: {reason}");
                vec![StorageOutcome::Unavailable { reason }; group.len()]
            }
        };
        self.publish_usage(None);
        // One answer per run of writes from the same activation.
        let mut answers: Vec<(Answers, Outcomes)> = Vec::new();
        for ((answers_to, commit), outcome) in group.into_iter().zip(outcomes) {
            match answers.last_mut() {
                Some((last, outcomes)) if Weak::ptr_eq(last, &answers_to) => outcomes.push((commit.id, outcome)),
                _ => answers.push((answers_to, vec![(commit.id, outcome)])),
            }
        }
        for (answers_to, outcomes) in answers {
            let Some(answers_to) = answers_to.upgrade() else { continue };
            match rmp_serde::to_vec_named(&StorageCommitted { outcomes }) {
                Ok(bytes) => answers_to.answer_commits(&bytes),
                Err(error) => tracing::error!(extension = %self.name, "cannot encode a storage answer: {error}"),
            }
        }
    }

    /// The outcome of each write; `Err` if the transaction failed (none was written).
    fn apply(&mut self, group: &[(Answers, StorageCommit)]) -> Result<Vec<StorageOutcome>, String> {
        if !self.open_existing()? {
            self.create()?;
        }
        let Some(database) = &self.database else { return Err(self.reason("not open")) };
        let (mut keys, mut bytes) = (self.keys, self.bytes);
        let mut outcomes = Vec::with_capacity(group.len());
        let mut write = |outcomes: &mut Vec<StorageOutcome>| -> Result<(), redb::Error> {
            let txn = database.begin_write()?;
            {
                let mut table = txn.open_table(VALUES)?;
                for (_, commit) in group {
                    let key = commit.key.as_str();
                    let old = table.get(key)?.map(|old| entry_size(key, old.value()));
                    let outcome = match &commit.value {
                        Some(value) if value.len() as u64 > self.limits.value => {
                            StorageOutcome::TooLarge { size: value.len() as u64, max: self.limits.value }
                        }
                        Some(value) => {
                            let size = bytes - old.unwrap_or(0) + entry_size(key, value);
                            if size > self.limits.total {
                                StorageOutcome::Full { size, max: self.limits.total }
                            } else {
                                table.insert(key, value.as_slice())?;
                                keys += u64::from(old.is_none());
                                bytes = size;
                                StorageOutcome::Committed
                            }
                        }
                        None => {
                            if let Some(old) = old {
                                table.remove(key)?;
                                keys -= 1;
                                bytes -= old;
                            }
                            StorageOutcome::Committed
                        }
                    };
                    outcomes.push(outcome);
                }
            }
            // Durability::Immediate (the default): synced before commit returns.
            txn.commit()?;
            Ok(())
        };
        match write(&mut outcomes) {
            Ok(()) => {
                (self.keys, self.bytes) = (keys, bytes);
                Ok(outcomes)
            }
            Err(error) => {
                // After an I/O error redb refuses everything until the file is opened again:
                // the next group opens it afresh (and so tries again, once the disk has room).
                self.database = None;
                Err(self.reason(format!("the commit failed: {error}")))
            }
        }
    }
}

/// Each commit's id and what became of it.
type Outcomes = Vec<(u64, StorageOutcome)>;

/// The keys and bytes stored, as the total limit counts them.
fn usage_of(database: &Database) -> Result<(u64, u64), redb::Error> {
    let txn = database.begin_read()?;
    let table = match txn.open_table(VALUES) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
        Err(error) => return Err(error.into()),
    };
    let mut bytes = 0;
    for entry in table.iter()? {
        let (key, value) = entry?;
        bytes += entry_size(key.value(), value.value());
    }
    Ok((table.len()?, bytes))
}

fn describe_open_error(error: redb::DatabaseError) -> String {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "it is locked: another host process has it open (one data directory serves one host at a time)".to_owned()
        }
        other => format!("it cannot be opened as a database ({other}); it was left as it is"),
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Err(error) = fs::File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!("cannot sync the data directory `{}`: {error}", dir.display());
    }
}
