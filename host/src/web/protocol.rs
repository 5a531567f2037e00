//! The wire between a web renderer's page and the host (the renderer socket): each WebSocket
//! message is one binary MessagePack array whose first element is a tag. Plain data and pure
//! functions, no I/O: the socket's read loop decodes with [`decode`], its writers encode with
//! [`encode_message`] and [`encode_control`].
//!
//! Anything that is not exactly one of the shapes below is a [`Violation`]: the connection
//! ends (close code 1008) with its text as the reason.

use std::collections::BTreeMap;

use extension_api::abi::{self, Peer};
use extension_api::message::Message;
use extension_api::wire::{Completion, HalfSnapshot, StorageSeed, StoreSnapshot};
use extension_api::{FrameId, Half};
use rmpv::Value;

/// The tags of the page's messages.
mod tag {
    pub(super) const HELLO: u64 = 0;
    pub(super) const MESSAGE: u64 = 1;
    pub(super) const COMPLETE: u64 = 2;
    pub(super) const LOG: u64 = 3;
}

/// A message the page sent, decoded and checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PageMessage {
    /// `[0, token]`: the first message of a connection.
    Hello { token: String },
    /// `[1, kind, status, target, request_id, channel, payload]`: no origin (the host fills in
    /// the connection's frame).
    Message { kind: u32, status: u32, target: Peer, request_id: u64, channel: String, payload: Vec<u8> },
    /// `[2, completion, outcome]`: the answer to a CONTROL command.
    Complete { completion: u64, outcome: Outcome },
    /// `[3, level, text]`: a log record (1 error ... 5 trace).
    Log { level: u32, text: String },
}

/// How the page answered a CONTROL command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Done,
    Failed(String),
    Panicked(String),
    TimedOut(u64),
    Inspected(PageInspect),
}

/// What the page reports about its half (`[4, inspect]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PageInspect {
    pub(crate) listeners: BTreeMap<String, usize>,
    pub(crate) handlers: Vec<String>,
    pub(crate) pending_requests: usize,
    pub(crate) running_handlers: usize,
    pub(crate) store_keys: usize,
    pub(crate) store_seq: u64,
    pub(crate) watchers: usize,
    pub(crate) storage_keys: usize,
    pub(crate) storage_seq: u64,
}

impl Outcome {
    /// The completion an endpoint waits for; an inspect becomes one half, frame `frame`'s.
    pub(crate) fn into_completion(self, frame: Peer) -> Completion {
        match self {
            Outcome::Done => Completion::Done,
            Outcome::Failed(reason) => Completion::Failed { reason },
            Outcome::Panicked(message) => Completion::Panicked { message },
            Outcome::TimedOut(timeout_ms) => Completion::TimedOut { timeout_ms },
            Outcome::Inspected(inspect) => Completion::Inspected(extension_api::wire::InstanceSnapshot {
                halves: vec![HalfSnapshot {
                    half: Half::Frame(FrameId(frame)),
                    listeners: inspect.listeners,
                    handlers: inspect.handlers,
                    pending_requests: inspect.pending_requests,
                    running_handlers: inspect.running_handlers,
                    store_keys: inspect.store_keys,
                    store_seq: inspect.store_seq,
                    watchers: inspect.watchers,
                    storage_keys: inspect.storage_keys,
                    storage_seq: inspect.storage_seq,
                    ..HalfSnapshot::default()
                }],
                ..Default::default()
            }),
        }
    }
}

/// Why a page's message was refused: the connection ends with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Violation(pub(crate) String);

fn violation(text: impl Into<String>) -> Violation {
    Violation(text.into())
}

/// The kinds a page may send: broadcast, invoke, reply, cancel, a write of the store or of the
/// persisted tier.
pub(crate) fn page_may_send(kind: u32) -> bool {
    matches!(
        kind,
        abi::kind::BROADCAST
            | abi::kind::INVOKE
            | abi::kind::REPLY
            | abi::kind::CANCEL
            | abi::kind::STORE_WRITE
            | abi::kind::STORAGE_WRITE
    )
}

/// Most MessagePack values (each element of an array or map, at any depth, counts) one
/// message of a page may hold. A decoded value takes some 40 bytes for each byte that encoded
/// it (a nil is one byte), so a message at the size limit made of small values would cost the
/// host hundreds of megabytes to decode: the count is checked first, on the bytes. Payloads
/// are binary (one value), so only an inspect's listeners and handlers come anywhere near it.
pub(crate) const MAX_VALUES: usize = 65_536;

