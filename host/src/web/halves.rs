//! A WebSocket's reading and writing halves, sharing it through a mutex that is held for one
//! poll at a time and never waited on with a waker.
//!
//! `futures`' `split` shares the socket through a `BiLock`: a half that finds the other holding
//! it leaves its waker there and returns `Pending`, and the holder wakes it when it lets go. A
//! page's socket is polled from two threads at once all the time: the read loop, on the
//! runtime, goes back to reading the moment it has handed a request to main, and main, on its
//! own thread, writes its reply in place just then. Each time the read loop came second, main's
//! write ended by waking it (a wake-up of the runtime from main's thread, and of a second
//! worker by the first), for it only to find the socket empty; each time main came second, its
//! reply went through the queue and the writer task (a hop). Here the halves take turns
//! instead: a poll holds the socket only while it runs (a non-blocking read or write, no
//! await), so the read loop and the writer task, on the runtime, take it when it is free
//! (waiting a poll's length at most), and main's thread tries it ([`SocketSink::try_socket`])
//! and queues its message when the socket is taken.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{Sink, Stream};

use crate::core::lock;

/// The two halves of `socket`.
pub(crate) fn split(socket: WebSocket) -> (SocketSink, SocketStream) {
    let socket = Arc::new(Mutex::new(socket));
    (SocketSink(socket.clone()), SocketStream(socket))
}

/// The reading half: a stream of the socket's messages.
pub(crate) struct SocketStream(Arc<Mutex<WebSocket>>);

/// The writing half: a sink of messages.
pub(crate) struct SocketSink(Arc<Mutex<WebSocket>>);

impl SocketSink {
    /// The socket, if no poll of either half holds it now (never waiting).
    pub(crate) fn try_socket(&self) -> Option<MutexGuard<'_, WebSocket>> {
        match self.0.try_lock() {
            Ok(socket) => Some(socket),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

impl Stream for SocketStream {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *lock(&self.0)).poll_next(cx)
    }
}

impl Sink<Message> for SocketSink {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *lock(&self.0)).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut *lock(&self.0)).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *lock(&self.0)).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *lock(&self.0)).poll_close(cx)
    }
}
