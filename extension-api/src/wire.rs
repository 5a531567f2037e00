//! Plain data exchanged between the host and an extension, encoded as MessagePack with named
//! fields. No I/O and no behaviour lives here: the same types travel over a function call in
//! process and over a socket to a child process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::abi::{self, Peer, RawMessage, RawSlice};

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
}

/// Bounds an instance's mailbox: the messages queued for its thread. Past either bound, a
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
        /// How long `deactivate` may run, in milliseconds.
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
        /// How long `deactivate` may run, in milliseconds.
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
            | Control::StopRouting { completion } => *completion,
        }
    }
}

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
}

/// One half (main, or the renderer half of one frame) of an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HalfSnapshot {
    /// Which half: [`crate::abi::PEER_MAIN`] or a frame number.
    pub peer: Peer,
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
    /// Store watchers.
    pub watchers: usize,
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

/// A [`RawMessage`] that owns its buffers: what an instance queues in its mailbox, and what
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
    /// Copies a borrowed message; `None` if its buffers are invalid or a channel name is not
    /// UTF-8.
    ///
    /// # Safety
    /// The slices of `message` must be valid for this call (or null with length 0).
    pub unsafe fn copy(message: &RawMessage) -> Option<OwnedMessage> {
        // SAFETY: the caller's contract.
        let channel = unsafe { message.channel.as_bytes() }?;
        // SAFETY: the caller's contract.
        let payload = unsafe { message.payload.as_bytes() }?;
        Some(OwnedMessage {
            kind: message.kind,
            status: message.status,
            origin: message.origin,
            target: message.target,
            request_id: message.request_id,
            // Replies and cancels are matched by request id; their channel is not needed.
            channel: match message.kind {
                abi::kind::REPLY | abi::kind::CANCEL => String::new(),
                _ => std::str::from_utf8(channel).ok()?.to_owned(),
            },
            payload: payload.to_vec(),
        })
    }

    /// The bytes it holds (channel name and payload): what a mailbox counts.
    pub fn size(&self) -> u64 {
        (self.channel.len() + self.payload.len()) as u64
    }

    /// Borrows it as a [`RawMessage`] for one call.
    pub fn raw(&self) -> RawMessage {
        RawMessage {
            kind: self.kind,
            status: self.status,
            origin: self.origin,
            target: self.target,
            request_id: self.request_id,
            channel: RawSlice::new(self.channel.as_bytes()),
            payload: RawSlice::new(&self.payload),
        }
    }
}
