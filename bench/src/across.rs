//! The cross-process rows: child-process invokes against a raw Unix-socket ping-pong measured
//! in turns with them, the same rows with a busy loop on one core, and the idle CPU row.
//!
//! # Why the raw baseline is placed
//!
//! On these machines (2 vCPUs of a Firecracker VM), a raw ping-pong between two processes
//! costs about 3 µs a round trip when both ends run on one core (a wake there is a context
//! switch), and about 60 µs when they run on two (each wake sends an IPI to an idle vCPU,
//! which the hypervisor has to reschedule: some 30 µs a hop). With placement left to the
//! scheduler, a pair of two threads settles into one mode or the other and stays there for a
//! while (its wake-affine choice is sticky), so the baseline alone swung between 3 and 60 µs
//! from run to run, and the invoke's ratio with it. The invoke itself (four threads, four
//! hops) lands in neither mode: its hops move between the cores, about 42 µs.
//!
//! No unpinned two-process ping-pong is stable here, so the rows that carry the target
//! compare the invoke and the raw ping-pong under the **same explicit placement**, measured in
//! turns within each round:
//!
//! - **one core**: the host (this process) and the renderer process, or the echo peer, all
//!   on one CPU. This is the honest lower bound of a round trip between two processes over a
//!   Unix socket on this machine: nothing placed otherwise is faster, and the invoke gets
//!   the same core to run its extra threads on.
//! - **a core each**: the host on one CPU, the renderer (or the echo peer) on the other: the
//!   topology of a renderer that owns a core, where every process crossing costs a
//!   cross-core wake in both. Shown, but it carries no target: a cross-core wake here costs
//!   what the idle vCPU's halt-polling state makes it, so this ping-pong is no lower bound
//!   (the invoke, whose extra threads keep the cores less idle, has measured below it).
//!
//! The baseline keeps one thread at each end (a loop that writes and reads its own socket):
//! more threads would copy our design's hops into the baseline and flatter us. The invoke
//! with placement left to the scheduler is still measured (it is what users get), with the
//! unpinned ping-pong beside it and the spread of its rounds, to show the bimodality.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use extension_host::Host;

use crate::{ROUNDS, bench_host, config, library, median, node_round_trip, packet_bytes, per_op, run};

/// The median of some rounds, with the fastest and the slowest (the spread).
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    pub fn of(samples: &[f64]) -> Figure {
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        Figure { median: median(samples.to_vec()), min, max }
    }
}

/// The peer of the raw baseline: a child process of ours (`--echo-server`) that echoes each
/// length-prefixed message on a Unix socket, from one thread. This end pings from the thread
/// that calls [`RawPeer::round`].
pub struct RawPeer {
    stream: BufReader<UnixStream>,
    child: Child,
    path: PathBuf,
    message: Vec<u8>,
    reply: Vec<u8>,
    /// The tokio ping-pong's: the runtime this end pings from.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How the two ends of a ping-pong run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// One thread each, blocking on its socket (the raw baseline).
    Blocking,
    /// Each a current-thread tokio runtime with all its drivers on, as an instance's, reading
    /// through its I/O driver: the floor under any round trip whose two ends are such
    /// runtimes, with no work of ours in it (see [`floor`]).
    Tokio,
}

impl RawPeer {
    /// A peer on `cpu` (or wherever the scheduler puts it) for messages of `size` bytes.
    pub fn start(size: usize, cpu: Option<usize>) -> Result<RawPeer> {
        RawPeer::start_with(size, cpu, Ends::Blocking)
    }

