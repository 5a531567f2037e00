//! The host's end of a child connection, its writing side: spawning the child, the
//! handshake, and the packets the host sends (the child-process transport's wire). What the
//! child sends is read and validated by the connection's reader (`inbound::ChildReader`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use extension_api::abi;
use extension_api::message::Message;
use extension_api::wire::Control;
use extension_api::wire::InstanceConfig;
use std::io::Write;
use std::os::unix::net::UnixStream;

use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::batch::{OnError, Writer};
use super::protocol::{self, Framing, MAX_PACKET, MessageFrame, PROTOCOL_VERSION, Packet};
use crate::core::lock;
use crate::private_dir::PrivateDir;

/// What a child process is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// The renderer process of a child-process frame.
    Frame(u64),
    /// The process of an isolated extension.
    Isolated(String),
}

use crate::error::ChildStartError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const DESTROY_TIMEOUT: Duration = Duration::from_secs(6);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's end of one child process: the process and the socket's writing side. It knows
/// keys and packets, nothing of endpoints or links: what arrives is routed by the
/// connection's reader (`inbound::ChildReader`), which holds what it routes to.
pub(crate) struct Connection {
    pub(crate) role: Role,
    pub(crate) pid: u32,
    /// The socket, written by whichever thread sends (frames are written whole, under its lock;
    /// an instance thread's wait in its buffer until that thread is about to park, see `batch`).
    writer: Arc<Writer>,
    /// Loads and destroys waiting for the child's answer (the reader gives it).
    loads: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    destroys: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    closed: AtomicBool,
    /// Set before the host ends the child on purpose: its end is then no crash.
    retiring: AtomicBool,
    child: Mutex<Option<tokio::process::Child>>,
}

