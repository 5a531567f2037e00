//! Plain data exchanged between the host and an extension, encoded as MessagePack with named
//! fields, and [`decode`], which every side decodes what another side produced with. No I/O
//! lives here: the same types travel over a function call in process and over a socket to a
//! child process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::abi::Peer;

/// What the host tells an instance when it starts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceConfig {
    /// The extension's name, for thread names and log records.
    pub name: String,
    /// Most verbose level the host will print: 0 off, 1 error ... 5 trace.
    pub max_log_level: u32,
    /// How much may wait in the instance's mailbox.
    #[serde(default)]
    pub mailbox: MailboxLimit,
    /// Requests between halves of this instance may stay in it, skipping the host. Only where
    /// the host routes synchronously (in its own process): elsewhere a broadcast or store write
    /// makes a round trip through the host, and a request overtaking it would break send order.
    #[serde(default)]
    pub route_within: bool,
    /// A handler that waits (its first poll returned pending) and takes longer than this, in
    /// milliseconds, from its start to its answer, is reported in
    /// [`InstanceSnapshot::slow_handlers`]. `u64::MAX` (the default): never.
    #[serde(default = "never")]
    pub slow_handler_ms: u64,
}

fn never() -> u64 {
    u64::MAX
}

/// Bounds an instance's mailbox: the messages waiting for its thread (the batch its dispatcher
/// is working through has left the mailbox, so up to twice this is held). Past either bound, a
/// broadcast to the instance is dropped (and counted), and a request or store write to it is
/// refused with [`crate::InvokeErrorKind::Overloaded`]. Replies, cancels and store updates are
/// always queued: they answer messages already accepted, and dropping one would leave a request
/// waiting or a replica diverged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxLimit {
    /// Most messages queued.
    pub messages: u64,
    /// Most bytes (channel names and payloads) queued. A single message larger than this is
    /// still taken when the mailbox is empty.
    pub bytes: u64,
}

impl Default for MailboxLimit {
    fn default() -> Self {
        MailboxLimit { messages: 65_536, bytes: 64 << 20 }
    }
}

/// A lifecycle or query command from the host. Each carries the number the instance answers
/// with through `HostVTable::complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Run the main half's `activate`.
    ActivateMain {
        /// Number of the command, echoed in its completion.
        completion: u64,
    },
    /// Run the main half's `deactivate`, bounded by `timeout_ms`.
    DeactivateMain {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// How long `deactivate` may run, in milliseconds (`u64::MAX`: no limit).
        timeout_ms: u64,
    },
    /// Create the renderer half for `frame` and run its `activate`.
    OpenFrame {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// The frame to open the renderer half in.
        frame: Peer,
    },
    /// Run the renderer half's `deactivate` for `frame` (bounded), then drop everything it had.
    CloseFrame {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// The frame whose renderer half closes.
        frame: Peer,
        /// How long `deactivate` may run, in milliseconds (`u64::MAX`: no limit).
        timeout_ms: u64,
    },
    /// Report listeners, handlers, pending requests and tasks.
    Inspect {
        /// Number of the command, echoed in its completion.
        completion: u64,
    },
    /// Tell main which frames its renderer half is open in (for `Main::frames`).
    SetFrames {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// Every frame where the renderer half is open.
        frames: Vec<Peer>,
    },
    /// Ask main for its store replica (to seed an instance in another process).
    StoreSnapshot {
        /// Number of the command, echoed in its completion.
        completion: u64,
    },
    /// Seed the store replica of an instance that has no main half (a renderer process), before
    /// its first frame opens.
    SeedStore {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// Main's store replica to start from.
        snapshot: StoreSnapshot,
    },
    /// Ask main for its replica of the persisted tier (to seed an instance in another process).
    StorageSnapshot {
        /// Number of the command, echoed in its completion.
        completion: u64,
    },
    /// Seed the persisted tier: main's instance before `ActivateMain` (from the database), an
    /// instance without main before its first frame opens (from main's replica).
    SeedStorage {
        /// Number of the command, echoed in its completion.
        completion: u64,
        /// What to start from.
        seed: StorageSeed,
    },
    /// The extension is deactivating: the host routes nothing for it any more and has failed
    /// the requests it routed; the instance fails the requests between its own halves
    /// (`Deactivated`) and starts no new ones.
    StopRouting {
        /// Number of the command, echoed in its completion.
        completion: u64,
    },
}

