//! Shared test plumbing: building the extension libraries once, starting hosts, and waiting
//! for what extensions report (always on an event, with a generous failsafe deadline).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use extension_host::{Host, HostConfig, LogRecord, ObservedBroadcast};
use probe_protocol::Pong;
use tokio::sync::broadcast::Receiver;

/// Every crate the suite loads or runs, built once per test run.
const CRATES: &[&str] = &[
    "host",
    "hello",
    "hello-twin",
    "gluon",
    "probe",
    "probe-twin",
    "cycler",
    "fail-activate",
    "panic-activate",
    "no-descriptor",
    "wrong-abi",
    "reload-v1",
    "reload-v2",
    "reload-broken",
    "rogue-child",
    "swarm",
    "adversary",
    "sizes",
    "keeper",
    "keeper-twin",
    "web-bad-table",
    "webprobe",
    "xtask",
];

/// Only a guard against a hung test: nothing waits for it to pass.
pub const FAILSAFE: Duration = Duration::from_secs(20);

/// The directory holding the built libraries and the `host` binary (the test's own profile).
pub fn artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary has a path");
        // target/<profile>/deps/suite-<hash>
        let dir =
            exe.parent().and_then(Path::parent).expect("the test binary sits in target/<profile>/deps").to_owned();
        let profile = match dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "--profile", &profile]);
        for name in CRATES {
            command.args(["-p", name]);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the extension libraries failed");
        dir
    })
}

/// Path of the built library of crate `name`.
pub fn library(name: &str) -> PathBuf {
    artifacts().join(extension_host::testing::library_file_name(name))
}

/// `count` distinct extensions from one build of the `swarm` fixture: copies of its library
/// with the placeholder name overwritten (`swarm-001`, `swarm-002`, ...). Returns the paths.
pub fn swarm(count: usize) -> Vec<PathBuf> {
    const PLACEHOLDER: &[u8] = b"swarm-000";
    let original = std::fs::read(library("swarm")).expect("the swarm library was built");
    let dir = crate::loading::tempdir();
    (1..=count)
        .map(|n| {
            let name = format!("swarm-{n:03}");
            assert_eq!(name.len(), PLACEHOLDER.len(), "at most 999 copies");
            let mut bytes = original.clone();
            let mut stamped = 0;
            let mut at = 0;
            while let Some(found) = bytes[at..].windows(PLACEHOLDER.len()).position(|w| w == PLACEHOLDER) {
                bytes[at + found..at + found + PLACEHOLDER.len()].copy_from_slice(name.as_bytes());
                at += found + PLACEHOLDER.len();
                stamped += 1;
            }
            assert!(stamped > 0, "the placeholder name is in the library");
            let path = dir.join(extension_host::testing::library_file_name(&name));
            std::fs::write(&path, bytes).expect("the copy is written");
            path
        })
        .collect()
}

pub fn host_binary() -> PathBuf {
    artifacts().join(format!("host{}", std::env::consts::EXE_SUFFIX))
}

/// The real `host run --console` binary with `args` and the libraries of `crates`; its stdin
/// and stdout are piped, and it is killed when dropped.
pub fn spawn_console(args: &[&str], crates: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(host_binary())
        .env("XDG_DATA_HOME", fresh_data_dir())
        .args(["run", "--console"])
        .args(args)
        .args(crates.iter().map(|name| library(name)))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the host binary starts")
}

pub fn config() -> HostConfig {
    let mut config = HostConfig {
        activate_timeout: Duration::from_secs(10),
        deactivate_timeout: Duration::from_millis(500),
        max_log_level: tracing_level(),
        // Child processes run the real `host` binary (the test binary is not one).
        child_program: host_binary(),
        ..HostConfig::default()
    };
    // Persisted data of its own for every host (never the user's; created on a first write).
    config.storage.data_dir = fresh_data_dir();
    config
}

/// A data directory no other host of this run uses (not created yet).
pub fn fresh_data_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    suite_temp_root().join(format!("data-{n}"))
}

