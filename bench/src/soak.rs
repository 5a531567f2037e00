//! The soak and leak checks (`cargo xtask soak`): long runs that must leave nothing behind.
//!
//! - 10,000 activate/deactivate cycles and 10,000 in-process frame open/close cycles: every
//!   fresh activation reports the same listeners, handlers and tasks as the first one, and the
//!   process ends with the threads and file descriptors it started with, and flat RSS.
//! - Renderer-process frames opened and closed: no process, thread or descriptor left.
//! - 10,000 activate/deactivate cycles with a renderer-process frame open: the host and the
//!   renderer process (measured through `/proc/PID` of the frame's process) end with the
//!   threads and descriptors they started with, and their RSS does not grow.
//! - A million messages (pipelined invokes and broadcasts fanned out to five halves): flat RSS.
//!
//! Each check prints its figures; any leak fails the run (non-zero exit), so CI-style use is
//! possible, but the run takes minutes, which is why it is not part of the test suite (the
//! suite runs the same checks at a smaller scale).

use std::path::Path;

use anyhow::{Result, bail, ensure};
use extension_host::{Host, InstanceSnapshot};

use super::{config, library, rss_kib, run};

/// What the process holds: the figures a leak would move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holdings {
    /// Threads other than the embedding runtime's own (whose blocking pool grows and shrinks
    /// with its keep-alive): extension threads, connection readers, anything the host starts.
    threads: usize,
    fds: usize,
}

fn holdings() -> Holdings {
    holdings_of("self", &[super::RUNTIME_THREADS])
}

/// A renderer process's holdings. Its `child-load` and `child-destroy` threads are left out:
/// each ends on its own right after posting its answer, so one may still be exiting.
fn renderer_holdings(pid: u32) -> Holdings {
    holdings_of(&pid.to_string(), &["child-load", "child-destroy"])
}

/// What process `pid` holds, leaving out the threads named in `transient`.
fn holdings_of(pid: &str, transient: &[&str]) -> Holdings {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| task.ok())
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .filter(|name| !transient.contains(&name.trim()))
                .count()
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0);
    Holdings { threads, fds }
}

/// How much the RSS of a process may grow over the second half of a cycle run: allocator
/// noise, not a leak (a library mapped again per activation costs megabytes each time).
const RSS_GROWTH_LIMIT_KIB: i64 = 4 * 1024;

/// Listeners, handlers and tasks of every half, without the counters that legitimately move.
fn registrations(instance: &InstanceSnapshot) -> Vec<(extension_host::Half, usize, usize, usize)> {
    instance
        .halves
        .iter()
        .map(|half| (half.half, half.listeners.values().sum(), half.handlers.len(), half.tasks))
        .collect()
}

async fn instance_of(host: &Host, name: &str) -> Result<(InstanceSnapshot, usize)> {
    let snapshot = host.inspect().await;
    let Some(extension) = snapshot.extension(name) else { bail!("`{name}` is not loaded") };
    let Some(instance) = extension.instance.clone() else { bail!("`{name}` is not running") };
    Ok((instance, extension.pending_requests))
}

