//! The child's end of a connection: the `host child` subcommand. It loads the libraries the
//! host names, runs their instances, and relays their calls to the host. When the connection
//! ends (the host exited, crashed or was killed), the child exits at once: no orphans.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use extension_api::abi::{self, Descriptor, HostVTable, RawMessage, RawSlice};
use extension_api::message::{Message, Reply};
use extension_api::wire::{Completion, InstanceConfig};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::batch::{self, OnError, Writer};
use super::lending;
use super::protocol::{self, Frame, Framing, MessageFrame, PROTOCOL_VERSION, Packet};
use super::recv::{Recv, readable};
use crate::core::lock;
use crate::library_instance::{LibraryInstance, Taken};

/// The socket to the host, written by whichever thread sends (extension threads call the
/// vtable below); frames are written whole, under the lock.
static WRITER: OnceLock<Arc<Writer>> = OnceLock::new();

/// What the reader thread has to send (answers it gives itself: inspect results, refusals),
/// written in order by one thread of its own, so the reader never blocks on the socket.
static READER_POSTS: OnceLock<SyncSender<bytes::Bytes>> = OnceLock::new();

/// Bounds `READER_POSTS`. The reader produces at most one post per packet it reads, and the
/// queue drains as fast as the host reads; reaching the bound means the host stopped reading,
/// and then the reader waits too (the host ends a child that stops reading).
const READER_POST_BOUND: usize = 65_536;

static CHILD_VTABLE: HostVTable = HostVTable {
    abi_version: abi::ABI_VERSION,
    send: child_send,
    complete: child_complete,
    log: child_log,
    batch_begin: child_batch_begin,
    batch_end: child_batch_end,
    inbound_fd: child_inbound_fd,
    drain: child_drain,
};

/// Runs the child until the host goes away. Returns only on a startup failure.
pub fn run(socket: &Path, token: &str) -> ExitCode {
    match serve(socket, token) {
        // The host is gone: nothing of ours may outlive it, and no destructor should run
        // extension code now.
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("child: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(socket: &Path, token: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot connect to {socket:?}: {e}"))?;
    protocol::widen_send_buffer(&stream);
    let mut framing = Framing::default();
    let hello = Packet::Hello { protocol: PROTOCOL_VERSION, token: token.to_owned(), pid: std::process::id() };
    let frame = framing.frame(&hello).map_err(|e| e.to_string())?;
    stream.write_all(&frame).map_err(|e| e.to_string())?;
    match framing.read(&mut stream) {
        Ok(Some(bytes)) => match protocol::decode(bytes) {
            Ok(Packet::Welcome { .. }) => {}
            other => return Err(format!("the host did not welcome us: {other:?}")),
        },
        _ => return Err("the host closed the connection during the handshake".into()),
    }
    let writer = stream.try_clone().map_err(|e| e.to_string())?;
    let _ = WRITER.set(Writer::new(writer, OnError::Exit));
    let (posts, queued) = std::sync::mpsc::sync_channel::<bytes::Bytes>(READER_POST_BOUND);
    std::thread::Builder::new()
        .name("child-writer".into())
        .spawn(move || {
            for frame in queued {
                write_frame(&[&frame]);
            }
        })
        .map_err(|e| format!("cannot start the writer thread: {e}"))?;
    let _ = READER_POSTS.set(posts);
    READER.with(|reader| reader.set(true));
    // What the handshake read past the welcome (the host's first packets) stays in `framing`.
    let inbound = INBOUND.get_or_init(|| Inbound::new(stream, framing));
    // This thread never writes (a reader blocked on a full socket while the host is blocked
    // writing to us would stall both); extension threads and the threads started below write
    // directly. It returns only by ending the process (the host gone, or out of step with it).
    inbound.read_loop()
}

/// The connection's reading side: the reader thread's, and, while the connection serves one
/// instance, that instance's thread's too (see [`Inbound::drain`]).
static INBOUND: OnceLock<Inbound> = OnceLock::new();

/// How long the drainer's thread may sit in one run, with the socket readable, before the
/// reader thread reads for it: what bounds an answer to `Inspect`, a `Destroy`, and noticing
/// the host gone, while author code blocks that thread.
const WATCH_TICK: Duration = Duration::from_millis(2);

/// The most frames one drain handles before it lets the instance's other tasks run (its
/// dispatcher among them: the mailbox is filled and emptied on one thread).
const DRAIN_FRAMES: u32 = 64;

