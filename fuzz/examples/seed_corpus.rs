//! Writes the seed corpus: a valid encoding of every `Packet` variant (framed, as a child
//! connection carries it) into `corpus/child_frame/`, and of every wire type and author type
//! `boundary_values` decodes into `corpus/boundary_values/`. Run from `fuzz/`:
//! `cargo run --example seed_corpus`, then minimize with `cargo fuzz cmin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use extension_api::InvokeErrorKind;
use extension_api::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN};
use extension_api::wire::{
    Busy, ChannelKind, ChannelStats, Completion, Control, ErrorPayload, HalfSnapshot, InstanceConfig, InstanceSnapshot,
    MailboxLimit, OwnedMessage, SlowHandler, StoreSnapshot, StoreUpdate, StoreWrite,
};
use extension_host::child_protocol::{Framing, PROTOCOL_VERSION, Packet};
use extension_host_fuzz::{Attachment, Decoder, Settings, Shape};
use serde::Serialize;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".to_owned()));
    let frames = write_child_frame(&root.join("child_frame"))?;
    let values = write_boundary_values(&root.join("boundary_values"))?;
    println!("wrote {frames} child_frame and {values} boundary_values seeds under {}", root.display());
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("seed values encode")
}

fn snapshot() -> StoreSnapshot {
    let mut values = BTreeMap::new();
    values.insert("count".to_owned(), serde_bytes::ByteBuf::from(encode(&3u32)));
    values.insert("name".to_owned(), serde_bytes::ByteBuf::from(encode(&"gluon")));
    StoreSnapshot { values, seq: 7 }
}

fn controls() -> Vec<Control> {
    vec![
        Control::ActivateMain { completion: 1 },
        Control::DeactivateMain { completion: 2, timeout_ms: 5000 },
        Control::OpenFrame { completion: 3, frame: 1 },
        Control::CloseFrame { completion: 4, frame: 1, timeout_ms: 5000 },
        Control::Inspect { completion: 5 },
        Control::SetFrames { completion: 6, frames: vec![1, 2, PEER_HOST] },
        Control::StoreSnapshot { completion: 7 },
        Control::SeedStore { completion: 8, snapshot: snapshot() },
        Control::StopRouting { completion: 9 },
        Control::StorageSnapshot { completion: 10 },
        Control::SeedStorage {
            completion: 11,
            seed: extension_api::wire::StorageSeed {
                snapshot: snapshot(),
                unavailable: Some("`/data/x.redb`: it is locked".to_owned()),
                value_limit: 1 << 20,
                total_limit: 8 << 20,
                stored_version: Some("0.1.0".to_owned()),
            },
        },
    ]
}

fn completions() -> Vec<Completion> {
    let mut listeners = BTreeMap::new();
    listeners.insert("greet".to_owned(), 2);
    let half = HalfSnapshot {
        half: extension_api::Half::Frame(extension_api::FrameId(1)),
        listeners,
        handlers: vec!["add".to_owned()],
        pending_requests: 1,
        running_handlers: 1,
        tasks: 2,
        store_keys: 2,
        store_seq: 7,
        watchers: 1,
        storage_keys: 1,
        storage_seq: 3,
    };
    vec![
        Completion::Done,
        Completion::Failed { reason: "activate failed: no config".to_owned() },
        Completion::Panicked { message: "index out of bounds".to_owned() },
        Completion::TimedOut { timeout_ms: 5000 },
        Completion::Inspected(InstanceSnapshot {
            halves: vec![half, HalfSnapshot::default()],
            tasks: 3,
            decode_failures: 1,
            listener_panics: 0,
            queued_messages: 2,
            dropped_broadcasts: 5,
            refused_requests: 1,
            local_requests: 4,
            queued_bytes: 64,
            store_bytes: 40,
            binary_bytes: 1 << 20,
            cpu_ns: Some(1_500_000),
            thread_id: 4242,
            dispatched: 17,
            batch_messages: 3,
            dispatching: true,
            busy: Some(Busy { half: extension_api::Half::Main, kind: ChannelKind::Request, channel: "echo".into() }),
            channels: vec![ChannelStats {
                channel: "echo".into(),
                kind: ChannelKind::Request,
                count: 17,
                p50_ns: 1_279,
                p99_ns: 9_215,
                max_ns: 9_000,
                histogram: vec![(ChannelStats::bucket(1_200), 1), (ChannelStats::bucket(9_000), 1)],
            }],
            slow_handlers: vec![SlowHandler {
                seq: 1,
                half: extension_api::Half::Main,
                channel: "nap".into(),
                elapsed_ns: 1_200_000_000,
            }],
            inspections: 2,
        }),
        Completion::StoreSnapshot(snapshot()),
    ]
}

fn config() -> InstanceConfig {
    InstanceConfig {
        name: "gluon".to_owned(),
        max_log_level: 3,
        mailbox: MailboxLimit { messages: 1024, bytes: 1 << 20 },
        route_within: false,
        slow_handler_ms: 1000,
    }
}

