//! `ipc-bench`: measures our IPC against baselines measured in the same run, and prints (and
//! writes) the table. Run it through `cargo xtask bench`, which builds everything in release.
//!
//! Ratios, not absolute times, are the point: these machines are shared and noisy, so each
//! row is compared with its baseline measured moments apart, and medians of several rounds
//! are quoted.

mod across;
mod soak;
mod web;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use extension_host::{Host, HostConfig, LevelFilter};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Cli {
    /// Where the release builds of `host` and the extension libraries are.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Where to write the table (Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fewer iterations (for a quick look; the figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Run the soak and leak checks instead of the benchmarks (see `soak.rs`).
    #[arg(long)]
    soak: bool,
    /// Only run the in-process invoke loop, this many times (for a profiler).
    #[arg(long, hide = true)]
    profile_invoke: Option<u64>,
    /// Only the durable-writes table.
    #[arg(long, hide = true)]
    durable: bool,
    /// Only the web frames' table.
    #[arg(long, hide = true)]
    web: bool,
    /// Only the idle row (with its per-thread breakdown on stderr).
    #[arg(long, hide = true)]
    idle: bool,
    /// Only the payload-size table and the 1 MiB row across processes, quiet, then loaded.
    #[arg(long, hide = true)]
    sizes: bool,
    /// Only the cross-process table (quiet and loaded).
    #[arg(long, hide = true)]
    across: bool,
    /// Only the pipelined cross-process rounds (quiet), this many invokes each (for strace).
    #[arg(long, hide = true)]
    pipelined: Option<u64>,
    /// Only the rows dispatch in an instance touches: the in-process invoke and pipelined
    /// invokes, and broadcast fan-out in process and across processes.
    #[arg(long, hide = true)]
    dispatch: bool,
    /// Internal: the echo peer of the raw socket baseline.
    #[arg(long, hide = true)]
    echo_server: Option<PathBuf>,
    /// Internal: the echo peer of the tokio ping-pong (the one-core row's floor).
    #[arg(long, hide = true)]
    echo_server_tokio: Option<PathBuf>,
    /// Internal: the busy loop of the loaded rows.
    #[arg(long, hide = true)]
    spin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    kind: String,
    frame: u64,
    count: u64,
    size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    kind: String,
    side: String,
    count: u64,
    nanos: u64,
    failures: u64,
}

const ROUNDS: usize = 5;

