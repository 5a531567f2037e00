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
//! The module [`wire`] (with the hidden `abi` and `message`, which hold the C layouts and the
//! wire codes) is the contract with the host; authors never use it.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod abi;
mod binary;
mod channel;
mod error;
mod extension;
mod ipc;
#[doc(hidden)]
pub mod message;
mod runtime;
pub mod wire;

/// The largest message a half may send (16 MiB): its channel name and its encoded value
/// together, the same wherever the halves run. A longer broadcast, request or reply is refused
/// to its sender at once ([`IpcError::TooLarge`], [`InvokeErrorKind::TooLarge`]).
pub const MAX_MESSAGE: usize = abi::MAX_MESSAGE;

pub use binary::{Binary, SHARED_FROM};
pub use channel::{EventChannel, EventChannelName, RequestChannel, RequestChannelName};
pub use error::{BoxError, InvokeError, InvokeErrorKind, IpcError};
pub use extension::{MainExtension, NoRenderer, RendererExtension};
pub use ipc::{
    DEFAULT_INVOKE_TIMEOUT, Disposer, Event, FrameId, Half, Main, Renderer, RequestMeta, STORE_ENTRY_OVERHEAD,
    STORE_TOTAL_LIMIT, STORE_VALUE_LIMIT, Sender, Store, StoreChange, StoreError, StoreKey, StoreKeyName,
};

/// Typed functions main exposes to renderers: put it on a trait of `async fn`s. See
/// the `extension-api-macros` crate for what it generates.
pub use extension_api_macros::exposed;

/// Used by [`export_extension!`] and [`exposed`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::export::{descriptor, with_web_assets};
    pub use extension_api_macros::web_assets;

    /// The error type of exposed functions' handlers: they cannot fail (their failures are
    /// `InvokeError`s: panics, timeouts, ...).
    #[derive(Debug, serde::Serialize)]
    pub enum Never {}

    impl std::fmt::Display for Never {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match *self {}
        }
    }

    /// The error of an exposed function returning `Result<T, E>`: `E` itself on the wire (the
    /// caller's `InvokeError::data::<E>()`), with the message chosen for it.
    pub struct ExposedError<E> {
        /// The caller's `InvokeError::message`.
        pub message: String,
        /// The function's error.
        pub value: E,
    }

    impl<E: serde::Serialize> serde::Serialize for ExposedError<E> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.value.serialize(serializer)
        }
    }

    impl<E> std::fmt::Display for ExposedError<E> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    /// Names the error type in the compiler's complaint when it is not `Serialize`.
    pub fn exposed_error_must_be_serialize<E: serde::Serialize>() {}

    /// An exposed function's error, to choose its message: its `Display` text if it has one,
    /// else its `Debug` text, else a sentence. Chosen by method resolution on
    /// `(&&ErrorText(&error))` (the types are concrete where the macro expands it).
    pub struct ErrorText<'a, E>(pub &'a E);

    impl<E> Clone for ErrorText<'_, E> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<E> Copy for ErrorText<'_, E> {}

    /// The error's `Display` text.
    pub trait ViaDisplay {
        /// The message for the caller.
        fn exposed_error_text(self, function: &str) -> String;
    }
    impl<E: std::fmt::Display> ViaDisplay for &&ErrorText<'_, E> {
        fn exposed_error_text(self, _: &str) -> String {
            self.0.to_string()
        }
    }

    /// The error's `Debug` text.
    pub trait ViaDebug {
        /// The message for the caller.
        fn exposed_error_text(self, function: &str) -> String;
    }
    impl<E: std::fmt::Debug> ViaDebug for &ErrorText<'_, E> {
        fn exposed_error_text(self, function: &str) -> String {
            format!("`{function}` returned an error: {:?}", self.0)
        }
    }

    /// Neither: a sentence naming the function.
    pub trait ViaNothing {
        /// The message for the caller.
        fn exposed_error_text(self, function: &str) -> String;
    }
    impl<E> ViaNothing for ErrorText<'_, E> {
        fn exposed_error_text(self, function: &str) -> String {
            format!("`{function}` returned an error (its value is the error's data)")
        }
    }
}

/// The README's example extension, compiled as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;