impl Control {
    /// The number the instance answers this command with.
    pub fn completion(&self) -> u64 {
        match self {
            Control::ActivateMain { completion }
            | Control::DeactivateMain { completion, .. }
            | Control::OpenFrame { completion, .. }
            | Control::CloseFrame { completion, .. }
            | Control::Inspect { completion }
            | Control::SetFrames { completion, .. }
            | Control::StoreSnapshot { completion }
            | Control::SeedStore { completion, .. }
            | Control::StorageSnapshot { completion }
            | Control::SeedStorage { completion, .. }
            | Control::StopRouting { completion } => *completion,
        }
    }
}

/// The completion number no command has (the host numbers its commands from 1): an instance
/// completes it, with [`Completion::Done`], to ask the host's watchdog to look at it. It does
/// so once after each [`Control::Inspect`], when work next arrives (a message queued, a slow
/// handler finished), so the watchdog looks only at instances with work, and an idle host
/// and its children make no call at all.
pub const ATTENTION: u64 = 0;

/// The answer to a [`Control`] command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Completion {
    /// The command succeeded.
    Done,
    /// The author's code returned an error.
    Failed {
        /// The error, with its chain of causes.
        reason: String,
    },
    /// The author's code panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The author's code did not finish within the timeout.
    TimedOut {
        /// The timeout it exceeded, in milliseconds.
        timeout_ms: u64,
    },
    /// The answer to [`Control::Inspect`].
    Inspected(InstanceSnapshot),
    /// The answer to [`Control::StoreSnapshot`].
    StoreSnapshot(StoreSnapshot),
    /// The answer to [`Control::StorageSnapshot`].
    StorageSeed(StorageSeed),
}

/// Where the persisted tier starts from, with the host's limits for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StorageSeed {
    /// The values, and the sequence number of the last write included.
    pub snapshot: StoreSnapshot,
    /// Why the tier is unavailable this activation (the database could not be opened: the
    /// file and the reason); `None` when it works. Nothing is read or written then.
    pub unavailable: Option<String>,
    /// Largest encoded value, in bytes.
    pub value_limit: u64,
    /// Largest the extension's data may grow (keys, values and 16 bytes an entry), in bytes.
    pub total_limit: u64,
    /// The extension's version that ran with this data before this activation (`None` for
    /// new data): what an extension migrates from.
    pub stored_version: Option<String>,
}

/// Main asks the host to make one write of the persisted tier durable (kind
/// `STORAGE_COMMIT`, to `PEER_HOST`). The host answers every commit, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageCommit {
    /// Main's number for it, increasing.
    pub id: u64,
    /// The key to write.
    pub key: String,
    /// The new MessagePack value; `None` deletes the key.
    #[serde(with = "serde_bytes", default)]
    pub value: Option<Vec<u8>>,
}

/// The host's answer to main's commits, in the order they were sent (kind
/// `STORAGE_COMMITTED`): several, when they were committed together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageCommitted {
    /// `(StorageCommit::id, what became of it)`, in commit order.
    pub outcomes: Vec<(u64, StorageOutcome)>,
}

/// What became of one write of the persisted tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum StorageOutcome {
    /// Committed and synced.
    Committed,
    /// Refused: the value is over the limit.
    TooLarge {
        /// The value's size, in bytes.
        size: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// Refused: the extension's data would pass its total.
    Full {
        /// The data's size with the write, in bytes.
        size: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// Not written: the host's queue of writes for the extension is full (they come faster
    /// than the disk syncs them).
    Overloaded,
    /// Not written: the database is unavailable or the commit failed (the file and the reason).
    Unavailable {
        /// What went wrong.
        reason: String,
    },
}

/// Main's answer to a renderer's write that was not written, in either tier (kind
/// `STORE_REFUSAL` for the store, `STORAGE_REFUSAL` for the persisted tier); only the writer
/// gets it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WriteRefusal {
    /// The writer's [`StoreWrite::write_id`].
    pub write_id: u64,
    /// The key it would have written.
    pub key: String,
    /// Why (never [`StorageOutcome::Committed`]).
    pub outcome: StorageOutcome,
}

