//! The watchdog: one task per host, running while any extension is active, that reads each
//! instance's progress counter (messages its dispatcher started on) through inspect (answered
//! off the instance's thread, so it works while that thread is stuck) and reports:
//!
//! - an instance whose counter has not moved for [`HostConfig::unresponsive_after`] while
//!   messages wait in its mailbox: unresponsive, then responsive again once it moves;
//! - a handler the thread has been running in place for [`HostConfig::slow_handler`]
//!   (the counter did not move meanwhile): warned once;
//! - a handler that waited (ran in a task of its own) and took longer than that: warned once,
//!   with its time, from the instance's own report;
//! - an instance with work that has not answered its inspect for `unresponsive_after` (its
//!   process stopped or hung): unresponsive, saying it does not answer; responsive again once
//!   it answers and has moved (or has nothing left waiting).
//!
//! A look sends its inspects together and takes their answers as they come, for one tick at
//! most; an inspect not answered by then goes on into the next look (each bounded by
//! `INSPECT_TIMEOUT`, then sent again), so an instance that does not answer holds up nobody
//! else's look, and the looks keep their tick.
//!
//! It looks only at instances with work it knows of, and only while they have it: an instance
//! asks once, pushed rather than polled, when work arrives after the watchdog's last look at it
//! (a message queued, from the host or from within the instance: its own timer's, its halves'
//! requests to each other; a waited handler's slow report), from whichever thread brought the
//! work, so a stuck instance thread still asks (`wire::ATTENTION`). Each look re-arms that
//! call. The watchdog then looks every tick (a quarter of the shorter threshold) until the
//! instance is idle again: nothing queued, no batch being dispatched, not unresponsive. With
//! no instance to look at it waits for one to ask, with no timer: an idle host, and its
//! children, do nothing. A stall counts from the later of the last look that found the
//! instance idle and its call, so a report comes up to one tick after its threshold.
//! Finding no extension active at a look it stops (waiting, it costs nothing and ends with the
//! host); the next activation starts or wakes it, and asks for one look at its instances.
//!
//! [`HostConfig::unresponsive_after`]: super::HostConfig::unresponsive_after
//! [`HostConfig::slow_handler`]: super::HostConfig::slow_handler

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use extension_api::wire::{Completion, Control, InstanceSnapshot};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;

use super::{Host, INSPECT_TIMEOUT, Inner};
use crate::core::{Core, lock};
use crate::events::{HostEvent, OneLine};

/// The longest time between two ticks.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest (for thresholds of a few milliseconds).
const MIN_TICK: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(super) struct Watchdog {
    running: bool,
    /// By endpoint key.
    endpoints: HashMap<u64, Progress>,
    /// The endpoints to look at next tick, besides those asking: those not idle at the last
    /// look.
    watching: HashSet<u64>,
    /// The endpoints whose inspect the watchdog is waiting for (or whose last one timed out),
    /// by key: since when, and whether that was reported.
    silent: HashMap<u64, Silence>,
}

/// An instance that has not answered the watchdog's inspect yet.
struct Silence {
    extension: String,
    /// When the first inspect it has not answered was sent.
    since: Instant,
    /// Reported unresponsive for it.
    reported: bool,
}

/// What one inspect comes back with.
type Answer = (u64, Result<Completion, crate::endpoint::ControlError>);

/// The watchdog's inspects not answered yet (at most one per instance), kept from one look to
/// the next by its task.
#[derive(Default)]
struct Inspects {
    waiting: FuturesUnordered<BoxFuture<'static, Answer>>,
    /// The endpoints `waiting` has an inspect of.
    keys: HashSet<u64>,
    /// When an instance whose answer is still to come asked to be looked at.
    called: HashMap<u64, Instant>,
}

/// What a look found.
enum Look {
    /// Nothing is active: the watchdog stops.
    Stop,
    /// Some instance has work: look again next tick.
    Again,
    /// Every instance is idle: wait for one to ask.
    Idle,
}

struct Progress {
    extension: String,
    dispatched: u64,
    /// When `dispatched` was first seen at its current value.
    since: Instant,
    unresponsive: bool,
    /// The running handler was warned about (at this `dispatched`).
    slow_warned: bool,
    /// The last of the instance's slow-handler reports already warned about.
    last_slow: u64,
    /// At the last look nothing was queued or being dispatched: the next stall counts from
    /// when work came (the instance's call), not from `since`.
    idle: bool,
    /// Messages waiting at the last look (what a report of its silence says).
    queued: u64,
}

impl Watchdog {
    /// Whether an instance of `extension` is unresponsive right now.
    pub(super) fn is_unresponsive(&self, extension: &str) -> bool {
        self.endpoints.values().any(|progress| progress.unresponsive && progress.extension == extension)
            || self.silent.values().any(|silence| silence.reported && silence.extension == extension)
    }
}

