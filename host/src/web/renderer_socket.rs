//! One renderer socket: an extension's iframe in a web frame. The page must say HELLO with
//! its token first (within the handshake timeout); then its messages are validated one by one
//! (`protocol::decode`) and routed as the frame's half: **the namespace and the origin come
//! from the connection, never from the message**. Anything malformed ends this connection
//! only (1008, or 1009 when too big), logged with the extension's name.
//!
//! The writing side ([`PageConnection`]) never blocks its sender. A message for a page whose
//! socket has nothing waiting (nothing queued, nothing unflushed, no write under way) is
//! written by the thread that sends it, in place: main's thread writes its reply itself, with
//! no hop to another thread. Anything else goes into a bounded queue, which a writer task
//! drains in order (what is queued when it wakes goes out in one write); a sender that would
//! pass a queued message queues behind it, so order holds.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use extension_api::InvokeErrorKind;
use extension_api::abi::{self, Peer};
use extension_api::message::Message;
use extension_api::wire::{Completion, StorageOutcome, StoreWrite, WriteRefusal};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::close_reply::read_close_reply;
use super::keepalive::{Activity, Due, Keepalive};
use super::page_reader::{PageReader, PageReading, Turn};
use super::protocol::{self, PageMessage};
use super::{ConnectionSlot, Handshake, Server};
use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::keys::next_key;
use crate::link::Link;
use crate::transport::{Transport, WebInstance};

/// Most messages queued for one page.
const QUEUE_MESSAGES: usize = 4096;
/// Most bytes queued for one page.
const QUEUE_BYTES: usize = 64 << 20;
/// Longest log line of a page forwarded (64 KiB), as for a Rust half (`MAX_LOG_MESSAGE`).
const MAX_LOG_LINE: usize = 64 << 10;
/// Most messages the writer takes from the queue into one write (one flush).
const WRITE_BATCH: usize = 64;
/// The most bytes one read of the socket takes (tungstenite's default is 128 KiB). Each read,
/// also the one that finds the socket empty after a message, first zeroes that much of its
/// buffer: 128 KiB twice per request of a page, more than the rest of the read loop's work
/// and cache for a small message. A larger message takes more reads, 16 KiB each.
pub(crate) const READ_BUFFER: usize = 16 << 10;
/// How long the writer may take to send the close frame once the connection ends.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The close code of a connection another one took the place of (it presented the same
/// token): not 1006, so that a page still there does not come back and take turns with it.
pub(crate) const SUPERSEDED: u16 = 4000;

/// The socket's writing half, and whether a message written into it in place is still in its
/// buffer (the socket was not writable: the writer task flushes it).
struct Writing {
    sink: SplitSink<WebSocket, WsMessage>,
    unflushed: bool,
}

/// How a message written in place went.
enum InPlace {
    /// It is on the socket.
    Sent,
    /// It is in the socket's buffer, or the write failed: the writer task is told to flush
    /// (and finds the failure there, and ends).
    Unflushed,
    /// The socket would not take it now (its other half is being read): it is queued instead.
    NotTaken(Vec<u8>),
}