/// A store replica at one point of main's sequence.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreSnapshot {
    /// Every key with its MessagePack value.
    pub values: BTreeMap<String, serde_bytes::ByteBuf>,
    /// Sequence number of the last write included; 0 before any.
    pub seq: u64,
}

/// The payload of an error reply: the kind travels in the message's status field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorPayload {
    /// A description of the failure, kept as [`crate::InvokeError::message`].
    pub message: String,
    /// The handler's structured error, as MessagePack.
    #[serde(with = "serde_bytes", default)]
    pub data: Option<Vec<u8>>,
}

/// What an instance reports about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceSnapshot {
    /// Every half running in the instance.
    pub halves: Vec<HalfSnapshot>,
    /// Tasks alive on the instance's runtime, the instance's own dispatcher excluded.
    pub tasks: usize,
    /// Listener calls skipped because the value did not decode as the listener's type.
    pub decode_failures: u64,
    /// Listener calls that panicked.
    pub listener_panics: u64,
    /// Messages waiting in the mailbox right now.
    #[serde(default)]
    pub queued_messages: u64,
    /// Broadcasts dropped because the mailbox was full (see [`MailboxLimit`]).
    #[serde(default)]
    pub dropped_broadcasts: u64,
    /// Requests and store writes refused because the mailbox was full.
    #[serde(default)]
    pub refused_requests: u64,
    /// Requests between halves of this instance in flight: they never pass through the host,
    /// so its own count of requests in flight does not include them.
    #[serde(default)]
    pub local_requests: u64,
    /// Bytes (channel names and payloads) of the messages waiting in the mailbox right now.
    #[serde(default)]
    pub queued_bytes: u64,
    /// Bytes of the replicas the halves of this instance hold, of the store and of the
    /// persisted tier (as `extension_api::STORE_TOTAL_LIMIT` counts them: keys, values and 16
    /// bytes an entry), one copy of each per half.
    #[serde(default)]
    pub store_bytes: u64,
    /// Bytes of received messages (4 KiB or more each) that `extension_api::Binary` values
    /// decoded from them keep: each message whole, once, however many views of it are kept.
    /// For a message that came from another process, the host's buffer it was read into is
    /// what is kept (lent to the instance; up to 1.5 times these bytes). Also counted, for as
    /// long as it lasts: a large value being decoded, and a large event while its listeners
    /// run (all of them share it), whatever its type.
    #[serde(default)]
    pub binary_bytes: u64,
    /// CPU time the instance's thread has used, in nanoseconds (Linux: from
    /// `/proc/self/task/TID/schedstat`); `None` where it cannot be read. Merged across the
    /// extension's instances, the sum.
    #[serde(default)]
    pub cpu_ns: Option<u64>,
    /// The instance thread's id (Linux TID, within its process); 0 if unknown.
    #[serde(default)]
    pub thread_id: u64,
    /// The instance's progress counter, which the host's watchdog compares between ticks:
    /// messages the dispatcher has worked through, counted when it takes a batch from the
    /// mailbox and within a batch every 128 messages (no store per message). Unchanged while
    /// messages wait, the thread is stuck.
    #[serde(default)]
    pub dispatched: u64,
    /// Messages the dispatcher took from the mailbox in its current batch and has not started
    /// on yet: they wait too, behind what it runs (not counted in `queued_messages`). Exact when
    /// it is stuck in its batch's first message; else up to 127 too many.
    #[serde(default)]
    pub batch_messages: u64,
    /// The dispatcher is working through a batch it took from the mailbox (a message it has
    /// taken and not finished, even one not counted above or in `busy`: the batch's last, a
    /// listener, a handler not yet started). Not set, with nothing queued, the instance is
    /// idle: the host's watchdog stops looking at it until it asks again (see [`ATTENTION`]).
    #[serde(default)]
    pub dispatching: bool,
    /// The handler the instance's thread is running right now, if any (only a handler's first
    /// poll, which the dispatcher runs in place: a handler that waits goes on in a task of its
    /// own; listeners are not marked).
    #[serde(default)]
    pub busy: Option<Busy>,
    /// What each channel received: requests handled and broadcasts delivered to a listener.
    #[serde(default)]
    pub channels: Vec<ChannelStats>,
    /// The latest handlers that waited and took longer than [`InstanceConfig::slow_handler_ms`]
    /// (at most [`SLOW_HANDLERS_KEPT`], oldest first).
    #[serde(default)]
    pub slow_handlers: Vec<SlowHandler>,
    /// How many [`Control::Inspect`]s the instance has answered, this one included: the
    /// embedder's and the host's watchdog's, which asks only while the instance has work
    /// (see [`ATTENTION`]).
    #[serde(default)]
    pub inspections: u64,
}

