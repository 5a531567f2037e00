//! One shell socket: a shell page, which is a web frame. Its connecting opens the frame, its
//! closing closes it. The host tells it (JSON text messages) its frame number, then which
//! iframe to add (an extension's origin and token) or remove. The shell sends nothing in this
//! version; anything but well-formed JSON ends the connection (1008).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
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
    serve_on(socket, server, slot, activity).await;
}

/// [`serve`] on any socket (the unit tests give it one whose writes fail).
async fn serve_on<S>(socket: S, server: Arc<Server>, slot: ConnectionSlot, activity: Activity)
where
    S: Stream<Item = Result<WsMessage, axum::Error>> + Sink<WsMessage, Error = axum::Error> + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    // Declared after the socket's halves, so dropped before them: the slot is free again
    // before the socket closes, and a shell that sees its connection end can take its place.
    let _slot = slot;
    let (queue, mut outgoing) = mpsc::channel::<String>(QUEUE);
    let closing = CancellationToken::new();
    let gone = CancellationToken::new();
    let shell = ShellHandle { queue, closing: closing.clone(), gone: gone.clone() };

    let reason = Arc::new(std::sync::Mutex::new(FRAME_CLOSED));
    let writer_reason = reason.clone();
    let reason_at_close = reason.clone();
    let writer_closing = closing.clone();
    // Tells the writer to send a WebSocket Ping (the socket is idle).
    let ping = Arc::new(tokio::sync::Notify::new());
    let writer_ping = ping.clone();
    // Fired when the writer could not write, and ended: the read loop ends the connection
    // (as lost: its frame closes), rather than read on a socket that takes nothing.
    let writer_failed = CancellationToken::new();
    let failed = writer_failed.clone();
    let writer = tokio::spawn(async move {
        let failed = |error: axum::Error| {
            tracing::warn!("writing to the shell failed ({error}); closing its frame");
            *lock(&writer_reason) = (1011, "writing to the shell failed");
            failed.cancel();
        };
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
                        sent = sink.send(WsMessage::Ping(bytes::Bytes::new())) => if let Err(error) = sent {
                            failed(error);
                            break;
                        },
                        _ = writer_closing.cancelled() => break,
                    }
                }
                next = outgoing.recv() => {
                    let Some(text) = next else { break };
                    tokio::select! {
                        sent = sink.send(WsMessage::Text(text.into())) => if let Err(error) = sent {
                            failed(error);
                            break;
                        },
                        _ = writer_closing.cancelled() => break,
                    }
                }
            }
        }
        let (code, reason) = *lock(&reason_at_close);
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
            // After the read: a close frame the shell sent, which the write failed on, counts.
            _ = writer_failed.cancelled() => break,
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
    // What the shell still sends after the close frame (what it sent before it read the
    // close, its close reply) is read by the TCP stream's lingering close (`linger.rs`): the
    // shell sees the code, not a reset.
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use extension_api::abi::Peer;
    use futures_util::future::BoxFuture;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::endpoint::Endpoint;
    use crate::web::{WebConfig, WebHooks, security};

    /// Opens frame 7 for the shell (telling it so), and records the frames it closes.
    #[derive(Default)]
    struct Hooks {
        closed: Mutex<Vec<Peer>>,
    }

    impl WebHooks for Hooks {
        fn open_frame(&self, web: Arc<WebFrame>) -> BoxFuture<'static, Option<Peer>> {
            Box::pin(async move {
                web.announce(7);
                Some(7)
            })
        }
        fn close_frame(&self, frame: Peer) -> BoxFuture<'static, ()> {
            lock(&self.closed).push(frame);
            Box::pin(async {})
        }
        fn half_reconnected(&self, _: &str, _: Peer, _: Arc<Endpoint>) {}
        fn half_ended(&self, _: &str, _: Peer, _: bool, _: &str) {}
        fn assets(&self, _: &str) -> Option<Arc<crate::WebAssets>> {
            None
        }
    }

    /// A socket from which nothing arrives (the peer is quiet, the connection not known to be
    /// broken) and to which every write fails.
    struct WritesFail;

    impl Stream for WritesFail {
        type Item = Result<WsMessage, axum::Error>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Pending
        }
    }

    impl Sink<WsMessage> for WritesFail {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, _: WsMessage) -> Result<(), axum::Error> {
            Err(axum::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The shell's writer failing (its first message, the frame number) ends the connection
    /// and closes its frame at once, not when the keepalive (15 s, 30 s) would find it dead.
    /// Time is paused: it moves only when everything waits, so the bound is not a race.
    #[tokio::test(start_paused = true)]
    async fn a_shell_whose_writes_fail_ends_and_closes_its_frame() {
        let hooks = Arc::new(Hooks::default());
        let config = WebConfig::default();
        let server = Arc::new(Server {
            port: 1,
            origins: Mutex::new(security::Origins::new(1, &[], Vec::new())),
            tokens: Arc::new(crate::web::Tokens::default()),
            hooks: hooks.clone(),
            live: AtomicUsize::new(1),
            send_buffer: AtomicUsize::new(0),
            close_reply_wait: AtomicU64::new(0),
            handshakes: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            config,
        });
        let slot = ConnectionSlot { server: Arc::downgrade(&server) };
        let served = serve_on(WritesFail, server, slot, Activity::new(None));
        let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
        assert!(ended.is_ok(), "the shell's connection went on after its writer failed");
        assert_eq!(*lock(&hooks.closed), vec![7]);
    }
}