/// This run's directory under the system temp dir (`host-suite-PID`), where every test's
/// directories go. A test harness has no hook at its end, and the libraries the reload tests
/// copy come to hundreds of megabytes a run, so the first call removes what runs that have
/// ended left behind (theirs, by a PID no process has now) instead.
pub fn suite_temp_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let temp = std::env::temp_dir();
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|name| name.strip_prefix("host-suite-")) else { continue };
            // `host-suite-PID`, and the `host-suite-PID-N` and `host-suite-data-PID-N` of older runs.
            let pid = rest.trim_start_matches("data-").split('-').next().unwrap_or_default();
            if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let root = temp.join(format!("host-suite-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

fn tracing_level() -> extension_host::LevelFilter {
    extension_host::LevelFilter::INFO
}

/// Where the halves of a conformance test run: every routing path the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Main and every frame's renderer half in one instance in the host's process.
    InProcess,
    /// Main in the host's process, each frame's renderer halves in a renderer process.
    ChildProcess,
    /// Main and the in-process frames' renderer halves in one instance in the extension's own
    /// child process (`Host::set_isolated`).
    Isolated,
}

/// Opens `count` frames of the transport's kind.
pub async fn open_frames(host: &Host, transport: Transport, count: usize) {
    for _ in 0..count {
        open_frame(host, transport).await;
    }
}

/// Opens one frame of the transport's kind (an isolated extension's renderer halves run with
/// its main, in its process, for in-process frames).
pub async fn open_frame(host: &Host, transport: Transport) -> extension_host::FrameId {
    match transport {
        Transport::InProcess | Transport::Isolated => host.open_frame().await,
        Transport::ChildProcess => host.open_child_frame().await.expect("a renderer process starts"),
    }
}

/// A host running `crates` on `transport`, with `frames` frames of the transport's kind open.
pub async fn host_with_frames(transport: Transport, crates: &[&str], frames: usize) -> Host {
    let host = host_for(transport, crates).await;
    open_frames(&host, transport, frames).await;
    host
}

/// A host running `crates` on `transport`: the one way a conformance test builds its host.
pub async fn host_for(transport: Transport, crates: &[&str]) -> Host {
    host_from(transport, config(), crates).await
}

/// A host with `config` running `crates` on `transport`.
pub async fn host_from(transport: Transport, config: HostConfig, crates: &[&str]) -> Host {
    let host = Host::new(config);
    for name in crates {
        start(&host, transport, name).await;
    }
    host
}

/// Loads crate `name` into `host` and activates it on `transport` (isolated first, if that is
/// the transport: isolation is chosen before activation).
pub async fn start(host: &Host, transport: Transport, name: &str) {
    start_library(host, transport, &library(name)).await;
}

/// Loads the library at `path` into `host` and activates it on `transport`.
pub async fn start_library(host: &Host, transport: Transport, path: &Path) {
    let info = host.load(path).expect("the library loads");
    if transport == Transport::Isolated {
        host.set_isolated(&info.name, true).expect("a loaded extension can be isolated");
    }
    host.activate(&info.name).await.expect("the extension activates");
    // The transport is what it says: an isolated main half runs in a process of its own.
    let snapshot = host.inspect().await;
    let extension = snapshot.extension(&info.name).expect("a loaded extension is inspected");
    let in_own_process = extension.isolated && extension.pid.is_some();
    assert_eq!(in_own_process, transport == Transport::Isolated, "{transport:?}: {extension:?}");
}

/// Runs each named `async fn name(transport: Transport)` three times: with in-process frames,
/// with frames in renderer processes, and isolated (main and its in-process frames in the
/// extension's own process). One conformance suite, every transport.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Transport::InProcess).await
                }
            )*
        }
        mod child_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Transport::ChildProcess).await
                }
            )*
        }
        mod isolated {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Transport::Isolated).await
                }
            )*
        }
    };
}

/// Runs each named `async fn name(transport: Transport)` on the two placements of an
/// extension's main half, where main and the in-process frames' renderer halves share one
/// instance: in the host's process (where requests between them stay in the instance) and
/// isolated (where they make a round trip through the host). For what only holds within one
/// instance (several renderer halves in it, a frame's handle outliving its half), and for what
/// is about main's placement itself (its mailbox, its store, its persisted tier, its reload),
/// where a renderer process adds nothing; everything else is `conformance!`.
macro_rules! same_instance {
    ($($name:ident),* $(,)?) => {
        mod same_instance_in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Transport::InProcess).await
                }
            )*
        }
        mod same_instance_isolated {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Transport::Isolated).await
                }
            )*
        }
    };
}

/// A host with the given crates loaded and activated in process.
pub async fn host_with(crates: &[&str]) -> Host {
    host_for(Transport::InProcess, crates).await
}

/// Waits for a log record of `extension` matching `matches`.
pub async fn wait_log(logs: &mut Receiver<LogRecord>, extension: &str, matches: impl Fn(&str) -> bool) -> LogRecord {
    let found = tokio::time::timeout(FAILSAFE, async {
        loop {
            match logs.recv().await {
                Ok(record) if record.extension == extension && matches(&record.message) => return record,
                Ok(_) => {}
                Err(error) => panic!("log stream ended: {error}"),
            }
        }
    });
    found.await.unwrap_or_else(|_| panic!("no matching log record from `{extension}`"))
}