/// The name of the runtime's threads (workers and blocking pool), so the soak can tell them
/// from the threads the host starts.
const RUNTIME_THREADS: &str = "bench-runtime";

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(socket) = cli.echo_server {
        return across::echo_server(&socket);
    }
    if let Some(socket) = cli.echo_server_tokio {
        return across::echo_server_tokio(&socket);
    }
    if cli.spin {
        return across::spin();
    }
    let artifacts = match cli.artifacts {
        Some(path) => path,
        None => std::env::current_exe()?.parent().context("the binary has a directory")?.to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(RUNTIME_THREADS).build()?;
    if let Some(count) = cli.profile_invoke {
        return runtime.block_on(async {
            // Frames open (4 unless `BENCH_FRAMES` says): frame 1 invokes, the others idle
            // (with child frames, each its own renderer process and socket).
            let frames = std::env::var("BENCH_FRAMES").ok().and_then(|frames| frames.parse().ok()).unwrap_or(4);
            let host = bench_host_with(&artifacts, std::env::var_os("BENCH_CHILD").is_some(), frames).await?;
            let kind = std::env::var("BENCH_KIND").unwrap_or_else(|_| "invoke".into());
            let size = std::env::var("BENCH_SIZE").ok().and_then(|size| size.parse().ok()).unwrap_or(16);
            let outcome = run(&host, &kind, 1, count, size).await?;
            println!("{:.0} ns per invoke", outcome.nanos as f64 / count as f64);
            anyhow::Ok(())
        });
    }
    if cli.durable {
        return runtime.block_on(async {
            let host = bench_host(&artifacts, false).await?;
            let table = durable_table(&artifacts, &host, if cli.quick { 10 } else { 1 }).await?;
            host.shutdown().await;
            println!("{table}");
            anyhow::Ok(())
        });
    }
    if cli.web {
        return runtime.block_on(async {
            let rows = web::web(&artifacts, if cli.quick { 10 } else { 1 }, std::env::var_os("CHROMIUM")).await?;
            let table = web::table(&rows);
            println!("{table}");
            if let Some(out) = &cli.out {
                std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
            }
            anyhow::Ok(())
        });
    }
    if cli.idle {
        return runtime.block_on(async {
            let idle = across::idle_cpu(&artifacts, if cli.quick { 2 } else { 10 }).await?;
            print!("{}", idle_table(&idle));
            anyhow::Ok(())
        });
    }
    if cli.sizes {
        return runtime.block_on(async {
            let scale = if cli.quick { 10 } else { 1 };
            let local = bench_host(&artifacts, false).await?;
            let remote = bench_host(&artifacts, true).await?;
            let mut table = String::new();
            for loaded in [false, true] {
                let condition = if loaded { "loaded" } else { "quiet" };
                let _spinner = if loaded { Some(across::Spinner::start()?) } else { None };
                table.push_str(&format!("# {condition}\n\n"));
                table.push_str(&sizes_table(&local, &remote, scale).await?);
                let mib = format!(
                    "| 1 MiB vs raw socket, {condition} | {} |\n\n",
                    mib_ratio(across::mib(&remote, scale).await?)
                );
                eprint!("{mib}");
                table.push_str(&mib);
            }
            local.shutdown().await;
            remote.shutdown().await;
            println!("{table}");
            anyhow::Ok(())
        });
    }
    if cli.dispatch {
        return runtime.block_on(async {
            let scale = if cli.quick { 10 } else { 1 };
            let local = bench_host(&artifacts, false).await?;
            let remote = bench_host(&artifacts, true).await?;
            let invoke = per_op(&local, "invoke", 1, 20_000 / scale, 16).await?;
            let pipelined = per_op(&local, "pipelined", 1, 100_000 / scale, 16).await?;
            let fan_local = fan_out(&local, 50_000 / scale).await?;
            let fan_remote = fan_out(&remote, 50_000 / scale).await?;
            println!("| in-process invoke | {} |", micros(invoke));
            println!("| pipelined invokes in process | {:.0}/s |", 1e9 / pipelined);
            println!("| broadcast deliveries in process | {fan_local:.0}/s |");
            println!("| broadcast deliveries across processes | {fan_remote:.0}/s |");
            local.shutdown().await;
            remote.shutdown().await;
            anyhow::Ok(())
        });
    }
    if let Some(count) = cli.pipelined {
        return runtime.block_on(async {
            let remote = bench_host(&artifacts, true).await?;
            run(&remote, "pipelined", 1, count.min(1000), 16).await?; // warm-up
            for _ in 0..ROUNDS {
                let outcome = run(&remote, "pipelined", 1, count, 16).await?;
                println!("pipelined: {:.0}/s", outcome.count as f64 * 1e9 / outcome.nanos as f64);
            }
            remote.shutdown().await;
            anyhow::Ok(())
        });
    }
    if cli.across {
        return runtime.block_on(async {
            let scale = if cli.quick { 10 } else { 1 };
            let remote = bench_host(&artifacts, true).await?;
            let quiet = across::across(&artifacts, &remote, scale).await?;
            let loaded = {
                let _spinner = across::Spinner::start()?;
                across::across(&artifacts, &remote, scale).await?
            };
            remote.shutdown().await;
            println!("{}", across_table(&quiet, &loaded));
            anyhow::Ok(())
        });
    }
    if cli.soak {
        runtime.block_on(soak::soak(&artifacts, if cli.quick { 10 } else { 1 }))?;
        println!("soak: nothing leaked");
        return Ok(());
    }
    let report = runtime.block_on(measure(&artifacts, cli.quick))?;
    println!("{report}");
    if let Some(out) = cli.out {
        std::fs::write(&out, &report).with_context(|| format!("cannot write {}", out.display()))?;
        println!("(written to {})", out.display());
    }
    Ok(())
}

