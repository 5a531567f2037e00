//! A run's writes to a page, gathered: what main's thread writes to one page's socket in a
//! run (from a wake-up to its next park, `HostVTable::batch_begin` and `batch_end`) after the
//! run's first goes into the socket's buffer unflushed, and the run's end flushes it: one
//! segment for a drain's replies, not one each (each segment costs the page and the host a
//! `sendto`'s and a read's work). The first goes at once, so a run with one reply (a
//! sequential invoke) waits for nothing, as a renderer process's deferred writes
//! (`remote/batch.rs`) do.
//!
//! Only on the thread that reads the page (main's, claiming it: `page_reader`), whose runs the
//! page's read loop watches: if author code keeps that thread in one run for a whole tick, the
//! read loop has the writer task flush (`PageConnection::flush_if_deferred`). No write waits in
//! a buffer while its thread sleeps: the run's end comes before every park.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::renderer_socket::PageConnection;

thread_local! {
    /// This thread's current run (counted from 1), 0 outside one.
    static RUN: Cell<u64> = const { Cell::new(0) };
    /// This thread's runs so far.
    static RUNS: Cell<u64> = const { Cell::new(0) };
    /// The connections this run left unflushed.
    static DEFERRED: RefCell<Vec<Arc<PageConnection>>> = const { RefCell::new(Vec::new()) };
}

/// A run of this thread begins.
pub(crate) fn run_begins() {
    let run = RUNS.get() + 1;
    RUNS.set(run);
    RUN.set(run);
}

/// The run this thread is in, if it is in one.
pub(crate) fn current_run() -> Option<u64> {
    let run = RUN.get();
    (run != 0).then_some(run)
}

/// `connection` holds a write of this run unflushed: flushed at the run's end.
pub(crate) fn defer(connection: Arc<PageConnection>) {
    DEFERRED.with_borrow_mut(|deferred| deferred.push(connection));
}

/// The run ends: what it left unflushed is flushed.
pub(crate) fn run_ends() {
    RUN.set(0);
    let deferred = DEFERRED.with_borrow_mut(std::mem::take);
    for connection in deferred {
        connection.flush_deferred();
    }
}