/// Counts the values in `bytes` without decoding them: more than [`MAX_VALUES`], or more
/// than the bytes could hold, is a violation (a truncated or malformed message is otherwise
/// left to the decoder to describe).
fn check_values(bytes: &[u8]) -> Result<(), Violation> {
    fn length(bytes: &[u8], at: &mut usize, width: usize) -> Option<u64> {
        let field = bytes.get(*at..at.checked_add(width)?)?;
        *at += width;
        Some(field.iter().fold(0u64, |length, byte| (length << 8) | u64::from(*byte)))
    }
    let mut at = 0usize;
    // Values still to read: the message itself, then each array's and map's elements.
    let mut pending: u64 = 1;
    let mut values = 0usize;
    while pending > 0 {
        let Some(&marker) = bytes.get(at) else { return Ok(()) };
        at += 1;
        pending -= 1;
        values += 1;
        if values > MAX_VALUES {
            return Err(violation(format!("a message may hold at most {MAX_VALUES} MessagePack values")));
        }
        // (bytes of data to skip, elements that follow)
        let (skip, elements) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (length(bytes, &mut at, 1).unwrap_or(u64::MAX), 0),
            0xc5 | 0xda => (length(bytes, &mut at, 2).unwrap_or(u64::MAX), 0),
            0xc6 | 0xdb => (length(bytes, &mut at, 4).unwrap_or(u64::MAX), 0),
            0xc7 => (length(bytes, &mut at, 1).map_or(u64::MAX, |length| length + 1), 0),
            0xc8 => (length(bytes, &mut at, 2).map_or(u64::MAX, |length| length + 1), 0),
            0xc9 => (length(bytes, &mut at, 4).map_or(u64::MAX, |length| length + 1), 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, length(bytes, &mut at, 2).unwrap_or(u64::MAX)),
            0xdd => (0, length(bytes, &mut at, 4).unwrap_or(u64::MAX)),
            0xde => (0, length(bytes, &mut at, 2).map_or(u64::MAX, |length| 2 * length)),
            0xdf => (0, length(bytes, &mut at, 4).map_or(u64::MAX, |length| 2 * length)),
            0xc1 => return Err(violation("not MessagePack: the reserved marker 0xc1")),
        };
        at = usize::try_from(skip).ok().and_then(|skip| at.checked_add(skip)).unwrap_or(usize::MAX);
        pending = pending.saturating_add(elements);
        // Each value takes at least a byte.
        let left = bytes.len().saturating_sub(at) as u64;
        if at > bytes.len() || pending > left {
            return Err(violation("not MessagePack: the message is truncated"));
        }
    }
    Ok(())
}

/// Decodes one binary WebSocket message of the page.
pub(crate) fn decode(bytes: &[u8]) -> Result<PageMessage, Violation> {
    check_values(bytes)?;
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest).map_err(|error| violation(format!("not MessagePack: {error}")))?;
    if !rest.is_empty() {
        return Err(violation(format!("{} bytes after the message", rest.len())));
    }
    let Value::Array(items) = value else {
        return Err(violation("a message must be a MessagePack array"));
    };
    let tag = items.first().ok_or_else(|| violation("an empty array"))?;
    let tag = tag.as_u64().ok_or_else(|| violation("the tag must be an unsigned integer"))?;
    let fields = &items[1..];
    match tag {
        tag::HELLO => {
            let [token] = arity::<1>("hello", fields)?;
            Ok(PageMessage::Hello { token: string("hello token", token)? })
        }
        tag::MESSAGE => {
            let [kind, status, target, request_id, channel, payload] = arity::<6>("message", fields)?;
            let kind = u32_of("message kind", kind)?;
            if !page_may_send(kind) {
                return Err(violation(format!("a page may not send messages of kind {kind}")));
            }
            Ok(PageMessage::Message {
                kind,
                status: u32_of("message status", status)?,
                target: uint("message target", target)?,
                request_id: uint("message request id", request_id)?,
                channel: string("message channel", channel)?,
                payload: binary("message payload", payload)?,
            })
        }
        tag::COMPLETE => {
            let [completion, outcome] = arity::<2>("complete", fields)?;
            Ok(PageMessage::Complete { completion: uint("completion", completion)?, outcome: decode_outcome(outcome)? })
        }
        tag::LOG => {
            let [level, text] = arity::<2>("log", fields)?;
            let level = u32_of("log level", level)?;
            if !(1..=5).contains(&level) {
                return Err(violation(format!("log level {level} is not 1 (error) to 5 (trace)")));
            }
            Ok(PageMessage::Log { level, text: string("log text", text)? })
        }
        other => Err(violation(format!("unknown tag {other}"))),
    }
}