fn library(artifacts: &Path, name: &str) -> PathBuf {
    artifacts.join(extension_host::testing::library_file_name(name))
}

fn config(artifacts: &Path) -> HostConfig {
    let mut config =
        HostConfig { child_program: artifacts.join("host"), max_log_level: LevelFilter::WARN, ..HostConfig::default() };
    config.storage.data_dir = data_dir(artifacts);
    config
}

/// The bench's data directory: beside the builds, on the disk they are on (not a tmpfs).
fn data_dir(artifacts: &Path) -> PathBuf {
    artifacts.join("bench-data")
}

/// redb's own rate, on the same disk: `total` writes of the durable bench's keys and values,
/// `batch` to a transaction, each transaction committed and synced (`Durability::Immediate`,
/// the default, as the host's). Writes per second.
fn redb_batched(dir: &Path, batch: u64, total: u64) -> Result<f64> {
    const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("values");
    std::fs::create_dir_all(dir)?;
    let file = dir.join(format!("redb-baseline-{batch}.redb"));
    let _ = std::fs::remove_file(&file);
    let database = redb::Database::create(&file)?;
    let start = Instant::now();
    let mut n = 0;
    while n < total {
        let txn = database.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for _ in 0..batch.min(total - n) {
                let key = format!("w{}-{}", n % 64, n / 64);
                table.insert(key.as_str(), rmp_serde::to_vec_named(&n)?.as_slice())?;
                n += 1;
            }
        }
        txn.commit()?;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(database);
    std::fs::remove_file(&file)?;
    Ok(rate)
}

/// Writes per second of one run of `count` durable writes by `writers` writers.
async fn durable_once(host: &Host, count: u64, writers: usize) -> Result<f64> {
    let outcome = run(host, "durable", 1, count, writers).await?;
    Ok(outcome.count as f64 * 1e9 / outcome.nanos as f64)
}

/// A host running the bench extension with four frames of one kind.
async fn bench_host(artifacts: &Path, child_frames: bool) -> Result<Host> {
    bench_host_with(artifacts, child_frames, 4).await
}

/// A host with the bench extension active and `frames` frames open.
async fn bench_host_with(artifacts: &Path, child_frames: bool, frames: usize) -> Result<Host> {
    let host = Host::new(config(artifacts));
    host.load(library(artifacts, "bench"))?;
    host.activate("bench").await?;
    for _ in 0..frames {
        if child_frames {
            host.open_child_frame().await?;
        } else {
            host.open_frame().await;
        }
    }
    Ok(host)
}

/// Asks frame `frame`'s renderer to run `kind` and waits for its outcome.
/// The next outcome the bench extension reports (as a log record `bench-result {json}`).
async fn next_outcome(results: &mut tokio::sync::broadcast::Receiver<extension_host::LogRecord>) -> Result<Outcome> {
    loop {
        let record = results.recv().await?;
        if let Some(json) = record.message.strip_prefix("bench-result ") {
            return Ok(serde_json::from_str(json)?);
        }
    }
}

async fn run(host: &Host, kind: &str, frame: u64, count: u64, size: usize) -> Result<Outcome> {
    let mut results = host.logs();
    host.broadcast("bench", "bench-run", &Run { kind: kind.into(), frame, count, size })?;
    let wait = async {
        loop {
            let outcome = next_outcome(&mut results).await?;
            if outcome.kind == kind {
                return anyhow::Ok(outcome);
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(600), wait).await.context("the run did not finish")??;
    if outcome.failures > 0 {
        bail!("{kind}: {} of {} calls failed", outcome.failures, outcome.count);
    }
    Ok(outcome)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median nanoseconds per operation over the rounds.
async fn per_op(host: &Host, kind: &str, frame: u64, count: u64, size: usize) -> Result<f64> {
    run(host, kind, frame, count.min(1000), size).await?; // warm-up
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let outcome = run(host, kind, frame, count, size).await?;
        samples.push(outcome.nanos as f64 / outcome.count as f64);
    }
    Ok(median(samples))
}

/// Broadcast fan-out: main sends `count` events; all five listeners must receive them all.
async fn fan_out(host: &Host, count: u64) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        samples.push(fan_out_once(host, count).await?);
    }
    Ok(median(samples))
}

