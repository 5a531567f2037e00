//! A test harness for extension authors: load your extension into a real host inside your own
//! `cargo test`, open frames, drive broadcasts and invokes, read the store, and assert, in a
//! few lines (the model is VS Code's extension test harness).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use extension_host::testing::TestHost;
//!
//! // The library `cargo test` built for this crate (its `[lib]` has `crate-type = ["cdylib", "rlib"]`).
//! let mut test = TestHost::start(TestHost::library_of(env!("CARGO_PKG_NAME"))).await?;
//! test.open_frame().await;
//! let greeting: String = test.invoke("greet", &"you").await?;
//! assert_eq!(greeting, "Hello, you!");
//! test.broadcast("initialize", &"id-1")?;
//! test.wait_log("main got `initialize`").await?;
//!
//! // Acting as main towards a frame: its renderer half's handlers and what its listeners get.
//! let frame = test.open_child_frame().await?; // a renderer process: see `TestHost::child_program`
//! let title: String = test.invoke_frame(frame, "title", &()).await?;
//! test.broadcast("theme", &"dark")?;
//! let theme = test.next_received::<String>(frame, "theme").await?;
//! assert_eq!(theme.value, "dark");
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use extension_api::{Event, FrameId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{HostError, LoadError};
use crate::events::{LogRecord, ObservedBroadcast};
use crate::{Host, HostConfig, InvokeError, Sender};

/// How long a harness call waits for something to happen before it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Why a harness call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// The extension's library did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The host refused a call.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A request failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// Nothing matching arrived within [`WAIT`].
    #[error("nothing matching {what} within {WAIT:?}")]
    TimedOut {
        /// What was waited for (a log message, a broadcast's channel).
        what: String,
    },
    /// A value the extension sent is not of the type asked for.
    #[error("the value of `{what}` does not decode: {reason}")]
    Decode {
        /// The channel or key it came on.
        what: String,
        /// What the decoder said.
        reason: String,
    },
    /// The harness's buffer of log records or broadcasts overflowed.
    #[error("{missed} {what} were missed: the test read them too slowly (the harness keeps 4096)")]
    Lagged {
        /// Log records or broadcasts.
        what: &'static str,
        /// How many were lost.
        missed: u64,
    },
    /// No `host` binary to run child processes with was found or built.
    #[error("no program for child processes (renderer processes, isolated extensions): {reason}")]
    ChildProgram {
        /// Where the harness looked, and what went wrong.
        reason: String,
    },
    /// The persisted tier's fresh directory could not be created.
    #[error("cannot create a data directory for the persisted tier: {reason}")]
    DataDir {
        /// What the operating system said.
        reason: String,
    },
}

/// The environment variable naming the program [`TestHost`] starts child processes with (a
/// `host` binary), instead of finding or building one: see [`TestHost::child_program`].
pub const CHILD_PROGRAM_VAR: &str = "EXTENSION_HOST_CHILD";

/// The file cargo writes the library of crate `name` to: `lib<name>.so` on Linux (a `-` in
/// the name becomes `_`, as cargo spells the library's target).
pub fn library_file_name(name: &str) -> String {
    format!("{}{}{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"), std::env::consts::DLL_SUFFIX)
}

/// One extension running in a host of its own, with its log and broadcasts recorded.
pub struct TestHost {
    host: Host,
    name: String,
    logs: Receiver<LogRecord>,
    broadcasts: Receiver<ObservedBroadcast>,
    /// Why child processes cannot start, when no child program was found.
    child_problem: Option<String>,
    /// [`TestHost::start`]'s data directory for the persisted tier: fresh, removed on drop.
    _data: Option<crate::private_dir::PrivateDir>,
}

impl TestHost {
    /// Where `cargo` put the library of crate `name`, built in the same profile as the running
    /// test: `target/<profile>/lib<name>.so`, or `target/<profile>/deps/lib<name>.so`, where
    /// `cargo test` leaves the library of the crate under test.
    pub fn library_of(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        // target/<profile>/deps/<test binary>
        let deps = exe.parent().map(Path::to_owned).unwrap_or_default();
        let file = library_file_name(name);
        // `cargo test` refreshes the one in `deps/`; a `cargo build` copy may be older.
        let candidates = [deps.join(&file), deps.parent().map(|profile| profile.join(&file)).unwrap_or_default()];
        let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        candidates
            .iter()
            .filter(|path| path.exists())
            .max_by_key(|path| modified(path))
            .cloned()
            .unwrap_or_else(|| deps.join(file))
    }