/// Waits for the next host event matching `matches`.
pub async fn wait_event(
    events: &mut Receiver<extension_host::HostEvent>,
    matches: impl Fn(&extension_host::HostEvent) -> bool,
) -> extension_host::HostEvent {
    let found = tokio::time::timeout(FAILSAFE, async {
        loop {
            match events.recv().await {
                Ok(event) if matches(&event) => return event,
                Ok(_) => {}
                Err(error) => panic!("event stream ended: {error}"),
            }
        }
    });
    found.await.expect("the host reports the event")
}

/// Waits for log records of `extension` with each of the `expected` messages, in any order.
pub async fn wait_logs(logs: &mut Receiver<LogRecord>, extension: &str, expected: &[String]) {
    let mut missing: std::collections::BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let found = tokio::time::timeout(FAILSAFE, async {
        while !missing.is_empty() {
            match logs.recv().await {
                Ok(record) if record.extension == extension => {
                    missing.remove(record.message.as_str());
                }
                Ok(_) => {}
                Err(error) => panic!("log stream ended: {error}"),
            }
        }
    });
    if found.await.is_err() {
        panic!("missing log records from `{extension}`: {missing:?}");
    }
}

/// Collects the next `count` pongs of `extension` (ignoring other traffic).
pub async fn pongs(broadcasts: &mut Receiver<ObservedBroadcast>, extension: &str, count: usize) -> Vec<Pong> {
    let collected = tokio::time::timeout(FAILSAFE, async {
        let mut pongs = Vec::new();
        while pongs.len() < count {
            match broadcasts.recv().await {
                Ok(seen) if seen.extension == extension && seen.channel == probe_protocol::PONG.name() => {
                    pongs.push(seen.value::<Pong>().expect("a pong decodes"));
                }
                Ok(_) => {}
                Err(error) => panic!("broadcast stream ended: {error}"),
            }
        }
        pongs
    });
    collected.await.unwrap_or_else(|_| panic!("fewer than {count} pongs from `{extension}`"))
}

/// Collects exactly `expected` pongs of `extension`, then pings `barrier` (answered by
/// `halves` halves) and checks that nothing else arrives first: a duplicate or stray delivery
/// caused by the earlier traffic would have been sent before the barrier.
pub async fn expect_pongs(
    host: &Host,
    broadcasts: &mut Receiver<ObservedBroadcast>,
    extension: &str,
    expected: usize,
    halves: usize,
) -> Vec<Pong> {
    let collected = pongs(broadcasts, extension, expected).await;
    host.broadcast(extension, probe_protocol::PING.name(), &probe_protocol::Ping { tag: "barrier".into() })
        .expect("the barrier is sent");
    let mut barriers = 0;
    while barriers < halves {
        let pong = pongs(broadcasts, extension, 1).await.remove(0);
        assert_eq!(pong.tag, "barrier", "an unexpected pong arrived after the {expected} expected ones");
        barriers += 1;
    }
    collected
}

/// A host whose child processes are the `rogue-child` fixture, misbehaving as `mode`, with no
/// crash budget: a frame whose child is cut off stays down, so its first crash is the one the
/// test reads.
pub fn rogue_host(mode: &str) -> Host {
    let mut config = config();
    config.child_program = artifacts().join("rogue-child");
    config.child_args = vec![mode.into()];
    config.crash_budget = extension_host::CrashBudget { crashes: 0, window: Duration::from_secs(300) };
    Host::new(config)
}

/// Opens a child frame (probe active) on a [`rogue_host`] misbehaving as `mode` and checks
/// that the host cut the child off: the frame crashed, not to restart, for a reason containing
/// `expected`; inspect shows it stopped; and nothing the child sent reached anyone (a ping
/// barrier after it is answered by main alone). Shuts the host down.
pub async fn assert_rogue_child_cut_off(mode: &str, expected: &str) {
    use extension_host::HostEvent;
    let host = rogue_host(mode);
    host.load(library("probe")).unwrap();
    host.activate("probe").await.unwrap();
    let mut events = host.events();
    let mut seen = host.broadcasts();
    let frame = host.open_child_frame().await.unwrap();
    let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { .. })).await;
    let HostEvent::FrameCrashed { reason, restarting, .. } = crashed else { unreachable!() };
    assert!(reason.contains(expected) && !restarting, "{mode}: {reason}");
    let problem = host.inspect().await.frame(frame.0).unwrap().problem.clone().unwrap();
    assert!(problem.contains("stopped"), "{mode}: {problem}");
    // The host goes on; what the rogue child sent reached no one (only main answers the barrier).
    assert!(expect_pongs(&host, &mut seen, "probe", 0, 1).await.is_empty());
    host.shutdown().await;
}