/// The writing side of one page's socket, shared by its transport and its read loop.
pub(crate) struct PageConnection {
    queue: mpsc::Sender<Vec<u8>>,
    queued_bytes: AtomicUsize,
    /// Messages queued and not yet handed to the socket (the writer decrements it once it has
    /// fed one in, holding `writing`): while it is not 0, no message is written in place.
    unwritten: AtomicUsize,
    /// The socket's writing half: a sender writing in place holds it (`try_lock`: never
    /// waiting), as the writer task does for a batch.
    writing: tokio::sync::Mutex<Writing>,
    /// Tells the writer task to flush what a write in place left unflushed.
    flush: Notify,
    /// The writer's flushes that found nothing left unflushed (for the suite).
    idle_flushes: AtomicU64,
    /// The page's messages main's thread read itself (for the suite).
    main_reads: AtomicU64,
    /// Fired to end the connection; the close frame to send is in `close_with`.
    closing: CancellationToken,
    close_with: Mutex<Option<(u16, String)>>,
    /// The host closed it (the half is not meant to run there any more).
    by_host: AtomicBool,
    /// Dropped without a close frame, as a network failure would ([`PageConnection::sever`]).
    severed: AtomicBool,
    /// Tells the writer task to send a WebSocket Ping (the socket is idle).
    ping: Notify,
    /// Fired when the writer task could not write, and ended ([`PageConnection::write_failed`]).
    writer_failed: CancellationToken,
    /// Fired once this connection's half has ended and the host was told (or it never
    /// started): a connection that takes its place waits for it ([`PageConnection::supersede`]).
    ended: CancellationToken,
    /// Completions the transport gives itself (commands a page has no use for), for the read
    /// loop to hand to the endpoint: at most one per command the host is waiting on.
    answers: mpsc::UnboundedSender<(u64, Completion)>,
}