fn messages() -> Vec<OwnedMessage> {
    let message = |kind, status, origin, target, request_id, channel: &str, payload: Vec<u8>| OwnedMessage {
        kind,
        status,
        origin,
        target,
        request_id,
        channel: channel.to_owned(),
        payload,
    };
    let error = ErrorPayload { message: "no such user".to_owned(), data: Some(encode(&Shape::Empty)) };
    let write = StoreWrite { write_id: 1, key: "count".to_owned(), value: Some(encode(&4u32)) };
    let update = StoreUpdate {
        seq: 8,
        key: "count".to_owned(),
        old: Some(encode(&3u32)),
        new: Some(encode(&4u32)),
        writer: 1,
        write_id: 1,
    };
    vec![
        message(abi::kind::BROADCAST, 0, PEER_MAIN, PEER_ALL, 0, "greet", encode(&"hello")),
        message(abi::kind::INVOKE, 0, 1, PEER_MAIN, 1, "add", encode(&(2, 3))),
        message(abi::kind::REPLY, 0, PEER_MAIN, 1, 1, "", encode(&5)),
        message(
            abi::kind::REPLY,
            extension_api::message::error_code(InvokeErrorKind::Handler),
            PEER_MAIN,
            1,
            2,
            "",
            encode(&error),
        ),
        message(abi::kind::CANCEL, 0, 1, PEER_MAIN, 3, "", Vec::new()),
        message(abi::kind::STORE_WRITE, 0, 1, PEER_MAIN, 0, "", encode(&write)),
        message(abi::kind::STORE_UPDATE, 0, PEER_MAIN, PEER_ALL, 0, "", encode(&update)),
    ]
}

fn packets() -> Vec<(String, Packet)> {
    let mut packets = vec![
        (
            "hello".to_owned(),
            Packet::Hello { protocol: PROTOCOL_VERSION, token: "0123456789abcdef".to_owned(), pid: 42 },
        ),
        ("welcome".to_owned(), Packet::Welcome { protocol: PROTOCOL_VERSION }),
        ("load".to_owned(), Packet::Load { key: 1, path: "/tmp/libgluon.so".into(), config: config() }),
        ("loaded".to_owned(), Packet::Loaded { key: 4 }),
        ("load-failed".to_owned(), Packet::LoadFailed { key: 4, reason: "no descriptor".to_owned() }),
        ("log".to_owned(), Packet::Log { key: 1, level: 3, target: "gluon".to_owned(), message: "hi".to_owned() }),
        ("destroy".to_owned(), Packet::Destroy { key: 1 }),
        ("destroyed".to_owned(), Packet::Destroyed { key: 1 }),
    ];
    for (index, command) in controls().into_iter().enumerate() {
        packets.push((format!("control-{index}"), Packet::Control { key: 1, command }));
    }
    for (index, result) in completions().into_iter().enumerate() {
        packets.push((format!("complete-{index}"), Packet::Complete { key: 2, completion: index as u64, result }));
    }
    for (index, message) in messages().into_iter().enumerate() {
        packets.push((format!("message-{index}"), Packet::Message { key: 1, message }));
    }
    packets
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}

fn write_child_frame(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut framing = Framing::default();
    let mut count = 0;
    let mut stream = vec![7u8];
    for (name, packet) in packets() {
        let frame = framing.frame(&packet)?;
        // Read all at once.
        write(dir, &format!("packet-{name}"), &[&[0u8][..], &frame].concat())?;
        stream.extend_from_slice(&frame);
        count += 1;
    }
    // Every packet in one stream, read 7 bytes at a time; then the same stream cut short.
    let (decoded, error) = extension_host::fuzzing::decode_frames(&stream[1..], 7);
    assert!(error.is_none() && decoded == packets().into_iter().map(|(_, packet)| packet).collect::<Vec<_>>());
    write(dir, "stream-all", &stream)?;
    write(dir, "stream-cut", &stream[..stream.len() - 3])?;
    // A length prefix over the limit.
    write(dir, "oversized-prefix", &[&[0u8][..], &(16u32 << 20 | 1).to_be_bytes()].concat())?;
    Ok(count + 3)
}