    /// Loads and activates the extension at `library`, with no frame open yet. Its log records
    /// down to DEBUG are kept for [`TestHost::wait_log`]. Child processes (from
    /// [`TestHost::open_child_frame`], or isolation) run [`TestHost::child_program`]. The
    /// persisted tier (`storage()`) starts empty, in a fresh directory removed with the
    /// `TestHost` (never the user's data directory).
    pub async fn start(library: impl AsRef<Path>) -> Result<TestHost, TestError> {
        let mut config = HostConfig { max_log_level: crate::LevelFilter::DEBUG, ..HostConfig::default() };
        let data = crate::private_dir::PrivateDir::create()
            .map_err(|error| TestError::DataDir { reason: error.to_string() })?;
        config.storage.data_dir = data.path().to_owned();
        // It may run cargo: off the test's runtime thread.
        let found = tokio::task::spawn_blocking(TestHost::child_program).await;
        let found = found.unwrap_or_else(|error| Err(TestError::ChildProgram { reason: error.to_string() }));
        let child_problem = match found {
            Ok(program) => {
                config.child_program = program;
                None
            }
            Err(TestError::ChildProgram { reason }) => Some(reason),
            Err(other) => Some(other.to_string()),
        };
        let mut test = TestHost::start_with(library, config).await?;
        test.child_problem = child_problem;
        test._data = Some(data);
        Ok(test)
    }

    /// [`TestHost::start`] with a configuration of your own (timeouts, child program, ...),
    /// used as it is: to use child processes, set `child_program`, for example to
    /// [`TestHost::child_program`] (the default, the running executable, is the test binary).
    pub async fn start_with(library: impl AsRef<Path>, config: HostConfig) -> Result<TestHost, TestError> {
        let host = Host::new(config);
        let logs = host.logs();
        let broadcasts = host.broadcasts();
        let name = host.load(library)?.name;
        host.activate(&name).await?;
        Ok(TestHost { host, name, logs, broadcasts, child_problem: None, _data: None })
    }

    /// The `host` binary to start child processes with, found once per test process:
    /// 1. the program named by the [`CHILD_PROGRAM_VAR`] environment variable
    ///    (`EXTENSION_HOST_CHILD`), if it is set;
    /// 2. else, under `cargo test`, the `host` binary of this `host` crate, built with cargo
    ///    (`--manifest-path` of this crate, into the test's target directory and profile): it
    ///    works from any crate depending on `host`, and keeps the binary as fresh as the
    ///    library the test links;
    /// 3. else a `host` binary beside the test's `target/<profile>/` directory.
    ///
    /// Each failure says what was tried.
    pub fn child_program() -> Result<PathBuf, TestError> {
        static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let found = FOUND.get_or_init(|| {
            let exe = std::env::current_exe().map_err(|error| format!("the test's own path is unknown: {error}"))?;
            find_child_program(std::env::var_os(CHILD_PROGRAM_VAR), std::env::var_os("CARGO"), &exe)
        });
        found.clone().map_err(|reason| TestError::ChildProgram { reason })
    }

    /// The host itself, for anything the harness does not wrap.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The extension's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens an in-process frame: the extension's renderer half starts in it.
    pub async fn open_frame(&self) -> FrameId {
        self.host.open_frame().await
    }

    /// Opens a frame in a renderer process of its own (see [`TestHost::child_program`]): the
    /// extension's renderer half starts there.
    pub async fn open_child_frame(&self) -> Result<FrameId, TestError> {
        if let Some(reason) = &self.child_problem {
            return Err(TestError::ChildProgram { reason: reason.clone() });
        }
        Ok(self.host.open_child_frame().await?)
    }

