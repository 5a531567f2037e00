//! One running instance of an extension in this process: its own tokio runtime on its own
//! thread (shared by the main half and every in-process renderer half, so an in-process invoke
//! never hops threads), running the dispatcher (which reads the host's connection too, where
//! this thread reads it) and the timeout sweeper.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::abi;
use crate::runtime::dispatch::dispatch_loop;
use crate::runtime::lifecycle::Factory;
use crate::runtime::mailbox::{Delivery, Read, Source};
use crate::runtime::payload::Queued;
use crate::runtime::shared::SharedConfig;
use crate::runtime::sweep::sweep_timeouts;
use crate::runtime::vtable::HostCalls;
use crate::runtime::{Shared, context, stats};
use crate::wire::{Control, InstanceConfig};

/// How long `destroy` waits for the runtime thread to finish dropping tasks.
const DESTROY_WAIT: Duration = Duration::from_secs(5);

/// The instance as the host holds it (through an opaque pointer).
pub(crate) struct Instance {
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Behind a mutex only so `Instance` is `Sync`: the host may call `control`/`deliver` from
    /// any thread, and only `destroy` (which owns the instance) reads it.
    finished: Mutex<std::sync::mpsc::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The host's descriptor, watched for readability only: never read, written or closed here.
struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The host's connection as the dispatcher reads it (see [`Source`]): the host's descriptor
/// watched for readability on this thread, drained through the host (see
/// [`crate::abi::HostVTable::drain`]) until the host says stop.
struct HostConnection {
    host: HostCalls,
    watched: AsyncFd<Watched>,
    /// Read without waiting for the descriptor: at first (what arrived before it was
    /// watched), and after a drain that stopped with more to read.
    read_now: bool,
}

impl HostConnection {
    /// Watches the host's descriptor `fd`, for the dispatcher; `None` (the host's reader thread
    /// then goes on reading it) if the runtime cannot.
    fn watch(host: HostCalls, fd: RawFd) -> Option<Box<dyn Source>> {
        // Registered before the first drain: whatever arrives after that drain is an event.
        // SAFETY: the host keeps the descriptor open, on the same socket, while the instance
        // runs (`HostVTable::inbound_fd`), and the dispatcher that owns this dies with the
        // instance's runtime; `Watched` gives the same descriptor every time and never closes it.
        match unsafe { AsyncFd::register_with_interest(Watched(fd), Interest::READABLE) } {
            Ok(watched) => Some(Box::new(HostConnection { host, watched, read_now: true })),
            Err(error) => {
                // Never claimed: the host's reader goes on reading it.
                tracing::warn!("cannot watch the host's connection ({error}): its reader thread delivers");
                None
            }
        }
    }
}

impl Source for HostConnection {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.read_now {
            return Poll::Ready(true);
        }
        // The poll path (the task's waker in the descriptor's one reader slot), not
        // `readable()`'s future, which links a waiter into a list under a lock and unlinks it
        // on every wake-up: the dispatcher is the descriptor's only reader.
        match self.watched.poll_read_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(false),
            Poll::Ready(Ok(mut ready)) => {
                // Cleared before the drain that follows: what arrives after it is a new event.
                ready.clear_ready();
                Poll::Ready(true)
            }
        }
    }

    fn read(&mut self) -> Read {
        let drained = self.host.drain();
        self.read_now = drained == abi::drain::MORE;
        match drained {
            abi::drain::IDLE => Read::Idle,
            abi::drain::MORE => Read::More,
            _ => Read::Stop,
        }
    }
}

impl Instance {
    pub(crate) fn start(host: HostCalls, config: InstanceConfig, factory: Factory) -> std::io::Result<Instance> {
        let thread_name = format!("ext:{}", config.name);
        // Each run of the thread between a wake-up and its next park is a batch for the host
        // (`HostVTable::batch_begin`, `batch_end`): the sends it makes to a socket (the
        // dispatcher's replies, and the tasks it woke: an invoker's next request) may wait in
        // the socket's buffer and go in one write when the thread is about to park. Nothing
        // else here gives up the thread (author code may: the host bounds that wait itself).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(thread_name.clone())
            .on_thread_unpark(move || host.batch_begin())
            .on_thread_park(move || host.batch_end())
            .build()?;
        let shared = Arc::new(Shared::new(SharedConfig { host, config, factory, runtime: runtime.handle().clone() }));
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let dispatcher_shared = shared.clone();
        let sweeper_shared = shared.clone();
        let thread = std::thread::Builder::new().name(thread_name).spawn(move || {
            sweeper_shared.thread_id.store(stats::current_thread_id(), Ordering::Relaxed);
            runtime.block_on(async move {
                // In a child process whose connection serves only this instance (and in the
                // host, for main reading its renderer processes' sockets), this thread reads
                // the socket itself, in the dispatcher's task: a message then reaches its
                // handler with no wake of another thread or task.
                let inbound = host.inbound_fd();
                let connection = if inbound >= 0 { HostConnection::watch(host, inbound) } else { None };
                tokio::spawn(dispatch_loop(dispatcher_shared, connection));
                tokio::spawn(sweep_timeouts(sweeper_shared));
                // Either a signal or the sender dropped: both mean stop.
                let _ = shutdown_signal.await;
            });
            // Drops every task still alive (the extension's and ours) on this thread.
            runtime.shutdown_timeout(Duration::from_millis(500));
            // The last run ends with no park: what it (and the tasks' destructors) sent goes now.
            host.batch_end();
            let _ = finished_tx.send(());
        })?;
        context::set_instance(Some(Arc::downgrade(&shared)));
        Ok(Instance { shared, shutdown: Some(shutdown), finished: Mutex::new(finished), thread: Some(thread) })
    }

    pub(crate) fn control(&self, command: Control) {
        self.shared.control(command);
    }

    /// Queues a message the host delivered; returns its status code.
    pub(crate) fn deliver(&self, message: impl Into<Queued>) -> u32 {
        self.shared.enqueue(Delivery::from_host(message))
    }

    /// Stops the runtime (every task the extension spawned dies) and waits for its thread.
    /// Returns false if the thread did not finish in time (author code blocking it).
    pub(crate) fn destroy(mut self) -> bool {
        context::set_instance(None);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(DESTROY_WAIT).is_ok();
        if let Some(thread) = self.thread.take() {
            if finished {
                let _ = thread.join();
            } else {
                tracing::error!(
                    "the runtime thread of `{}` is still blocked after {:?}; abandoning it",
                    self.shared.name,
                    DESTROY_WAIT
                );
            }
        }
        finished
    }
}
