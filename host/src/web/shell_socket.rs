//! One shell socket: a shell page, which is a web frame. Its connecting opens the frame, its
//! closing closes it. The host tells it (JSON text messages) its frame number, then which
//! iframe to add (an extension's origin and token) or remove. The shell sends nothing in this
//! version; anything but well-formed JSON ends the connection (1008).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::keepalive::{Activity, Due, Keepalive};
use super::{ConnectionSlot, Server, WebFrame};
use crate::core::lock;

/// Most messages queued for one shell (a few per extension and reload).
const QUEUE: usize = 1024;
/// How long the writer may take for each last message once the shell's socket is closing.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the host holds to talk to one shell. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ShellHandle {
    queue: mpsc::Sender<String>,
    closing: CancellationToken,
    /// Fired when the shell's side has ended (its socket closed, or it broke the protocol):
    /// no iframe of it will connect any more, so nobody should wait for one.
    gone: CancellationToken,
}

/// Why the shell's socket closes: the frame closed (1000), or the shell broke the protocol.
const FRAME_CLOSED: (u16, &str) = (1000, "the frame is closed");

impl ShellHandle {
    fn send(&self, message: serde_json::Value) {
        if self.queue.try_send(message.to_string()).is_err() && !self.closing.is_cancelled() {
            tracing::warn!("the shell stopped reading its messages; closing it");
            self.closing.cancel();
        }
    }

    /// The first message: the frame the shell is.
    pub(crate) fn frame(&self, frame: u64) {
        self.send(json!({ "type": "frame", "frame": frame }));
    }

    /// Add an iframe for `extension` at `origin`, which will present `token`.
    pub(crate) fn add(&self, extension: &str, origin: &str, token: &str) {
        self.send(json!({ "type": "add", "extension": extension, "origin": origin, "token": token }));
    }

    /// Remove `extension`'s iframe.
    pub(crate) fn remove(&self, extension: &str) {
        self.send(json!({ "type": "remove", "extension": extension }));
    }

    /// Closes the shell's socket (1000): the frame is closed.
    pub(crate) fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves once the shell has gone (see `gone`).
    pub(crate) async fn gone(&self) {
        self.gone.cancelled().await;
    }

    /// A handle connected to nothing (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> ShellHandle {
        ShellHandle { queue: mpsc::channel(1).0, closing: CancellationToken::new(), gone: CancellationToken::new() }
    }
}

/// Serves one shell socket: a web frame for as long as it is open.
pub(crate) async fn serve(socket: WebSocket, server: Arc<Server>, slot: ConnectionSlot, activity: Activity) {
    let _slot = slot;
    let (mut sink, mut stream) = socket.split();
    let (queue, mut outgoing) = mpsc::channel::<String>(QUEUE);
    let closing = CancellationToken::new();
    let gone = CancellationToken::new();
    let shell = ShellHandle { queue, closing: closing.clone(), gone: gone.clone() };

    let reason = Arc::new(std::sync::Mutex::new(FRAME_CLOSED));
    let writer_reason = reason.clone();
    let writer_closing = closing.clone();
    // Tells the writer to send a WebSocket Ping (the socket is idle).
    let ping = Arc::new(tokio::sync::Notify::new());
    let writer_ping = ping.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = writer_closing.cancelled() => {
                    // What the host said before closing still arrives (the iframes' removal).
                    while let Ok(text) = outgoing.try_recv() {
                        let sent = tokio::time::timeout(CLOSE_WAIT, sink.send(WsMessage::Text(text.into()))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                    }
                    break;
                }
                _ = writer_ping.notified() => {
                    tokio::select! {
                        sent = sink.send(WsMessage::Ping(bytes::Bytes::new())) => if sent.is_err() { break },
                        _ = writer_closing.cancelled() => break,
                    }
                }
                next = outgoing.recv() => {
                    let Some(text) = next else { break };
                    tokio::select! {
                        sent = sink.send(WsMessage::Text(text.into())) => if sent.is_err() { break },
                        _ = writer_closing.cancelled() => break,
                    }
                }
            }
        }
        let (code, reason) = *lock(&writer_reason);
        let close = WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close)).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    });

    let web = Arc::new(WebFrame::new(server.clone(), shell.clone()));
    let opening = tokio::spawn(server.hooks.open_frame(web));

    let mut keepalive = Keepalive::new(server.config.ping_interval, server.config.ping_timeout, activity);
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            _ = server.shutdown.cancelled() => {
                *lock(&reason) = (1001, "the server is shutting down");
                break;
            }
            () = keepalive.fired() => match keepalive.due() {
                Due::Ping => ping.notify_one(),
                Due::Dead(why) => {
                    // A half-open connection: the shell's side went without a word.
                    tracing::warn!("the shell's connection is dead ({why}); closing its frame");
                    *lock(&reason) = (1001, "the host heard nothing from the shell: pings unanswered");
                    break;
                }
                Due::Nothing => {}
            },
            next = stream.next() => match next {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                Some(Ok(WsMessage::Text(text))) => {
                    if serde_json::from_str::<serde_json::Value>(text.as_str()).is_err() {
                        tracing::warn!("the shell sent a message that is not JSON; closing it");
                        *lock(&reason) = (1008, "not JSON");
                        break;
                    }
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    tracing::warn!("the shell sent a binary message; closing it");
                    *lock(&reason) = (1008, "binary messages are not part of the shell protocol");
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // A frame still opening stops waiting for this shell's pages (it holds the host's
    // operations while it waits).
    gone.cancel();
    // The frame closes with its shell (once it has finished opening); then the socket closes,
    // so a shell told its socket closed knows its frame is gone.
    if let Ok(Some(frame)) = opening.await {
        server.tokens.revoke_frame(frame);
        server.hooks.close_frame(frame).await;
    }
    closing.cancel();
    let _ = writer.await;
}