    /// The same, its ends run as `ends` says.
    pub fn start_with(size: usize, cpu: Option<usize>, ends: Ends) -> Result<RawPeer> {
        static PEERS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("ipc-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("echo-{}.sock", PEERS.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let program = std::env::current_exe()?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg(program);
                command
            }
            None => Command::new(program),
        };
        let flag = match ends {
            Ends::Blocking => "--echo-server",
            Ends::Tokio => "--echo-server-tokio",
        };
        let child = command.arg(flag).arg(&path).spawn().context("cannot start the echo peer")?;
        let (stream, _) = listener.accept()?;
        // The send buffer a child connection's ends ask for: the same socket, tuned alike.
        extension_host::child_protocol::widen_send_buffer(&stream);
        let mut message = (size as u32).to_be_bytes().to_vec();
        message.resize(4 + size, 7);
        let runtime = match ends {
            Ends::Blocking => None,
            Ends::Tokio => Some(tokio::runtime::Builder::new_current_thread().enable_all().build()?),
        };
        let mut peer =
            RawPeer { stream: BufReader::new(stream), child, path, message, reply: vec![0u8; size], runtime };
        peer.round(1000)?; // warm-up
        Ok(peer)
    }

    /// One round trip. The fewest system calls a framed ping-pong needs, so that the
    /// baseline is a lower bound: the length and the bytes in one write, and reads through a
    /// buffer (a small reply is one read).
    fn ping(&mut self) -> Result<()> {
        self.stream.get_mut().write_all(&self.message)?;
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        self.stream.read_exact(&mut self.reply)?;
        Ok(())
    }

    /// Nanoseconds per round trip over `count` round trips.
    pub fn round(&mut self, count: u64) -> Result<f64> {
        if let Some(runtime) = &self.runtime {
            return runtime.block_on(tokio_round(self.stream.get_ref(), &self.message, &mut self.reply, count));
        }
        let start = Instant::now();
        for _ in 0..count {
            self.ping()?;
        }
        Ok(start.elapsed().as_nanos() as f64 / count as f64)
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        // The peer ends at end of stream; wait for it, so none is left behind.
        let _ = self.stream.get_ref().shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The tokio ping-pong's round of `count` on `stream`, from the runtime it runs in (the
/// blocking ping-pong's [`RawPeer::ping`], written for tokio: one write a message, reads
/// through a buffer).
async fn tokio_round(stream: &UnixStream, message: &[u8], reply: &mut [u8], count: u64) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Its own descriptor, registered with this runtime for the round: the blocking one is left
    // as it was, apart from the non-blocking mode their shared file now has.
    let std = stream.try_clone()?;
    std.set_nonblocking(true)?;
    let mut stream = tokio::io::BufReader::new(tokio::net::UnixStream::from_std(std)?);
    let start = Instant::now();
    for _ in 0..count {
        stream.get_mut().write_all(message).await?;
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).await?;
        stream.read_exact(reply).await?;
    }
    Ok(start.elapsed().as_nanos() as f64 / count as f64)
}

/// The tokio echo peer's loop (`--echo-server-tokio`): [`echo_server`] on a current-thread
/// runtime with all its drivers on.
pub fn echo_server_tokio(socket: &Path) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let std = UnixStream::connect(socket)?;
        extension_host::child_protocol::widen_send_buffer(&std);
        std.set_nonblocking(true)?;
        let mut stream = tokio::io::BufReader::new(tokio::net::UnixStream::from_std(std)?);
        let mut buffer = Vec::new();
        loop {
            let mut length = [0u8; 4];
            if stream.read_exact(&mut length).await.is_err() {
                return Ok(());
            }
            buffer.clear();
            buffer.extend_from_slice(&length);
            buffer.resize(4 + u32::from_be_bytes(length) as usize, 0);
            stream.read_exact(&mut buffer[4..]).await?;
            stream.get_mut().write_all(&buffer).await?;
        }
    })
}

/// The echo peer's loop (`--echo-server`).
pub fn echo_server(socket: &Path) -> Result<()> {
    let stream = UnixStream::connect(socket)?;
    extension_host::child_protocol::widen_send_buffer(&stream);
    let mut stream = BufReader::new(stream);
    // The reply as it goes out: length and bytes, written at once.
    let mut buffer = Vec::new();
    loop {
        let mut length = [0u8; 4];
        if stream.read_exact(&mut length).is_err() {
            return Ok(());
        }
        buffer.clear();
        buffer.extend_from_slice(&length);
        buffer.resize(4 + u32::from_be_bytes(length) as usize, 0);
        stream.read_exact(&mut buffer[4..])?;
        stream.get_mut().write_all(&buffer)?;
    }
}

/// The raw ping-pong's round of `count`, on a blocking thread (it blocks on its socket).
async fn raw_round(peer: RawPeer, count: u64) -> Result<(RawPeer, f64)> {
    tokio::task::spawn_blocking(move || {
        let mut peer = peer;
        let nanos = peer.round(count)?;
        anyhow::Ok((peer, nanos))
    })
    .await?
}

/// Child-process invokes of `size` bytes (frame 1 of `host`) and the raw ping-pong of the same
/// bytes, in turns within each round, so both meet the same neighbours; the order alternates
/// from round to round. Nanoseconds per round trip: (invoke, raw).
async fn invoke_and_raw(host: &Host, count: u64, size: usize, peer_cpu: Option<usize>) -> Result<(Figure, Figure)> {
    let bytes = packet_bytes(size);
    let mut peer = tokio::task::spawn_blocking(move || RawPeer::start(bytes, peer_cpu)).await??;
    run(host, "invoke", 1, count.min(1000), size).await?; // warm-up
    let (mut invokes, mut raws) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 1 {
            let (back, nanos) = raw_round(peer, count).await?;
            peer = back;
            raws.push(nanos);
        }
        let outcome = run(host, "invoke", 1, count, size).await?;
        invokes.push(outcome.nanos as f64 / outcome.count as f64);
        if round % 2 == 0 {
            let (back, nanos) = raw_round(peer, count).await?;
            peer = back;
            raws.push(nanos);
        }
    }
    tokio::task::spawn_blocking(move || drop(peer)).await?;
    Ok((Figure::of(&invokes), Figure::of(&raws)))
}

