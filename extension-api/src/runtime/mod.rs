//! The library side of an instance: the per-extension runtime, the routing tables of its
//! halves, and the glue the export macro points the descriptor at. Nothing here is part of
//! the author-facing API.

pub(crate) mod context;
mod control;
mod dispatch;
pub mod export;
mod instance;
mod lifecycle;
pub(crate) mod logging;
pub(crate) mod mailbox;
pub(crate) mod payload;
pub(crate) mod requests;
mod shared;
pub(crate) mod state;
mod stats;
pub(crate) mod storage;
mod store;
pub(crate) mod sweep;
mod vtable;

pub(crate) use shared::{Shared, notice};
pub(crate) use state::{HandlerFn, ListenerFn, RawEvent, Registered, Replica, Tier, Watcher};

/// Text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Encodes a value as MessagePack with named fields (what crosses between halves), into a
/// buffer sized for the small values most messages carry, so it rarely grows.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut buffer = Vec::with_capacity(64);
    value.serialize(&mut rmp_serde::Serializer::new(&mut buffer).with_struct_map())?;
    Ok(buffer)
}
