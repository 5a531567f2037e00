//! Control commands from the host, and the inspect snapshot one of them asks for.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::InvokeErrorKind;
use crate::abi::PEER_MAIN;
use crate::runtime::state::Tier;
use crate::runtime::{Shared, stats};
use crate::wire::{Busy, ChannelKind, Completion, Control, InstanceSnapshot};

impl Shared {
    /// Runs a control command from the host.
    pub(crate) fn control(self: &Arc<Self>, command: Control) {
        let completion = command.completion();
        match command {
            Control::Inspect { .. } => {
                // Set before the snapshot reads anything: work recorded after those reads
                // finds it set and calls the watchdog's attention (see `call_attention`).
                self.unwatched.store(true, Ordering::SeqCst);
                self.inspections.fetch_add(1, Ordering::Relaxed);
                // Answered on the calling thread, so inspect works even while the extension's
                // own thread is blocked.
                self.complete(completion, &Completion::Inspected(self.snapshot()));
            }
            Control::SetFrames { frames, .. } => {
                self.state().frames = frames;
                self.complete(completion, &Completion::Done);
            }
            Control::StoreSnapshot { .. } => {
                let answer = match self.store_snapshot() {
                    Some(snapshot) => Completion::StoreSnapshot(snapshot),
                    None => Completion::Failed { reason: "no main half in this instance".into() },
                };
                self.complete(completion, &answer);
            }
            Control::SeedStore { snapshot, .. } => {
                self.seed_tier(Tier::Store, snapshot);
                self.complete(completion, &Completion::Done);
            }
            Control::StorageSnapshot { .. } => {
                let answer = match self.storage_seed() {
                    Some(seed) => Completion::StorageSeed(seed),
                    None => Completion::Failed { reason: "no main half in this instance".into() },
                };
                self.complete(completion, &answer);
            }
            Control::SeedStorage { seed, .. } => {
                self.seed_storage(seed);
                self.complete(completion, &Completion::Done);
            }
            Control::StopRouting { .. } => {
                let failed = self.state().stop_routing();
                failed.settle(InvokeErrorKind::Deactivated);
                self.complete(completion, &Completion::Done);
            }
            Control::ActivateMain { .. } => self.spawn_activation(completion, PEER_MAIN),
            Control::OpenFrame { frame, .. } => self.spawn_activation(completion, frame),
            Control::DeactivateMain { timeout_ms, .. } => self.spawn_deactivation(completion, PEER_MAIN, timeout_ms),
            Control::CloseFrame { frame, timeout_ms, .. } => self.spawn_deactivation(completion, frame, timeout_ms),
        }
    }

    /// The instance as inspect shows it: its tables as they are now, not after what is still
    /// queued.
    pub(crate) fn snapshot(&self) -> InstanceSnapshot {
        // Read before the lock: the instance's thread may want it meanwhile.
        let thread_id = self.thread_id.load(Ordering::Relaxed);
        let cpu_ns = stats::thread_cpu_ns(thread_id);
        let state = self.state();
        let requests = state.requests.counts();
        let mut halves: Vec<_> =
            state.halves.iter().map(|(peer, half)| half.snapshot(*peer, requests.of(*peer))).collect();
        let inline = self.inline_handler.load(Ordering::Acquire);
        let (inline_half, inline_channel) = (inline & u64::from(u32::MAX), inline >> 32);
        let inline = (inline_half != 0).then(|| crate::message::half_of(inline_half - 1));
        let busy = inline
            .zip(state.channels.describe(inline_channel.wrapping_sub(1) as usize))
            .map(|(half, (kind, channel))| Busy { half, kind, channel: channel.to_owned() });
        // A listener running in place is what the thread is busy with, not a running handler.
        if let Some(busy) = busy.as_ref().filter(|busy| busy.kind == ChannelKind::Request)
            && let Some(half) = halves.iter_mut().find(|half| half.half == busy.half)
        {
            half.running_handlers += 1;
        }
        halves.sort_by_key(|half| half.half);
        let progress = self.mailbox.progress();
        InstanceSnapshot {
            halves,
            // The dispatcher and the timeout sweeper are ours, not the extension's.
            tasks: self.runtime.metrics().num_alive_tasks().saturating_sub(2),
            decode_failures: self.decode_failures.load(Ordering::Relaxed),
            listener_panics: self.listener_panics.load(Ordering::Relaxed),
            local_requests: requests.within as u64,
            queued_messages: self.mailbox.queued(),
            dropped_broadcasts: self.mailbox.dropped_broadcasts(),
            refused_requests: self.mailbox.refused_requests(),
            queued_bytes: self.mailbox.queued_bytes(),
            store_bytes: state
                .halves
                .values()
                .flat_map(|half| [half.replica(Tier::Store), half.replica(Tier::Storage)])
                .map(|replica| replica.bytes() as u64)
                .sum(),
            binary_bytes: self.kept.bytes(),
            cpu_ns,
            thread_id,
            dispatched: progress.dispatched,
            batch_messages: progress.batch_waiting,
            dispatching: progress.dispatching,
            busy,
            channels: state.channels.snapshot(),
            slow_handlers: self.slow.snapshot(),
            inspections: self.inspections.load(Ordering::Relaxed),
        }
    }
}