fn decode_outcome(value: &Value) -> Result<Outcome, Violation> {
    let Value::Array(items) = value else {
        return Err(violation("a completion's outcome must be an array"));
    };
    let tag = items.first().and_then(Value::as_u64).ok_or_else(|| violation("an outcome needs an unsigned tag"))?;
    let fields = &items[1..];
    match tag {
        0 => {
            arity::<0>("outcome done", fields)?;
            Ok(Outcome::Done)
        }
        1 => {
            let [reason] = arity::<1>("outcome failed", fields)?;
            Ok(Outcome::Failed(string("failure reason", reason)?))
        }
        2 => {
            let [message] = arity::<1>("outcome panicked", fields)?;
            Ok(Outcome::Panicked(string("panic message", message)?))
        }
        3 => {
            let [timeout] = arity::<1>("outcome timed out", fields)?;
            Ok(Outcome::TimedOut(uint("timeout", timeout)?))
        }
        4 => {
            let [inspect] = arity::<1>("outcome inspected", fields)?;
            Ok(Outcome::Inspected(decode_inspect(inspect)?))
        }
        other => Err(violation(format!("unknown outcome tag {other}"))),
    }
}

fn decode_inspect(value: &Value) -> Result<PageInspect, Violation> {
    let Value::Map(entries) = value else {
        return Err(violation("an inspect must be a map"));
    };
    let mut inspect = PageInspect::default();
    for (key, value) in entries {
        let key = key.as_str().ok_or_else(|| violation("an inspect's keys must be strings"))?;
        match key {
            "listeners" => {
                let Value::Map(listeners) = value else {
                    return Err(violation("inspect listeners must be a map"));
                };
                for (channel, count) in listeners {
                    inspect.listeners.insert(string("listener channel", channel)?, usize_of("listener count", count)?);
                }
            }
            "handlers" => {
                let Value::Array(handlers) = value else {
                    return Err(violation("inspect handlers must be an array"));
                };
                inspect.handlers =
                    handlers.iter().map(|handler| string("handler channel", handler)).collect::<Result<_, _>>()?;
            }
            "pending_requests" => inspect.pending_requests = usize_of(key, value)?,
            "running_handlers" => inspect.running_handlers = usize_of(key, value)?,
            "store_keys" => inspect.store_keys = usize_of(key, value)?,
            "store_seq" => inspect.store_seq = uint(key, value)?,
            "watchers" => inspect.watchers = usize_of(key, value)?,
            "storage_keys" => inspect.storage_keys = usize_of(key, value)?,
            "storage_seq" => inspect.storage_seq = uint(key, value)?,
            other => return Err(violation(format!("unknown inspect field {other:?}"))),
        }
    }
    Ok(inspect)
}

fn arity<'a, const N: usize>(what: &str, fields: &'a [Value]) -> Result<&'a [Value; N], Violation> {
    fields.try_into().map_err(|_| violation(format!("{what} takes {N} fields, not {}", fields.len())))
}

fn uint(what: &str, value: &Value) -> Result<u64, Violation> {
    value.as_u64().ok_or_else(|| violation(format!("{what} must be an unsigned integer")))
}

fn u32_of(what: &str, value: &Value) -> Result<u32, Violation> {
    u32::try_from(uint(what, value)?).map_err(|_| violation(format!("{what} is out of range")))
}

fn usize_of(what: &str, value: &Value) -> Result<usize, Violation> {
    usize::try_from(uint(what, value)?).map_err(|_| violation(format!("{what} is out of range")))
}

fn string(what: &str, value: &Value) -> Result<String, Violation> {
    match value {
        Value::String(text) => {
            text.as_str().map(str::to_owned).ok_or_else(|| violation(format!("{what} is not valid UTF-8")))
        }
        _ => Err(violation(format!("{what} must be a string"))),
    }
}