impl PageConnection {
    /// Queues one binary message; `must` for a message that answers one already accepted (a
    /// page not taking it loses its connection rather than a reply).
    pub(crate) fn send(&self, bytes: Vec<u8>, must: bool) -> u32 {
        if self.closing.is_cancelled() {
            return abi::status::DEACTIVATED;
        }
        let bytes = match self.write_in_place(bytes) {
            Ok(()) => return abi::status::OK,
            Err(bytes) => bytes,
        };
        let size = bytes.len();
        let queued = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        let full = queued > 0 && queued.saturating_add(size) > QUEUE_BYTES;
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        if !full && self.queue.try_send(bytes).is_ok() {
            return abi::status::OK;
        }
        self.unwritten.fetch_sub(1, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        if must {
            self.close(1008, "the page stopped reading its messages");
        }
        abi::status::BUSY
    }

    /// Writes `bytes` to the socket from this thread when nothing is waiting to go before it
    /// (nothing queued or unflushed, no write under way); gives them back otherwise, to be
    /// queued.
    fn write_in_place(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.unwritten.load(Ordering::Acquire) != 0 {
            return Err(bytes);
        }
        let Ok(mut writing) = self.writing.try_lock() else { return Err(bytes) };
        // Checked again holding the socket: the writer decrements only holding it, after
        // feeding its message in, so 0 here means every queued message is in the socket.
        if writing.unflushed || self.unwritten.load(Ordering::Acquire) != 0 {
            return Err(bytes);
        }
        match poll_in_place(&mut writing.sink, bytes) {
            InPlace::Sent => Ok(()),
            InPlace::Unflushed => {
                writing.unflushed = true;
                drop(writing);
                self.flush.notify_one();
                Ok(())
            }
            InPlace::NotTaken(bytes) => Err(bytes),
        }
    }

    /// Ends the connection with a close frame of `code`, once (the first reason wins).
    pub(crate) fn close(&self, code: u16, reason: &str) {
        {
            let mut close_with = lock(&self.close_with);
            if close_with.is_none() {
                *close_with = Some((code, reason.to_owned()));
            }
        }
        self.closing.cancel();
    }

    /// The host ends the connection (1000): the half is closed already.
    pub(crate) fn close_by_host(&self) {
        self.by_host.store(true, Ordering::Release);
        self.close(1000, "closed by the host");
    }

    /// Drops the connection without a close frame, as a lost network would: the page sees
    /// an abnormal closure (1006), the host a lost connection. For the suite.
    pub(crate) fn sever(&self) {
        self.drop_connection("the connection was severed");
    }

    /// Ends the connection as lost, without a close frame (it is dead): the page, if it is
    /// there after all, sees 1006 and comes back.
    fn drop_connection(&self, reason: &str) {
        self.severed.store(true, Ordering::Release);
        self.close(1006, reason);
    }

    /// The writer task could not write to the socket, and ends: the read loop ends the
    /// connection as lost (unless what it reads first says otherwise: the page's close frame,
    /// which its write may have failed on), so its half's requests fail and the host is told.
    fn write_failed(&self, error: &axum::Error) {
        self.severed.store(true, Ordering::Release);
        let mut close_with = lock(&self.close_with);
        if close_with.is_none() {
            *close_with = Some((1006, format!("writing to the page failed: {error}")));
        }
        drop(close_with);
        self.writer_failed.cancel();
    }

    /// Another connection presented this one's token (the page came back while the host
    /// still held this one: a half-open connection): this one ends as lost, telling the page
    /// why if it is there after all ([`SUPERSEDED`]).
    pub(crate) fn supersede(&self) {
        self.close(SUPERSEDED, "superseded: another connection presented this page's token");
    }

    /// How many times the writer task flushed with nothing left unflushed.
    pub(crate) fn idle_flushes(&self) -> u64 {
        self.idle_flushes.load(Ordering::Relaxed)
    }

    /// How many of the page's messages main's thread read itself (`page_reader`).
    pub(crate) fn main_reads(&self) -> u64 {
        self.main_reads.load(Ordering::Relaxed)
    }

    pub(super) fn count_main_read(&self) {
        self.main_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Completes command `completion` without the page.
    pub(crate) fn answer(&self, completion: u64, result: Completion) {
        let _ = self.answers.send((completion, result));
    }
}

/// One write of `bytes` into `sink`, polled once with a waker that wakes nothing: what it
/// leaves unflushed the caller hands to the writer task, which flushes it with its own. (A
/// waker of the writer's left with the socket would be woken by the page's next message too:
/// tokio-tungstenite wakes the writing side on a read, and the writer would take the socket
/// for nothing just as main's reply to that message came, which then went the queue's way.)
fn poll_in_place(sink: &mut SplitSink<WebSocket, WsMessage>, bytes: Vec<u8>) -> InPlace {
    let mut context = Context::from_waker(Waker::noop());
    match Pin::new(&mut *sink).poll_ready(&mut context) {
        Poll::Ready(Ok(())) => {}
        // Broken: the writer finds it so too, and ends.
        Poll::Ready(Err(_)) => return InPlace::Unflushed,
        // The socket's other half is being read just now.
        Poll::Pending => return InPlace::NotTaken(bytes),
    }
    if Pin::new(&mut *sink).start_send(WsMessage::Binary(bytes.into())).is_err() {
        return InPlace::Unflushed;
    }
    match Pin::new(&mut *sink).poll_flush(&mut context) {
        Poll::Ready(Ok(())) => InPlace::Sent,
        Poll::Ready(Err(_)) | Poll::Pending => InPlace::Unflushed,
    }
}

/// How a connection ended.
pub(super) enum Ended {
    /// The page sent a close frame (the tab closed or reloaded, the iframe navigated).
    Closed,
    /// The connection dropped without one, or failed.
    Dropped(String),
    /// The page broke the protocol: close code and reason.
    Violation(u16, String),
    /// The host ended it (the half closed, the server shut down).
    ByHost,
}

/// Serves one renderer socket on `extension`'s origin.
pub(crate) async fn serve(
    socket: WebSocket,
    server: Arc<Server>,
    extension: String,
    slot: ConnectionSlot,
    handshake: Handshake,
    activity: Activity,
) {
    let (sink, mut stream) = socket.split();
    // Declared after the socket's halves, so dropped before them: the slot is free again
    // before the socket closes, and a page that sees its connection end can take its place.
    let _slot = slot;
    // The HELLO, in time.
    let hello = tokio::time::timeout(server.config.handshake_timeout, stream.next()).await;
    let token = match hello {
        Err(_) => Err((1008, "no hello in time".to_owned())),
        Ok(Some(Ok(WsMessage::Binary(bytes)))) => match protocol::decode(&bytes) {
            Ok(PageMessage::Hello { token }) => Ok(token),
            Ok(_) => Err((1008, "the first message must be a hello".to_owned())),
            Err(violation) => Err((1008, violation.0)),
        },
        Ok(Some(Ok(WsMessage::Text(_)))) => Err((1008, "text messages are not part of the protocol".to_owned())),
        Ok(Some(Ok(_))) => Err((1008, "the first message must be a hello".to_owned())),
        Ok(Some(Err(error))) => Err(close_for_error(&error.to_string())),
        Ok(None) => return,
    };
    // The HELLO is in (or not): the origin's handshake bound is released either way.
    drop(handshake);
    let (queue, mut outgoing) = mpsc::channel(QUEUE_MESSAGES);
    let (answers, mut answered) = mpsc::unbounded_channel();
    let connection = Arc::new(PageConnection {
        queue,
        queued_bytes: AtomicUsize::new(0),
        unwritten: AtomicUsize::new(0),
        writing: tokio::sync::Mutex::new(Writing { sink, unflushed: false }),
        flush: Notify::new(),
        idle_flushes: AtomicU64::new(0),
        main_reads: AtomicU64::new(0),
        closing: CancellationToken::new(),
        close_with: Mutex::new(None),
        by_host: AtomicBool::new(false),
        severed: AtomicBool::new(false),
        ping: Notify::new(),
        writer_failed: CancellationToken::new(),
        ended: CancellationToken::new(),
        answers,
    });
    // However this ends, a connection waiting to take this one's place goes on.
    let _ended = connection.ended.clone().drop_guard();
    let me = Arc::downgrade(&connection);
    let claim = token.and_then(|token| {
        server.tokens.claim(&extension, &token, &me).map_err(|refused| (1008, format!("token refused: {refused}")))
    });
    let mut claim = match claim {
        Ok(claim) => claim,
        Err((code, reason)) => {
            tracing::warn!(extension = %extension, "web renderer connection refused: {reason}");
            refuse(&connection, &mut stream, &server, code, &reason).await;
            return;
        }
    };
    if let Some(old) = claim.superseded.take() {
        // The page came back while the host still holds its old connection (half-open: its
        // side went without a word). The old one ends as a lost connection would, and the host
        // is told, before this one's half starts: the host takes them in in that order.
        tracing::info!(extension = %extension, frame = claim.frame, "a page came back with the token of a connection the host still holds: that connection ends, this one takes its place");
        old.supersede();
        let waited = tokio::time::timeout(server.config.handshake_timeout, old.ended.cancelled()).await;
        drop(old);
        let confirmed = match waited {
            Ok(()) => server.tokens.confirm(&claim.token, &me).map_err(|refused| format!("token refused: {refused}")),
            Err(_) => Err("token refused: the connection holding it did not end in time".to_owned()),
        };
        if let Err(reason) = confirmed {
            tracing::warn!(extension = %extension, "web renderer connection refused: {reason}");
            server.tokens.release(&claim.token, &me);
            refuse(&connection, &mut stream, &server, 1008, &reason).await;
            return;
        }
    }
    let Some(link) = claim.link.upgrade() else {
        server.tokens.release(&claim.token, &me);
        refuse(&connection, &mut stream, &server, 1008, "the extension is not running").await;
        return;
    };
    let frame = claim.frame;
    let shell = claim.shell.clone();

    let instance = WebInstance::new(&extension, frame, &claim.token, connection.clone(), shell, server.tokens.clone());
    let endpoint = Endpoint::new(next_key(), Transport::Web(instance));
    connection.send(protocol::encode_welcome(frame, &extension), true);

    // The writer: the queue in order, then the close frame.
    let writer_connection = connection.clone();
    let shutdown = server.shutdown.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = writer_connection.closing.cancelled() => break,
                _ = shutdown.cancelled() => {
                    writer_connection.close(1001, "the server is shutting down");
                    break;
                }
                _ = writer_connection.ping.notified() => {
                    let pinged = async {
                        let mut writing = writer_connection.writing.lock().await;
                        writing.sink.send(WsMessage::Ping(bytes::Bytes::new())).await?;
                        writing.unflushed = false;
                        Ok::<_, axum::Error>(())
                    };
                    tokio::select! {
                        pinged = pinged => if let Err(error) = pinged {
                            writer_connection.write_failed(&error);
                            break;
                        },
                        _ = writer_connection.closing.cancelled() => break,
                    }
                }
                _ = writer_connection.flush.notified() => {
                    // What a write in place left in the socket's buffer.
                    let flushed = async {
                        let mut writing = writer_connection.writing.lock().await;
                        if !writing.unflushed {
                            writer_connection.idle_flushes.fetch_add(1, Ordering::Relaxed);
                        }
                        writing.sink.flush().await?;
                        writing.unflushed = false;
                        Ok::<_, axum::Error>(())
                    };
                    tokio::select! {
                        flushed = flushed => if let Err(error) = flushed {
                            writer_connection.write_failed(&error);
                            break;
                        },
                        _ = writer_connection.closing.cancelled() => break,
                    }
                }
                next = outgoing.recv() => {
                    // (The queue's sender lives in the connection, which this task holds.)
                    let Some(bytes) = next else { break };
                    // The messages queued meanwhile go in the same write, in their order: one
                    // flush (one `sendto`) for the batch rather than one per message.
                    let batch = async {
                        let mut writing = writer_connection.writing.lock().await;
                        let mut next = Some(bytes);
                        let mut batched = 0;
                        while let Some(bytes) = next.take() {
                            writer_connection.queued_bytes.fetch_sub(bytes.len(), Ordering::AcqRel);
                            writing.sink.feed(WsMessage::Binary(bytes.into())).await?;
                            // Fed in, holding the socket: a write in place may follow it.
                            writer_connection.unwritten.fetch_sub(1, Ordering::AcqRel);
                            batched += 1;
                            if batched < WRITE_BATCH {
                                next = outgoing.try_recv().ok();
                            }
                        }
                        writing.sink.flush().await?;
                        writing.unflushed = false;
                        Ok::<_, axum::Error>(())
                    };
                    // A page that stops reading must not hold the writer past the connection's end.
                    tokio::select! {
                        sent = batch => if let Err(error) = sent {
                            writer_connection.write_failed(&error);
                            break;
                        },
                        _ = writer_connection.closing.cancelled() => break,
                    }
                }
            }
        }
        if writer_connection.severed.load(Ordering::Acquire) {
            // No close frame: the socket goes with the connection, as a dropped network's.
            return;
        }
        let close_with = lock(&writer_connection.close_with).clone();
        let mut writing = writer_connection.writing.lock().await;
        if let Some((code, reason)) = close_with {
            let _ = tokio::time::timeout(CLOSE_WAIT, writing.sink.send(close_message(code, &reason))).await;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, writing.sink.close()).await;
    });

    match claim.waiter {
        Some(waiter) => {
            if waiter.send(endpoint.clone()).is_err() {
                connection.close(1008, "the host stopped waiting for this page");
            }
        }
        // The page came back (it reloaded) while the frame is open: the half starts again.
        None => server.hooks.half_reconnected(&extension, frame, endpoint.clone()),
    }

    // The page's socket as read: by this loop, or by main's thread (see `page_reader`).
    let reader = PageReader::new(PageReading {
        activity: activity.clone(),
        stream,
        link: link.clone(),
        endpoint: endpoint.clone(),
        frame,
        connection: connection.clone(),
    });
    reader.claim_for_main();
    let mut turn = Turn::default();
    let mut keepalive = Keepalive::new(server.config.ping_interval, server.config.ping_timeout, activity);
    let ended = loop {
        tokio::select! {
            biased;
            _ = connection.closing.cancelled() => {
                if connection.by_host.load(Ordering::Acquire) {
                    break Ended::ByHost;
                }
                let (_, reason) = lock(&connection.close_with).clone().unwrap_or_default();
                break Ended::Dropped(reason);
            }
            Some((completion, result)) = answered.recv() => endpoint.complete(completion, result),
            () = keepalive.fired() => match keepalive.due() {
                Due::Ping => connection.ping.notify_one(),
                Due::Dead(reason) => {
                    // No close frame: a page that was only slow sees 1006, and comes back.
                    connection.drop_connection(&reason);
                    break Ended::Dropped(reason);
                }
                Due::Nothing => {}
            },
            read = std::future::poll_fn(|cx| reader.poll_turn(cx, &mut turn)) => {
                if let Some(ended) = read {
                    break ended;
                }
            }
            // After the read: a close frame the page sent, which the write failed on, counts.
            _ = connection.writer_failed.cancelled() => {
                let (_, reason) = lock(&connection.close_with).clone().unwrap_or_default();
                break Ended::Dropped(reason);
            }
        }
    };
    // Out of main's epoll set, and the stream back, at once: nothing of the page's is read or
    // routed after the connection's end, by main's thread either (the clean-up below fails
    // what is in flight, and a connection taking this one's place may start its half).
    let (stream, read_by_main) = reader.finish();
    // A violation main's thread read as the loop ended otherwise (lost, say) still bars the
    // token. (Not when the host closed the half: that clean-up is the host's.)
    let ended = match (ended, read_by_main) {
        (Ended::Closed | Ended::Dropped(_), Some(violation @ Ended::Violation(..))) => violation,
        (ended, _) => ended,
    };

    let violated = matches!(ended, Ended::Violation(..));
    let gone = match ended {
        Ended::ByHost => None,
        Ended::Closed => {
            tracing::info!(extension = %extension, frame, "the web renderer's page closed its connection");
            let reason = "the page closed its connection".to_owned();
            half_gone(&link, &endpoint, InvokeErrorKind::FrameClosed, &reason);
            Some((false, reason))
        }
        Ended::Dropped(reason) => {
            tracing::warn!(extension = %extension, frame, "the web renderer's connection was lost: {reason}");
            half_gone(&link, &endpoint, InvokeErrorKind::ConnectionLost, &reason);
            Some((true, reason))
        }
        Ended::Violation(code, reason) => {
            tracing::warn!(extension = %extension, frame, "web renderer connection ended: {reason}");
            connection.close(code, &reason);
            half_gone(&link, &endpoint, InvokeErrorKind::ConnectionLost, &reason);
            Some((true, reason))
        }
    };
    if let Some((lost, reason)) = gone {
        // The token is free again (not after a violation: a page that broke the protocol does
        // not come back with it), and the host told of the half's end, before the page sees
        // its connection end: a page that reconnects at once is taken in after it.
        if violated {
            server.tokens.bar(&claim.token, &me);
        } else {
            server.tokens.release(&claim.token, &me);
        }
        server.hooks.half_ended(&extension, frame, lost, &reason);
        connection.close(1000, "");
    }
    // A connection taking this one's place starts its half now (the host was told of this
    // one's end first), without waiting for this socket's close.
    connection.ended.cancel();
    drop(reader);
    let _ = writer.await;
    // (Not when the server shuts down: it does not wait for pages that do not answer.)
    if violated || !(connection.severed.load(Ordering::Acquire) || server.shutdown.is_cancelled()) {
        // The host sent a close frame: what the page still sends (the rest of an oversized
        // message, what it sent before it read the close, its close reply) is read before the
        // socket goes. One closed with bytes unread is reset, which throws away what the
        // kernel has not sent yet, the close frame too: the page would see 1006, a lost
        // network, and come back (to be refused, or, superseded, to take its successor's
        // place) rather than stop with this code.
        if let Some(mut stream) = stream {
            read_close_reply(&mut stream, &server, violated).await;
        }
    }
}

