//! Web frames: an HTTP and WebSocket server (axum on hyper's HTTP/1 server) that makes a
//! browser page a frame. The shell page (`/` on the shell origin) is the frame: its socket
//! opening opens the frame. Each extension with a web renderer gets an iframe on an origin of
//! its own, whose bootstrap connects a renderer socket with the token the shell gave it.
//!
//! One concern a file: `protocol.rs` (the page's wire, plain data), `security.rs` (Host and
//! Origin checks, headers, origins), `tokens.rs`, `renderer_socket.rs`, `shell_socket.rs`,
//! `assets.rs`. The host side of a frame is in `host/frames.rs`; the transport in
//! `transport/web.rs`.

mod assets;
mod close_reply;
mod keepalive;
mod linger;
mod page_reader;
pub(crate) mod protocol;
mod registration;
mod renderer_socket;
mod security;
mod shell_socket;
mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use extension_api::abi::Peer;
use futures_util::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use renderer_socket::PageConnection;
pub(crate) use shell_socket::ShellHandle;
pub(crate) use tokens::Tokens;

use crate::WebAssets;
use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::link::Link;
use security::Site;

/// How [`Host::serve_web`](crate::Host::serve_web) serves web frames.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to listen. Default `127.0.0.1:0` (loopback, any free port). A non-loopback
    /// address is refused unless [`WebConfig::allow_remote`] is set; an IPv6 one always (the
    /// shell's origin is `http://127.0.0.1:PORT`, which it would not serve).
    pub addr: SocketAddr,
    /// `Host` header values accepted besides the shell's and the extension origins' (for an
    /// application that serves through a name of its own). Each is served as the shell.
    pub allowed_hosts: Vec<String>,
    /// The origins an application's own shell page may be served from, besides the host's
    /// shell (`http://127.0.0.1:PORT`, `http://localhost:PORT`): exact origins,
    /// `scheme://host[:port]` (`http://127.0.0.1:3000`, `app://dashboard`), as a browser
    /// writes them in `Origin`. Such a page may open the shell socket (and so receive every
    /// token of its frame's iframes), frame the extensions' documents, and hand them their
    /// tokens; it loads `/embed.js` from the host for that. No path, wildcard, `null` or IPv6
    /// address (`frame-ancestors` cannot name one), an IPv4 address in dotted decimal only:
    /// [`crate::Host::serve_web`] refuses the entry ([`WebStartError::ShellOrigin`]).
    /// Default none.
    pub shell_origins: Vec<String>,
    /// Largest WebSocket message, in bytes (a larger one closes that connection, 1009).
    /// Default: the message limit plus 64 KiB of envelope.
    pub max_message: usize,
    /// Most live WebSocket connections (shells and pages); past it, an upgrade gets 503.
    pub max_connections: usize,
    /// How long a page has to send its HELLO, and a client to send a request's headers.
    pub handshake_timeout: Duration,
    /// How long a shell or page socket may be idle (nothing received from it) before the host
    /// sends it a WebSocket Ping (which a browser answers by itself). Default 15 s.
    pub ping_interval: Duration,
    /// How long the host waits without receiving anything from a shell or page socket (a
    /// Pong, a message, or any byte of one) before it takes the connection for dead (a half-open connection:
    /// the page's side went without a word, through a proxy or a laptop's sleep) and ends it
    /// as a lost connection (the page's requests fail `ConnectionLost`). Default 30 s; longer
    /// than [`WebConfig::ping_interval`]. `Duration::MAX` (anything past 30 years): never.
    pub ping_timeout: Duration,
    /// Whether a non-loopback [`WebConfig::addr`] may be bound (see
    /// [`WebConfig::allow_remote`]). Default false.
    pub remote: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            allowed_hosts: Vec::new(),
            shell_origins: Vec::new(),
            max_message: extension_api::abi::MAX_MESSAGE + (64 << 10),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(30),
            remote: false,
        }
    }
}

impl WebConfig {
    /// Allows binding an address other than loopback. Anyone who can reach it can then try
    /// the server (Host, Origin and tokens are still checked).
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.remote = allow;
        self
    }
}

