//! # extension-api
//!
//! Everything an extension author needs: implement [`MainExtension`] (runs in the host) and
//! [`RendererExtension`] (runs once per frame), export them with [`export_extension!`], and
//! talk between the halves with [`Main`] and [`Renderer`]:
//!
//! - events: `listen(channel, f)` returns a [`Disposer`]; `broadcast(channel, value)` reaches
//!   every listener of the extension in main and in every frame;
//! - requests: main `handle`s a channel, a renderer `invoke`s it and gets the value or an
//!   [`InvokeError`] that keeps its kind;
//! - typed channels ([`EventChannel`], [`RequestChannel`]) declared once, checked everywhere.
//!
//! Each extension lives in its own namespace: nothing in this crate can name another
//! extension. Values cross as MessagePack (named fields), so they are copied, never shared.
//!
//! ```
//! use extension_api::{export_extension, BoxError, Main, MainExtension};
//!
//! struct Hello;
//!
//! impl MainExtension for Hello {
//!     async fn activate(ipc: Main) -> Result<Self, BoxError> {
//!         ipc.handle("greet", |name: String, _| async move { Ok::<_, String>(format!("hello, {name}")) })?;
//!         Ok(Hello)
//!     }
//! }
//!
//! export_extension!(main = Hello);
//! ```
//!
//! The modules [`abi`] and [`wire`] are the contract with the host; authors never use them.

#![warn(missing_docs)]

pub mod abi;
mod channel;
mod error;
mod extension;
mod ipc;
mod runtime;
pub mod wire;

pub use channel::{EventChannel, EventChannelName, RequestChannel, RequestChannelName};
pub use error::{BoxError, InvokeError, InvokeErrorKind, IpcError};
pub use extension::{MainExtension, NoRenderer, RendererExtension};
pub use ipc::{
    DEFAULT_INVOKE_TIMEOUT, Disposer, Event, FrameId, Half, Main, Renderer, RequestMeta, STORE_VALUE_LIMIT, Sender,
    Store, StoreChange, StoreError, StoreKey, StoreKeyName,
};

/// Typed functions main exposes to renderers: put it on a trait of `async fn`s. See
/// the `extension-api-macros` crate for what it generates.
pub use extension_api_macros::exposed;

/// Used by [`export_extension!`] and [`exposed`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::export::descriptor;

    /// The error type of exposed functions' handlers: they cannot fail (their failures are
    /// `InvokeError`s: panics, timeouts, ...).
    #[derive(Debug, serde::Serialize)]
    pub enum Never {}

    impl std::fmt::Display for Never {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match *self {}
        }
    }
}

/// The README's example extension, compiled as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;