/// How many [`InstanceSnapshot::slow_handlers`] an instance keeps.
pub const SLOW_HANDLERS_KEPT: usize = 32;

/// What an instance's thread is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// The half whose code runs.
    pub half: crate::Half,
    /// A request's handler or a broadcast's listeners.
    pub kind: ChannelKind,
    /// The channel.
    pub channel: String,
}

/// A handler that took longer than the instance's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowHandler {
    /// Numbers the reports of one instance, from 1.
    pub seq: u64,
    /// The half whose handler it was.
    pub half: crate::Half,
    /// The request's channel.
    pub channel: String,
    /// From the handler's start to its answer, in nanoseconds.
    pub elapsed_ns: u64,
}

/// Requests (to a handler) or broadcasts (to listeners).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Requests, to the channel's handler.
    #[default]
    Request,
    /// Broadcasts, to the channel's listeners.
    Broadcast,
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelKind::Request => "request",
            ChannelKind::Broadcast => "broadcast",
        })
    }
}

/// Counts and latencies of one channel of one kind. Every message is counted; one in
/// [`ChannelStats::SAMPLE_EVERY`] (the first included) is timed, so percentiles come from a
/// uniform sample, at a clock read per timed message rather than per message. A handler that
/// waits is always timed (it costs a task anyway), for `max_ns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// The channel; [`ChannelStats::OTHER`] sums channels past [`ChannelStats::MAX_CHANNELS`].
    pub channel: String,
    /// Requests or broadcasts.
    pub kind: ChannelKind,
    /// Requests whose handler started, or broadcasts that reached at least one listener.
    pub count: u64,
    /// Median time in the handler (a request's: from its start to its answer) or in the
    /// listeners (a broadcast's, all of this instance's together), in nanoseconds; the upper
    /// bound of its histogram bucket (at most a quarter above the true value).
    pub p50_ns: u64,
    /// 99th percentile, as `p50_ns`.
    pub p99_ns: u64,
    /// The longest timed, exact.
    pub max_ns: u64,
    /// The timed messages, as `(bucket, count)` pairs of non-empty buckets (see
    /// [`ChannelStats::bucket`]): instances' histograms merge exactly.
    pub histogram: Vec<(u16, u64)>,
}

impl ChannelStats {
    /// One message in this many is timed.
    pub const SAMPLE_EVERY: u64 = 16;
    /// Channels an instance keeps apart, per kind; the rest are counted together as
    /// [`ChannelStats::OTHER`].
    pub const MAX_CHANNELS: usize = 256;
    /// The name the channels past [`ChannelStats::MAX_CHANNELS`] are counted under.
    pub const OTHER: &'static str = "(other channels)";
    /// Buckets of the latency histogram: four per power of two of nanoseconds.
    pub const BUCKETS: usize = 256;

    /// The histogram bucket of `ns`: exact below 4, then four buckets per power of two.
    pub fn bucket(ns: u64) -> u16 {
        if ns < 4 {
            return ns as u16;
        }
        let power = 63 - ns.leading_zeros();
        let quarter = (ns >> (power - 2)) & 3;
        // power >= 2, so this is at most 4 * 62 + 3 < BUCKETS.
        (4 * (power - 1) + quarter as u32) as u16
    }