/// One fan-out round; deliveries per second.
async fn fan_out_once(host: &Host, count: u64) -> Result<f64> {
    let mut results = host.logs();
    let start = Instant::now();
    host.broadcast("bench", "bench-run", &Run { kind: "fan-out".into(), frame: 0, count, size: 0 })?;
    let mut done = 0;
    while done < 5 {
        let outcome = tokio::time::timeout(Duration::from_secs(600), next_outcome(&mut results)).await??;
        if outcome.kind == "fan-out" {
            done += 1;
        }
    }
    Ok((count * 5) as f64 / start.elapsed().as_secs_f64())
}

/// Node.js `child_process.fork` IPC with `serialization: 'advanced'`, per round trip.
/// The median of [`ROUNDS`] runs of the script, each its own pair of processes; on `cpu`
/// (both of them: the forked child inherits the mask), or where the scheduler puts them.
fn node_round_trip(count: u64, size: usize, cpu: Option<usize>) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/ipc.js");
    let once = || -> Option<f64> {
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = std::process::Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg("node");
                command
            }
            None => std::process::Command::new("node"),
        };
        let output = command.arg(&script).arg(count.to_string()).arg(size.to_string()).output().ok()?;
        #[derive(Deserialize)]
        struct NodeResult {
            ns_per_op: f64,
        }
        let text = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str::<NodeResult>(text.trim()).ok().map(|result| result.ns_per_op)
    };
    let samples: Option<Vec<f64>> = (0..ROUNDS).map(|_| once()).collect();
    samples.map(median)
}

/// Bytes on the wire for one request packet of a `size`-byte payload (what the raw socket
/// baseline sends, so both move the same bytes).
fn packet_bytes(size: usize) -> usize {
    #[derive(Serialize)]
    struct Payload {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    }
    let payload = rmp_serde::to_vec_named(&Payload { bytes: vec![7; size] }).unwrap_or_default();
    let message = extension_host::child_protocol::OwnedMessage {
        kind: 2,
        status: 0,
        origin: 1,
        target: 0,
        request_id: 1,
        channel: "echo".into(),
        payload,
    };
    extension_host::child_protocol::encode(&extension_host::child_protocol::Packet::Message { key: 1, message })
        .map(|bytes| bytes.len())
        .unwrap_or(size)
}

fn rss_kib() -> u64 {
    rss_of("self")
}

fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn micros(nanos: f64) -> String {
    format!("{:.2} µs", nanos / 1000.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {:.0} GiB memory, Linux {}", memory as f64 / 1048576.0, std::env::consts::ARCH)
}

/// A row of the invoke table: the child invoke against the raw ping-pong, both placed alike.
fn placed_row(label: &str, ours: across::Figure, raw: across::Figure, target: &str) -> String {
    format!(
        "| child-process invoke, {label} | {} | {:.2}x raw Unix-socket ping-pong, {label} ({}) | {target} | |",
        micros(ours.median),
        ours.median / raw.median,
        micros(raw.median)
    )
}

/// The cross-process rows side by side, quiet and with a busy loop on one core; each ratio
/// within its own condition.
fn across_table(quiet: &across::Across, loaded: &across::Across) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        eprintln!("{text}");
        out.push_str(&text);
        out.push('\n');
    };
    line("## Across processes, quiet and loaded".into());
    line(String::new());
    line(
        "Loaded: a busy loop on one core (a child process of the bench, not pinned) from before the rows to \
         after them. Ratios compare rows of the same condition, measured in turns within each round."
            .into(),
    );
    line(String::new());
    line("| row | quiet | loaded | target |".into());
    line("| --- | --- | --- | --- |".into());
    let ratio = |(ours, raw): (across::Figure, across::Figure)| {
        format!("{} = {:.2}x raw ({})", micros(ours.median), ours.median / raw.median, micros(raw.median))
    };
    let spread = |(ours, raw): (across::Figure, across::Figure)| {
        format!(
            "{} (rounds {}–{}), raw {} (rounds {}–{})",
            micros(ours.median),
            micros(ours.min),
            micros(ours.max),
            micros(raw.median),
            micros(raw.min),
            micros(raw.max)
        )
    };
    line(format!(
        "| child invoke, raw ping-pong: placement left to the scheduler | {} | {} | |",
        spread(quiet.scheduled),
        spread(loaded.scheduled)
    ));
    let placed = |figures: Option<(across::Figure, across::Figure)>| figures.map(ratio).unwrap_or_else(|| "n/a".into());
    line(format!(
        "| child invoke vs raw ping-pong, one core | {} | {} | ≤ 1.15x |",
        placed(quiet.one_core),
        placed(loaded.one_core)
    ));
    line(format!(
        "| the one-core row's floor: the same ping-pong with both ends on current-thread tokio runtimes \
         (no work of ours), vs raw, one core | {} | {} | |",
        placed(quiet.floor),
        placed(loaded.floor)
    ));
    line(format!(
        "| child invoke vs raw ping-pong, a core each (no lower bound: see `across.rs`) | {} | {} | |",
        placed(quiet.core_each),
        placed(loaded.core_each)
    ));
    let node = |node: Option<f64>, ours: Option<f64>| match (node, ours) {
        (Some(node), Some(ours)) => format!("{} = {:.2}x ours", micros(node), node / ours),
        _ => "n/a (no node, or no taskset)".into(),
    };
    line(format!(
        "| Node.js `fork` IPC (`advanced`) vs child invoke, placement left to the scheduler | {} | {} | ≥ 3x ours |",
        node(quiet.node, Some(quiet.scheduled.0.median)),
        node(loaded.node, Some(loaded.scheduled.0.median))
    ));
    let one_core = |across: &across::Across| across.one_core.map(|(ours, _)| ours.median);
    line(format!(
        "| Node.js `fork` IPC (`advanced`) vs child invoke, one core | {} | {} | ≥ 3x ours |",
        node(quiet.node_one_core, one_core(quiet)),
        node(loaded.node_one_core, one_core(loaded))
    ));
    line(format!(
        "| pipelined invokes across processes (256 in flight) | {:.0}/s | {:.0}/s | ≥ 500,000/s |",
        1e9 / quiet.pipelined,
        1e9 / loaded.pipelined
    ));
    line(format!(
        "| 1 MiB round trip across processes vs raw socket | {} | {} | ≤ 1.5x |",
        mib_ratio(quiet.mib),
        mib_ratio(loaded.mib)
    ));
    line(String::new());
    out
}

/// The payload-size rows: invoke round trips in process and across processes, 16 B to 1 MiB.
async fn sizes_table(local: &Host, remote: &Host, scale: u64) -> Result<String> {
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        eprintln!("{text}");
        out.push_str(&text);
        out.push('\n');
    };
    line(&mut out, "## Payload sizes (invoke round trip, the value goes both ways)".into());
    line(&mut out, String::new());
    line(&mut out, "| size | in process | MB/s | across processes | MB/s |".into());
    line(&mut out, "| --- | --- | --- | --- | --- |".into());
    for (label, size, count) in
        [("16 B", 16, 5_000), ("1 KiB", 1024, 5_000), ("64 KiB", 65_536, 1_000), ("1 MiB", 1 << 20, 100)]
    {
        let count = (count / scale).max(10);
        let here = per_op(local, "invoke", 1, count, size).await?;
        let there = per_op(remote, "invoke", 1, count, size).await?;
        let rate = |nanos: f64| (2 * size) as f64 / nanos * 1e3;
        line(
            &mut out,
            format!("| {label} | {} | {:.0} | {} | {:.0} |", micros(here), rate(here), micros(there), rate(there)),
        );
    }
    line(&mut out, String::new());
    Ok(out)
}