/// The socket's reading side, and who reads it.
///
/// **One reader at a time**, under `framing`'s lock, and each frame is handled before the
/// lock is let go: frames are handled in the order they arrived, exactly once, whoever reads.
/// Normally the reader thread reads, blocking, as it always did. When the connection serves one
/// instance (a renderer process with one extension, an isolated one), that instance's thread
/// claims the socket (its first `drain`) and reads it whenever its runtime sees it readable: a
/// message then reaches its mailbox from its own thread, which needs no wake. The reader thread
/// is then the reader of last resort: it rests while the instance's thread is parked (its
/// runtime wakes for the socket itself), and while it runs it looks every [`WATCH_TICK`]; if
/// the thread has been in one run for a whole tick without draining, with bytes waiting (author
/// code blocking it), it reads for it, so `Inspect`, control, `Destroy` and the host's end are
/// still seen. Idle, nothing ticks. A second instance loading, or the drainer destroyed, gives
/// the socket back to the reader thread.
struct Inbound {
    /// Kept open for the process's life: `fd` is its descriptor.
    stream: UnixStream,
    fd: RawFd,
    /// One reader at a time; what it read past the last frame it handled stays here.
    framing: Mutex<Framing>,
    instances: Instances,
    /// The key of the instance whose thread reads the socket; 0 (never a key) when only the
    /// reader thread does. Changed only under the instances' lock.
    drainer: AtomicU64,
    /// Runs of the drainer's thread begun (`batch_begin`), and whether one is under way.
    runs: AtomicU64,
    in_run: AtomicBool,
    /// Drains that took the socket's lock.
    drains: AtomicU64,
    /// The last drain stopped at [`DRAIN_FRAMES`], bytes left in `framing`.
    leftover: AtomicBool,
    /// The reader thread looks every tick (a run began since it last rested).
    armed: AtomicBool,
    wake: Mutex<()>,
    armed_now: Condvar,
}

/// The host is gone (the connection ended, or broke): nothing of ours may outlive it, and no
/// destructor should run extension code now.
fn host_gone() -> ! {
    std::process::exit(0)
}

/// The stream can no longer be trusted to be in step with the host.
fn out_of_step(error: &rmp_serde::decode::Error) -> ! {
    eprintln!("child: a malformed packet from the host: {error}");
    std::process::exit(1)
}

impl Inbound {
    /// The reading side of `stream`, with what `framing` already holds of it; read by the
    /// reader thread until an instance claims it.
    fn new(stream: UnixStream, framing: Framing) -> Inbound {
        Inbound {
            fd: stream.as_raw_fd(),
            stream,
            framing: Mutex::new(framing),
            instances: Arc::new(Mutex::new(Table::default())),
            drainer: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            in_run: AtomicBool::new(false),
            drains: AtomicU64::new(0),
            leftover: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            wake: Mutex::new(()),
            armed_now: Condvar::new(),
        }
    }

    fn drainer(&self) -> u64 {
        self.drainer.load(Ordering::SeqCst)
    }

    /// The reader thread: reads while no instance's thread does, watches while one does.
    fn read_loop(&self) -> ! {
        loop {
            if self.drainer() == 0 {
                let mut framing = lock(&self.framing);
                // Blocking while nobody else reads; once an instance's thread has claimed the
                // socket, what is there is read without blocking, and the rest left to it.
                self.read_frames(&mut framing, || self.drainer() == 0, || true);
                let drains = self.drains.load(Ordering::SeqCst);
                drop(framing);
                self.unlocked(drains);
            } else {
                self.watch();
            }
        }
    }