/// The tokio ping-pong against the raw one (both of 16-byte invokes' bytes), in turns within
/// each round, their peers on `peer_cpu`: (tokio, raw).
async fn tokio_and_raw(count: u64, peer_cpu: Option<usize>) -> Result<(Figure, Figure)> {
    let bytes = packet_bytes(16);
    let (mut tokio_peer, mut raw_peer) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((RawPeer::start_with(bytes, peer_cpu, Ends::Tokio)?, RawPeer::start(bytes, peer_cpu)?))
    })
    .await??;
    let (mut tokios, mut raws) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (tokio_back, raw_back, tokio_nanos, raw_nanos) = tokio::task::spawn_blocking(move || {
            let (mut tokio_peer, mut raw_peer) = (tokio_peer, raw_peer);
            let (tokio_nanos, raw_nanos) = if round % 2 == 0 {
                let tokio_nanos = tokio_peer.round(count)?;
                (tokio_nanos, raw_peer.round(count)?)
            } else {
                let raw_nanos = raw_peer.round(count)?;
                (tokio_peer.round(count)?, raw_nanos)
            };
            anyhow::Ok((tokio_peer, raw_peer, tokio_nanos, raw_nanos))
        })
        .await??;
        (tokio_peer, raw_peer) = (tokio_back, raw_back);
        tokios.push(tokio_nanos);
        raws.push(raw_nanos);
    }
    tokio::task::spawn_blocking(move || drop((tokio_peer, raw_peer))).await?;
    Ok((Figure::of(&tokios), Figure::of(&raws)))
}

/// The floor of the one-core row: the ping-pong with both ends on tokio runtimes, against the
/// raw one, on one core as that row places them (this process on the first CPU, the peers
/// too). An invoke's two ends are such runtimes (an instance's thread in the renderer process,
/// main's in the host), so no invoke can come nearer the raw ping-pong than this does. `None`
/// where the one-core row has none (see [`cpus_for`]).
pub async fn floor(count: u64) -> Result<Option<(Figure, Figure)>> {
    let Some((here, there)) = cpus_for(Placement::OneCore)? else { return Ok(None) };
    pinned(here, tokio_and_raw(count, Some(there))).await.map(Some)
}

/// Where the processes of a placed row run.
#[derive(Debug, Clone, Copy)]
pub enum Placement {
    /// The host and its peer on one CPU.
    OneCore,
    /// The host on one CPU, its peer on another.
    CoreEach,
}

/// The CPUs this process may run on (`Cpus_allowed_list`, as `0-1,4`).
fn allowed_cpus() -> Result<(String, Vec<usize>)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_owned())
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>()?..=last.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok((list, cpus))
}

/// Confines every thread of process `pid` to `cpus`. Threads it starts later inherit the
/// mask of the thread that starts them, and so do the processes it spawns.
fn set_affinity(pid: u32, cpus: &str) -> Result<()> {
    // `taskset -a` lists the threads, then sets each: one that ends in between (a blocking
    // pool thread retiring) fails the whole call, so it is tried again on a fresh list.
    for _ in 0..10 {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run taskset (util-linux)")?;
        if status.success() {
            return Ok(());
        }
    }
    bail!("taskset could not place process {pid} on CPUs {cpus}")
}

/// The child invoke and the raw ping-pong of `size` bytes, both placed as `placement` says:
/// this process (the host and the ping-pong's pinging end) on one CPU, a fresh host's
/// renderer processes and the echo peer on the same one or another. `None` if the machine
/// has too few CPUs for the placement. The bench's own threads get their mask back after.
async fn placed(artifacts: &Path, placement: Placement, count: u64, size: usize) -> Result<Option<(Figure, Figure)>> {
    let Some((here, there)) = cpus_for(placement)? else { return Ok(None) };
    let figures = pinned(here, async {
        let host = bench_host(artifacts, true).await?;
        let placed = async {
            for pid in host.inspect().await.frames.iter().filter_map(|frame| frame.pid) {
                set_affinity(pid, &there.to_string())?;
            }
            invoke_and_raw(&host, count, size, Some(there)).await
        }
        .await;
        host.shutdown().await;
        placed
    })
    .await?;
    Ok(Some(figures))
}