/// What the server asks of the host (so that this module knows nothing of `Host`).
pub(crate) trait WebHooks: Send + Sync + 'static {
    /// A shell connected: open a web frame for it; its number, once its halves started.
    fn open_frame(&self, web: Arc<WebFrame>) -> BoxFuture<'static, Option<Peer>>;
    /// A shell's socket ended: close its frame.
    fn close_frame(&self, frame: Peer) -> BoxFuture<'static, ()>;
    /// A page reconnected with its token while its frame is open: start the half again.
    /// This and `half_ended` are taken in by the host in the order they were called.
    fn half_reconnected(&self, extension: &str, frame: Peer, endpoint: Arc<Endpoint>);
    /// A page's half ended without the host closing it (it is out of the namespace already):
    /// closed by the page, or `lost`.
    fn half_ended(&self, extension: &str, frame: Peer, lost: bool, reason: &str);
    /// The extension's web renderer, if it has one.
    fn assets(&self, extension: &str) -> Option<Arc<WebAssets>>;
}

/// One running server, shared by its handlers and connections.
pub(crate) struct Server {
    config: WebConfig,
    port: u16,
    origins: Mutex<security::Origins>,
    tokens: Arc<Tokens>,
    hooks: Arc<dyn WebHooks>,
    live: AtomicUsize,
    /// The send buffer (`SO_SNDBUF`) of the connections accepted from now on; 0: the system's
    /// (see [`WebServer::set_send_buffer_for_testing`]).
    send_buffer: AtomicUsize,
    /// How long a socket the host closed is read for its close reply, in
    /// milliseconds; 0: 2 s (see [`WebServer::set_close_reply_wait_for_testing`]).
    close_reply_wait: AtomicU64,
    /// Renderer sockets that have not said HELLO yet, per extension origin.
    handshakes: Mutex<BTreeMap<String, usize>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// One live WebSocket connection, counted against the limit while it is held. A socket's
/// server drops it before the socket closes (the host's close frame sent, the page's close
/// reply read): a client that sees its connection end finds the slot free.
pub(crate) struct ConnectionSlot {
    server: Weak<Server>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            server.live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Most renderer sockets one extension's origin may have open before their HELLO. A page
/// takes one for a moment; without this bound, a page of one extension (its own origin is all
/// it needs) could hold every connection of the server, the shells' and its siblings' too.
pub(crate) const MAX_HANDSHAKES_PER_ORIGIN: usize = 16;

/// A renderer socket that has not said HELLO yet, counted against its origin's bound.
pub(crate) struct Handshake {
    server: Weak<Server>,
    extension: String,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            let mut handshakes = lock(&server.handshakes);
            if let Some(count) = handshakes.get_mut(&self.extension) {
                *count -= 1;
                if *count == 0 {
                    handshakes.remove(&self.extension);
                }
            }
        }
    }
}

impl Server {
    fn handshake(self: &Arc<Self>, extension: &str) -> Option<Handshake> {
        let mut handshakes = lock(&self.handshakes);
        let count = handshakes.entry(extension.to_owned()).or_default();
        if *count >= MAX_HANDSHAKES_PER_ORIGIN {
            return None;
        }
        *count += 1;
        Some(Handshake { server: Arc::downgrade(self), extension: extension.to_owned() })
    }