/// Refuses a connection: its close frame, then what the page still sends, until its close
/// reply (see [`read_close_reply`]; else the page could see 1006 instead of why), and its end.
async fn refuse(
    connection: &PageConnection,
    stream: &mut SplitStream<WebSocket>,
    server: &Server,
    code: u16,
    reason: &str,
) {
    {
        let mut writing = connection.writing.lock().await;
        let _ = tokio::time::timeout(CLOSE_WAIT, writing.sink.send(close_message(code, reason))).await;
    }
    read_close_reply(stream, server, false).await;
}

/// How a page's close frame ends its half: closed (no code, 1000 normal, 1001 going away: the
/// tab closed or reloaded, the iframe navigated), else lost, with the page's code and reason
/// (the client closes 1008 when it cannot read the host's message).
fn page_closed(close: Option<CloseFrame>) -> Ended {
    match close {
        None => Ended::Closed,
        Some(frame) => match frame.code {
            1000 | 1001 | 1005 => Ended::Closed,
            code => Ended::Dropped(format!("the page closed its connection with {code}: {}", frame.reason.as_str())),
        },
    }
}

/// Handles one read of a connected page's socket (by its read loop or main's thread): how the
/// connection ended, if it did.
pub(super) fn handle(
    link: &Link,
    endpoint: &Endpoint,
    frame: Peer,
    next: Option<Result<WsMessage, axum::Error>>,
) -> Option<Ended> {
    match next {
        None => Some(Ended::Dropped("the connection dropped".to_owned())),
        Some(Err(error)) => {
            let (code, reason) = close_for_error(&error.to_string());
            Some(if code == 1009 { Ended::Violation(code, reason) } else { Ended::Dropped(reason) })
        }
        Some(Ok(WsMessage::Close(close))) => Some(page_closed(close)),
        Some(Ok(WsMessage::Binary(bytes))) => {
            receive(link, endpoint, frame, &bytes).err().map(|violation| Ended::Violation(1008, violation))
        }
        Some(Ok(WsMessage::Text(_))) => {
            Some(Ended::Violation(1008, "text messages are not part of the protocol".to_owned()))
        }
        Some(Ok(_)) => None,
    }
}