/// The 1 MiB row: (invoke, raw ping-pong) as time, rate and ratio.
fn mib_ratio((ours, raw): (across::Figure, across::Figure)) -> String {
    let rate = |nanos: f64| (2 << 20) as f64 / nanos * 1e3;
    format!(
        "{:.2} ms ({:.0} MB/s) = {:.2}x raw ({:.2} ms, {:.0} MB/s)",
        ours.median / 1e6,
        rate(ours.median),
        ours.median / raw.median,
        raw.median / 1e6,
        rate(raw.median)
    )
}

/// The durable-writes table: the persisted tier, 1 and 64 writers, against redb's own batched
/// commits on the same disk in the same run.
async fn durable_table(artifacts: &Path, local: &Host, scale: u64) -> Result<String> {
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        eprintln!("{text}");
        out.push_str(&text);
        out.push('\n');
    };
    // Durable writes: the persisted tier against redb's own batched commits, same disk.
    let _ = std::fs::remove_dir_all(data_dir(artifacts));
    // Rounds interleave ours and redb's, so both meet the same disk and the same neighbours.
    let (few, many) = (500 / scale.min(5), 64 * 100 / scale);
    run(local, "durable", 1, 64, 64).await?; // warm-up
    let mut samples: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        samples[0].push(durable_once(local, few, 1).await?);
        samples[1].push(durable_once(local, many, 64).await?);
        samples[5].push(durable_once(local, many / 1024 * 1024, 1024).await?);
        let dir = data_dir(artifacts);
        let rates = tokio::task::spawn_blocking(move || {
            anyhow::Ok([redb_batched(&dir, 1, few)?, redb_batched(&dir, 64, many)?, redb_batched(&dir, 1024, many)?])
        })
        .await??;
        for (at, rate) in rates.into_iter().enumerate() {
            samples[2 + at].push(rate);
        }
    }
    let [one_writer, many_writers, redb_1, redb_64, redb_1024, crowd] = samples.map(median);
    line(&mut out, "## Durable writes (persisted tier: committed and synced before `set` resolves)".into());
    line(&mut out, String::new());
    line(&mut out, "| what | writes/s | against redb's own commits (same disk, same run) | target |".into());
    line(&mut out, "| --- | --- | --- | --- |".into());
    line(
        &mut out,
        format!(
            "| 1 writer (a frame's sequential `set`s) | {one_writer:.0} | {:.2}x redb, 1 write a commit ({redb_1:.0}/s) | |",
            redb_1 / one_writer
        ),
    );
    line(
        &mut out,
        format!(
            "| 64 concurrent writers (group commit) | {many_writers:.0} | {:.2}x redb, 64 writes a commit ({redb_64:.0}/s) | ≤ 2x |",
            redb_64 / many_writers
        ),
    );
    line(
        &mut out,
        format!(
            "| 1024 concurrent writers | {crowd:.0} | {:.2}x redb's best batched rate (below) | ≤ 2x |",
            redb_1024 / crowd
        ),
    );
    line(
        &mut out,
        format!(
            "| redb's best batched rate (1024 writes a commit) | {redb_1024:.0} | {:.2}x ours with 64 writers | |",
            redb_1024 / many_writers
        ),
    );
    line(&mut out, String::new());
    let _ = std::fs::remove_dir_all(data_dir(artifacts));

    Ok(out)
}

