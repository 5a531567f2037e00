//! The host's end of a child connection: spawning the child, the handshake, and validating
//! everything it sends. The host trusts no child: a packet that is oversized, malformed,
//! unexpected, or names an instance key not given to this connection closes the connection
//! (and ends the child), with the reason logged; nothing else is affected.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use extension_api::abi::{self, RawMessage};
use extension_api::wire::Control;
use extension_api::wire::InstanceConfig;
use std::io::Write;
use std::os::unix::net::UnixStream;

use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::protocol::{self, Framing, MAX_PACKET, OwnedMessage, PROTOCOL_VERSION, Packet};
use crate::core::lock;
use crate::endpoint::{self, Endpoint};
use crate::private_dir::PrivateDir;

/// What a child process is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// The renderer process of a child-process frame.
    Frame(u64),
    /// The process of an isolated extension.
    Isolated(String),
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("cannot start the child process `{program}`: {reason}")]
    Start { program: PathBuf, reason: String },
    #[error("the child process did not complete the handshake: {0}")]
    Handshake(String),
}

/// Called once when a connection is lost unexpectedly (the child crashed, exited, or broke
/// the protocol), with the reason.
pub(crate) type OnLost = Box<dyn Fn(Arc<Connection>, String) + Send + Sync>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const DESTROY_TIMEOUT: Duration = Duration::from_secs(6);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Connection {
    pub(crate) role: Role,
    pub(crate) pid: u32,
    /// The socket, written by whichever thread sends (frames are written whole, under the lock).
    writer: Mutex<UnixStream>,
    /// For the async part of cleaning up after the connection ends.
    runtime: tokio::runtime::Handle,
    endpoints: Mutex<HashMap<u64, Weak<Endpoint>>>,
    /// Keys this connection had: late packets for them are dropped, not violations.
    retired: Mutex<HashSet<u64>>,
    loads: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    destroys: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    closed: AtomicBool,
    /// Set before the host ends the child on purpose: its end is then no crash.
    retiring: AtomicBool,
    child: Mutex<Option<tokio::process::Child>>,
    on_lost: OnLost,
}

/// A token the child must present, so nothing else can take its place on the socket.
fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let high = hasher.finish();
    let low = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{high:016x}{low:016x}")
}

/// Words for how a child process ended.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        None => "ended".to_owned(),
    }
}