/// Handles one binary message of a connected page; an error is a protocol violation.
fn receive(link: &Link, endpoint: &Endpoint, frame: Peer, bytes: &[u8]) -> Result<(), String> {
    match protocol::decode(bytes).map_err(|violation| violation.0)? {
        PageMessage::Hello { .. } => Err("a second hello".to_owned()),
        PageMessage::Message { kind, status, target, request_id, channel, payload } => {
            // A write (of the store or the persisted tier) is checked here too: main would only
            // log and drop a bad one.
            if kind == abi::kind::STORE_WRITE || kind == abi::kind::STORAGE_WRITE {
                let tier = if kind == abi::kind::STORE_WRITE { "store" } else { "storage" };
                let write = extension_api::wire::decode::<StoreWrite>(&payload)
                    .map_err(|error| format!("a {tier} write's payload is not {{write_id, key, value}}: {error}"))?;
                let message =
                    Message { kind, status, origin: frame, target, request_id, channel: &channel, payload: &payload };
                let status = link.route(endpoint, &message);
                if status != abi::status::OK {
                    let size = message.channel.len() + message.payload.len();
                    refuse_write(endpoint, frame, kind, write, status, size);
                }
                return Ok(());
            }
            let message =
                Message { kind, status, origin: frame, target, request_id, channel: &channel, payload: &payload };
            let status = link.route(endpoint, &message);
            // A refused request is answered at once, on this connection: its origin is this
            // connection's frame (filled in by the host, a page cannot forge it), so the answer
            // goes back to the half that asked, also while it closes (unplaced, its
            // `deactivate` running), when the link has no endpoint for the frame any more.
            if status != abi::status::OK && kind == abi::kind::INVOKE {
                let (kind, why) = extension_api::message::refusal(status);
                let reply = extension_api::message::Reply::error(kind, why);
                endpoint.deliver(&Message::reply(target, frame, request_id, &reply));
            }
            Ok(())
        }
        PageMessage::Complete { completion, outcome } => {
            endpoint.complete(completion, outcome.into_completion(frame));
            Ok(())
        }
        PageMessage::Log { level, text } => {
            link.forward_log(level, "web", &cut_log_line(&text));
            Ok(())
        }
    }
}