    /// The largest value in `bucket`.
    pub fn bucket_max(bucket: u16) -> u64 {
        let bucket = u32::from(bucket);
        if bucket < 4 {
            return u64::from(bucket);
        }
        let power = bucket / 4 + 1;
        let quarter = u64::from(bucket % 4);
        let low = (4 + quarter) << (power - 2);
        low.saturating_add((1u64 << (power - 2)) - 1)
    }

    /// How many were timed.
    pub fn timed(&self) -> u64 {
        self.histogram.iter().map(|(_, count)| count).sum()
    }

    /// The `q` quantile (0.0 to 1.0) of the timed messages, as its bucket's upper bound, and
    /// never above `max_ns`; 0 if none was timed.
    pub fn percentile(&self, q: f64) -> u64 {
        let timed = self.timed();
        if timed == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * timed as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.histogram {
            seen += count;
            if seen >= rank {
                return ChannelStats::bucket_max(*bucket).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// Adds `other` (the same channel and kind in another instance) and recomputes the
    /// percentiles.
    pub fn merge(&mut self, other: &ChannelStats) {
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        let mut merged: BTreeMap<u16, u64> = self.histogram.iter().copied().collect();
        for (bucket, count) in &other.histogram {
            *merged.entry(*bucket).or_default() += count;
        }
        self.histogram = merged.into_iter().collect();
        self.refresh_percentiles();
    }

    /// Sets `p50_ns` and `p99_ns` from the histogram.
    pub fn refresh_percentiles(&mut self) {
        self.p50_ns = self.percentile(0.5);
        self.p99_ns = self.percentile(0.99);
    }
}

/// One half (main, or the renderer half of one frame) of an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HalfSnapshot {
    /// Which half: main, or the renderer half of a frame. (Libraries built before this field
    /// had its type sent the peer number as `peer`; that still decodes.)
    #[serde(alias = "peer")]
    pub half: crate::Half,
    /// Number of listeners per channel.
    pub listeners: BTreeMap<String, usize>,
    /// Channels with a registered handler.
    pub handlers: Vec<String>,
    /// Invokes this half is waiting on.
    pub pending_requests: usize,
    /// Requests this half is handling right now.
    pub running_handlers: usize,
    /// Tasks spawned through the half's handle and still alive.
    pub tasks: usize,
    /// Keys in the half's store replica.
    pub store_keys: usize,
    /// The last store sequence number the half's replica applied.
    pub store_seq: u64,
    /// Store watchers (of both tiers).
    pub watchers: usize,
    /// Keys in the half's replica of the persisted tier.
    #[serde(default)]
    pub storage_keys: usize,
    /// The last sequence number of the persisted tier the half's replica applied.
    #[serde(default)]
    pub storage_seq: u64,
}

/// A store write a renderer half asks main to sequence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreWrite {
    /// Chosen by the writer, to recognise its own write when it comes back sequenced.
    pub write_id: u64,
    /// The key to write.
    pub key: String,
    /// The new MessagePack value; `None` deletes the key.
    #[serde(with = "serde_bytes", default)]
    pub value: Option<Vec<u8>>,
}

/// A write as main sequenced it: every replica applies updates in `seq` order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreUpdate {
    /// 1 for the first write of an activation, then +1 per write.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// The MessagePack value before the write; `None` if the key was absent.
    #[serde(with = "serde_bytes", default)]
    pub old: Option<Vec<u8>>,
    /// The MessagePack value after the write; `None` if the write deleted the key.
    #[serde(with = "serde_bytes", default)]
    pub new: Option<Vec<u8>>,
    /// The half that made the write.
    pub writer: Peer,
    /// The writer's [`StoreWrite::write_id`] (0 for main's own writes).
    pub write_id: u64,
}

/// A [`crate::message::Message`] that owns its buffers: what an instance queues in its mailbox, and what
/// travels on a child connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedMessage {
    /// One of [`crate::abi::kind`].
    pub kind: u32,
    /// For replies: OK or an error code.
    pub status: u32,
    /// The sending half.
    pub origin: Peer,
    /// The receiving half, or [`crate::abi::PEER_ALL`].
    pub target: Peer,
    /// The request this message belongs to (invokes, replies, cancels).
    pub request_id: u64,
    /// The channel name; empty for replies and cancels, which are matched by request id.
    pub channel: String,
    /// The MessagePack value.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl OwnedMessage {
    /// The bytes it holds (channel name and payload): what a mailbox counts.
    pub fn size(&self) -> u64 {
        (self.channel.len() + self.payload.len()) as u64
    }
}