    /// Invokes the handler on `channel` of the renderer half in `frame` (one it registered with
    /// `Renderer::handle`), as main would with `invoke_frame`; the handler sees
    /// [`Sender::Host`] as the sender.
    pub async fn invoke_frame<Req, Resp>(&self, frame: FrameId, channel: &str, value: &Req) -> Result<Resp, InvokeError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.host.invoke_frame(&self.name, frame, channel, value, WAIT).await
    }

    /// Invokes main's handler on `channel`, as a renderer would.
    pub async fn invoke<Req, Resp>(&self, channel: &str, value: &Req) -> Result<Resp, InvokeError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.host.invoke(&self.name, channel, value, WAIT).await
    }

    /// Broadcasts `value` on `channel`, as a renderer would.
    pub fn broadcast<T: Serialize + ?Sized>(&self, channel: &str, value: &T) -> Result<(), TestError> {
        Ok(self.host.broadcast(&self.name, channel, value)?)
    }

    /// The next broadcast on `channel` sent by the extension (main or a frame; not the test's
    /// own `broadcast`s), decoded as `T`.
    pub async fn next_broadcast<T: DeserializeOwned>(&mut self, channel: &str) -> Result<T, TestError> {
        let seen = self.next_observed(channel, |seen| seen.sender() != Sender::Host).await?;
        decode(channel, &seen)
    }

    /// The next broadcast on `channel` sent by the renderer half in `frame`, decoded as `T`.
    pub async fn next_broadcast_from<T: DeserializeOwned>(
        &mut self,
        frame: FrameId,
        channel: &str,
    ) -> Result<T, TestError> {
        let seen = self.next_observed(channel, |seen| seen.sender() == Sender::Frame(frame)).await?;
        decode(channel, &seen)
    }

    /// The next broadcast on `channel` that the host routed to the renderer half in `frame`,
    /// from whichever sender (main, a frame, the frame itself, or the test's own
    /// [`TestHost::broadcast`]), decoded as `T` with its sender. It says where the broadcast
    /// was routed, not that a listener ran: a frame without a listener on `channel` counts,
    /// and so does one whose full mailbox dropped it (inspect counts those drops).
    pub async fn next_received<T: DeserializeOwned>(
        &mut self,
        frame: FrameId,
        channel: &str,
    ) -> Result<Event<T>, TestError> {
        let seen = self.next_observed(channel, |seen| seen.reaches(frame)).await?;
        Ok(Event { sender: seen.sender(), value: decode(channel, &seen)? })
    }

    /// The next broadcast of the extension on `channel` that `wanted` accepts; the others on
    /// the way are skipped.
    async fn next_observed(
        &mut self,
        channel: &str,
        wanted: impl Fn(&ObservedBroadcast) -> bool,
    ) -> Result<ObservedBroadcast, TestError> {
        let name = self.name.clone();
        let wait = async {
            loop {
                match self.broadcasts.recv().await {
                    Ok(seen) if seen.extension == name && seen.channel == channel && wanted(&seen) => {
                        return Ok(seen);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => return Err(TestError::Lagged { what: "broadcasts", missed }),
                    Err(RecvError::Closed) => return Err(TestError::TimedOut { what: "a broadcast".into() }),
                }
            }
        };
        let timed_out = || TestError::TimedOut { what: format!("a broadcast on `{channel}`") };
        tokio::time::timeout(WAIT, wait).await.map_err(|_| timed_out())?
    }

    /// The next log record of the extension whose message contains `text`.
    pub async fn wait_log(&mut self, text: &str) -> Result<LogRecord, TestError> {
        let name = self.name.clone();
        let wait = async {
            loop {
                match self.logs.recv().await {
                    Ok(record) if record.extension == name && record.message.contains(text) => return Ok(record),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => return Err(TestError::Lagged { what: "log records", missed }),
                    Err(RecvError::Closed) => return Err(TestError::TimedOut { what: "a log record".into() }),
                }
            }
        };
        let timed_out = || TestError::TimedOut { what: format!("a log record containing {text:?}") };
        tokio::time::timeout(WAIT, wait).await.map_err(|_| timed_out())?
    }

    /// The value of `key` in the extension's store (main's replica).
    pub async fn store<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, TestError> {
        value_of(&self.host.store_values(&self.name).await?, key)
    }

    /// The value of `key` in the extension's persisted tier (main's replica: durable writes).
    pub async fn storage<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, TestError> {
        value_of(&self.host.storage_values(&self.name).await?, key)
    }

    /// Deactivates the extension, then closes everything.
    pub async fn stop(self) -> Result<crate::DeactivateReport, TestError> {
        let report = self.host.deactivate(&self.name).await?;
        self.host.shutdown().await;
        Ok(report)
    }
}

fn decode<T: DeserializeOwned>(channel: &str, seen: &ObservedBroadcast) -> Result<T, TestError> {
    seen.value().map_err(|error| TestError::Decode { what: channel.to_owned(), reason: error.to_string() })
}