impl Connection {
    /// Starts `program prefix_args... child --socket PATH --token TOKEN` and completes the
    /// handshake.
    pub(crate) async fn spawn(
        program: &Path,
        prefix_args: &[OsString],
        role: Role,
        on_lost: OnLost,
    ) -> Result<Arc<Connection>, SpawnError> {
        let start_error = |reason: String| SpawnError::Start { program: program.to_owned(), reason };
        // Removed (with the socket) however this ends.
        let dir = PrivateDir::create().map_err(|e| start_error(format!("cannot create a private directory: {e}")))?;
        let socket = dir.path().join("child.sock");
        let listener =
            UnixListener::bind(&socket).map_err(|e| start_error(format!("cannot listen on {socket:?}: {e}")))?;
        let token = token();
        let mut child = tokio::process::Command::new(program)
            .args(prefix_args)
            .arg("child")
            .arg("--socket")
            .arg(&socket)
            .arg("--token")
            .arg(&token)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| start_error(e.to_string()))?;
        let pid = child.id().unwrap_or_default();
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| SpawnError::Handshake(e.to_string())),
            status = child.wait() => Err(SpawnError::Handshake(match status {
                Ok(status) => format!("the child {} before connecting", describe_exit(status)),
                Err(error) => error.to_string(),
            })),
            _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => Err(SpawnError::Handshake(format!("no connection within {HANDSHAKE_TIMEOUT:?}"))),
        };
        drop(dir);
        let (stream, _) = accepted?;
        // Blocking I/O from here: the thread that sends writes to the socket itself, and one
        // reader thread per connection routes what arrives. No hop through a writer task.
        let stream = stream.into_std().map_err(|e| SpawnError::Handshake(e.to_string()))?;
        stream.set_nonblocking(false).map_err(|e| SpawnError::Handshake(e.to_string()))?;
        let (stream, framing) = tokio::task::spawn_blocking(move || handshake(stream, &token))
            .await
            .map_err(|e| SpawnError::Handshake(e.to_string()))??;
        let writer = stream.try_clone().map_err(|e| SpawnError::Handshake(e.to_string()))?;
        // A child that stops reading for this long, with its socket buffer full, is hung.
        writer.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| SpawnError::Handshake(e.to_string()))?;
        let connection = Arc::new(Connection {
            role,
            pid,
            writer: Mutex::new(writer),
            runtime: tokio::runtime::Handle::current(),
            endpoints: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashSet::new()),
            loads: Mutex::new(HashMap::new()),
            destroys: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            child: Mutex::new(Some(child)),
            on_lost,
        });
        let reader = connection.clone();
        std::thread::Builder::new()
            .name(format!("child-{pid}"))
            .spawn(move || reader.read_loop(stream, framing))
            .map_err(|e| SpawnError::Handshake(format!("cannot start the reader thread: {e}")))?;
        Ok(connection)
    }

    /// A connection with no child process behind it, over `writer` (one end of a socket
    /// pair): what [`crate::fuzzing`] feeds packets to. `loading` are keys with a load pending.
    pub(crate) fn detached(writer: UnixStream, runtime: tokio::runtime::Handle, loading: &[u64]) -> Connection {
        let loads = loading.iter().map(|&key| (key, oneshot::channel().0)).collect();
        Connection {
            role: Role::Frame(0),
            pid: 0,
            writer: Mutex::new(writer),
            runtime,
            endpoints: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashSet::new()),
            loads: Mutex::new(loads),
            destroys: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            child: Mutex::new(None),
            on_lost: Box::new(|_, _| {}),
        }
    }

    /// Routes what the child sends until the connection ends, then cleans up.
    fn read_loop(self: Arc<Self>, mut stream: UnixStream, mut framing: Framing) {
        let reason = loop {
            match framing.read(&mut stream) {
                Ok(Some(bytes)) => {
                    let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.receive(&bytes)));
                    match received {
                        Ok(Ok(())) => {}
                        Ok(Err(violation)) => break format!("protocol violation: {violation}"),
                        // Whatever failed, the connection must still be cleaned up.
                        Err(_) => break "the host failed while handling a packet from the child".to_owned(),
                    }
                }
                Ok(None) => break "the connection closed".to_owned(),
                Err(error) => break format!("unreadable frame: {error}"),
            }
        };
        let runtime = self.runtime.clone();
        runtime.spawn(async move { self.lost(reason).await });
    }

    /// Handles one packet from the child; an error is a protocol violation.
    pub(crate) fn receive(&self, bytes: &[u8]) -> Result<(), String> {
        let packet = protocol::decode(bytes).map_err(|error| format!("malformed packet: {error}"))?;
        match packet {
            Packet::Message { key, message } => {
                if let Some(endpoint) = self.endpoint(key)?
                    && let Some(link) = endpoint.link.upgrade()
                {
                    let raw = message.raw();
                    let status = link.route(&endpoint, &raw);
                    // Only a request from a half that runs there is answered: a forged origin
                    // must not get an error reply delivered to the half it claims to be.
                    if status != abi::status::OK && raw.kind == abi::kind::INVOKE && endpoint.hosts(raw.origin) {
                        link.refuse_invoke(&raw, status);
                    }
                }
            }
            Packet::Complete { key, completion, result } => {
                if self.endpoint(key)?.is_some() {
                    endpoint::complete(key, completion, result);
                }
            }
            Packet::Log { key, level, target, message } => {
                if let Some(endpoint) = self.endpoint(key)? {
                    endpoint::forward_log(&endpoint, level, &target, &message);
                }
            }
            Packet::Loaded { key } => self.finish_load(key, Ok(()))?,
            Packet::LoadFailed { key, reason } => self.finish_load(key, Err(reason))?,
            Packet::Destroyed { key } => {
                if let Some(done) = lock(&self.destroys).remove(&key) {
                    let _ = done.send(());
                }
            }
            other => return Err(format!("a child may not send {}", packet_name(&other))),
        }
        Ok(())
    }

    /// The endpoint behind `key`, which must have been given to this connection; `None` for a
    /// key it had (a late packet of a destroyed instance, which is dropped).
    fn endpoint(&self, key: u64) -> Result<Option<Arc<Endpoint>>, String> {
        if let Some(endpoint) = lock(&self.endpoints).get(&key) {
            return Ok(endpoint.upgrade());
        }
        if lock(&self.retired).contains(&key) {
            return Ok(None);
        }
        Err(format!("instance key {key} does not belong to this connection"))
    }

    fn finish_load(&self, key: u64, result: Result<(), String>) -> Result<(), String> {
        match lock(&self.loads).remove(&key) {
            Some(waiter) => {
                let _ = waiter.send(result);
                Ok(())
            }
            None if lock(&self.retired).contains(&key) => Ok(()),
            None => Err(format!("an unrequested load answer for key {key}")),
        }
    }

    /// The connection broke: every instance behind it is gone.
    async fn lost(self: &Arc<Self>, reason: String) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let expected = self.retiring.load(Ordering::Acquire);
        // Ends the reader thread too, even if the child lingers.
        self.shut_socket();
        let child = lock(&self.child).take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            // Everything waiting on the child fails now; how it ended is reported after.
            self.fail_everything(&reason);
            let ended = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(status)) => describe_exit(status),
                _ => "did not end".to_owned(),
            };
            let reason = format!("{reason}; the child process (pid {}) {ended}", self.pid);
            if !expected {
                tracing::warn!(role = ?self.role, "child connection lost: {reason}");
                (self.on_lost)(self.clone(), reason);
            }
        }
    }

    fn fail_everything(&self, reason: &str) {
        let endpoints: Vec<Arc<Endpoint>> = lock(&self.endpoints).drain().filter_map(|(_, e)| e.upgrade()).collect();
        for endpoint in endpoints {
            endpoint::fail_completions(endpoint.key, reason);
            if let Some(link) = endpoint.link.upgrade() {
                link.lose_endpoint(&endpoint, reason);
            }
        }
        lock(&self.loads).clear();
        lock(&self.destroys).clear();
    }

    fn shut_socket(&self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }

    fn kill_now_unexpected(&self) {
        if let Some(child) = lock(&self.child).as_mut() {
            let _ = child.start_kill();
        }
    }

    /// Ends the child now, without waiting (the host is being dropped).
    pub(crate) fn kill_now(&self) {
        self.retiring.store(true, Ordering::Release);
        if let Some(child) = lock(&self.child).as_mut() {
            let _ = child.start_kill();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn register(&self, key: u64, endpoint: Weak<Endpoint>) {
        lock(&self.endpoints).insert(key, endpoint);
    }

    pub(crate) fn unregister(&self, key: u64) {
        lock(&self.endpoints).remove(&key);
        lock(&self.retired).insert(key);
    }

    fn send(&self, packet: Packet) -> u32 {
        if self.is_closed() {
            return abi::status::DEACTIVATED;
        }
        let frame = match Framing::default().frame(&packet) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(
                    role = ?self.role,
                    "refused to send a {} packet to the child: {error} (the limit is {MAX_PACKET} bytes)",
                    packet_name(&packet)
                );
                return abi::status::TOO_LARGE;
            }
        };
        let written = lock(&self.writer).write_all(&frame);
        match written {
            Ok(()) => abi::status::OK,
            Err(error) => {
                // Broken, or hung with a full buffer: either way the child is lost. A partial
                // frame may have been written, so nothing more may follow it: shut the socket
                // (its reader thread sees the end) and end the child.
                tracing::warn!(role = ?self.role, "cannot write to the child: {error}");
                self.shut_socket();
                self.kill_now_unexpected();
                abi::status::DEACTIVATED
            }
        }
    }

    pub(crate) fn deliver(&self, key: u64, message: &RawMessage) -> u32 {
        // SAFETY: `message` comes from a routing call, whose buffers are valid for its duration.
        match unsafe { OwnedMessage::copy(message) } {
            Some(message) => self.send(Packet::Message { key, message }),
            None => abi::status::INVALID,
        }
    }

    pub(crate) fn control(&self, key: u64, command: Control) -> u32 {
        self.send(Packet::Control { key, command })
    }

    pub(crate) async fn load(
        &self,
        key: u64,
        path: &Path,
        config: InstanceConfig,
        timeout: Duration,
    ) -> Result<(), String> {
        let (done, loaded) = oneshot::channel();
        lock(&self.loads).insert(key, done);
        let packet = Packet::Load { key, path: path.to_owned(), config };
        if self.send(packet) != abi::status::OK {
            lock(&self.loads).remove(&key);
            return Err("the child process is gone".into());
        }
        match tokio::time::timeout(timeout, loaded).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the child process went away while loading".into()),
            Err(_) => {
                lock(&self.loads).remove(&key);
                // If it does load after all, it must not run unowned.
                self.send(Packet::Destroy { key });
                Err(format!("the child did not load the library within {timeout:?}"))
            }
        }
    }

    /// Tells the child to destroy the instance; true once it confirms.
    pub(crate) async fn destroy(&self, key: u64) -> bool {
        let (done, destroyed) = oneshot::channel();
        lock(&self.destroys).insert(key, done);
        if self.send(Packet::Destroy { key }) != abi::status::OK {
            lock(&self.destroys).remove(&key);
            return false;
        }
        let confirmed = matches!(tokio::time::timeout(DESTROY_TIMEOUT, destroyed).await, Ok(Ok(())));
        lock(&self.destroys).remove(&key);
        confirmed
    }

    /// Ends the child on purpose (its frame closed, its extension deactivated).
    pub(crate) async fn retire(self: &Arc<Self>) {
        self.retiring.store(true, Ordering::Release);
        self.lost("retired by the host".to_owned()).await;
    }
}