/// Runs every check, printing its figures; fails on the first leak. `scale` divides the counts.
pub(crate) async fn soak(artifacts: &Path, scale: u64) -> Result<()> {
    let say = |line: String| println!("{line}");
    let cycles = 10_000 / scale;

    // Activate/deactivate cycles.
    let host = Host::new(config(artifacts));
    host.load(library(artifacts, "probe"))?;
    host.activate("probe").await?;
    let (first, _) = instance_of(&host, "probe").await?;
    let expected = registrations(&first);
    host.deactivate("probe").await?;
    for _ in 0..100 {
        host.activate("probe").await?;
        host.deactivate("probe").await?;
    }
    let (before, rss_before) = (holdings(), rss_kib());
    let start = std::time::Instant::now();
    let mut rss_half = 0;
    for cycle in 1..=cycles {
        host.activate("probe").await?;
        if cycle == cycles / 2 {
            rss_half = rss_kib();
        }
        if cycle % 1_000 == 0 || cycle == cycles {
            let (instance, pending) = instance_of(&host, "probe").await?;
            ensure!(
                registrations(&instance) == expected,
                "cycle {cycle}: {instance:?} differs from the first activation"
            );
            ensure!(pending == 0, "cycle {cycle}: {pending} requests in flight");
        }
        host.deactivate("probe").await?;
    }
    let (after, rss_after) = (holdings(), rss_kib());
    say(format!(
        "{cycles} activate/deactivate cycles ({:.3} ms each): threads {} -> {}, fds {} -> {}, RSS {rss_before} -> {rss_half} (half way) -> {rss_after} KiB ({:+} KiB over the second half)",
        start.elapsed().as_secs_f64() * 1e3 / cycles as f64,
        before.threads,
        after.threads,
        before.fds,
        after.fds,
        rss_after as i64 - rss_half as i64
    ));
    ensure!(after == before, "activate/deactivate cycles leaked: {before:?} -> {after:?}");

    // In-process frame cycles.
    host.activate("probe").await?;
    let (main_only, _) = instance_of(&host, "probe").await?;
    for _ in 0..100 {
        let frame = host.open_frame().await;
        host.close_frame(frame).await?;
    }
    let (before, rss_before) = (holdings(), rss_kib());
    let start = std::time::Instant::now();
    for cycle in 1..=cycles {
        let frame = host.open_frame().await;
        if cycle % 1_000 == 0 || cycle == cycles {
            let (instance, _) = instance_of(&host, "probe").await?;
            ensure!(instance.halves.len() == 2, "cycle {cycle}: {} halves with one frame open", instance.halves.len());
        }
        host.close_frame(frame).await?;
    }
    let (instance, pending) = instance_of(&host, "probe").await?;
    let (after, rss_after) = (holdings(), rss_kib());
    say(format!(
        "{cycles} in-process frame open/close cycles ({:.3} ms each): threads {} -> {}, fds {} -> {}, RSS {rss_before} -> {rss_after} KiB ({:+} KiB)",
        start.elapsed().as_secs_f64() * 1e3 / cycles as f64,
        before.threads,
        after.threads,
        before.fds,
        after.fds,
        rss_after as i64 - rss_before as i64
    ));
    ensure!(
        registrations(&instance) == registrations(&main_only) && pending == 0,
        "frame cycles left something behind: {instance:?}, {pending} requests in flight"
    );
    ensure!(after == before, "frame cycles leaked: {before:?} -> {after:?}");

    // Renderer-process frame cycles.
    let child_cycles = 500 / scale;
    let frame = host.open_child_frame().await?;
    host.close_frame(frame).await?;
    let (before, rss_before) = (holdings(), rss_kib());
    let start = std::time::Instant::now();
    for _ in 0..child_cycles {
        let frame = host.open_child_frame().await?;
        host.close_frame(frame).await?;
    }
    let (instance, _) = instance_of(&host, "probe").await?;
    let (after, rss_after) = (holdings(), rss_kib());
    let children = children_of(std::process::id());
    say(format!(
        "{child_cycles} renderer-process frame open/close cycles ({:.1} ms each): threads {} -> {}, fds {} -> {}, child processes left {children}, RSS {rss_before} -> {rss_after} KiB ({:+} KiB)",
        start.elapsed().as_secs_f64() * 1e3 / child_cycles as f64,
        before.threads,
        after.threads,
        before.fds,
        after.fds,
        rss_after as i64 - rss_before as i64
    ));
    ensure!(registrations(&instance) == registrations(&main_only), "renderer frames left something behind");
    ensure!(after == before && children == 0, "renderer-process frames leaked: {before:?} -> {after:?}");

    // Activate/deactivate cycles with a renderer-process frame open: its renderer process
    // starts an instance per activation, and must load the library only once.
    let frame = host.open_child_frame().await?;
    let Some(pid) = host.inspect().await.frame(frame.0).and_then(|frame| frame.pid) else {
        bail!("the child frame has no renderer process")
    };
    let (with_frame, _) = instance_of(&host, "probe").await?;
    let expected = registrations(&with_frame);
    for _ in 0..100 {
        host.deactivate("probe").await?;
        host.activate("probe").await?;
    }
    let (before, renderer_before) = (holdings(), renderer_holdings(pid));
    let (rss_before, renderer_rss_before) = (rss_kib(), super::rss_of(&pid.to_string()));
    let (mut rss_half, mut renderer_rss_half) = (0, 0);
    let start = std::time::Instant::now();
    for cycle in 1..=cycles {
        host.deactivate("probe").await?;
        host.activate("probe").await?;
        if cycle == cycles / 2 {
            (rss_half, renderer_rss_half) = (rss_kib(), super::rss_of(&pid.to_string()));
        }
        if cycle % 1_000 == 0 || cycle == cycles {
            let snapshot = host.inspect().await;
            let Some(probe) = snapshot.extension("probe") else { bail!("`probe` is not loaded") };
            ensure!(
                probe.frames == [frame.0] && probe.frame_errors.is_empty(),
                "cycle {cycle}: the renderer half is not running in the child frame: {:?}",
                probe.frame_errors
            );
            let (instance, pending) = instance_of(&host, "probe").await?;
            ensure!(
                registrations(&instance) == expected,
                "cycle {cycle}: {instance:?} differs from the first activation"
            );
            ensure!(pending == 0, "cycle {cycle}: {pending} requests in flight");
        }
    }
    let (after, renderer_after) = (holdings(), renderer_holdings(pid));
    let (rss_after, renderer_rss_after) = (rss_kib(), super::rss_of(&pid.to_string()));
    let (growth, renderer_growth) =
        (rss_after as i64 - rss_half as i64, renderer_rss_after as i64 - renderer_rss_half as i64);
    say(format!(
        "{cycles} activate/deactivate cycles with a renderer-process frame open ({:.3} ms each): host threads {} -> {}, fds {} -> {}, RSS {rss_before} -> {rss_half} (half way) -> {rss_after} KiB ({growth:+} KiB over the second half); renderer process threads {} -> {}, fds {} -> {}, RSS {renderer_rss_before} -> {renderer_rss_half} (half way) -> {renderer_rss_after} KiB ({renderer_growth:+} KiB over the second half)",
        start.elapsed().as_secs_f64() * 1e3 / cycles as f64,
        before.threads,
        after.threads,
        before.fds,
        after.fds,
        renderer_before.threads,
        renderer_after.threads,
        renderer_before.fds,
        renderer_after.fds,
    ));
    ensure!(
        host.inspect().await.frame(frame.0).and_then(|frame| frame.pid) == Some(pid),
        "the renderer process was restarted during the cycles"
    );
    ensure!(after == before, "cycles with a renderer-process frame open leaked in the host: {before:?} -> {after:?}");
    ensure!(
        renderer_after == renderer_before,
        "cycles with a renderer-process frame open leaked in the renderer process: {renderer_before:?} -> {renderer_after:?}"
    );
    ensure!(
        growth <= RSS_GROWTH_LIMIT_KIB && renderer_growth <= RSS_GROWTH_LIMIT_KIB,
        "cycles with a renderer-process frame open grew RSS over their second half by {growth:+} KiB (host) and {renderer_growth:+} KiB (renderer process); at most {RSS_GROWTH_LIMIT_KIB} KiB is noise"
    );
    host.close_frame(frame).await?;
    host.shutdown().await;

    // A million messages.
    let host = super::bench_host(artifacts, false).await?;
    let total = 1_000_000 / scale;
    let batch = 50_000 / scale;
    let mut sent = 0;
    let mut samples = Vec::new();
    while sent < total {
        run(&host, "pipelined", 1, batch, 16).await?;
        super::fan_out_once(&host, batch / 5).await?;
        sent += batch * 2;
        samples.push((sent, rss_kib()));
    }
    let (_, first_rss) = samples[0];
    let (_, last_rss) = samples[samples.len() - 1];
    let peak = samples.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    let (instance, pending) = instance_of(&host, "bench").await?;
    say(format!(
        "{sent} messages (pipelined invokes and fanned-out broadcasts): RSS after the first {} {first_rss} KiB, after all {last_rss} KiB ({:+} KiB), peak {peak} KiB; dropped {}, refused {}, queued {}, in flight {pending}",
        samples[0].0,
        last_rss as i64 - first_rss as i64,
        instance.dropped_broadcasts,
        instance.refused_requests,
        instance.queued_messages,
    ));
    ensure!(
        instance.dropped_broadcasts == 0 && instance.refused_requests == 0 && pending == 0,
        "the soak lost messages"
    );
    host.shutdown().await;
    Ok(())
}

/// Processes (running or not yet reaped) whose parent is `pid`.
fn children_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: comm may hold spaces, so split after its `)`.
            let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let mut fields = after_comm.split_whitespace();
            let _state = fields.next();
            // Zombies count: a child not reaped is a leak too.
            fields.next().and_then(|ppid| ppid.parse::<u32>().ok()) == Some(pid)
        })
        .count()
}