fn binary(what: &str, value: &Value) -> Result<Vec<u8>, Violation> {
    match value {
        Value::Binary(bytes) => Ok(bytes.clone()),
        _ => Err(violation(format!("{what} must be binary"))),
    }
}

fn write(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

/// `[0, {frame, extension}]`: the hello's token checked out.
pub(crate) fn encode_welcome(frame: Peer, extension: &str) -> Vec<u8> {
    write(&Value::Array(vec![
        Value::from(0u64),
        Value::Map(vec![
            (Value::from("frame"), Value::from(frame)),
            (Value::from("extension"), Value::from(extension)),
        ]),
    ]))
}

/// `[1, kind, status, origin, target, request_id, channel, payload]`: a message of the
/// namespace, exactly its fields.
/// Borrowed (no copy of the payload into a value first), into a buffer of the message's size:
/// one allocation per message.
pub(crate) fn encode_message(message: &Message<'_>) -> Vec<u8> {
    use rmpv::ValueRef;
    let value = ValueRef::Array(vec![
        ValueRef::from(1u64),
        ValueRef::from(message.kind),
        ValueRef::from(message.status),
        ValueRef::from(message.origin),
        ValueRef::from(message.target),
        ValueRef::from(message.request_id),
        ValueRef::from(message.channel),
        ValueRef::Binary(message.payload),
    ]);
    // The array's marker and the tag (a byte each), the kind and the status (5 bytes at most
    // each), the origin, target and request id (9), the channel's and the payload's markers
    // with their lengths (5 each) and their bytes.
    let mut out = Vec::with_capacity(2 + 2 * 5 + 3 * 9 + 2 * 5 + message.channel.len() + message.payload.len());
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value_ref(&mut out, &value);
    out
}

/// A CONTROL command the page runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Seed the store replica.
    Seed(StoreSnapshot),
    /// Open the half in `frame` (import `/index.js`, run `activate`).
    Open(Peer),
    /// Close the half, its `deactivate` bounded by this many milliseconds.
    Close(u64),
    /// Report the half.
    Inspect,
    /// Seed the persisted tier's replica (main's), with the host's limits for it.
    SeedStorage(StorageSeed),
}

/// A replica's values as a map of key to binary value.
fn values_map(snapshot: &StoreSnapshot) -> Value {
    Value::Map(
        snapshot.values.iter().map(|(key, value)| (Value::from(key.as_str()), Value::Binary(value.to_vec()))).collect(),
    )
}

fn optional(text: Option<&str>) -> Value {
    text.map_or(Value::Nil, Value::from)
}