/// How deeply arrays and maps may nest in a value another side produced (an enum variant with
/// data is a map of one entry, so a recursive enum counts one level per variant). Decoding
/// recurses once per level, on threads with 2 MiB stacks, and `rmp_serde` bounds neither
/// enum nesting nor (within its own limit of 1024) a stack frame: deeper values overflowed the
/// stack and killed the process. The same limit as `serde_json`'s.
pub const MAX_DEPTH: usize = 128;

/// Decodes a MessagePack value another side produced, as `rmp_serde::from_slice` does, after
/// refusing one that nests deeper than [`MAX_DEPTH`] (with `DepthLimitExceeded`).
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, rmp_serde::decode::Error> {
    if nests_deeper_than(bytes, MAX_DEPTH) {
        return Err(rmp_serde::decode::Error::DepthLimitExceeded);
    }
    rmp_serde::from_slice(bytes)
}

/// Decodes `bytes` as a received value of [`crate::SHARED_FROM`] bytes or more is decoded: as
/// [`decode`] does, with the [`crate::Binary`] values in it views of `bytes` instead of copies.
/// Public for the fuzz targets, which check that it decodes what [`decode`] does.
#[doc(hidden)]
pub fn decode_sharing<T: serde::de::DeserializeOwned>(bytes: &bytes::Bytes) -> Result<T, rmp_serde::decode::Error> {
    crate::binary::sharing(bytes, || decode(bytes))
}

