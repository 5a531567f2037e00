//! Hot reload: a library rebuilt under a watching host is loaded, validated and swapped in,
//! with frames kept open; a half-written or broken build never replaces the running one.
//! Every step waits for the host's reload events, never for time to pass.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use extension_host::{ExtensionState, FrameId, Host, HostEvent, LibraryWatcher};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::broadcast::Receiver;

use crate::support::{self, FAILSAFE, Transport, config, host_binary, library, wait_event};

const NAME: &str = "reloadable";
/// Short, to keep the tests quick; nothing depends on its length.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A host running `reloadable` v1 from a copy in a temporary directory, with an in-process
/// frame and a renderer-process frame open, and a watcher on the copy.
struct Dev {
    host: Host,
    events: Receiver<HostEvent>,
    path: PathBuf,
    dir: PathBuf,
    frames: [FrameId; 2],
    _watcher: LibraryWatcher,
}

impl Dev {
    async fn start(transport: Transport) -> Dev {
        let dir = crate::loading::tempdir();
        let path = dir.join("libreloadable.so");
        std::fs::copy(library("reload-v1"), &path).unwrap();
        let host = Host::new(config());
        support::start_library(&host, transport, &path).await;
        let frames = [host.open_frame().await, host.open_child_frame().await.unwrap()];
        let events = host.events();
        let watcher = LibraryWatcher::start(&host, DEBOUNCE).unwrap();
        assert_eq!(watcher.watched(), [(NAME.to_owned(), std::fs::canonicalize(&path).unwrap())]);
        let dev = Dev { host, events, path, dir, frames, _watcher: watcher };
        dev.expect_versions("v1").await;
        dev
    }

    /// Main and the renderer half in each open frame all answer `version`.
    async fn expect_versions(&self, version: &str) {
        let main: String = self.host.invoke(NAME, "version", &(), FAILSAFE).await.unwrap();
        assert_eq!(main, version, "main runs the wrong build");
        for frame in self.frames {
            let answer: String = self.host.invoke_frame(NAME, frame, "frame-version", &(), FAILSAFE).await.unwrap();
            assert_eq!(answer, version, "the renderer half in {frame} runs the wrong build");
        }
        assert_eq!(self.host.frames(), self.frames, "the frames stayed open");
    }

    /// The next reload event: `Ok(version)` for a reload, `Err((reason, kept_old_version))`
    /// for a failed one.
    async fn next_reload(&mut self) -> Result<String, (String, bool)> {
        let event = wait_event(&mut self.events, |event| {
            matches!(event, HostEvent::ExtensionReloaded { .. } | HostEvent::ReloadFailed { .. })
        })
        .await;
        match event {
            HostEvent::ExtensionReloaded { extension, version } => {
                assert_eq!(extension, NAME);
                Ok(version)
            }
            HostEvent::ReloadFailed { extension, reason, kept_old_version } => {
                assert_eq!(extension, NAME);
                Err((reason, kept_old_version))
            }
            _ => unreachable!(),
        }
    }

    /// The next reload event other than a refusal of a half-written file (a copy may pause
    /// longer than the debounce), which must have kept the old version.
    async fn next_settled_reload(&mut self) -> Result<String, (String, bool)> {
        loop {
            match self.next_reload().await {
                Err((reason, kept)) if half_written(&reason) => assert!(kept, "{reason}"),
                other => return other,
            }
        }
    }

    /// Rewrites the library in place (as `cp` does) with the build of `krate`.
    fn rebuild_with(&self, krate: &str) {
        std::fs::copy(library(krate), &self.path).unwrap();
    }