/// What an isolated extension's process uses, read from `/proc` (Linux); `None` where it
/// cannot be read.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessUsage {
    /// CPU time of all its threads, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Resident set size, in bytes.
    pub rss_bytes: Option<u64>,
}

impl ProcessUsage {
    pub(super) fn of(pid: u32) -> ProcessUsage {
        ProcessUsage { cpu_ns: process_cpu_ns(pid), rss_bytes: process_rss_bytes(pid) }
    }
}

/// The CPU time of every thread of process `pid`: the sum of their `schedstat`s.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread that ended meanwhile has nothing left to count.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(total)
}

/// `VmRSS` of process `pid`.
fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Nothing queued, no batch being dispatched, no handler running.
fn is_idle(snapshot: &InstanceSnapshot) -> bool {
    snapshot.queued_messages == 0 && snapshot.batch_messages == 0 && snapshot.busy.is_none() && !snapshot.dispatching
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Host {
    /// Starts the watchdog unless it runs (called when an extension becomes active).
    pub(super) fn ensure_watchdog(&self) {
        let config = &self.inner.config;
        if config.unresponsive_after == Duration::MAX && config.slow_handler == Duration::MAX {
            // Nothing it could report: it never looks.
            return;
        }
        let mut watchdog = lock(&self.inner.watchdog);
        if watchdog.running {
            return;
        }
        watchdog.running = true;
        tokio::spawn(run(self.weak(), self.inner.core.clone()));
    }

    /// Has the watchdog look once at every instance of `link` (an activation: work may have
    /// come while it ran, before the watchdog knew the instances).
    pub(super) fn watch_link(&self, link: &crate::link::Link) {
        for endpoint in link.endpoints() {
            self.inner.core.attention.ask(endpoint.key);
        }
    }

    fn watchdog_tick(&self) -> Duration {
        let config = &self.inner.config;
        (config.unresponsive_after.min(config.slow_handler) / 4).clamp(MIN_TICK, MAX_TICK)
    }

    /// One look at every active instance with work (asking, or not idle at the last look, or
    /// with an inspect not answered yet): their inspects are sent together, and their answers
    /// taken as they come until `deadline` (one tick); an inspect not answered by then goes on
    /// into the next look (each is bounded by [`INSPECT_TIMEOUT`], then sent again), so an
    /// instance that does not answer holds up nobody else's look.
    async fn watch_once(&self, inspects: &mut Inspects, deadline: tokio::time::Instant) -> Look {
        let links = {
            // Decided under the watchdog's lock, which `ensure_watchdog` takes: an activation
            // in between finds it still running, or starts it again.
            let mut watchdog = lock(&self.inner.watchdog);
            let links = self.active_links();
            if links.is_empty() {
                watchdog.running = false;
                watchdog.endpoints.clear();
                watchdog.watching.clear();
                watchdog.silent.clear();
                *inspects = Inspects::default();
                // Keys that asked before now are of instances that are gone: not kept for the
                // next start (an activation asks for its own, after it starts the watchdog).
                self.inner.core.attention.clear();
                return Look::Stop;
            }
            links
        };
        let asked = self.inner.core.attention.take();
        let watching = std::mem::take(&mut lock(&self.inner.watchdog).watching);
        let (mut present, mut next) = (HashMap::new(), HashSet::new());
        let sent = Instant::now();
        for (name, link) in links {
            // A web page's half has no thread of the host's to watch (and asking the page every
            // tick would cost it a round trip for nothing).
            for endpoint in link.endpoints().into_iter().filter(|endpoint| !endpoint.transport().is_web()) {
                let key = endpoint.key;
                present.insert(key, name.clone());
                let called = asked.get(&key).copied();
                if let Some(called) = called {
                    inspects.called.entry(key).or_insert(called);
                }
                if (called.is_none() && !watching.contains(&key)) || inspects.keys.contains(&key) {
                    // Nothing to look at, or its inspect is still on its way.
                    continue;
                }
                inspects.keys.insert(key);
                lock(&self.inner.watchdog).silent.entry(key).or_insert_with(|| Silence {
                    extension: name.clone(),
                    since: sent,
                    reported: false,
                });
                inspects.waiting.push(Box::pin(async move {
                    let outcome = endpoint.control(|completion| Control::Inspect { completion }, INSPECT_TIMEOUT).await;
                    (key, outcome)
                }));
            }
        }
        while !inspects.waiting.is_empty() {
            let Ok(Some((key, outcome))) = tokio::time::timeout_at(deadline, inspects.waiting.next()).await else {
                break;
            };
            inspects.keys.remove(&key);
            let called = inspects.called.remove(&key);
            let Some(name) = present.get(&key) else { continue };
            match outcome {
                Ok(Completion::Inspected(snapshot)) => {
                    let (events, busy) = self.observe(name, key, &snapshot, called, Instant::now());
                    if busy {
                        next.insert(key);
                    }
                    for event in events {
                        self.publish(event);
                    }
                }
                // No answer in time: it cannot be told idle, so it is looked at again (still
                // silent since its first inspect went unanswered).
                Err(crate::endpoint::ControlError::TimedOut(_)) => {
                    next.insert(key);
                    if let Some(called) = called {
                        inspects.called.insert(key, called);
                    }
                }
                // Refused (it is going) or not an inspect's answer: it asks again if it has
                // work.
                _ => {
                    lock(&self.inner.watchdog).silent.remove(&key);
                }
            }
        }
        let now = Instant::now();
        let mut events = Vec::new();
        let mut watchdog = lock(&self.inner.watchdog);
        // Instances that went away (deactivated, closed, crashed) are forgotten.
        watchdog.endpoints.retain(|key, _| present.contains_key(key));
        watchdog.silent.retain(|key, _| present.contains_key(key));
        inspects.called.retain(|key, _| present.contains_key(key));
        // Still waited for: looked at again (its answer is taken at a later look).
        next.extend(inspects.keys.iter().filter(|key| present.contains_key(*key)));
        let Watchdog { endpoints, silent, .. } = &mut *watchdog;
        for (key, silence) in silent.iter_mut() {
            let progress = endpoints.get(key);
            let stalled = now.duration_since(silence.since);
            // Already reported unresponsive while it answered: not reported twice.
            if silence.reported
                || stalled < self.inner.config.unresponsive_after
                || progress.is_some_and(|progress| progress.unresponsive)
            {
                continue;
            }
            silence.reported = true;
            let stalled_ms = millis(stalled);
            let reason = format!(
                "it does not answer: the watchdog's inspect has had no answer for at least {stalled_ms} ms \
                 (its process stopped, hung, or starved of CPU)"
            );
            tracing::warn!(extension = %OneLine(&silence.extension), "unresponsive: {reason}");
            events.push(HostEvent::ExtensionUnresponsive {
                extension: silence.extension.clone(),
                stalled_ms,
                queued: progress.map_or(0, |progress| progress.queued),
                running: None,
                reason,
            });
        }
        let idle = next.is_empty();
        watchdog.watching = next;
        drop(watchdog);
        for event in events {
            self.publish(event);
        }
        if idle { Look::Idle } else { Look::Again }
    }

    /// Compares an instance's report with the last one; returns what to report, and whether
    /// the instance has work (the watchdog looks again next tick). `called`: when it asked to
    /// be looked at, if it did since the last look.
    fn observe(
        &self,
        extension: &str,
        key: u64,
        snapshot: &InstanceSnapshot,
        called: Option<Instant>,
        now: Instant,
    ) -> (Vec<HostEvent>, bool) {
        let config = &self.inner.config;
        let mut events = Vec::new();
        let mut watchdog = lock(&self.inner.watchdog);
        // It answers: no longer silent (a silence reported is over below, once it moves or is
        // idle).
        let silence = watchdog.silent.remove(&key).filter(|silence| silence.reported);
        let progress = watchdog.endpoints.entry(key).or_insert_with(|| Progress {
            extension: extension.to_owned(),
            dispatched: snapshot.dispatched,
            since: now,
            unresponsive: false,
            slow_warned: false,
            last_slow: 0,
            idle: false,
            queued: 0,
        });
        if progress.idle {
            // Idle at the last look: a stall counts from when the work came, at the earliest.
            progress.since = progress.since.max(called.unwrap_or(now));
        }
        let shown = OneLine(extension);
        let moved = snapshot.dispatched != progress.dispatched;
        if let Some(silence) = silence {
            if moved || is_idle(snapshot) {
                let stalled_ms = millis(now.duration_since(silence.since));
                tracing::info!(extension = %shown, "answers and moves again after about {stalled_ms} ms");
                events.push(HostEvent::ExtensionResponsive { extension: extension.to_owned(), stalled_ms });
            } else {
                // It answers, but its thread is still where it stopped: unresponsive still,
                // responsive again once it moves (below, at a later look).
                progress.unresponsive = true;
            }
        }
        if moved {
            if progress.unresponsive {
                let stalled_ms = millis(now.duration_since(progress.since));
                tracing::info!(extension = %shown, "responsive again after about {stalled_ms} ms");
                events.push(HostEvent::ExtensionResponsive { extension: extension.to_owned(), stalled_ms });
            }
            progress.dispatched = snapshot.dispatched;
            progress.since = now;
            progress.unresponsive = false;
            progress.slow_warned = false;
        } else {
            let stalled = now.duration_since(progress.since);
            let queued = snapshot.queued_messages + snapshot.batch_messages;
            if !progress.unresponsive && queued > 0 && stalled >= config.unresponsive_after {
                progress.unresponsive = true;
                let running =
                    snapshot.busy.as_ref().map(|busy| format!("{} {} `{}`", busy.half, busy.kind, busy.channel));
                let stalled_ms = millis(stalled);
                let reason = format!(
                    "its thread has not taken a message for at least {stalled_ms} ms, with {queued} waiting{}",
                    running.as_deref().map(|what| format!(" (running {})", OneLine(what))).unwrap_or_default()
                );
                tracing::warn!(extension = %shown, "unresponsive: {reason}");
                events.push(HostEvent::ExtensionUnresponsive {
                    extension: extension.to_owned(),
                    stalled_ms,
                    queued,
                    running,
                    reason,
                });
            }
            if let Some(busy) =
                snapshot.busy.as_ref().filter(|_| !progress.slow_warned && stalled >= config.slow_handler)
            {
                progress.slow_warned = true;
                let elapsed_ms = millis(stalled);
                tracing::warn!(
                    extension = %shown,
                    channel = %OneLine(&busy.channel),
                    "a {} {} on `{}` has been running for at least {elapsed_ms} ms, blocking its thread",
                    busy.kind,
                    if busy.kind == extension_api::wire::ChannelKind::Request { "handler" } else { "listener" },
                    OneLine(&busy.channel),
                );
                events.push(HostEvent::SlowHandler {
                    extension: extension.to_owned(),
                    half: busy.half,
                    kind: busy.kind,
                    channel: busy.channel.clone(),
                    elapsed_ms,
                    finished: false,
                });
            }
        }
        for slow in snapshot.slow_handlers.iter().filter(|slow| slow.seq > progress.last_slow) {
            let elapsed_ms = slow.elapsed_ns / 1_000_000;
            tracing::warn!(
                extension = %shown,
                channel = %OneLine(&slow.channel),
                "a handler on `{}` took {elapsed_ms} ms",
                OneLine(&slow.channel),
            );
            events.push(HostEvent::SlowHandler {
                extension: extension.to_owned(),
                half: slow.half,
                kind: extension_api::wire::ChannelKind::Request,
                channel: slow.channel.clone(),
                elapsed_ms,
                finished: true,
            });
        }
        progress.last_slow =
            snapshot.slow_handlers.last().map_or(progress.last_slow, |slow| slow.seq.max(progress.last_slow));
        // A message taken but not finished is work (`dispatching`), whether or not a handler is
        // marked running yet: the instance's next message will not ask, the call having been
        // made for this one.
        progress.idle = is_idle(snapshot);
        progress.queued = snapshot.queued_messages + snapshot.batch_messages;
        if progress.idle {
            if progress.unresponsive {
                // Nothing waits any more (one stuck where its process stopped, then released).
                let stalled_ms = millis(now.duration_since(progress.since));
                tracing::info!(extension = %shown, "responsive again after about {stalled_ms} ms");
                events.push(HostEvent::ExtensionResponsive { extension: extension.to_owned(), stalled_ms });
            }
            progress.unresponsive = false;
            progress.since = now;
            progress.slow_warned = false;
        }
        let busy = !progress.idle || progress.unresponsive;
        (events, busy)
    }
}

async fn run(weak: Weak<Inner>, core: Arc<Core>) {
    // Started by an activation, which asks for a look at its instances.
    let mut idle = true;
    let mut inspects = Inspects::default();
    let mut last_look = tokio::time::Instant::now();
    loop {
        if idle {
            // No timer: the next instance with work wakes it (and the host going, to end it).
            core.attention.asked().await;
            last_look = tokio::time::Instant::now();
        }
        // The host is held only while it is looked at: dropping it ends the watchdog.
        let Some(tick) = Host::from_weak(&weak).map(|host| host.watchdog_tick()) else { return };
        // A tick after the last look began (a look that waited for a silent instance took
        // some of it already).
        tokio::time::sleep_until(last_look + tick).await;
        last_look = tokio::time::Instant::now();
        let Some(host) = Host::from_weak(&weak) else { return };
        match host.watch_once(&mut inspects, last_look + tick).await {
            Look::Stop => return,
            Look::Again => idle = false,
            Look::Idle => idle = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostConfig;

    #[tokio::test]
    async fn the_watchdog_stopping_forgets_the_instances_that_asked() {
        let host = Host::new(HostConfig::default());
        // Asked by instances since gone (deactivated before the look): nothing is active.
        host.inner.core.attention.ask(41);
        host.inner.core.attention.ask(42);
        let mut inspects = Inspects::default();
        let look = host.watch_once(&mut inspects, tokio::time::Instant::now()).await;
        assert!(matches!(look, Look::Stop));
        assert!(!lock(&host.inner.watchdog).running);
        assert_eq!(host.inner.core.attention.take(), HashMap::new(), "stale keys kept past the stop");
    }
}
