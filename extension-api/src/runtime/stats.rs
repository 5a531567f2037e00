//! What an instance counts about itself for attribution: per channel, messages and their time
//! in author code; the thread's CPU time; handlers that waited past a threshold.
//!
//! The counters live in the instance's state and are updated under the lock the dispatcher
//! takes anyway to find a message's handler or listeners: no lock or atomic of their own per
//! message. Only one message in [`ChannelStats::SAMPLE_EVERY`] reads the clock (and takes the
//! lock once more to record its time).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::wire::{ChannelKind, ChannelStats, SLOW_HANDLERS_KEPT, SlowHandler};

/// One channel's counters.
struct ChannelCounters {
    kind: ChannelKind,
    channel: String,
    count: u64,
    max_ns: u64,
    buckets: Box<[u64; ChannelStats::BUCKETS]>,
}

impl ChannelCounters {
    fn snapshot(&self) -> ChannelStats {
        let histogram = (0..ChannelStats::BUCKETS as u16)
            .zip(self.buckets.iter())
            .filter(|(_, count)| **count > 0)
            .map(|(bucket, count)| (bucket, *count))
            .collect();
        let mut stats = ChannelStats {
            channel: self.channel.clone(),
            kind: self.kind,
            count: self.count,
            max_ns: self.max_ns,
            histogram,
            ..ChannelStats::default()
        };
        stats.refresh_percentiles();
        stats
    }
}

/// A message counted on a channel: which channel (for [`Channels::record`] and for what the
/// thread is busy with), and when it started if it is one to time.
#[derive(Clone, Copy)]
pub(crate) struct Counted {
    pub(crate) index: usize,
    pub(crate) started: Option<Instant>,
}

/// Every channel's counters. Entries live as long as the instance: channels are bounded by
/// [`ChannelStats::MAX_CHANNELS`] per kind, the rest share one entry.
#[derive(Default)]
pub(crate) struct Channels {
    requests: HashMap<String, usize, foldhash::fast::RandomState>,
    broadcasts: HashMap<String, usize, foldhash::fast::RandomState>,
    all: Vec<ChannelCounters>,
}

impl Channels {
    /// The number of `channel`'s counters (kept by a handler's or listener's registration, so
    /// a message costs no lookup).
    #[inline]
    pub(crate) fn index(&mut self, kind: ChannelKind, channel: &str) -> usize {
        let map = match kind {
            ChannelKind::Request => &self.requests,
            ChannelKind::Broadcast => &self.broadcasts,
        };
        match map.get(channel) {
            Some(index) => *index,
            None => self.add(kind, channel),
        }
    }

    /// Counts one message on the channel numbered `index`.
    #[inline]
    pub(crate) fn count_at(&mut self, index: usize) -> Counted {
        let Some(counters) = self.all.get_mut(index) else { return Counted { index, started: None } };
        let n = counters.count;
        counters.count += 1;
        Counted { index, started: (n % ChannelStats::SAMPLE_EVERY == 0).then(Instant::now) }
    }

    #[cold]
    fn add(&mut self, kind: ChannelKind, channel: &str) -> usize {
        let map = match kind {
            ChannelKind::Request => &mut self.requests,
            ChannelKind::Broadcast => &mut self.broadcasts,
        };
        let name = if map.len() >= ChannelStats::MAX_CHANNELS { ChannelStats::OTHER } else { channel };
        if let Some(index) = map.get(name) {
            return *index;
        }
        let index = self.all.len();
        map.insert(name.to_owned(), index);
        self.all.push(ChannelCounters {
            kind,
            channel: name.to_owned(),
            count: 0,
            max_ns: 0,
            buckets: Box::new([0; ChannelStats::BUCKETS]),
        });
        index
    }

    /// Records the time of a counted message: in the histogram if it was sampled (the uniform
    /// sample), in the maximum always.
    pub(crate) fn record(&mut self, index: usize, elapsed: Duration, sampled: bool) {
        let Some(counters) = self.all.get_mut(index) else { return };
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if sampled {
            counters.buckets[usize::from(ChannelStats::bucket(ns))] += 1;
        }
        counters.max_ns = counters.max_ns.max(ns);
    }

    /// The kind and name of channel `index`.
    pub(crate) fn describe(&self, index: usize) -> Option<(ChannelKind, &str)> {
        self.all.get(index).map(|counters| (counters.kind, counters.channel.as_str()))
    }

    pub(crate) fn snapshot(&self) -> Vec<ChannelStats> {
        // A handler registered but never asked is not a channel that received anything.
        let mut stats: Vec<ChannelStats> =
            self.all.iter().filter(|counters| counters.count > 0).map(ChannelCounters::snapshot).collect();
        stats.sort_by(|a, b| (a.kind, &a.channel).cmp(&(b.kind, &b.channel)));
        stats
    }
}

/// The latest slow handlers (waiting ones past the threshold), for inspect.
#[derive(Default)]
pub(crate) struct SlowLog {
    entries: Mutex<(u64, VecDeque<SlowHandler>)>,
}

impl SlowLog {
    pub(crate) fn push(&self, half: crate::Half, channel: &str, elapsed: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.0 += 1;
        let seq = entries.0;
        if entries.1.len() == SLOW_HANDLERS_KEPT {
            entries.1.pop_front();
        }
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        entries.1.push_back(SlowHandler { seq, half, channel: channel.to_owned(), elapsed_ns });
    }

    pub(crate) fn snapshot(&self) -> Vec<SlowHandler> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).1.iter().cloned().collect()
    }
}

/// The calling thread's id (Linux TID), read from `/proc/thread-self`; 0 where there is none.
pub(crate) fn current_thread_id() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().and_then(|tid| tid.to_str()).and_then(|tid| tid.parse().ok()))
        .unwrap_or(0)
}

/// CPU time used by thread `tid` of this process, in nanoseconds: the first field of its
/// `schedstat`. `None` where it cannot be read.
pub(crate) fn thread_cpu_ns(tid: u64) -> Option<u64> {
    if tid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}