fn write_boundary_values(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut count = 0;
    let mut seed = |decoder: Decoder, name: &str, bytes: &[u8]| {
        count += 1;
        write(dir, &format!("{decoder:?}-{name}").to_lowercase(), &[&[decoder.selector()][..], bytes].concat())
    };
    for (index, command) in controls().iter().enumerate() {
        seed(Decoder::Control, &index.to_string(), &encode(command))?;
    }
    for (index, completion) in completions().iter().enumerate() {
        seed(Decoder::Completion, &index.to_string(), &encode(completion))?;
    }
    seed(Decoder::InstanceConfig, "0", &encode(&config()))?;
    let error = ErrorPayload { message: "no such shape".to_owned(), data: Some(encode(&Shape::Circle(1.5))) };
    seed(Decoder::ErrorPayload, "0", &encode(&error))?;
    seed(Decoder::ErrorPayload, "1", &encode(&ErrorPayload { message: "panicked".to_owned(), data: None }))?;
    seed(Decoder::ErrorData, "0", &encode(&error))?;
    let nested = ErrorPayload {
        message: "bad group".to_owned(),
        data: Some(encode(&Shape::Group(vec![
            Shape::Rect { width: 2, height: 3 },
            Shape::Moved(Box::new(Shape::Empty)),
        ]))),
    };
    seed(Decoder::ErrorData, "1", &encode(&nested))?;
    seed(
        Decoder::StoreWrite,
        "0",
        &encode(&StoreWrite { write_id: 3, key: "count".to_owned(), value: Some(encode(&4u32)) }),
    )?;
    seed(Decoder::StoreWrite, "1", &encode(&StoreWrite { write_id: 4, key: "count".to_owned(), value: None }))?;
    let update =
        StoreUpdate { seq: 8, key: "count".to_owned(), old: Some(encode(&3u32)), new: None, writer: 1, write_id: 4 };
    seed(Decoder::StoreUpdate, "0", &encode(&update))?;
    seed(Decoder::StoreSnapshot, "0", &encode(&snapshot()))?;
    seed(Decoder::StoreSnapshot, "1", &encode(&StoreSnapshot::default()))?;
    for (index, message) in messages().iter().enumerate() {
        // Header: kind, status, origin, target (little endian), where the channel ends, and
        // how the buffers are passed (2: as slices).
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&message.kind.to_le_bytes());
        bytes.extend_from_slice(&message.status.to_le_bytes());
        bytes.extend_from_slice(&message.origin.to_le_bytes());
        bytes.extend_from_slice(&message.target.to_le_bytes());
        bytes.push(message.channel.len() as u8);
        bytes.push(2 | 2 << 2);
        bytes.extend_from_slice(message.channel.as_bytes());
        bytes.extend_from_slice(&message.payload);
        seed(Decoder::RawMessage, &index.to_string(), &bytes)?;
    }
    let mut limits = BTreeMap::new();
    limits.insert("max".to_owned(), 10);
    limits.insert("min".to_owned(), -10);
    let settings = Settings {
        name: "outer".to_owned(),
        count: 2,
        ratio: 0.5,
        tags: vec!["a".to_owned(), "b".to_owned()],
        limits,
        parent: Some(Box::new(Settings {
            name: "inner".to_owned(),
            count: 0,
            ratio: -1.0,
            tags: Vec::new(),
            limits: BTreeMap::new(),
            parent: None,
            blob: Vec::new(),
        })),
        blob: vec![0, 1, 2],
    };
    seed(Decoder::Settings, "0", &encode(&settings))?;
    let shapes = [
        Shape::Empty,
        Shape::Circle(2.0),
        Shape::Rect { width: 1, height: 2 },
        Shape::Group(vec![Shape::Empty, Shape::Moved(Box::new(Shape::Circle(1.0)))]),
        Shape::Moved(Box::new(Shape::Moved(Box::new(Shape::Empty)))),
    ];
    for (index, shape) in shapes.iter().enumerate() {
        seed(Decoder::Shape, &index.to_string(), &encode(shape))?;
    }
    seed(Decoder::Strings, "0", &encode(&vec!["one", "two", ""]))?;
    let json = serde_json::json!({"a": [1, 2.5, null, true, {"b": "c"}], "d": {}, "e": -7});
    seed(Decoder::Json, "0", &encode(&json))?;
    let rmpv = rmpv::Value::Map(vec![
        (rmpv::Value::from(1), rmpv::Value::Array(vec![rmpv::Value::Nil, rmpv::Value::from("x")])),
        (rmpv::Value::from("bin"), rmpv::Value::Binary(vec![1, 2])),
        (rmpv::Value::from("ext"), rmpv::Value::Ext(5, vec![9, 9])),
        (rmpv::Value::from(-1.5), rmpv::Value::from(u64::MAX)),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &rmpv).expect("an rmpv value encodes");
    seed(Decoder::Rmpv, "0", &bytes)?;
    // Binary values on both sides of `SHARED_FROM` (a large one is a view of the input).
    let binary = |size: usize| extension_api::Binary::from(vec![0x5a; size]);
    let small = Attachment { name: "small".to_owned(), data: binary(3), parts: vec![binary(0), binary(17)] };
    let large = Attachment {
        name: "large".to_owned(),
        data: binary(extension_api::SHARED_FROM),
        parts: vec![binary(extension_api::SHARED_FROM + 1), binary(5)],
    };
    seed(Decoder::Binaries, "0", &encode(&small))?;
    seed(Decoder::Binaries, "1", &encode(&large))?;
    Ok(count)
}