/// Tells the page at once that the host did not route its write of the store or the persisted
/// tier (`kind`; a Rust half's `set` fails at once then too), else its `set` would wait for
/// ever, or until its half closes: a STORE_REFUSAL (STORAGE_REFUSAL) on this connection, whose
/// status is the route's (NO_SUCH_PEER: the frame is closing; DEACTIVATED: the extension is;
/// BUSY: main's mailbox is full).
fn refuse_write(endpoint: &Endpoint, frame: Peer, kind: u32, write: StoreWrite, status: u32, size: usize) {
    let outcome = match status {
        abi::status::BUSY => StorageOutcome::Overloaded,
        abi::status::TOO_LARGE => {
            StorageOutcome::TooLarge { size: u64::try_from(size).unwrap_or(u64::MAX), max: abi::MAX_MESSAGE as u64 }
        }
        abi::status::NO_SUCH_PEER => {
            StorageOutcome::Unavailable { reason: "the frame is closing: the write was not sent to main".to_owned() }
        }
        _ => StorageOutcome::Unavailable {
            reason: format!("the write was not sent to main: {}", extension_api::message::status_text(status)),
        },
    };
    let refusal = WriteRefusal { write_id: write.write_id, key: write.key, outcome };
    let payload = match rmp_serde::to_vec_named(&refusal) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!("a write's refusal does not encode: {error}");
            return;
        }
    };
    let kind = if kind == abi::kind::STORAGE_WRITE { abi::kind::STORAGE_REFUSAL } else { abi::kind::STORE_REFUSAL };
    endpoint.deliver(&Message {
        kind,
        status,
        origin: abi::PEER_MAIN,
        target: frame,
        request_id: 0,
        channel: "",
        payload: &payload,
    });
}