/// The CPUs of `placement`: (this process's, its peers'). `None` if the machine has too few
/// CPUs for it, or `taskset` (which places the peers) is missing, which it says.
fn cpus_for(placement: Placement) -> Result<Option<(usize, usize)>> {
    let (_, cpus) = allowed_cpus()?;
    if Command::new("taskset").arg("--version").stdout(Stdio::null()).status().is_err() {
        eprintln!("taskset (util-linux) is not on PATH: the placed rows are skipped");
        return Ok(None);
    }
    Ok(match (placement, cpus.as_slice()) {
        (Placement::OneCore, [first, ..]) => Some((*first, *first)),
        (Placement::CoreEach, [first, second, ..]) => Some((*first, *second)),
        _ => None,
    })
}

/// Runs `work` with this process's threads on CPU `cpu`, and gives them their mask back after.
async fn pinned<T>(cpu: usize, work: impl Future<Output = Result<T>>) -> Result<T> {
    let (all, _) = allowed_cpus()?;
    set_affinity(std::process::id(), &cpu.to_string())?;
    let outcome = work.await;
    set_affinity(std::process::id(), &all)?;
    outcome
}

/// A busy loop on one core while the loaded rows measure: a child process of ours (`--spin`),
/// started before the rows and stopped after them.
///
/// A process rather than a thread of the bench: it stands for the other work on the machine
/// (the builds that share these machines), it keeps its CPU time out of the host's, and it
/// does not take the masks the placed rows give the bench's own threads (it is started before
/// them). It is not pinned, as other work is not: the scheduler may move it, and our threads
/// around it, as it would.
pub struct Spinner(Child);