/// [`TestHost::child_program`]'s search, given the variable's value, `$CARGO`, and the test's
/// own path (`target/<profile>/deps/<test>`).
fn find_child_program(named: Option<OsString>, cargo: Option<OsString>, exe: &Path) -> Result<PathBuf, String> {
    if let Some(named) = named {
        let path = PathBuf::from(&named);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{CHILD_PROGRAM_VAR} is `{}`, which is not a file", path.display()))
        };
    }
    let profile_dir = exe.parent().and_then(Path::parent);
    let mut tried = Vec::new();
    if let Some(cargo) = cargo {
        match build_host(&cargo, profile_dir) {
            Ok(program) => return Ok(program),
            Err(problem) => tried.push(problem),
        }
    } else {
        tried.push("not running under cargo (no $CARGO), so `host` was not built".to_owned());
    }
    let beside = profile_dir.map(|dir| dir.join(format!("host{}", std::env::consts::EXE_SUFFIX)));
    match beside {
        Some(path) if path.is_file() => return Ok(path),
        Some(path) => tried.push(format!("there is no `{}`", path.display())),
        None => tried.push(format!("`{}` is not inside a target directory", exe.display())),
    }
    Err(format!(
        "{}. Set {CHILD_PROGRAM_VAR} to a `host` binary (`cargo build --bin host --manifest-path {}/Cargo.toml` builds one)",
        tried.join("; "),
        env!("CARGO_MANIFEST_DIR")
    ))
}

/// Builds the `host` binary of this very `host` crate (its own manifest, so it works whether
/// the crate under test has `host` as a dependency or a dev-dependency, from a path, git or a
/// registry), into the test's own target directory, in its profile. Returns the binary cargo
/// reports.
fn build_host(cargo: &OsString, profile_dir: Option<&Path>) -> Result<PathBuf, String> {
    let profile = match profile_dir.and_then(Path::file_name).and_then(|name| name.to_str()) {
        Some("release") => "release",
        _ => "dev",
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "--bin", "host", "--message-format=json-render-diagnostics"])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null());
    // target/<profile>/: its parent is the target directory.
    if let Some(target) = profile_dir.and_then(Path::parent) {
        command.arg("--target-dir").arg(target);
    }
    tracing::debug!("building the child program: {command:?}");
    let output = command.output().map_err(|error| format!("`cargo build` of `host` did not start: {error}"))?;
    if !output.status.success() {
        let errors = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = errors.lines().filter(|line| !line.trim().is_empty()).take(5).collect();
        return Err(format!(
            "`cargo build --bin host --manifest-path {}` failed ({}): {}",
            manifest.display(),
            output.status,
            last.join(" / ")
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == "host")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "`cargo build` of `host` reported no `host` executable".to_owned())
}

/// `key`'s value among `values` (MessagePack), decoded as `T`.
fn value_of<T: DeserializeOwned>(
    values: &std::collections::BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<Option<T>, TestError> {
    values
        .get(key)
        .map(|bytes| {
            extension_api::wire::decode(bytes)
                .map_err(|error| TestError::Decode { what: key.to_owned(), reason: error.to_string() })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_file_name_is_cargos_for_the_crate() {
        assert_eq!(library_file_name("probe-twin"), "libprobe_twin.so");
        assert_eq!(library_file_name("hello"), "libhello.so");
    }

    #[test]
    fn a_named_child_program_must_be_a_file() {
        let exe = Path::new("/nowhere/target/debug/deps/test");
        let missing = find_child_program(Some("/no/such/host".into()), None, exe).unwrap_err();
        assert_eq!(missing, "EXTENSION_HOST_CHILD is `/no/such/host`, which is not a file");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(find_child_program(Some(exe.clone().into()), None, &exe).unwrap(), exe);
    }

    #[test]
    fn without_cargo_or_a_binary_beside_the_tests_the_error_says_what_was_tried() {
        let exe = Path::new("/nowhere/target/debug/deps/test");
        let reason = find_child_program(None, None, exe).unwrap_err();
        assert!(reason.contains("not running under cargo"), "{reason}");
        assert!(reason.contains("there is no `/nowhere/target/debug/host`"), "{reason}");
        let advice = format!(
            "Set EXTENSION_HOST_CHILD to a `host` binary (`cargo build --bin host --manifest-path {}/Cargo.toml` builds one)",
            env!("CARGO_MANIFEST_DIR")
        );
        assert!(reason.ends_with(&advice), "{reason}");
    }
}