/// The page's half is gone without the host closing it: requests involving it fail with
/// `kind`, and it leaves the namespace.
fn half_gone(link: &Link, endpoint: &Endpoint, kind: InvokeErrorKind, reason: &str) {
    match kind {
        InvokeErrorKind::ConnectionLost => link.lose_endpoint(endpoint, reason),
        _ => {
            let peers = endpoint.peers();
            for peer in &peers {
                link.unplace(endpoint, *peer);
            }
            link.fail_pending(|origin, target| peers.contains(&origin) || peers.contains(&target), kind, reason);
            link.remove_endpoint(endpoint.key);
        }
    }
    endpoint.retire(reason);
}

/// A page's log line cut to [`MAX_LOG_LINE`] bytes at a character boundary, saying how long
/// it was (as `extension-api` cuts a Rust half's).
fn cut_log_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_LOG_LINE {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_LOG_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// The close code for a failed read: 1009 when the message was too big.
fn close_for_error(error: &str) -> (u16, String) {
    if error.contains("too long") || error.contains("too big") || error.contains("Space limit") {
        (1009, format!("message too big: {error}"))
    } else {
        (1008, format!("unreadable message: {error}"))
    }
}

fn close_message(code: u16, reason: &str) -> WsMessage {
    // A close frame's reason holds at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame { code, reason: reason[..end].into() }))
}