impl Spinner {
    pub fn start() -> Result<Spinner> {
        let child = Command::new(std::env::current_exe()?).arg("--spin").spawn().context("cannot start the spinner")?;
        Ok(Spinner(child))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The spinner's loop (`--spin`). It looks up from the loop every 50 ms and ends when its
/// parent has gone, so a bench that dies leaves no process spinning.
pub fn spin() -> Result<()> {
    let parent = std::os::unix::process::parent_id();
    loop {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        if std::os::unix::process::parent_id() != parent {
            return Ok(());
        }
    }
}

/// The cross-process figures of one condition (quiet or loaded), all measured in it.
pub struct Across {
    /// Placement left to the scheduler: (invoke, raw ping-pong), 16-byte values.
    pub scheduled: (Figure, Figure),
    pub one_core: Option<(Figure, Figure)>,
    /// The one-core row's floor: (tokio ping-pong, raw ping-pong), see [`floor`].
    pub floor: Option<(Figure, Figure)>,
    pub core_each: Option<(Figure, Figure)>,
    /// Node `fork` IPC, per round trip (16 bytes), placement left to the scheduler.
    pub node: Option<f64>,
    /// The same with both Node processes on the CPU of the one-core rows.
    pub node_one_core: Option<f64>,
    /// Pipelined invokes across processes, ns each.
    pub pipelined: f64,
    /// 1 MiB round trips across processes: (invoke, raw ping-pong), scheduler's placement.
    pub mib: (Figure, Figure),
}

/// Measures the cross-process rows of one condition against `remote` (a host with child
/// frames) and fresh placed hosts.
pub async fn across(artifacts: &Path, remote: &Host, scale: u64) -> Result<Across> {
    let count = 5_000 / scale;
    let scheduled = invoke_and_raw(remote, count, 16, None).await?;
    let one_core = placed(artifacts, Placement::OneCore, count, 16).await?;
    // Shown beside the target's row, not a target itself: a failure leaves it out, said so.
    let floor = floor(count).await.unwrap_or_else(|error| {
        eprintln!("the one-core row's floor (the tokio ping-pong) failed: {error:#}");
        None
    });
    let core_each = placed(artifacts, Placement::CoreEach, count, 16).await?;
    let node = node_round_trip(count, 16, None);
    // Node's pair on the one core the placed rows use, to set beside the invoke placed so.
    let node_one_core = match allowed_cpus()?.1.first() {
        Some(&cpu) if one_core.is_some() => node_round_trip(count, 16, Some(cpu)),
        _ => None,
    };
    let pipelined = per_op(remote, "pipelined", 1, 50_000 / scale, 16).await?;
    let mib = mib(remote, scale).await?;
    Ok(Across { scheduled, one_core, floor, core_each, node, node_one_core, pipelined, mib })
}

/// 1 MiB round trips across processes: (invoke, raw ping-pong of the same bytes).
pub async fn mib(remote: &Host, scale: u64) -> Result<(Figure, Figure)> {
    invoke_and_raw(remote, (100 / scale).max(10), 1 << 20, None).await
}

/// CPU time of process `pid` (`self` for this one) so far, in ms: utime + stime of
/// `/proc/<pid>/stat`, all its threads, living or ended. Those count clock ticks of USER_HZ,
/// which Linux fixes at 100 a second for userspace whatever the kernel's own HZ.
pub(crate) fn cpu_ms(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields from after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').context("a /proc stat line")?.1.split_whitespace().collect();
    let ticks = |at: usize| -> Result<f64> { Ok(fields.get(at).context("a short /proc stat line")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15; after ')' the state, field 3, is at 0.
    Ok((ticks(11)? + ticks(12)?) * 10.0)
}

/// CPU time of each thread process `pid` has now, in ns, by thread id: the first field of
/// `/proc/<pid>/task/<tid>/schedstat`. Finer than the 10 ms ticks of `stat`; see
/// [`thread_cpu_ms`] for threads that come and go.
fn thread_cpu(pid: &str) -> Result<BTreeMap<String, u64>> {
    let mut threads = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        // A thread may end between the listing and the read: it is simply not counted.
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let nanos = schedstat.split_whitespace().next().context("an empty schedstat")?.parse::<u64>()?;
        threads.insert(task.file_name().to_string_lossy().into_owned(), nanos);
    }
    Ok(threads)
}

/// The ms of CPU the threads of `after` used since `before`: a thread that started in between
/// counts whole; one that ended in between is missed (the ticks of `stat` count it).
fn thread_cpu_ms(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> f64 {
    let nanos: u64 = after.iter().map(|(tid, nanos)| nanos.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum();
    nanos as f64 / 1e6
}

/// What the idle row reports, in ms of CPU per 10 s.
pub struct Idle {
    pub seconds: u64,
    pub host: f64,
    pub children: f64,
    /// The same from the threads' `schedstat`.
    pub host_fine: f64,
    pub children_fine: f64,
    pub processes: usize,
}

/// The idle row: CPU time of the host (this process) and of its children over `seconds` of
/// idle, with the bench extension active, two in-process and two child-process frames open,
/// and an isolated extension (`hello`) running in its own process.
pub async fn idle_cpu(artifacts: &Path, seconds: u64) -> Result<Idle> {
    let host = Host::new(config(artifacts));
    let figures = async {
        host.load(library(artifacts, "bench"))?;
        host.load(library(artifacts, "hello"))?;
        host.set_isolated("hello", true)?;
        host.activate("bench").await?;
        host.activate("hello").await?;
        for _ in 0..2 {
            host.open_frame().await;
            host.open_child_frame().await?;
        }
        // Let start-up work (loading, first frames) finish before the idle window opens.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = host.inspect().await;
        let mut children: Vec<u32> = snapshot.frames.iter().filter_map(|frame| frame.pid).collect();
        children.extend(snapshot.extensions.iter().filter_map(|extension| extension.pid));
        children.sort_unstable();
        children.dedup();
        let mut pids = vec!["self".to_owned()];
        pids.extend(children.iter().map(u32::to_string));
        let reading = || -> Result<Vec<(f64, BTreeMap<String, u64>)>> {
            pids.iter().map(|pid| Ok((cpu_ms(pid)?, thread_cpu(pid)?))).collect()
        };
        let before = reading()?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = reading()?;
        let per_10s = |ms: f64| ms * 10.0 / seconds as f64;
        let (mut ticks, mut fine) = (Vec::new(), Vec::new());
        for (pid, ((ms_before, threads_before), (ms_after, threads_after))) in
            pids.iter().zip(before.iter().zip(&after))
        {
            ticks.push(per_10s(ms_after - ms_before));
            fine.push(per_10s(thread_cpu_ms(threads_before, threads_after)));
            // Which threads used it, on stderr (not in the table): where to look when it is not ~0.
            for (tid, nanos) in threads_after {
                let used = nanos.saturating_sub(threads_before.get(tid).copied().unwrap_or(0));
                if used >= 1_000_000 {
                    let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
                    eprintln!("idle: {pid}/{tid} ({}) {:.1} ms per 10 s", name.trim(), per_10s(used as f64 / 1e6));
                }
            }
        }
        anyhow::Ok(Idle {
            seconds,
            host: ticks[0],
            children: ticks[1..].iter().sum(),
            host_fine: fine[0],
            children_fine: fine[1..].iter().sum(),
            processes: children.len(),
        })
    }
    .await;
    host.shutdown().await;
    figures
}