/// Whether the first MessagePack value in `bytes` nests arrays and maps more than `limit`
/// deep. Reads markers and lengths only, without recursing or allocating; bytes that are
/// malformed or cut short before the limit is passed are left for decoding to refuse.
fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    // Nesting past `limit` takes `limit + 1` arrays or maps, a marker byte each: a value no
    // longer than `limit` cannot (most messages), so it is neither walked nor given the table
    // of open containers, whose zeroing cost more than the walk of a small value.
    if bytes.len() <= limit.min(MAX_DEPTH) {
        return false;
    }
    /// The big-endian length of `width` bytes after the marker at `at`.
    fn length(bytes: &[u8], at: usize, width: usize) -> Option<u64> {
        let field = bytes.get(at + 1..at + 1 + width)?;
        Some(field.iter().fold(0, |length, &byte| length << 8 | u64::from(byte)))
    }
    // Items still to come in each open array or map, innermost last.
    let mut open = [0u64; MAX_DEPTH];
    let limit = limit.min(MAX_DEPTH);
    let mut depth = 0;
    let mut at = 0;
    while let Some(&marker) = bytes.get(at) {
        // (bytes to skip to the next marker, items if it is an array or a map)
        let (skip, items) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (1, None),
            0x80..=0x8f => (1, Some(u64::from(marker & 0x0f) * 2)),
            0x90..=0x9f => (1, Some(u64::from(marker & 0x0f))),
            0xa0..=0xbf => (1 + u64::from(marker & 0x1f), None),
            0xcc | 0xd0 => (2, None),
            0xcd | 0xd1 | 0xd4 => (3, None),
            0xd5 => (4, None),
            0xca | 0xce | 0xd2 => (5, None),
            0xd6 => (6, None),
            0xcb | 0xcf | 0xd3 => (9, None),
            0xd7 => (10, None),
            0xd8 => (18, None),
            // bin and str: a length, then the data; ext: a length, a type byte, the data.
            0xc4 | 0xd9 | 0xc5 | 0xda | 0xc6 | 0xdb | 0xc7 | 0xc8 | 0xc9 => {
                let width = match marker {
                    0xc4 | 0xd9 | 0xc7 => 1,
                    0xc5 | 0xda | 0xc8 => 2,
                    _ => 4,
                };
                let ext = u64::from(matches!(marker, 0xc7..=0xc9));
                let Some(data) = length(bytes, at, width) else { return false };
                (1 + width as u64 + ext + data, None)
            }
            0xdc..=0xdf => {
                let width = if matches!(marker, 0xdc | 0xde) { 2 } else { 4 };
                let Some(count) = length(bytes, at, width) else { return false };
                (1 + width as u64, Some(if marker >= 0xde { count * 2 } else { count }))
            }
            // 0xc1 is never used: decoding refuses it.
            _ => return false,
        };
        at = match usize::try_from(skip).ok().and_then(|skip| at.checked_add(skip)) {
            Some(next) => next,
            None => return false,
        };
        if let Some(items) = items {
            if depth == limit {
                return true;
            }
            if items > 0 {
                open[depth] = items;
                depth += 1;
                continue;
            }
        }
        // One item is complete (a scalar or an empty array or map), and with it every
        // container it was the last item of.
        loop {
            let Some(last) = depth.checked_sub(1) else { return false };
            open[last] -= 1;
            if open[last] > 0 {
                break;
            }
            depth = last;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_cover_every_value_within_a_quarter_octave() {
        for ns in (0..10_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = ChannelStats::bucket(ns);
            assert!(usize::from(bucket) < ChannelStats::BUCKETS);
            let max = ChannelStats::bucket_max(bucket);
            assert!(ns <= max, "{ns} in bucket {bucket} up to {max}");
            assert!(max - ns <= ns / 4, "{ns} in bucket {bucket} up to {max}");
            assert!(bucket == 0 || ChannelStats::bucket_max(bucket - 1) < ns, "{ns} belongs below {bucket}");
        }
    }

    #[test]
    fn channel_stats_merge_exactly_and_give_percentiles() {
        let stats = |values: &[u64]| {
            let mut histogram = std::collections::BTreeMap::<u16, u64>::new();
            for ns in values {
                *histogram.entry(ChannelStats::bucket(*ns)).or_default() += 1;
            }
            let mut stats = ChannelStats {
                channel: "c".into(),
                count: values.len() as u64,
                max_ns: values.iter().copied().max().unwrap_or(0),
                histogram: histogram.into_iter().collect(),
                ..ChannelStats::default()
            };
            stats.refresh_percentiles();
            stats
        };
        let mut a = stats(&[1_000; 98]);
        a.merge(&stats(&[1_000_000, 5_000_000]));
        assert_eq!((a.count, a.timed(), a.max_ns), (100, 100, 5_000_000));
        assert_eq!(a.p50_ns, ChannelStats::bucket_max(ChannelStats::bucket(1_000)));
        assert_eq!(a.p99_ns, ChannelStats::bucket_max(ChannelStats::bucket(1_000_000)));
        assert_eq!(ChannelStats::default().percentile(0.99), 0);
    }

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; levels];
        bytes.push(0xc0);
        bytes
    }

    #[test]
    fn nesting_is_measured_across_every_marker() {
        // [1, "ab", {"k": [nil]}, bin(2), ext(1), [] , 3.0]: depth 3 at "k"'s array.
        let bytes = [
            0x97, 0x01, 0xa2, b'a', b'b', 0x81, 0xa1, b'k', 0x91, 0xc0, 0xc4, 0x02, 0, 0, 0xd4, 7, 0, 0x90, 0xcb, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        assert!(!nests_deeper_than(&bytes, 3));
        assert!(nests_deeper_than(&bytes, 2));
        // What follows the first value does not count.
        let mut two = nested_arrays(3);
        two.extend(nested_arrays(10));
        assert!(!nests_deeper_than(&two, 3));
        // Lengths wider than a byte, and maps counting keys and values.
        assert!(!nests_deeper_than(&[0xdc, 0, 2, 0x90, 0xde, 0, 1, 0x01, 0x01], 2));
        assert!(nests_deeper_than(&[0xdc, 0, 2, 0x90, 0xde, 0, 1, 0x01, 0x90], 2));
        // An empty array or map is a level too.
        assert!(nests_deeper_than(&[0x91, 0x80], 1));
        // Truncated or malformed bytes are left to the decoder.
        assert!(!nests_deeper_than(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1));
        assert!(!nests_deeper_than(&[0x91, 0xc1], 1));
        assert!(!nests_deeper_than(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0x91], 0));
    }

    #[test]
    fn a_value_just_long_enough_to_nest_past_the_limit_is_still_walked() {
        // `limit + 1` markers are the shortest value nesting deeper than `limit`.
        assert!(nests_deeper_than(&[0x91; 4], 3));
        assert!(nests_deeper_than(&nested_arrays(MAX_DEPTH)[..=MAX_DEPTH], MAX_DEPTH - 1));
        assert!(!nests_deeper_than(&[0x91; 3], 3));
        assert!(!nests_deeper_than(&nested_arrays(MAX_DEPTH), MAX_DEPTH));
        assert!(matches!(
            decode::<Vec<u8>>(&nested_arrays(MAX_DEPTH + 1)),
            Err(rmp_serde::decode::Error::DepthLimitExceeded)
        ));
    }

    /// `boundary_values` found them: 292 maps nested in one another overflowed its decoding
    /// stack decoding an `rmpv::Value` (the dev console's type), 302 arrays decoding a
    /// `serde_json::Value` (inputs: a selector byte, then a value cut short: the stack ran out
    /// first). Maps 1000 deep (`rmp_serde` allows 1023) overflowed this test's own 2 MiB thread
    /// in a debug build: a child could end the host, one half of an extension another's process.
    #[test]
    fn fuzz_regression_nested_values_are_refused_not_a_stack_overflow() {
        let maps = include_bytes!("../../fuzz/regressions/boundary_values-rmpv-nested-maps");
        let arrays = include_bytes!("../../fuzz/regressions/boundary_values-json-nested-arrays");
        let mut deeper = [0x81, 0x01].repeat(1000);
        deeper.push(0xc0);
        for value in [&deeper[..], &maps[1..], &arrays[1..]] {
            assert!(matches!(decode::<rmpv::Value>(value), Err(rmp_serde::decode::Error::DepthLimitExceeded)));
            assert!(matches!(decode::<serde_json::Value>(value), Err(rmp_serde::decode::Error::DepthLimitExceeded)));
        }
    }

    /// A recursive enum: `rmp_serde` counts no depth for enum variants at all, so any depth
    /// decoded, whatever the stack (2 bytes a level: `{1: {1: ...}}`, by variant index).
    #[test]
    fn regression_recursive_enums_are_refused_not_a_stack_overflow() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Chain {
            End,
            Next(Box<Chain>),
        }
        let mut chain = [0x81, 0x01].repeat(100_000);
        chain.push(0x00);
        assert!(matches!(decode::<Chain>(&chain), Err(rmp_serde::decode::Error::DepthLimitExceeded)));
        let mut short = [0x81, 0x01].repeat(MAX_DEPTH);
        short.push(0x00);
        assert!(decode::<Chain>(&short).is_ok());
    }

    /// Unknown fields are skipped, recursing once per level of what they hold: 1000 levels (in
    /// a `Control`, which every instance decodes) overflowed a 2 MiB thread in a debug build.
    #[test]
    fn regression_deep_unknown_fields_are_refused_not_a_stack_overflow() {
        let mut command = vec![0x81, 0xa7];
        command.extend_from_slice(b"Inspect");
        command.extend_from_slice(&[0x82, 0xaa]);
        command.extend_from_slice(b"completion");
        command.extend_from_slice(&[0x01, 0xa1, b'x']);
        let valid = [&command[..], &[0xc0]].concat();
        assert_eq!(decode::<Control>(&valid).ok(), Some(Control::Inspect { completion: 1 }));
        command.extend(nested_arrays(1000));
        assert!(matches!(decode::<Control>(&command), Err(rmp_serde::decode::Error::DepthLimitExceeded)));
    }

    #[test]
    fn values_up_to_the_limit_decode_deeper_ones_are_refused() {
        let at_limit: Vec<u8> = nested_arrays(MAX_DEPTH);
        assert!(decode::<serde_json::Value>(&at_limit).is_ok());
        let deeper = nested_arrays(MAX_DEPTH + 1);
        assert!(matches!(decode::<serde_json::Value>(&deeper), Err(rmp_serde::decode::Error::DepthLimitExceeded)));
    }
}