/// `[2, completion, command]`.
pub(crate) fn encode_control(completion: u64, command: &Command) -> Vec<u8> {
    let command = match command {
        Command::Seed(snapshot) => {
            Value::Array(vec![Value::from(0u64), Value::from(snapshot.seq), values_map(snapshot)])
        }
        Command::Open(frame) => Value::Array(vec![Value::from(1u64), Value::from(*frame)]),
        Command::Close(timeout_ms) => Value::Array(vec![Value::from(2u64), Value::from(*timeout_ms)]),
        Command::Inspect => Value::Array(vec![Value::from(3u64)]),
        // `[4, seq, values, unavailable, value_limit, total_limit, stored_version]`.
        Command::SeedStorage(seed) => Value::Array(vec![
            Value::from(4u64),
            Value::from(seed.snapshot.seq),
            values_map(&seed.snapshot),
            optional(seed.unavailable.as_deref()),
            Value::from(seed.value_limit),
            Value::from(seed.total_limit),
            optional(seed.stored_version.as_deref()),
        ]),
    };
    write(&Value::Array(vec![Value::from(2u64), Value::from(completion), command]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(value: Value) -> Vec<u8> {
        write(&value)
    }

    fn arr(items: Vec<Value>) -> Vec<u8> {
        bytes(Value::Array(items))
    }

    #[test]
    fn each_page_message_decodes() {
        assert_eq!(decode(&arr(vec![0.into(), "abc".into()])), Ok(PageMessage::Hello { token: "abc".to_owned() }));
        let message = arr(vec![
            1.into(),
            2.into(),
            0.into(),
            0.into(),
            Value::from(u64::MAX),
            "ch".into(),
            Value::Binary(vec![0xc0]),
        ]);
        assert_eq!(
            decode(&message),
            Ok(PageMessage::Message {
                kind: 2,
                status: 0,
                target: 0,
                request_id: u64::MAX,
                channel: "ch".to_owned(),
                payload: vec![0xc0]
            })
        );
        assert_eq!(
            decode(&arr(vec![2.into(), 7.into(), Value::Array(vec![0.into()])])),
            Ok(PageMessage::Complete { completion: 7, outcome: Outcome::Done })
        );
        assert_eq!(
            decode(&arr(vec![2.into(), 7.into(), Value::Array(vec![1.into(), "no".into()])])),
            Ok(PageMessage::Complete { completion: 7, outcome: Outcome::Failed("no".to_owned()) })
        );
        assert_eq!(
            decode(&arr(vec![2.into(), 7.into(), Value::Array(vec![2.into(), "boom".into()])])),
            Ok(PageMessage::Complete { completion: 7, outcome: Outcome::Panicked("boom".to_owned()) })
        );
        assert_eq!(
            decode(&arr(vec![2.into(), 7.into(), Value::Array(vec![3.into(), 50.into()])])),
            Ok(PageMessage::Complete { completion: 7, outcome: Outcome::TimedOut(50) })
        );
        let inspect = Value::Map(vec![
            ("listeners".into(), Value::Map(vec![("a".into(), 2.into())])),
            ("handlers".into(), Value::Array(vec!["h".into()])),
            ("pending_requests".into(), 1.into()),
            ("running_handlers".into(), 0.into()),
            ("store_keys".into(), 3.into()),
            ("store_seq".into(), 9.into()),
            ("watchers".into(), 4.into()),
            ("storage_keys".into(), 2.into()),
            ("storage_seq".into(), 6.into()),
        ]);
        let Ok(PageMessage::Complete { outcome, .. }) =
            decode(&arr(vec![2.into(), 1.into(), Value::Array(vec![4.into(), inspect])]))
        else {
            panic!("an inspect decodes")
        };
        let Completion::Inspected(snapshot) = outcome.into_completion(5) else { panic!("inspected") };
        let half = &snapshot.halves[0];
        assert_eq!(half.half, Half::Frame(FrameId(5)));
        assert_eq!(half.listeners.get("a"), Some(&2));
        assert_eq!((half.handlers.len(), half.pending_requests, half.store_keys, half.store_seq), (1, 1, 3, 9));
        assert_eq!((half.watchers, half.storage_keys, half.storage_seq), (4, 2, 6));
        assert_eq!(
            decode(&arr(vec![3.into(), 2.into(), "careful".into()])),
            Ok(PageMessage::Log { level: 2, text: "careful".to_owned() })
        );
    }

    /// Values in `value`, counted as [`check_values`] counts them.
    fn values_in(value: &Value) -> usize {
        1 + match value {
            Value::Array(items) => items.iter().map(values_in).sum(),
            Value::Map(entries) => entries.iter().map(|(key, value)| values_in(key) + values_in(value)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn values_are_counted_on_the_bytes_before_decoding() {
        // One of each encoding, widths included.
        let sample = Value::Array(vec![
            Value::from(5),
            Value::from(200),
            Value::from(60_000),
            Value::from(4_000_000_000u64),
            Value::from(u64::MAX),
            Value::from(-3),
            Value::from(-100),
            Value::from(-30_000),
            Value::from(-2_000_000_000i64),
            Value::from(i64::MIN),
            Value::F32(1.5),
            Value::F64(2.5),
            Value::Nil,
            Value::Boolean(true),
            Value::from("short"),
            Value::from("x".repeat(40)),
            Value::from("y".repeat(300)),
            Value::from("z".repeat(70_000)),
            Value::Binary(vec![1; 3]),
            Value::Binary(vec![2; 300]),
            Value::Binary(vec![3; 70_000]),
            Value::Ext(1, vec![0; 1]),
            Value::Ext(1, vec![0; 2]),
            Value::Ext(1, vec![0; 4]),
            Value::Ext(1, vec![0; 8]),
            Value::Ext(1, vec![0; 16]),
            Value::Ext(1, vec![0; 3]),
            Value::Ext(1, vec![0; 300]),
            Value::Ext(1, vec![0; 70_000]),
            Value::Map(vec![("a".into(), Value::Array(vec![1.into(); 20]))]),
            Value::Map((0..20).map(|key| (Value::from(key), Value::Nil)).collect()),
        ]);
        let per_sample = values_in(&sample);
        let repeats = (MAX_VALUES - 1) / per_sample;
        let mut items = vec![sample.clone(); repeats];
        items.extend(vec![Value::Nil; MAX_VALUES - 1 - repeats * per_sample]);
        let at_limit = Value::Array(items.clone());
        assert_eq!(values_in(&at_limit), MAX_VALUES);
        assert_eq!(check_values(&bytes(at_limit)), Ok(()));
        items.push(Value::Nil);
        let over = check_values(&bytes(Value::Array(items))).unwrap_err();
        assert!(over.0.contains("at most 65536 MessagePack values"), "{over}");
        // Claims the bytes cannot hold are refused before anything is allocated for them.
        assert!(check_values(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).unwrap_err().0.contains("truncated"));
        assert!(check_values(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]).unwrap_err().0.contains("truncated"));
        assert!(check_values(&[0x91, 0xc1]).unwrap_err().0.contains("0xc1"));
        // A flood of nils as a page's hello: refused on the count, not decoded.
        let mut flood = vec![0x92, 0x00, 0xdd, 0x00, 0x10, 0x00, 0x00];
        flood.extend(vec![0xc0; 1 << 20]);
        assert!(decode(&flood).unwrap_err().0.contains("at most"));
    }

    #[test]
    fn every_malformed_shape_is_a_violation() {
        let bad: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "not MessagePack"),
            (vec![0xd9, 0xff], "not MessagePack"),
            (vec![0x91, 0x00, 0x00], "after the message"),
            (bytes(Value::from(1)), "must be a MessagePack array"),
            (arr(vec![]), "empty array"),
            (arr(vec!["x".into()]), "tag must be"),
            (arr(vec![9.into()]), "unknown tag 9"),
            (arr(vec![0.into()]), "hello takes 1 fields, not 0"),
            (arr(vec![0.into(), 5.into()]), "hello token must be a string"),
            (arr(vec![0.into(), "a".into(), "b".into()]), "hello takes 1"),
            (arr(vec![1.into(), 2.into(), 0.into(), 0.into(), 1.into(), "c".into()]), "message takes 6"),
            (
                arr(vec![1.into(), 6.into(), 0.into(), 0.into(), 1.into(), "c".into(), Value::Binary(vec![])]),
                "may not send messages of kind 6",
            ),
            (
                arr(vec![1.into(), 11.into(), 0.into(), 0.into(), 1.into(), "c".into(), Value::Binary(vec![])]),
                "kind 11",
            ),
            (
                arr(vec![1.into(), 2.into(), 0.into(), 0.into(), 1.into(), "c".into(), "not binary".into()]),
                "payload must be binary",
            ),
            (
                arr(vec![1.into(), 2.into(), 0.into(), Value::from(-1), 1.into(), "c".into(), Value::Binary(vec![])]),
                "target must be an unsigned",
            ),
            (
                arr(vec![
                    1.into(),
                    Value::from(1u64 << 40),
                    0.into(),
                    0.into(),
                    1.into(),
                    "c".into(),
                    Value::Binary(vec![]),
                ]),
                "kind is out of range",
            ),
            (
                arr(vec![
                    1.into(),
                    2.into(),
                    0.into(),
                    0.into(),
                    1.into(),
                    Value::Binary(vec![]),
                    Value::Binary(vec![]),
                ]),
                "channel must be a string",
            ),
            (arr(vec![2.into(), 1.into()]), "complete takes 2"),
            (arr(vec![2.into(), 1.into(), 0.into()]), "outcome must be an array"),
            (arr(vec![2.into(), 1.into(), Value::Array(vec![])]), "unsigned tag"),
            (arr(vec![2.into(), 1.into(), Value::Array(vec![0.into(), 1.into()])]), "outcome done takes 0"),
            (arr(vec![2.into(), 1.into(), Value::Array(vec![8.into()])]), "unknown outcome tag 8"),
            (arr(vec![2.into(), 1.into(), Value::Array(vec![4.into(), 1.into()])]), "inspect must be a map"),
            (
                arr(vec![2.into(), 1.into(), Value::Array(vec![4.into(), Value::Map(vec![("x".into(), 1.into())])])]),
                "unknown inspect field",
            ),
            (arr(vec![3.into(), 0.into(), "t".into()]), "log level 0"),
            (arr(vec![3.into(), 6.into(), "t".into()]), "log level 6"),
            (arr(vec![3.into(), 1.into(), 1.into()]), "log text must be a string"),
        ];
        for (message, expected) in bad {
            let error = decode(&message).expect_err(expected);
            assert!(error.0.contains(expected), "{:?}: {error}", message);
        }
    }

    /// `encode_message` writes what the generic encoding of the same value wrote, byte for
    /// byte, for every width of its integers, channel and payload, within the buffer it sized.
    #[test]
    fn host_messages_are_the_generic_encoding_byte_for_byte() {
        let ints = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, u64::from(u32::MAX), 1 << 32, 1 << 53, u64::MAX];
        let lengths = [0, 1, 31, 32, 255, 256, 0xffff, 0x1_0000];
        let text: String = "é🎉x".chars().cycle().take(0x1_0000).collect();
        for (at, &int) in ints.iter().enumerate() {
            for &length in &lengths {
                let channel =
                    &text[..text.char_indices().map(|(i, _)| i).take_while(|&i| i <= length).last().unwrap_or(0)];
                let payload = vec![7u8; length];
                let small = u32::try_from(int).unwrap_or(u32::MAX);
                let message = Message {
                    kind: small,
                    status: u32::try_from(ints[ints.len() - 1 - at]).unwrap_or(small),
                    origin: int,
                    target: ints[(at + 3) % ints.len()],
                    request_id: int ^ 0x55,
                    channel,
                    payload: &payload,
                };
                let generic = write(&Value::Array(vec![
                    Value::from(1u64),
                    Value::from(message.kind),
                    Value::from(message.status),
                    Value::from(message.origin),
                    Value::from(message.target),
                    Value::from(message.request_id),
                    Value::from(message.channel),
                    Value::Binary(message.payload.to_vec()),
                ]));
                let encoded = encode_message(&message);
                assert_eq!(encoded, generic, "int {int}, channel {} bytes, payload {length}", channel.len());
            }
        }
    }

    #[test]
    fn host_messages_encode_as_the_spec_says() {
        let message = Message {
            kind: abi::kind::INVOKE,
            status: 0,
            origin: 0,
            target: 3,
            request_id: u64::MAX,
            channel: "ch",
            payload: &[1, 2],
        };
        let value = rmpv::decode::read_value(&mut &encode_message(&message)[..]).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                1.into(),
                2.into(),
                0.into(),
                0.into(),
                3.into(),
                Value::from(u64::MAX),
                "ch".into(),
                Value::Binary(vec![1, 2])
            ])
        );
        let mut snapshot = StoreSnapshot { seq: 4, ..Default::default() };
        snapshot.values.insert("k".to_owned(), serde_bytes::ByteBuf::from(vec![7]));
        let value = rmpv::decode::read_value(&mut &encode_control(9, &Command::Seed(snapshot))[..]).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                2.into(),
                9.into(),
                Value::Array(vec![0.into(), 4.into(), Value::Map(vec![("k".into(), Value::Binary(vec![7]))])])
            ])
        );
        let mut seed = StorageSeed { value_limit: 100, total_limit: 200, ..Default::default() };
        seed.snapshot.seq = 2;
        seed.snapshot.values.insert("p".to_owned(), serde_bytes::ByteBuf::from(vec![8]));
        seed.stored_version = Some("1.0.0".to_owned());
        let value = rmpv::decode::read_value(&mut &encode_control(3, &Command::SeedStorage(seed))[..]).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                2.into(),
                3.into(),
                Value::Array(vec![
                    4.into(),
                    2.into(),
                    Value::Map(vec![("p".into(), Value::Binary(vec![8]))]),
                    Value::Nil,
                    100.into(),
                    200.into(),
                    "1.0.0".into()
                ])
            ])
        );
        // A page's write of the persisted tier is one of its messages; main's commits are not.
        let write = arr(vec![1.into(), 8.into(), 0.into(), 0.into(), 0.into(), "".into(), Value::Binary(vec![])]);
        assert!(matches!(decode(&write), Ok(PageMessage::Message { kind: abi::kind::STORAGE_WRITE, .. })));
        let value = rmpv::decode::read_value(&mut &encode_welcome(3, "probe")[..]).unwrap();
        assert_eq!(value[1]["frame"], Value::from(3));
        assert_eq!(value[1]["extension"], Value::from("probe"));
    }
}