/// A started child that passed the handshake: its connection, and the socket's reading side
/// with the framing the handshake left (for the connection's reader).
pub(crate) struct Spawned {
    pub(crate) connection: Connection,
    pub(crate) stream: UnixStream,
    pub(crate) framing: Framing,
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
    ) -> Result<Spawned, ChildStartError> {
        let start_error = |reason: String| ChildStartError::Start { program: program.to_owned(), reason };
        let connection_error = |error: std::io::Error| ChildStartError::Connection { reason: error.to_string() };
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
            accepted = listener.accept() => accepted.map_err(connection_error),
            status = child.wait() => Err(match status {
                Ok(status) => ChildStartError::EndedEarly { how: describe_exit(status) },
                Err(error) => connection_error(error),
            }),
            _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => Err(ChildStartError::NoHello { timeout: HANDSHAKE_TIMEOUT }),
        };
        drop(dir);
        let (stream, _) = accepted?;
        // Blocking I/O from here: the thread that sends writes to the socket itself, and one
        // reader thread per connection routes what arrives. No hop through a writer task.
        let stream = stream.into_std().map_err(connection_error)?;
        stream.set_nonblocking(false).map_err(connection_error)?;
        super::protocol::widen_send_buffer(&stream);
        let (stream, framing) = tokio::task::spawn_blocking(move || handshake(stream, &token))
            .await
            .map_err(|e| ChildStartError::Connection { reason: e.to_string() })??;
        let writer = stream.try_clone().map_err(connection_error)?;
        // A child that stops reading for this long, with its socket buffer full, is hung.
        writer.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(connection_error)?;
        let connection = Connection {
            role,
            pid,
            writer: Writer::new(writer, OnError::Shut),
            loads: Mutex::new(HashMap::new()),
            destroys: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            child: Mutex::new(Some(child)),
        };
        Ok(Spawned { connection, stream, framing })
    }

    /// A connection with no child process behind it, over `writer` (one end of a socket
    /// pair): what [`crate::fuzzing`] feeds packets to. `loading` are keys with a load pending.
    pub(crate) fn detached(writer: UnixStream, loading: &[u64]) -> Connection {
        let loads = loading.iter().map(|&key| (key, oneshot::channel().0)).collect();
        Connection {
            role: Role::Frame(0),
            pid: 0,
            writer: Writer::new(writer, OnError::Shut),
            loads: Mutex::new(loads),
            destroys: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            child: Mutex::new(None),
        }
    }

    /// Gives the child's answer to a load; false if no load of `key` waits.
    pub(crate) fn finish_load(&self, key: u64, result: Result<(), String>) -> bool {
        match lock(&self.loads).remove(&key) {
            Some(waiter) => {
                let _ = waiter.send(result);
                true
            }
            None => false,
        }
    }

    /// The child confirmed it destroyed `key`'s instance; false if no destroy of it waits (the
    /// host did not ask for one, or gave up waiting).
    pub(crate) fn finish_destroy(&self, key: u64) -> bool {
        match lock(&self.destroys).remove(&key) {
            Some(done) => {
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// Marks the connection closed; false if it already was (whoever closes it first cleans up).
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Whether the host is ending the child on purpose.
    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }

    pub(crate) fn set_retiring(&self) {
        self.retiring.store(true, Ordering::Release);
    }

    /// The child process, once: whoever cleans up waits for it.
    pub(crate) fn take_child(&self) -> Option<tokio::process::Child> {
        lock(&self.child).take()
    }

    /// Drops every load and destroy still waiting: their waiters see the child gone.
    pub(crate) fn drop_waiters(&self) {
        lock(&self.loads).clear();
        lock(&self.destroys).clear();
    }

    /// Shuts the socket both ways: the reader thread sees the end.
    pub(crate) fn shut_socket(&self) {
        self.writer.shutdown();
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

    fn send(&self, packet: Packet) -> u32 {
        let name = packet_name(&packet);
        let frame = protocol::frame(&packet);
        self.send_frame(name, frame.as_ref().map(|frame| [&frame[..]]))
    }

    /// Writes a frame whole (its pieces, in order) through the writer; a frame that could not
    /// be made (over [`MAX_PACKET`]) is refused to its sender.
    fn send_frame<const N: usize>(&self, name: &str, frame: Result<[&[u8]; N], &std::io::Error>) -> u32 {
        if self.is_closed() {
            return abi::status::DEACTIVATED;
        }
        let parts = match frame {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(
                    role = ?self.role,
                    "refused to send a {name} packet to the child: {error} (the limit is {MAX_PACKET} bytes)",
                );
                return abi::status::TOO_LARGE;
            }
        };
        match self.writer.send(&parts) {
            Ok(()) => abi::status::OK,
            Err(error) => {
                // Broken, or hung with a full buffer: either way the child is lost. The writer
                // shut the socket (its reader thread sees the end); end the child.
                tracing::warn!(role = ?self.role, "cannot write to the child: {error}");
                self.kill_now_unexpected();
                abi::status::DEACTIVATED
            }
        }
    }

    /// Sends `message` to instance `key`, its value written from where it is (no copy, unless
    /// it is small and waits in the buffer until its instance thread parks).
    pub(crate) fn deliver(&self, key: u64, message: &Message<'_>) -> u32 {
        let frame = MessageFrame::new(key, message);
        self.send_frame("Message", frame.as_ref().map(MessageFrame::parts))
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
}

/// Checks the child's hello (its protocol version and token) and welcomes it.
fn handshake(mut stream: UnixStream, token: &str) -> Result<(UnixStream, Framing), ChildStartError> {
    let failed = |error: std::io::Error| ChildStartError::Connection { reason: error.to_string() };
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(failed)?;
    let mut framing = Framing::default();
    let bytes = match framing.read(&mut stream) {
        Ok(Some(bytes)) => bytes.to_vec(),
        Ok(None) => return Err(ChildStartError::BadHello { reason: "the child closed the connection".into() }),
        Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(ChildStartError::NoHello { timeout: HANDSHAKE_TIMEOUT });
        }
        Err(error) => return Err(ChildStartError::BadHello { reason: format!("unreadable frame: {error}") }),
    };
    match protocol::decode(&bytes) {
        Ok(Packet::Hello { protocol, token: presented, .. }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(ChildStartError::ProtocolMismatch { child: protocol, host: PROTOCOL_VERSION });
            }
            if presented != token {
                return Err(ChildStartError::WrongToken);
            }
        }
        Ok(other) => {
            return Err(ChildStartError::BadHello { reason: format!("expected a hello, got {}", packet_name(&other)) });
        }
        Err(error) => return Err(ChildStartError::BadHello { reason: format!("malformed: {error}") }),
    }
    let welcome = framing
        .frame(&Packet::Welcome { protocol: PROTOCOL_VERSION })
        .map_err(|error| ChildStartError::Connection { reason: error.to_string() })?;
    stream.write_all(&welcome).map_err(failed)?;
    stream.set_read_timeout(None).map_err(failed)?;
    Ok((stream, framing))
}

pub(crate) fn packet_name<M>(packet: &Packet<M>) -> &'static str {
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
