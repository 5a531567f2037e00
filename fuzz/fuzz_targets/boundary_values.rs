//! Value decoding at the library boundary: everything `extension-api` (and the host, for what
//! an extension sends it) decodes from bytes another side produced: the wire types, a message
//! copied from a borrowed `RawMessage`, and values decoded into author types the way a listener,
//! a handler, an invoke's reply, a store value or an error's data is.
//!
//! Input: the first byte picks the decoder (`Decoder::pick`), the rest is the bytes.

#![no_main]

use extension_api::abi::{self, RawMessage, RawSlice};
use extension_api::message::Message;
use extension_api::wire::{
    Completion, Control, ErrorPayload, InstanceConfig, MAX_DEPTH, OwnedMessage, StoreSnapshot, StoreUpdate, StoreWrite,
    decode, decode_sharing,
};
use extension_api::{InvokeError, InvokeErrorKind};
use extension_host_fuzz::{Attachment, Decoder, Settings, Shape, on_decoding_stack};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| on_decoding_stack(data, check));

/// Decodes `bytes` as `T` as the boundary does (`wire::decode`); what decodes must survive a
/// round trip.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let value = decode::<T>(bytes).ok()?;
    let again = rmp_serde::to_vec_named(&value).expect("a decoded value encodes");
    assert_eq!(decode::<T>(&again).expect("a re-encoded value decodes"), value);
    Some(value)
}

fn check(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else { return };
    // Refusing a value for its depth needs more arrays and maps than the limit.
    if let Err(rmp_serde::decode::Error::DepthLimitExceeded) = decode::<serde::de::IgnoredAny>(bytes) {
        let containers = bytes.iter().filter(|&&byte| matches!(byte, 0x80..=0x9f | 0xdc..=0xdf)).count();
        assert!(containers > MAX_DEPTH, "refused for depth with {containers} arrays and maps");
    }
    match Decoder::pick(selector) {
        Decoder::Control => {
            if let Some(command) = round_trip::<Control>(bytes) {
                let _ = command.completion();
            }
        }
        Decoder::Completion => drop(round_trip::<Completion>(bytes)),
        Decoder::InstanceConfig => {
            if let Ok(config) = decode::<InstanceConfig>(bytes) {
                let again = rmp_serde::to_vec_named(&config).expect("a config encodes");
                let decoded = decode::<InstanceConfig>(&again).expect("a config decodes");
                assert_eq!((decoded.name, decoded.max_log_level), (config.name, config.max_log_level));
            }
        }
        Decoder::ErrorPayload => drop(round_trip::<ErrorPayload>(bytes)),
        Decoder::StoreWrite => drop(round_trip::<StoreWrite>(bytes)),
        Decoder::StoreUpdate => drop(round_trip::<StoreUpdate>(bytes)),
        Decoder::StoreSnapshot => drop(round_trip::<StoreSnapshot>(bytes)),
        Decoder::RawMessage => drop(raw_message(bytes)),
        Decoder::ErrorData => {
            // An error reply: its payload, then the handler's error value.
            if let Ok(payload) = decode::<ErrorPayload>(bytes) {
                let error = InvokeError::from_wire(InvokeErrorKind::Handler, "channel", payload);
                let _ = error.data::<Shape>();
                let _ = error.data::<rmpv::Value>();
            }
        }
        Decoder::Settings => drop(decode::<Settings>(bytes)),
        Decoder::Shape => drop(decode::<Shape>(bytes)),
        Decoder::Strings => drop(round_trip::<Vec<String>>(bytes)),
        Decoder::Json => drop(decode::<serde_json::Value>(bytes)),
        Decoder::Binaries => {
            // Decoded as a received value is when it is large: the same value (and the same
            // refusal), with its large `Binary` values views of the input.
            let shared = bytes::Bytes::copy_from_slice(bytes);
            let plain = round_trip::<Attachment>(bytes);
            let viewed = decode_sharing::<Attachment>(&shared).ok();
            assert_eq!(viewed, plain);
            drop(viewed);
            // Nothing decoded keeps the input once the values are dropped (an empty input is
            // `Bytes`' static empty buffer, never unique).
            assert!(shared.is_empty() || shared.is_unique());
            drop(round_trip::<Vec<extension_api::Binary>>(bytes));
        }
        Decoder::Rmpv => {
            // What the dev console does with every value it shows.
            if let Ok(value) = decode::<rmpv::Value>(bytes) {
                let _ = serde_json::to_string(&value);
            }
        }
    }
}

/// A `RawMessage` built from the input: header fields from its first 26 bytes, then a channel
/// and a payload as slices of the rest, or null buffers (with a zero or non-zero length).
fn raw_message(bytes: &[u8]) -> Option<()> {
    let (header, rest) = bytes.split_first_chunk::<26>()?;
    let u32_at = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
    let split = usize::from(header[24]).min(rest.len());
    let (channel, payload) = rest.split_at(split);
    let slice = |bytes: &[u8], how: u8| match how % 4 {
        0 => RawSlice::EMPTY,
        1 => RawSlice { ptr: std::ptr::null(), len: bytes.len().max(1) },
        _ => RawSlice::new(bytes),
    };
    let raw = RawMessage {
        kind: u32_at(0) % 8,
        status: u32_at(4),
        origin: u64_at(8),
        target: u64_at(16),
        request_id: u64_at(0),
        channel: slice(channel, header[25]),
        payload: slice(payload, header[25] >> 2),
    };
    // SAFETY: the buffers are null or slices of `bytes`, which outlives the call.
    let message = unsafe { Message::from_raw(&raw) };
    let Ok(message) = message else {
        // Refused only for a null buffer with a length, or a named kind's channel that is not
        // UTF-8 (replies and cancels drop theirs unread).
        let named = !matches!(raw.kind, abi::kind::REPLY | abi::kind::CANCEL);
        assert!(
            raw.channel.ptr.is_null() && raw.channel.len > 0
                || raw.payload.ptr.is_null() && raw.payload.len > 0
                || named && std::str::from_utf8(channel).is_err()
        );
        return None;
    };
    assert_eq!(message.payload.len(), raw.payload.len);
    let copy = message.to_owned();
    // The copy borrowed again, through the C layout, is the same message.
    let again = copy.as_message().to_raw();
    // SAFETY: `again` borrows `copy`, which outlives the call.
    assert_eq!(unsafe { Message::from_raw(&again) }.map(|m| m.to_owned()), Ok(copy.clone()));
    let encoded = rmp_serde::to_vec_named(&copy).expect("a message encodes");
    assert_eq!(decode::<OwnedMessage>(&encoded).expect("a message decodes"), copy);
    Some(())
}