async fn measure(artifacts: &Path, quick: bool) -> Result<String> {
    let scale = if quick { 10 } else { 1 };
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        eprintln!("{text}");
        out.push_str(&text);
        out.push('\n');
    };
    line(&mut out, "# Benchmarks".into());
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "Machine: {}. Medians of {ROUNDS} rounds; every ratio compares two rows measured in the same run.",
            machine()
        ),
    );
    line(&mut out, "Regenerate with `cargo xtask bench`.".into());
    line(&mut out, String::new());

    let local = bench_host(artifacts, false).await?;
    let remote = bench_host(artifacts, true).await?;

    // 1-3: round trips of a small value.
    let ours_local = per_op(&local, "invoke", 1, 20_000 / scale, 16).await?;
    let tokio_baseline = per_op(&local, "baseline", 1, 20_000 / scale, 16).await?;
    // The cross-process rows, quiet and then with a busy loop on one core; each ratio compares
    // rows of one condition (see `across.rs`, which also says why the raw baseline is placed).
    let quiet = across::across(artifacts, &remote, scale).await?;
    let loaded = {
        let _spinner = across::Spinner::start()?;
        across::across(artifacts, &remote, scale).await?
    };
    let (ours_remote, raw_socket) = quiet.scheduled;
    let node = quiet.node;
    line(&mut out, "## Invoke round trip (16-byte value)".into());
    line(&mut out, String::new());
    line(&mut out, "| path | per round trip | against its baseline | target | Node.js IPC / ours |".into());
    line(&mut out, "| --- | --- | --- | --- | --- |".into());
    let speedup =
        |ours: f64| node.map(|node| format!("{:.1}x faster", node / ours)).unwrap_or_else(|| "node not found".into());
    line(
        &mut out,
        format!(
            "| in-process invoke | {} | {:.2}x bare tokio round trip ({}) | ≤ 1.5x | {} |",
            micros(ours_local),
            ours_local / tokio_baseline,
            micros(tokio_baseline),
            speedup(ours_local)
        ),
    );
    line(
        &mut out,
        format!(
            "| child-process invoke (placement left to the scheduler) | {} | {:.2}x raw Unix-socket ping-pong, \
             unpinned ({}; its rounds {}–{}: bimodal, so not the target's ratio) | | {} |",
            micros(ours_remote.median),
            ours_remote.median / raw_socket.median,
            micros(raw_socket.median),
            micros(raw_socket.min),
            micros(raw_socket.max),
            speedup(ours_remote.median)
        ),
    );
    for (label, figures, target) in
        [("one core", quiet.one_core, "≤ 1.15x"), ("a core each", quiet.core_each, "(no lower bound)")]
    {
        if let Some((ours, raw)) = figures {
            line(&mut out, placed_row(label, ours, raw, target));
        }
    }
    match node {
        Some(node) => {
            line(&mut out, format!("| Node.js `fork` IPC (`serialization: 'advanced'`) | {} | | | |", micros(node)))
        }
        None => line(&mut out, "| Node.js IPC | skipped: `node` is not on PATH | | | |".into()),
    }
    line(&mut out, String::new());

    // 4: throughput.
    let pipelined_local = per_op(&local, "pipelined", 1, 100_000 / scale, 16).await?;
    let pipelined_remote = quiet.pipelined;
    // Below the default mailbox limit: the burst is sent from main's own thread, so none of it
    // is dispatched before the loop ends.
    let fan_local = fan_out(&local, 50_000 / scale).await?;
    let fan_remote = fan_out(&remote, 50_000 / scale).await?;
    line(&mut out, "## Throughput (16-byte values)".into());
    line(&mut out, String::new());
    line(&mut out, "| what | in process | across processes | target (in process) |".into());
    line(&mut out, "| --- | --- | --- | --- |".into());
    line(
        &mut out,
        format!(
            "| pipelined invokes (256 in flight) | {:.0}/s | {:.0}/s | > 1,000,000/s |",
            1e9 / pipelined_local,
            1e9 / pipelined_remote
        ),
    );
    line(
        &mut out,
        format!(
            "| broadcast deliveries (main + 4 frames listening) | {fan_local:.0}/s | {fan_remote:.0}/s | > 1,000,000/s |"
        ),
    );
    line(&mut out, String::new());

    out.push_str(&across_table(&quiet, &loaded));

    out.push_str(&durable_table(artifacts, &local, scale).await?);

    // 5: payload sizes.
    out.push_str(&sizes_table(&local, &remote, scale).await?);
    local.shutdown().await;
    let renderer_rss: Vec<u64> = remote
        .inspect()
        .await
        .frames
        .iter()
        .filter_map(|frame| frame.pid)
        .map(|pid| rss_of(&pid.to_string()))
        .collect();
    remote.shutdown().await;

    // The web frames' rows, with a host and a browser of their own.
    out.push_str(&web::table(&web::web(artifacts, scale, std::env::var_os("CHROMIUM")).await?));

    // 6-7: lifecycle and memory.
    let host = Host::new(config(artifacts));
    host.load(library(artifacts, "hello"))?;
    let cycle = |count: u64| {
        let host = host.clone();
        async move {
            let start = Instant::now();
            for _ in 0..count {
                host.activate("hello").await?;
                host.deactivate("hello").await?;
            }
            anyhow::Ok(start.elapsed().as_secs_f64() * 1e3 / count as f64)
        }
    };
    let per_cycle = cycle(100).await?;
    let rss_100 = rss_kib();
    cycle(9_900 / scale).await?;
    let rss_10k = rss_kib();
    line(&mut out, "## Lifecycle and memory".into());
    line(&mut out, String::new());
    line(&mut out, "| what | figure |".into());
    line(&mut out, "| --- | --- |".into());
    line(&mut out, format!("| activate + deactivate cycle (`hello`, no frames) | {per_cycle:.3} ms |"));
    line(&mut out, format!("| host RSS after 100 cycles | {rss_100} KiB |"));
    line(
        &mut out,
        format!(
            "| host RSS after {} cycles | {rss_10k} KiB ({:+} KiB) |",
            100 + 9_900 / scale,
            rss_10k as i64 - rss_100 as i64
        ),
    );

    let names = ["hello", "hello-twin", "gluon", "probe", "bench"];
    let memory = Host::new(config(artifacts));
    for name in names {
        memory.load(library(artifacts, name))?;
    }
    let before = rss_kib();
    for name in names {
        memory.activate(name).await?;
    }
    let active = rss_kib();
    for _ in 0..20 {
        memory.open_frame().await;
    }
    let framed = rss_kib();
    memory.shutdown().await;
    line(
        &mut out,
        format!(
            "| per active extension (main half, no frames; mean of {}) | {} KiB |",
            names.len(),
            (active.saturating_sub(before)) / names.len() as u64
        ),
    );
    line(
        &mut out,
        format!(
            "| per idle in-process frame ({} renderer halves each; mean of 20) | {} KiB |",
            names.len(),
            framed.saturating_sub(active) / 20
        ),
    );
    if !renderer_rss.is_empty() {
        let mean = renderer_rss.iter().sum::<u64>() / renderer_rss.len() as u64;
        line(&mut out, format!("| per renderer process (one extension, idle) | {mean} KiB RSS |"));
    }

    // Last, when nothing else of the bench is left running in this process.
    let seconds = if quick { 2 } else { 10 };
    let idle = across::idle_cpu(artifacts, seconds).await?;
    line(&mut out, String::new());
    let table = idle_table(&idle);
    eprint!("{table}");
    out.push_str(&table);
    Ok(out)
}

/// The idle section: its heading and its one row.
fn idle_table(idle: &across::Idle) -> String {
    format!(
        "## Idle\n\n| what | CPU time per 10 s | target |\n| --- | --- | --- |\n\
         | idle, `bench` active with 2 in-process and 2 child-process frames, `hello` isolated \
         (measured over {} s, scaled) | host {:.0} ms, its {} child processes {:.0} ms (utime + stime, 10 ms \
         ticks); threads' schedstat: host {:.1} ms, children {:.1} ms | ~0 |\n",
        idle.seconds, idle.host, idle.processes, idle.children, idle.host_fine, idle.children_fine
    )
}