/// Checks the child's hello (its protocol version and token) and welcomes it.
fn handshake(mut stream: UnixStream, token: &str) -> Result<(UnixStream, Framing), SpawnError> {
    let failed = |reason: String| SpawnError::Handshake(reason);
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| failed(e.to_string()))?;
    let mut framing = Framing::default();
    let bytes = match framing.read(&mut stream) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(failed("the child closed the connection".into())),
        Err(error) => return Err(failed(format!("no valid hello within {HANDSHAKE_TIMEOUT:?}: {error}"))),
    };
    match protocol::decode(&bytes) {
        Ok(Packet::Hello { protocol, token: presented, .. }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(failed(format!(
                    "the child speaks protocol version {protocol}, this host speaks {PROTOCOL_VERSION}"
                )));
            }
            if presented != token {
                return Err(failed("the child presented the wrong token".into()));
            }
        }
        Ok(other) => return Err(failed(format!("expected a hello, got {other:?}"))),
        Err(error) => return Err(failed(format!("malformed hello: {error}"))),
    }
    let welcome = framing.frame(&Packet::Welcome { protocol: PROTOCOL_VERSION }).map_err(|e| failed(e.to_string()))?;
    stream.write_all(&welcome).map_err(|e| failed(e.to_string()))?;
    stream.set_read_timeout(None).map_err(|e| failed(e.to_string()))?;
    Ok((stream, framing))
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Hello { .. } => "Hello",
        Packet::Welcome { .. } => "Welcome",
        Packet::Load { .. } => "Load",
        Packet::Loaded { .. } => "Loaded",
        Packet::LoadFailed { .. } => "LoadFailed",
        Packet::Control { .. } => "Control",
        Packet::Complete { .. } => "Complete",
        Packet::Message { .. } => "Message",
        Packet::Log { .. } => "Log",
        Packet::Destroy { .. } => "Destroy",
        Packet::Destroyed { .. } => "Destroyed",
    }
}