    /// Reads and handles frames until the socket has none for now (true), or `go_on` says stop
    /// before the next (false); `wait` says whether the next read may block. Ends the process
    /// when the host is gone or out of step.
    fn read_frames(&self, framing: &mut Framing, wait: impl Fn() -> bool, mut go_on: impl FnMut() -> bool) -> bool {
        let mut recv = Recv::new(self.stream.as_fd());
        loop {
            if !go_on() {
                return false;
            }
            recv.wait = wait();
            match framing.read_frame(&mut recv) {
                // Decoded borrowing from the frame: a message is delivered (the instance copies
                // it into its mailbox) straight from the read buffer; a large frame is lent to
                // the instance instead.
                Ok(Some(Frame::Borrowed(bytes))) => self.receive(bytes),
                Ok(Some(Frame::Owned(frame))) => lending::lend(frame, |bytes| self.receive(bytes)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Ok(None) | Err(_) => host_gone(),
            }
        }
    }

    /// Handles one frame from the host.
    fn receive(&self, bytes: &[u8]) {
        match protocol::decode_borrowed(bytes) {
            Ok(packet) => handle(packet, &self.instances),
            Err(error) => out_of_step(&error),
        }
    }

    /// The reader thread let the socket go while an instance's thread reads it (`drains`: that
    /// thread's drains when it let go). A drain that found the lock taken meanwhile waits for
    /// the next readiness; if bytes came after this thread's last read and no drain took them,
    /// nothing would tell that thread: read them here.
    fn unlocked(&self, mut drains: u64) {
        while self.drainer() != 0 && readable(self.stream.as_fd(), 0) && self.drains.load(Ordering::SeqCst) == drains {
            let mut framing = lock(&self.framing);
            self.read_frames(&mut framing, || false, || true);
            drains = self.drains.load(Ordering::SeqCst);
        }
    }

    /// The reader of last resort: rests until the drainer's thread runs; then, every tick, reads
    /// for it if it has been in one run for the whole tick without draining, with bytes waiting.
    fn watch(&self) {
        {
            let mut wake = lock(&self.wake);
            while !self.armed.load(Ordering::SeqCst) && self.drainer() != 0 {
                wake = self.armed_now.wait(wake).unwrap_or_else(PoisonError::into_inner);
            }
        }
        if self.drainer() == 0 {
            return;
        }
        let (runs, drains) = (self.runs.load(Ordering::SeqCst), self.drains.load(Ordering::SeqCst));
        // A timer, not a synchronisation: the bound on how long the reader leaves bytes to a
        // thread that does not come for them.
        std::thread::sleep(WATCH_TICK);
        let in_run = self.in_run.load(Ordering::SeqCst);
        let same_run = self.runs.load(Ordering::SeqCst) == runs;
        if in_run && same_run && self.drains.load(Ordering::SeqCst) == drains {
            if self.leftover.load(Ordering::SeqCst) || readable(self.stream.as_fd(), 0) {
                let mut framing = lock(&self.framing);
                self.read_frames(&mut framing, || false, || true);
                self.leftover.store(false, Ordering::SeqCst);
                let drains = self.drains.load(Ordering::SeqCst);
                drop(framing);
                self.unlocked(drains);
            }
        } else if !in_run && same_run {
            // A tick with no run: rest. (SeqCst with `run_begins`: either it sees this, or
            // this sees its run and looks on.)
            self.armed.store(false, Ordering::SeqCst);
            if self.runs.load(Ordering::SeqCst) != runs || self.in_run.load(Ordering::SeqCst) {
                self.armed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A run of the drainer's thread begins (it woke, or claimed the socket).
    fn run_begins(&self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.in_run.store(true, Ordering::SeqCst);
        if !self.armed.load(Ordering::SeqCst) {
            let _wake = lock(&self.wake);
            self.armed.store(true, Ordering::SeqCst);
            self.armed_now.notify_one();
        }
    }

    /// The descriptor `key`'s thread may watch: the socket, if this connection serves that
    /// instance alone.
    fn inbound_fd(&self, key: u64) -> i32 {
        if instances_of(&self.instances).only() == Some(key) { self.fd } else { -1 }
    }

    /// `key`'s thread reads what the socket has, without blocking (see [`Inbound`]). Its first
    /// drain claims the socket, if the connection serves that instance alone.
    fn drain(&self, key: u64) -> u32 {
        if self.drainer() != key && !self.claim(key) {
            return abi::drain::STOP;
        }
        let Some(mut framing) = (match self.framing.try_lock() {
            Ok(framing) => Some(framing),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            // The reader thread reads (it takes over a stuck run, or hands over after the
            // claim): what comes after it let go is a new readiness, or read by it.
            Err(std::sync::TryLockError::WouldBlock) => None,
        }) else {
            return abi::drain::IDLE;
        };
        self.drains.fetch_add(1, Ordering::SeqCst);
        // What the packets read here answer (inspect results, refusals, `Destroyed`) goes to the
        // writer thread, as the reader thread's do: a thread holding the read side never blocks
        // on a write (the host may be blocked writing to us, its reader routing an isolated
        // extension's messages back here, and nobody else could read meanwhile).
        let reader = READER.with(|reader| reader.replace(true));
        let mut frames = 0;
        let all = self.read_frames(
            &mut framing,
            || false,
            || {
                frames += 1;
                frames <= DRAIN_FRAMES && self.drainer() == key
            },
        );
        READER.with(|flag| flag.set(reader));
        self.leftover.store(!all && framing.holds_bytes(), Ordering::SeqCst);
        drop(framing);
        if all {
            abi::drain::IDLE
        } else if self.drainer() == key {
            abi::drain::MORE
        } else {
            // The socket went back to the reader thread (a second instance loads, or this one
            // is destroyed): it finds what this left in `framing`.
            abi::drain::STOP
        }
    }

    /// Makes `key`'s thread the socket's reader, if the connection serves that instance alone.
    fn claim(&self, key: u64) -> bool {
        let table = instances_of(&self.instances);
        if table.only() != Some(key) {
            return false;
        }
        self.drainer.store(key, Ordering::SeqCst);
        drop(table);
        // The claim is made inside a run of that thread (its runtime's first).
        self.run_begins();
        true
    }

    /// After a change of the table: the socket goes back to the reader thread unless the
    /// drainer is still the only instance.
    fn settle(&self, table: &Table<LibraryInstance>) {
        let drainer = self.drainer();
        if drainer != 0 && table.only() != Some(drainer) {
            self.drainer.store(0, Ordering::SeqCst);
            let _wake = lock(&self.wake);
            self.armed_now.notify_one();
        }
    }
}

/// After a change of `table`: who reads the socket (see [`Inbound::settle`]).
fn settle(table: &Table<LibraryInstance>) {
    if let Some(inbound) = INBOUND.get() {
        inbound.settle(table);
    }
}

/// The instances this child runs and the ones it is loading.
type Instances = Arc<Mutex<Table<LibraryInstance>>>;

fn instances_of(instances: &Instances) -> std::sync::MutexGuard<'_, Table<LibraryInstance>> {
    instances.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The child's instances by key: those running, and those whose load is under way. A load
/// runs on a thread of its own, so the host's `Destroy` can overtake it (the host gives up on
/// a load that takes too long, destroys the key and forgets it): such an instance is destroyed
/// the moment it starts, never left running with nobody to own it.
struct Table<I> {
    /// Looked up for every packet: foldhash, not std's SipHash (the keys are the host's).
    running: foldhash::HashMap<u64, I>,
    /// Keys loading; `true` once the host destroyed the key meanwhile.
    loading: foldhash::HashMap<u64, bool>,
}

impl<I> Default for Table<I> {
    fn default() -> Self {
        Table { running: foldhash::HashMap::default(), loading: foldhash::HashMap::default() }
    }
}

/// What a `Destroy` found.
#[derive(Debug, PartialEq, Eq)]
enum Found<I> {
    /// A running instance, taken out to destroy.
    Running(I),
    /// A load under way: its instance is destroyed when it starts.
    Loading,
    /// Nothing (never loaded, failed, or destroyed before).
    Nothing,
}

impl<I> Table<I> {
    fn start_loading(&mut self, key: u64) {
        self.loading.insert(key, false);
    }

    /// A load finished with `instance`: it runs, or, if the host destroyed the key meanwhile,
    /// it comes back to be destroyed at once.
    fn loaded(&mut self, key: u64, instance: I) -> Result<(), I> {
        match self.loading.remove(&key) {
            Some(true) => Err(instance),
            _ => {
                self.running.insert(key, instance);
                Ok(())
            }
        }
    }

    /// A load failed: nothing runs under `key`.
    fn load_failed(&mut self, key: u64) {
        self.loading.remove(&key);
    }

    fn get(&self, key: u64) -> Option<&I> {
        self.running.get(&key)
    }

    /// The key of the one instance here, running or loading, if there is exactly one. A load
    /// the host destroyed meanwhile is not it: that instance is destroyed as it starts, so it
    /// must not be left the socket to read.
    fn only(&self) -> Option<u64> {
        match (self.running.len(), self.loading.len()) {
            (1, 0) => self.running.keys().next().copied(),
            (0, 1) => self.loading.iter().find(|(_, destroyed)| !**destroyed).map(|(key, _)| *key),
            _ => None,
        }
    }

    /// The host destroys `key`.
    fn destroy(&mut self, key: u64) -> Found<I> {
        if let Some(instance) = self.running.remove(&key) {
            return Found::Running(instance);
        }
        match self.loading.get_mut(&key) {
            Some(destroyed) => {
                *destroyed = true;
                Found::Loading
            }
            None => Found::Nothing,
        }
    }
}

fn handle(packet: Packet<Message<'_>>, instances: &Instances) {
    match packet {
        Packet::Load { key, path, config } => {
            // Loading runs library initialisers and may log (a write): off the reader thread.
            // The host sends nothing for this key until it has the answer.
            {
                let mut table = instances_of(instances);
                table.start_loading(key);
                // A second instance: the reader thread reads for all of them.
                settle(&table);
            }
            let table = instances.clone();
            let spawned = std::thread::Builder::new().name("child-load".into()).spawn(move || {
                let answer = match start(key, &path, &config) {
                    Ok(instance) => {
                        let outcome = {
                            let mut table = instances_of(&table);
                            let outcome = table.loaded(key, instance);
                            // A key leaving the table: the socket must not stay with it.
                            settle(&table);
                            outcome
                        };
                        match outcome {
                            Ok(()) => Packet::Loaded { key },
                            Err(abandoned) => {
                                // The host destroyed the key while it loaded (and was told it
                                // is gone): it must not run.
                                if let Some(taken) = abandoned.take() {
                                    taken.destroy();
                                }
                                return;
                            }
                        }
                    }
                    Err(reason) => {
                        let mut table = instances_of(&table);
                        table.load_failed(key);
                        settle(&table);
                        drop(table);
                        Packet::LoadFailed { key, reason }
                    }
                };
                post(answer);
            });
            if let Err(error) = spawned {
                instances_of(instances).load_failed(key);
                post(Packet::LoadFailed { key, reason: format!("cannot start a thread to load the library: {error}") });
            }
        }
        Packet::Control { key, command } => {
            let completion = command.completion();
            let status = match instances_of(instances).get(key) {
                Some(instance) => instance.control(&command),
                None => abi::status::UNKNOWN_INSTANCE,
            };
            if status != abi::status::OK {
                let result =
                    Completion::Failed { reason: format!("the instance refused the command (status {status})") };
                post(Packet::Complete { key, completion, result });
            }
        }
        Packet::Message { key, message } => {
            let status = match instances_of(instances).get(key) {
                Some(instance) => instance.deliver(&message),
                None => abi::status::UNKNOWN_INSTANCE,
            };
            // A refused request is answered at once (its invoker would otherwise wait for its
            // timeout); a dropped broadcast is counted by the instance.
            if status != abi::status::OK && message.kind == abi::kind::INVOKE {
                post(refusal(key, &message, status));
            }
        }
        Packet::Destroy { key } => {
            let found = {
                let mut table = instances_of(instances);
                let found = table.destroy(key);
                settle(&table);
                found
            };
            let taken = match found {
                Found::Running(instance) => instance.take(),
                // A load under way: its instance is destroyed as it starts.
                Found::Loading | Found::Nothing => None,
            };
            if taken.is_none() {
                post(Packet::Destroyed { key });
                return;
            }
            // Taken out of the table, so this is the instance's one destroy: on a thread of its
            // own (destroying joins the instance's thread, which the reader must not wait for),
            // or, if no thread can be started, on this one (it must not run on unowned).
            let slot = Arc::new(Mutex::new(taken));
            let on_thread = slot.clone();
            let spawned =
                std::thread::Builder::new().name("child-destroy".into()).spawn(move || destroy(&on_thread, key));
            if spawned.is_err() {
                destroy(&slot, key);
            }
        }
        other => tracing::error!("child: ignoring an unexpected packet from the host: {other:?}"),
    }
}

/// What identifies the content of a library file here: its path, and the file's device,
/// inode, size, modification and change times. A rebuilt library changes them: cargo (or a
/// copy, a rename) writes a new file, which has a new inode, and a file rewritten in place gets
/// a new change time, which nobody can set back. (Since Linux 6.13, ext4, xfs, btrfs and tmpfs
/// take a fine-grained time for a change made after the time was read, as it is here; on older
/// kernels two rewrites to the same size within one tick of the coarse clock could look alike.)
/// So a rebuilt library loaded anew runs its new code here too, as DESIGN requires, while every
/// activation of an unchanged one reuses the library loaded the first time. A content hash
/// would read the whole file (a debug build is about 20 MB) at every activation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: std::path::PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileKey {
    fn of(path: &Path) -> std::io::Result<FileKey> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path)?;
        Ok(FileKey {
            path: path.to_owned(),
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// A library this process has loaded: never unmapped, so loaded once and shared by every
/// instance of it (one per activation), as in the host's process. A fresh copy per activation
/// would map the whole library again each time, with statics of its own that are never given
/// back: megabytes of memory, tokio's signal-handling socket pair (two descriptors) and pthread
/// keys (a process has 1,024: a release build's renderer process aborted, out of them, within
/// 1,100 activations).
#[derive(Clone)]
struct Loaded {
    descriptor: &'static Descriptor,
    name: String,
}

/// Loads the library at `path`, or finds it loaded already.
fn library(path: &Path) -> Result<Loaded, String> {
    /// One slot per file: a load holds its file's slot, so two loads of one file at once do not
    /// map it twice, while other files load meanwhile (a slow initialiser in one library does
    /// not hold up another's).
    type Slot = Arc<Mutex<Option<Loaded>>>;
    static LIBRARIES: OnceLock<Mutex<HashMap<FileKey, Slot>>> = OnceLock::new();
    // A file that cannot be read is left to `load`, which says why in its own words.
    let Ok(before) = FileKey::of(path) else { return load(path) };
    let slot = {
        let mut libraries = LIBRARIES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
        libraries.entry(before.clone()).or_default().clone()
    };
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(loaded) = slot.as_ref() {
        return Ok(loaded.clone());
    }
    let loaded = load(path)?;
    // Cached only if the file did not change while it was copied: then the key names what was
    // loaded. (If it did, this load goes ahead uncached, and the next finds the new key.)
    if FileKey::of(path).is_ok_and(|after| after == before) {
        *slot = Some(loaded.clone());
    }
    Ok(loaded)
}

fn load(path: &Path) -> Result<Loaded, String> {
    let library = crate::library::load(path).map_err(|error| error.to_string())?;
    Ok(Loaded { descriptor: library.descriptor, name: library.info.name })
}

fn start(key: u64, path: &Path, config: &InstanceConfig) -> Result<LibraryInstance, String> {
    let library = library(path)?;
    let name = &config.name;
    if library.name != *name {
        return Err(format!("`{}` now holds extension `{}`, not `{name}`", path.display(), library.name));
    }
    let instance = LibraryInstance::new(library.descriptor);
    instance.instantiate(&CHILD_VTABLE, key, config).map_err(|refused| refused.to_string())?;
    Ok(instance)
}

/// Destroys the instance in `slot`, if it is still there, and tells the host it is gone.
fn destroy(slot: &Mutex<Option<Taken>>, key: u64) {
    let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(taken) = taken {
        taken.destroy();
    }
    post(Packet::Destroyed { key });
}

/// The error reply to a request the instance `key` could not take.
fn refusal(key: u64, request: &Message<'_>, status: u32) -> Packet {
    let (kind, why) = extension_api::message::refusal(status);
    let reply = Reply::error(kind, why);
    let message = Message::reply(request.target, request.origin, request.request_id, &reply).to_owned();
    Packet::Message { key, message }
}

thread_local! {
    /// Set on the thread that reads from the host.
    static READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn post(packet: Packet) -> u32 {
    // Framed here, so an oversized packet is refused to its sender instead of breaking the
    // connection for every instance in this process.
    let Ok(frame) = protocol::frame(&packet) else { return abi::status::TOO_LARGE };
    // The reader thread never blocks on a write (answers to commands are completed on it):
    // it hands the write to the writer thread.
    if READER.with(std::cell::Cell::get) {
        return queue(frame);
    }
    write_frame(&[&frame])
}

/// Hands a frame to the writer thread (for the reader thread, which never writes).
fn queue(frame: bytes::Bytes) -> u32 {
    match READER_POSTS.get().map(|posts| posts.send(frame)) {
        Some(Ok(())) => abi::status::OK,
        _ => abi::status::DEACTIVATED,
    }
}

/// Sends an instance's message, its value written from the instance's buffer (no copy); an
/// oversized packet is refused to its sender.
fn post_message(key: u64, message: &Message<'_>) -> u32 {
    let Ok(frame) = MessageFrame::new(key, message) else { return abi::status::TOO_LARGE };
    if READER.with(std::cell::Cell::get) {
        return queue(frame.to_bytes());
    }
    write_frame(&frame.parts())
}

/// Writes one frame whole (its pieces, in order) through the writer: on an instance's thread,
/// deferred until the thread is about to park (see `batch`).
fn write_frame(parts: &[&[u8]]) -> u32 {
    let Some(writer) = WRITER.get() else { return abi::status::DEACTIVATED };
    match writer.send(parts) {
        Ok(()) => abi::status::OK,
        // The host is gone.
        Err(_) => std::process::exit(0),
    }
}

unsafe extern "C" fn child_send(key: u64, message: *const RawMessage) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: null is refused; otherwise the library passes a message valid for this call.
        let Some(message) = (unsafe { message.as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: the library keeps its buffers valid for this call; invalid ones are refused
        // by `from_raw` before they are read.
        match unsafe { Message::from_raw(message) } {
            Ok(message) => post_message(key, &message),
            Err(status) => status,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn child_batch_begin(key: u64) {
    // Nothing to validate: a batch only defers this thread's own writes (see `batch`), and the
    // key is compared with the drainer's, not trusted.
    let _ = catch_unwind(|| {
        batch::begin();
        if let Some(inbound) = INBOUND.get()
            && inbound.drainer.load(Ordering::Relaxed) == key
        {
            inbound.run_begins();
        }
    });
}

unsafe extern "C" fn child_batch_end(key: u64) {
    let _ = catch_unwind(|| {
        if let Some(inbound) = INBOUND.get()
            && inbound.drainer.load(Ordering::Relaxed) == key
        {
            inbound.in_run.store(false, Ordering::SeqCst);
        }
        batch::end();
    });
}

unsafe extern "C" fn child_inbound_fd(key: u64) -> i32 {
    catch_unwind(|| INBOUND.get().map_or(-1, |inbound| inbound.inbound_fd(key))).unwrap_or(-1)
}

unsafe extern "C" fn child_drain(key: u64) -> u32 {
    let drained = catch_unwind(|| INBOUND.get().map_or(abi::drain::STOP, |inbound| inbound.drain(key)));
    drained.unwrap_or_else(|_| {
        // That thread stops reading: the reader thread reads for it from now on. (Its own sends
        // are its own again.)
        READER.with(|reader| reader.set(false));
        if let Some(inbound) = INBOUND.get() {
            let _table = instances_of(&inbound.instances);
            if inbound.drainer() == key {
                inbound.drainer.store(0, Ordering::SeqCst);
                let _wake = lock(&inbound.wake);
                inbound.armed_now.notify_one();
            }
        }
        abi::drain::STOP
    })
}

unsafe extern "C" fn child_complete(key: u64, completion: u64, result: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the library keeps `result` valid for this call; invalid is refused.
        let bytes = unsafe { result.as_bytes() }.unwrap_or_default();
        let result = extension_api::wire::decode::<Completion>(bytes)
            .unwrap_or_else(|error| Completion::Failed { reason: format!("undecodable completion: {error}") });
        post(Packet::Complete { key, completion, result });
    }));
}

unsafe extern "C" fn child_log(key: u64, level: u32, target: RawSlice, message: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the library keeps both buffers valid for this call; invalid ones are refused.
        let (target, message) = unsafe { (target.as_bytes(), message.as_bytes()) };
        let (Some(target), Some(message)) = (target, message) else {
            return;
        };
        let (target, message) =
            (String::from_utf8_lossy(target).into_owned(), String::from_utf8_lossy(message).into_owned());
        post(Packet::Log { key, level, target, message });
    }));
}

#[cfg(test)]
mod tests {
    use super::{Found, Framing, Inbound, Table};
    use extension_api::abi;
    use std::sync::Arc;

    /// A connection's reading side over one end of a socket pair (the other end returned).
    fn inbound() -> (Inbound, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let inbound = Inbound::new(ours, Framing::default());
        (inbound, theirs)
    }

    /// A large frame read without blocking (`Recv`'s `read_spare`, as a drain reads): each
    /// read takes what the socket holds and stops at a short one, and the next goes on where
    /// it stopped until the frame is whole; a stream that then ends inside a frame is an
    /// error, never a shorter frame.

    #[test]
    fn a_load_the_host_destroyed_meanwhile_gives_the_socket_back_to_the_reader_thread() {
        let (inbound, _host) = inbound();
        inbound.instances.lock().unwrap().start_loading(7);
        // The instance's thread starts inside the load, and its first drain claims the socket.
        assert_eq!(inbound.inbound_fd(7), inbound.fd);
        assert_eq!(inbound.drain(7), abi::drain::IDLE);
        assert_eq!(inbound.drainer(), 7);
        // The host gives up on the load and destroys the key: that instance is destroyed as it
        // starts, so it will never read again; the reader thread must.
        {
            let mut table = inbound.instances.lock().unwrap();
            assert!(matches!(table.destroy(7), Found::Loading));
            inbound.settle(&table);
        }
        assert_eq!(inbound.drainer(), 0, "the socket is left to an instance that is being destroyed");
        assert_eq!(inbound.drain(7), abi::drain::STOP);
        assert_eq!(inbound.inbound_fd(7), -1);
    }

    #[test]
    fn a_drain_never_blocks_on_a_write_while_it_holds_the_read_side() {
        use std::io::Write;
        // The host's end of the socket has a full buffer, and the host blocked writing to us
        // (its reader routes an isolated extension's frame to its main through us): a drain that
        // wrote its answers itself, holding the read side, would stall both processes.
        let (writer, unread) = std::os::unix::net::UnixStream::pair().unwrap();
        // Never closed: a write blocked on it must not fail (`OnError::Exit` ends the process).
        std::mem::forget(unread);
        writer.set_nonblocking(true).unwrap();
        while (&writer).write(&[0; 4096]).is_ok() {}
        writer.set_nonblocking(false).unwrap();
        assert!(super::WRITER.set(super::Writer::new(writer, super::OnError::Exit)).is_ok());
        let (inbound, mut host) = inbound();
        inbound.instances.lock().unwrap().start_loading(9);
        assert_eq!(inbound.drain(9), abi::drain::IDLE);
        // A packet whose answer the drain posts (a `Destroyed` for a key it does not have).
        host.write_all(
            &super::protocol::frame(&super::Packet::<super::protocol::OwnedMessage>::Destroy { key: 5 }).unwrap(),
        )
        .unwrap();
        let inbound = Arc::new(inbound);
        let (done, drained) = std::sync::mpsc::channel();
        let draining = inbound.clone();
        std::thread::spawn(move || done.send(draining.drain(9)));
        // A failsafe, not a measure: the drain returns at once, or never.
        let drained: Result<u32, _> = drained.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(drained, Ok(abi::drain::IDLE), "the drain blocked writing with the read side held");
    }

    #[test]
    fn a_load_destroyed_before_its_thread_claims_the_socket_never_claims_it() {
        let (inbound, _host) = inbound();
        {
            let mut table = inbound.instances.lock().unwrap();
            table.start_loading(8);
            assert!(matches!(table.destroy(8), Found::Loading));
            inbound.settle(&table);
        }
        assert_eq!(inbound.inbound_fd(8), -1);
        assert_eq!(inbound.drain(8), abi::drain::STOP);
        assert_eq!(inbound.drainer(), 0);
    }

    #[test]
    fn an_instance_destroyed_while_it_loads_never_runs() {
        let mut table = Table::default();
        table.start_loading(1);
        // The host gives up on the load and destroys the key before it finishes.
        assert_eq!(table.destroy(1), Found::Loading);
        assert_eq!(table.loaded(1, "instance"), Err("instance"), "it comes back to be destroyed");
        assert_eq!(table.get(1), None);
        assert_eq!(table.destroy(1), Found::Nothing);
    }

    #[test]
    fn a_loaded_instance_runs_until_destroyed() {
        let mut table = Table::default();
        table.start_loading(2);
        assert_eq!(table.loaded(2, "instance"), Ok(()));
        assert_eq!(table.get(2), Some(&"instance"));
        assert_eq!(table.destroy(2), Found::Running("instance"));
        assert_eq!(table.destroy(2), Found::Nothing);
        // A failed load leaves nothing behind, and a key never loaded is nothing.
        table.start_loading(3);
        table.load_failed(3);
        assert_eq!(table.destroy(3), Found::Nothing);
        assert_eq!(table.destroy(4), Found::Nothing);
    }
}