    fn slot(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.max_connections;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| (live < max).then_some(live + 1))
            .ok()
            .map(|_| ConnectionSlot { server: Arc::downgrade(self) })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

/// A web frame's side of the server: its shell, and the tokens and origins its halves use.
pub(crate) struct WebFrame {
    server: Arc<Server>,
    shell: ShellHandle,
    /// Iframes added ahead of their half's start (see [`WebFrame::invite`]), by extension.
    invited: Mutex<BTreeMap<String, Invitation>>,
}

/// An iframe the shell was told to add, and the wait for its page.
struct Invitation {
    token: String,
    connected: oneshot::Receiver<Arc<Endpoint>>,
    /// When the wait for its page ends.
    deadline: tokio::time::Instant,
}

impl WebFrame {
    fn new(server: Arc<Server>, shell: ShellHandle) -> WebFrame {
        WebFrame { server, shell, invited: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `extension`'s iframe now, with a token minted for it, so that its page loads
    /// while the halves before it start: the frame's pages load together, and each one's
    /// wait (`timeout`) runs from its own `add`. [`WebFrame::connect_renderer`] takes it up.
    pub(crate) fn invite(
        &self,
        extension: &str,
        link: &Arc<Link>,
        frame: Peer,
        timeout: Duration,
    ) -> Result<(), String> {
        let origin = lock(&self.server.origins).extension(extension)?;
        let (token, connected) = self.server.tokens.mint(frame, extension, Arc::downgrade(link), self.shell.clone())?;
        self.shell.add(extension, &origin, &token);
        let deadline = tokio::time::Instant::now() + timeout;
        lock(&self.invited).insert(extension.to_owned(), Invitation { token, connected, deadline });
        Ok(())
    }

    /// The invitations no half took up (its start failed before it reached its page): their
    /// tokens are void, their iframes go, and a page that connected is closed.
    pub(crate) async fn uninvite_all(&self) {
        let invited = std::mem::take(&mut *lock(&self.invited));
        for (extension, invitation) in invited {
            self.drop_invitation(&extension, invitation).await;
        }
    }

    async fn drop_invitation(&self, extension: &str, invitation: Invitation) {
        let Invitation { token, mut connected, .. } = invitation;
        self.server.tokens.revoke(&token);
        self.shell.remove(extension);
        // A page that connected just as the wait ended is not left open, half-started.
        connected.close();
        if let Ok(endpoint) = connected.try_recv() {
            endpoint.destroy().await;
        }
    }

    /// The shell's URL (the page that is this frame).
    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    /// Tells the shell which frame it is (before any iframe).
    pub(crate) fn announce(&self, frame: Peer) {
        self.shell.frame(frame);
    }

    /// Whether `extension` has a web renderer (no half in a web frame otherwise).
    pub(crate) fn has_renderer(&self, extension: &str) -> bool {
        self.server.hooks.assets(extension).is_some()
    }

    /// Starts `extension`'s iframe in this frame (unless [`WebFrame::invite`] did) and waits
    /// (`timeout` from its `add`) for its page to connect with the token minted for it; the
    /// connection's endpoint.
    pub(crate) async fn connect_renderer(
        &self,
        extension: &str,
        link: &Arc<Link>,
        frame: Peer,
        timeout: Duration,
    ) -> Result<Arc<Endpoint>, String> {
        let invited = lock(&self.invited).remove(extension);
        let mut invitation = match invited {
            Some(invitation) => invitation,
            None => {
                self.invite(extension, link, frame, timeout)?;
                lock(&self.invited).remove(extension).ok_or("the page's invitation went")?
            }
        };
        let outcome = tokio::select! {
            outcome = tokio::time::timeout_at(invitation.deadline, &mut invitation.connected) => match outcome {
                Ok(Ok(endpoint)) => return Ok(endpoint),
                Ok(Err(_)) => "the page's connection ended".to_owned(),
                Err(_) => format!("the page did not connect within {timeout:?}"),
            },
            // Its page will never come: the operation lock is not held for it.
            () = self.shell.gone() => "the frame's shell went before the page connected".to_owned(),
        };
        self.drop_invitation(extension, invitation).await;
        Err(outcome)
    }

    /// `extension` no longer runs a half in this frame (it deactivated): if a token of it is
    /// still live (its page went away and could have come back), it is void and the shell
    /// removes the iframe.
    pub(crate) fn retire(&self, extension: &str, frame: Peer) {
        if self.server.tokens.revoke_half(frame, extension) {
            self.shell.remove(extension);
        }
    }

    /// The frame closed: the shell's socket closes and the frame's tokens are void.
    pub(crate) fn close(&self, frame: Peer) {
        self.server.tokens.revoke_frame(frame);
        self.shell.close();
    }
}

/// A running web server. Dropping it stops accepting (as [`WebServer::shutdown`] does,
/// without waiting).
pub struct WebServer {
    server: Arc<Server>,
    addr: SocketAddr,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl WebServer {
    /// The shell's URL, `http://127.0.0.1:PORT/`: open it in a browser to get a web frame.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops the renderer sockets of `extension`'s pages as a network failure would (no
    /// close frame); how many. For the suite's tests of a lost connection.
    #[doc(hidden)]
    pub fn sever_pages_for_testing(&self, extension: &str) -> usize {
        self.server.tokens.sever(extension)
    }

    /// Gives the connections accepted from now on a send buffer of `bytes` (`SO_SNDBUF`; the
    /// kernel doubles it), fixed rather than grown by the kernel: for the suite's tests of a
    /// page whose socket is full, which then need not move more than loopback's largest
    /// buffers. 0: the system's again.
    #[doc(hidden)]
    pub fn set_send_buffer_for_testing(&self, bytes: usize) {
        self.server.send_buffer.store(bytes, Ordering::Release);
    }

    /// How long a page socket the host closed is read for the page's close reply (2 s; never
    /// past the server's shutdown but after a violation): longer, for the suite's tests of
    /// what does not wait for it, which then need not measure time.
    #[doc(hidden)]
    pub fn set_close_reply_wait_for_testing(&self, wait: Duration) {
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        self.server.close_reply_wait.store(millis, Ordering::Release);
    }

    /// How many times the writer tasks of `extension`'s connected pages were woken to flush
    /// a socket that had nothing left to flush. For the suite's tests of the writing side.
    #[doc(hidden)]
    pub fn idle_flushes_for_testing(&self, extension: &str) -> u64 {
        self.server.tokens.idle_flushes(extension)
    }

    /// How many messages of `extension`'s connected pages main's thread read itself (rather
    /// than the page's read loop, a hop away). For the suite's tests of the reading side.
    #[doc(hidden)]
    pub fn main_reads_for_testing(&self, extension: &str) -> u64 {
        self.server.tokens.main_reads(extension)
    }

    /// Stops serving: no new connection is accepted, every socket closes (1001), and their
    /// frames close. Returns once every connection has ended.
    pub async fn shutdown(mut self) {
        self.server.shutdown.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.server.tracker.close();
        self.server.tracker.wait().await;
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.server.shutdown.cancel();
    }
}

/// Why the web server could not start ([`crate::HostError::WebServer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebStartError {
    /// The address is not loopback, and [`WebConfig::remote`] is not set.
    #[error("{0} is not a loopback address (set WebConfig::allow_remote to serve it)")]
    NotLoopback(SocketAddr),
    /// The address is IPv6: the shell's origin is `http://127.0.0.1:PORT`.
    #[error("{0} is not an IPv4 address: the shell's origin is http://127.0.0.1:PORT")]
    NotIpv4(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed (the system's error).
        reason: String,
    },
    /// An entry of [`WebConfig::shell_origins`] is not an exact origin.
    #[error("WebConfig::shell_origins: {origin:?} is refused: {reason}")]
    ShellOrigin {
        /// The entry, as given.
        origin: String,
        /// Why it is refused.
        reason: String,
    },
    /// An entry of [`WebConfig::allowed_hosts`] is not a `Host` value.
    #[error("WebConfig::allowed_hosts: {host:?} is refused: {reason}")]
    AllowedHost {
        /// The entry, as given.
        host: String,
        /// Why it is refused.
        reason: String,
    },
    /// [`WebConfig::ping_interval`] is zero, or [`WebConfig::ping_timeout`] shorter than it.
    #[error("WebConfig: ping_interval {interval:?} and ping_timeout {timeout:?} are refused: {reason}")]
    Keepalive {
        /// The interval asked for.
        interval: Duration,
        /// The timeout asked for.
        timeout: Duration,
        /// Why they are refused.
        reason: &'static str,
    },
    /// [`crate::Host::serve_web`] was called outside a Tokio runtime.
    #[error("serving web frames needs a Tokio runtime: {0}")]
    NoRuntime(String),
}

/// Starts serving web frames for the host behind `hooks`.
pub(crate) fn serve(config: WebConfig, hooks: Arc<dyn WebHooks>) -> Result<WebServer, WebStartError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|error| WebStartError::NoRuntime(error.to_string()))?;
    let addr = config.addr;
    if addr.is_ipv6() {
        return Err(WebStartError::NotIpv4(addr));
    }
    if !addr.ip().is_loopback() && !config.remote {
        return Err(WebStartError::NotLoopback(addr));
    }
    let (interval, timeout) = (config.ping_interval, config.ping_timeout);
    let keepalive = |reason| Err(WebStartError::Keepalive { interval, timeout, reason });
    if interval.is_zero() {
        return keepalive("the interval must not be zero");
    }
    if timeout <= interval {
        return keepalive("the timeout must be longer than the interval (a ping goes out first)");
    }
    let allowed_hosts = config
        .allowed_hosts
        .iter()
        .map(|host| {
            security::allowed_host(host).map_err(|reason| WebStartError::AllowedHost { host: host.clone(), reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let app_shells = config
        .shell_origins
        .iter()
        .map(|origin| {
            security::shell_origin(origin)
                .map_err(|reason| WebStartError::ShellOrigin { origin: origin.clone(), reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bind = |error: std::io::Error| WebStartError::Bind { addr, reason: error.to_string() };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind)?
    };
    let server = Arc::new(Server {
        port: local.port(),
        origins: Mutex::new(security::Origins::new(local.port(), &allowed_hosts, app_shells)),
        tokens: Arc::new(Tokens::default()),
        hooks,
        live: AtomicUsize::new(0),
        send_buffer: AtomicUsize::new(0),
        close_reply_wait: AtomicU64::new(0),
        handshakes: Mutex::new(BTreeMap::new()),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        config,
    });
    let router = router(server.clone());
    let accept = runtime.spawn(accept_loop(listener, server.clone(), router));
    tracing::info!(url = %server.url(), "serving web frames");
    Ok(WebServer { server, addr: local, accept: Some(accept) })
}

async fn accept_loop(listener: tokio::net::TcpListener, server: Arc<Server>, router: Router) {
    let lingers = linger::Lingers::new(server.config.max_connections, server.shutdown.clone(), server.tracker.clone());
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: back off a moment rather than spin.
                tracing::warn!("web server: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small messages go out as they are written: Nagle's algorithm would hold a page's
        // reply back until the previous segment is acknowledged.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("web server: cannot set TCP_NODELAY: {error}");
        }
        let send_buffer = server.send_buffer.load(Ordering::Acquire);
        if send_buffer != 0 {
            if let Err(error) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer) {
                tracing::warn!("web server: cannot set SO_SNDBUF: {error}");
            }
        }
        // Every byte read from the connection is a sign of life (see `keepalive`): its sockets
        // find when bytes last arrived in its `Activity`.
        let activity = keepalive::Activity::new(Some(std::os::fd::AsRawFd::as_raw_fd(&stream)));
        // Registered with read interest only while a task of the server reads it (see
        // `registration`).
        let stream = match registration::Registered::new(stream, activity.clone()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!("web server: cannot register an accepted connection: {error}");
                continue;
            }
        };
        // A connection the server is done with lingers for the peer's end (see `linger`).
        let stream = keepalive::Heard::new(linger::Lingering::new(stream, lingers.clone()), activity.clone());
        let service = TowerToHyperService::new(router.clone().layer(Extension(activity)));
        let timeout = server.config.handshake_timeout;
        let shutdown = server.shutdown.clone();
        server.tracker.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            // A request whose line and headers do not arrive in time is dropped.
            http.timer(TokioTimer::new()).header_read_timeout(timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::select! {
                _ = connection => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/shell", get(shell_upgrade))
        .route("/.host/connect", get(renderer_upgrade))
        .fallback(file)
        .layer(middleware::from_fn_with_state(server.clone(), guard))
        .with_state(server)
}

fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (status, reason).into_response()
}

/// Every request: its `Host` must be allowed (else 403: DNS rebinding); every response gets
/// the common headers and its site's Content-Security-Policy.
async fn guard(State(server): State<Arc<Server>>, mut request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // An absolute-form request names its host in the URI too: both must agree.
    let authority_agrees =
        request.uri().authority().is_none_or(|authority| authority.as_str().eq_ignore_ascii_case(&host));
    let site = if authority_agrees { lock(&server.origins).site(&host) } else { None };
    let mut response = match site.clone() {
        Some(site) => {
            request.extensions_mut().insert(site);
            next.run(request).await
        }
        None => {
            tracing::warn!(host, "web server: refused a request for a host not allowed");
            refuse(StatusCode::FORBIDDEN, "host not allowed")
        }
    };
    let headers = response.headers_mut();
    security::add_common_headers(headers);
    let csp = match site {
        Some(Site::Extension(name)) => {
            let origins = lock(&server.origins);
            origins.existing(&name).map(|origin| security::extension_csp(&origin, &origins.shell_origins()))
        }
        Some(Site::Extra) => Some(security::shell_csp(server.port, Some(&host))),
        _ => Some(security::shell_csp(server.port, None)),
    };
    if let Some(csp) = csp.and_then(|csp| HeaderValue::from_str(&csp).ok()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

async fn shell_upgrade(
    State(server): State<Arc<Server>>,
    Extension(site): Extension<Site>,
    Extension(activity): Extension<keepalive::Activity>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    if matches!(site, Site::Extension(_)) {
        return refuse(StatusCode::NOT_FOUND, "not found");
    }
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if !security::origin_is(&headers, &lock(&server.origins).socket_origins(&site, &host)) {
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "web server: refused a shell socket from another origin");
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(slot) = server.slot() else {
        tracing::warn!("web server: refused a shell socket: too many connections");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let max = server.config.max_message;
    let tracker = server.tracker.clone();
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(shell_socket::serve(socket, server, slot, activity)))
}

async fn renderer_upgrade(
    State(server): State<Arc<Server>>,
    Extension(site): Extension<Site>,
    Extension(activity): Extension<keepalive::Activity>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let Site::Extension(extension) = site else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };
    let origin = lock(&server.origins).existing(&extension);
    if !origin.is_some_and(|origin| security::origin_is(&headers, &[origin])) {
        tracing::warn!(extension = %extension, origin = ?headers.get(header::ORIGIN), "web server: refused a renderer socket from another origin");
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(handshake) = server.handshake(&extension) else {
        tracing::warn!(extension = %extension, "web server: refused a renderer socket: too many handshakes on its origin");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many handshakes on this origin");
    };
    let Some(slot) = server.slot() else {
        tracing::warn!(extension = %extension, "web server: refused a renderer socket: too many connections");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let max = server.config.max_message;
    let tracker = server.tracker.clone();
    let upgrade = upgrade.max_message_size(max).max_frame_size(max).read_buffer_size(renderer_socket::READ_BUFFER);
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(renderer_socket::serve(socket, server, extension, slot, handshake, activity))
    })
}

/// Files: the shell's on the shell's hosts (the embeddable scripts with CORS for the
/// application's shell origins); on an extension's origin the renderer document at `/`, the
/// host's scripts under `/.host/`, and the extension's assets.
async fn file(State(server): State<Arc<Server>>, Extension(site): Extension<Site>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = request.uri().path();
    if matches!(site, Site::Shell | Site::Extra) && assets::embeddable(path) {
        return embeddable_file(&server, path, request.headers());
    }
    let found: Option<(bytes::Bytes, &str)> = match site {
        Site::Shell | Site::Extra => assets::shell_file(path)
            .map(|bytes| (bytes::Bytes::from_static(bytes), assets::content_type_of_route(path))),
        Site::Extension(extension) => {
            if path == "/" {
                let shells = lock(&server.origins).shell_origins();
                Some((assets::renderer_document(&extension, &shells).into(), "text/html; charset=utf-8"))
            } else if let Some(bytes) = assets::extension_host_file(path) {
                Some((bytes::Bytes::from_static(bytes), assets::content_type(path)))
            } else {
                // `/css/my%20file.css` is the asset `css/my file.css`.
                let asset = percent_encoding::percent_decode_str(path.strip_prefix('/').unwrap_or(path)).decode_utf8();
                asset.ok().and_then(|asset| {
                    let bytes = server.hooks.assets(&extension)?.get(&asset)?;
                    Some((bytes::Bytes::from_static(bytes), assets::content_type(&asset)))
                })
            }
        }
    };
    match found {
        Some((bytes, content_type)) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A script an application's own shell loads from the host (`/embed.js` and what it
/// imports): served to every shell, with `Access-Control-Allow-Origin` for an application's
/// shell origin only (a module script across origins needs it; any other page gets no CORS
/// header, so its browser will not run the script).
fn embeddable_file(server: &Server, path: &str, headers: &HeaderMap) -> Response {
    let Some(bytes) = assets::shell_file(path) else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };
    let mut response = ([(header::CONTENT_TYPE, assets::content_type(path))], bytes).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    let origin = headers.get(header::ORIGIN).and_then(|origin| origin.to_str().ok());
    if let Some(origin) = origin.filter(|origin| lock(&server.origins).is_app_shell(origin)) {
        if let Ok(value) = HeaderValue::from_str(origin) {
            response_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
    }
    response
}
