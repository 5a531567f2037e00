//! Typed channels: declare a channel's name and value types once, in a module both halves
//! use, and the compiler checks every `listen`, `broadcast`, `handle` and `invoke` against it.
//! Plain `&str` names stay possible wherever a channel is expected.
//!
//! ```
//! use extension_api::{EventChannel, RequestChannel};
//!
//! pub const INITIALIZE: EventChannel<String> = EventChannel::new("initialize");
//! pub const GREET: RequestChannel<String, String> = RequestChannel::new("greet");
//! assert_eq!(GREET.name(), "greet");
//! ```

use std::marker::PhantomData;

/// A broadcast channel carrying values of type `T`.
pub struct EventChannel<T> {
    name: &'static str,
    _value: PhantomData<fn(T) -> T>,
}

impl<T> EventChannel<T> {
    /// Declares the event channel called `name`.
    pub const fn new(name: &'static str) -> Self {
        EventChannel { name, _value: PhantomData }
    }
    /// The channel's name, as it travels on the wire.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for EventChannel<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for EventChannel<T> {}

/// A request channel: requests of type `Req`, answered with `Resp`.
pub struct RequestChannel<Req, Resp> {
    name: &'static str,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> RequestChannel<Req, Resp> {
    /// Declares the request channel called `name`.
    pub const fn new(name: &'static str) -> Self {
        RequestChannel { name, _types: PhantomData }
    }
    /// The channel's name, as it travels on the wire.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<Req, Resp> Clone for RequestChannel<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for RequestChannel<Req, Resp> {}

/// Anything that names a broadcast channel carrying `T`: an [`EventChannel<T>`] or a `&str`.
pub trait EventChannelName<T: ?Sized> {
    /// The channel's name.
    fn channel_name(&self) -> &str;
}

impl<T> EventChannelName<T> for EventChannel<T> {
    fn channel_name(&self) -> &str {
        self.name
    }
}

impl<T: ?Sized> EventChannelName<T> for &str {
    fn channel_name(&self) -> &str {
        self
    }
}

impl<T: ?Sized> EventChannelName<T> for String {
    fn channel_name(&self) -> &str {
        self
    }
}

/// Anything that names a request channel from `Req` to `Resp`: a [`RequestChannel`] or a `&str`.
pub trait RequestChannelName<Req: ?Sized, Resp> {
    /// The channel's name.
    fn channel_name(&self) -> &str;
}

impl<Req, Resp> RequestChannelName<Req, Resp> for RequestChannel<Req, Resp> {
    fn channel_name(&self) -> &str {
        self.name
    }
}

impl<Req: ?Sized, Resp> RequestChannelName<Req, Resp> for &str {
    fn channel_name(&self) -> &str {
        self
    }
}

impl<Req: ?Sized, Resp> RequestChannelName<Req, Resp> for String {
    fn channel_name(&self) -> &str {
        self
    }
}