    async fn stop(self) {
        self.host.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn half_written(reason: &str) -> bool {
    reason.contains("is truncated") || reason.contains("changed while it was being copied")
}

async fn a_rebuild_swaps_in_the_new_build_under_open_frames(transport: Transport) {
    let mut dev = Dev::start(transport).await;
    let pid = dev.host.inspect().await.extension(NAME).unwrap().pid;
    let () = dev.host.invoke(NAME, "remember", "from v1", FAILSAFE).await.unwrap();
    assert!(dev.host.store_values(NAME).await.unwrap().contains_key("note"));

    dev.rebuild_with("reload-v2");
    assert_eq!(dev.next_settled_reload().await, Ok("2.0.0".to_owned()));
    dev.expect_versions("v2").await;
    let snapshot = dev.host.inspect().await;
    let extension = snapshot.extension(NAME).unwrap();
    assert_eq!(extension.state, ExtensionState::Active);
    assert_eq!(extension.info.version.to_string(), "2.0.0");
    assert_eq!(extension.frames.len(), 2, "both frames have the new renderer half");
    if transport == Transport::Isolated {
        assert!(extension.pid.is_some() && extension.pid != pid, "an isolated extension restarts its process");
    }
    // The ephemeral store went with the old version; the persisted tier stayed.
    assert!(dev.host.store_values(NAME).await.unwrap().is_empty());
    let kept = dev.host.storage_values(NAME).await.unwrap();
    assert_eq!(kept.get("note").map(|value| rmp_serde::from_slice::<String>(value).unwrap()), Some("from v1".into()));

    // Rebuilt again, as a new file renamed over the old one (as most tools write).
    let fresh = dev.dir.join("libreloadable.so.new");
    std::fs::copy(library("reload-v1"), &fresh).unwrap();
    std::fs::rename(&fresh, &dev.path).unwrap();
    assert_eq!(dev.next_settled_reload().await, Ok("1.0.0".to_owned()));
    dev.expect_versions("v1").await;
    dev.stop().await;
}

#[tokio::test]
async fn a_half_written_library_is_never_loaded() {
    let mut dev = Dev::start(Transport::InProcess).await;
    let v2 = std::fs::read(library("reload-v2")).unwrap();
    let (head, tail) = v2.split_at(v2.len() / 2);

    // The first half of the new build, as a build or copy still under way leaves it.
    std::fs::write(&dev.path, head).unwrap();
    let (reason, kept) = dev.next_reload().await.unwrap_err();
    assert!(half_written(&reason), "{reason}");
    assert!(reason.contains(NAME) && reason.contains("the version loaded before is kept"), "{reason}");
    assert!(kept, "the failure came before the swap");
    dev.expect_versions("v1").await;

    // Completed: now it loads.
    std::fs::OpenOptions::new().append(true).open(&dev.path).unwrap().write_all(tail).unwrap();
    // (Events about the half-written file may still be on their way: they are refused too.)
    assert_eq!(dev.next_settled_reload().await, Ok("2.0.0".to_owned()));
    dev.expect_versions("v2").await;
    dev.stop().await;
}

#[tokio::test]
async fn a_broken_new_build_leaves_the_old_version_answering() {
    let mut dev = Dev::start(Transport::InProcess).await;

    // Not a library at all.
    std::fs::write(&dev.path, b"error: could not compile `reloadable`\n").unwrap();
    let (reason, kept) = dev.next_settled_reload().await.unwrap_err();
    assert!(reason.contains("extension `reloadable` was not reloaded"), "{reason}");
    assert!(reason.contains("it is not a shared library"), "{reason}");
    assert!(kept);
    dev.expect_versions("v1").await;

    // A library, but of another extension.
    dev.rebuild_with("hello");
    let (reason, kept) = dev.next_settled_reload().await.unwrap_err();
    assert!(reason.ends_with("is now extension `hello`"), "{reason}");
    assert!(kept);
    dev.expect_versions("v1").await;
    assert_eq!(dev.host.extensions(), [NAME], "nothing else was loaded");

    // A build that loads but fails to activate: swapped in, so the extension stops, and says so.
    dev.rebuild_with("reload-broken");
    let (reason, kept) = dev.next_settled_reload().await.unwrap_err();
    assert!(!kept, "the failure came after the swap");
    assert!(reason.contains("this build is broken on purpose"), "{reason}");
    let Some(ExtensionState::Failed(state)) = dev.host.state(NAME) else { panic!("{:?}", dev.host.state(NAME)) };
    assert!(state.contains("this build is broken on purpose"), "{state}");
    assert_eq!(dev.host.frames(), dev.frames, "the frames stayed open");

    // The next good build runs again, in main and in both frames.
    dev.rebuild_with("reload-v2");
    assert_eq!(dev.next_settled_reload().await, Ok("2.0.0".to_owned()));
    dev.expect_versions("v2").await;
    dev.stop().await;
}

/// Reads a child's output lines into a channel, so the test can wait for a log line while it
/// talks to the console.
fn lines_of(output: impl AsyncRead + Unpin + Send + 'static) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

async fn wait_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, matches: impl Fn(&str) -> bool) {
    wait_line_within(FAILSAFE, lines, matches).await;
}

/// [`wait_line`] with a failsafe of `failsafe` (longer where a build comes first).
async fn wait_line_within(
    failsafe: Duration,
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    matches: impl Fn(&str) -> bool,
) {
    let found = tokio::time::timeout(failsafe, async {
        while let Some(line) = lines.recv().await {
            if matches(&line) {
                return;
            }
        }
        panic!("the host exited");
    });
    found.await.expect("the expected line arrives");
}

/// What the console answers to `invoke NAME CHANNEL JSON`.
async fn console_invoke(
    stdin: &mut tokio::process::ChildStdin,
    stdout: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    command: &str,
) -> String {
    stdin.write_all(format!("invoke {command}\n").as_bytes()).await.unwrap();
    let found = tokio::time::timeout(FAILSAFE, async {
        while let Some(line) = stdout.recv().await {
            if let Some(reply) = line.strip_prefix("reply: ") {
                return reply.to_owned();
            }
            assert!(!line.starts_with("error"), "{line}");
        }
        panic!("the host exited");
    });
    found.await.expect("the console answers")
}

/// `command` with its standard streams piped, info logs without colour, a data directory of
/// its own, and killed when dropped.
fn piped(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    command
        .env("XDG_DATA_HOME", crate::support::fresh_data_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
}

#[tokio::test]
async fn host_run_watch_reloads_a_rebuilt_library() {
    let dir = crate::loading::tempdir();
    let path = dir.join("libreloadable.so");
    std::fs::copy(library("reload-v1"), &path).unwrap();
    let mut child = piped(
        tokio::process::Command::new(host_binary())
            .args(["run", "--watch", "--console", "--child-frames", "1"])
            .arg(&path),
    )
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = lines_of(child.stdout.take().unwrap());
    let mut logs = lines_of(child.stderr.take().unwrap());
    wait_line(&mut logs, |line| line.contains("watching for rebuilds") && line.contains(NAME)).await;
    assert_eq!(console_invoke(&mut stdin, &mut stdout, "reloadable version null").await, "\"v1\"");

    std::fs::copy(library("reload-v2"), &path).unwrap();
    wait_line(&mut logs, |line| line.contains(" reloaded ") && line.contains("extension=reloadable")).await;
    assert_eq!(console_invoke(&mut stdin, &mut stdout, "reloadable version null").await, "\"v2\"");

    stdin.write_all(b"quit\n").await.unwrap();
    assert!(child.wait().await.unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Only a guard against a hung build: nothing waits for it to pass.
const BUILD_FAILSAFE: Duration = Duration::from_secs(600);

#[tokio::test]
async fn xtask_dev_rebuilds_a_changed_crate_and_the_host_reloads_it() {
    let dir = crate::loading::tempdir().join("dev_ext");
    let xtask = crate::support::artifacts().join("xtask");
    let output = std::process::Command::new(&xtask)
        .args(["new-extension", "--dir"])
        .arg(&dir)
        .args(["--", "dev_ext"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Sharing this build's target directory (and so its compiled dependencies and host).
    let target = crate::support::artifacts().parent().unwrap().to_owned();
    let mut child = piped(
        tokio::process::Command::new(&xtask)
            .arg("dev")
            .arg(&dir)
            .args(["--", "--console"])
            .env("CARGO_TARGET_DIR", &target),
    )
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = lines_of(child.stdout.take().unwrap());
    let mut logs = lines_of(child.stderr.take().unwrap());
    wait_line_within(BUILD_FAILSAFE, &mut logs, |line| line.starts_with("dev: watching")).await;
    wait_line(&mut logs, |line| line.contains("watching for rebuilds") && line.contains("dev_ext")).await;
    assert_eq!(console_invoke(&mut stdin, &mut stdout, "dev_ext greet \"you\"").await, "\"Hello, you!\"");

    // The author edits the code; nobody runs cargo.
    let source = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&source).unwrap();
    assert!(code.contains("format!(\"Hello, {name}!\")"), "the template greets");
    std::fs::write(&source, code.replace("format!(\"Hello, {name}!\")", "format!(\"Hi, {name}!\")")).unwrap();
    wait_line_within(BUILD_FAILSAFE, &mut logs, |line| {
        line.contains(" reloaded ") && line.contains("extension=dev_ext")
    })
    .await;
    assert_eq!(console_invoke(&mut stdin, &mut stdout, "dev_ext greet \"you\"").await, "\"Hi, you!\"");

    stdin.write_all(b"quit\n").await.unwrap();
    assert!(child.wait().await.unwrap().success(), "xtask dev ends with the host");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

same_instance!(a_rebuild_swaps_in_the_new_build_under_open_frames,);
