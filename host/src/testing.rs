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
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use extension_api::FrameId;
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
pub enum TestError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error("nothing matching {what} within {WAIT:?}")]
    TimedOut { what: String },
    #[error("the value of `{what}` does not decode: {reason}")]
    Decode { what: String, reason: String },
    #[error("{missed} {what} were missed: the test read them too slowly (the harness keeps 4096)")]
    Lagged { what: &'static str, missed: u64 },
}

/// One extension running in a host of its own, with its log and broadcasts recorded.
pub struct TestHost {
    host: Host,
    name: String,
    logs: Receiver<LogRecord>,
    broadcasts: Receiver<ObservedBroadcast>,
}

impl TestHost {
    /// Where `cargo` put the library of crate `name`, built in the same profile as the running
    /// test: `target/<profile>/lib<name>.so`, or `target/<profile>/deps/lib<name>.so`, where
    /// `cargo test` leaves the library of the crate under test.
    pub fn library_of(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        // target/<profile>/deps/<test binary>
        let deps = exe.parent().map(Path::to_owned).unwrap_or_default();
        let file =
            format!("{}{}{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"), std::env::consts::DLL_SUFFIX);
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
    /// down to DEBUG are kept for [`TestHost::wait_log`].
    pub async fn start(library: impl AsRef<Path>) -> Result<TestHost, TestError> {
        let config = HostConfig { max_log_level: crate::LevelFilter::DEBUG, ..HostConfig::default() };
        TestHost::start_with(library, config).await
    }

    /// [`TestHost::start`] with a configuration of your own (timeouts, child program, ...).
    /// To use child-process frames or isolation from a test, set `child_program` to a `host`
    /// binary: the default, the running executable, is the test binary.
    pub async fn start_with(library: impl AsRef<Path>, config: HostConfig) -> Result<TestHost, TestError> {
        let host = Host::new(config);
        let logs = host.logs();
        let broadcasts = host.broadcasts();
        let name = host.load(library)?.name;
        host.activate(&name).await?;
        Ok(TestHost { host, name, logs, broadcasts })
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
        let name = self.name.clone();
        let wait = async {
            loop {
                match self.broadcasts.recv().await {
                    Ok(seen) if seen.extension == name && seen.channel == channel && seen.sender() != Sender::Host => {
                        return Ok(seen);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => return Err(TestError::Lagged { what: "broadcasts", missed }),
                    Err(RecvError::Closed) => return Err(TestError::TimedOut { what: "a broadcast".into() }),
                }
            }
        };
        let timed_out = || TestError::TimedOut { what: format!("a broadcast on `{channel}`") };
        let seen = tokio::time::timeout(WAIT, wait).await.map_err(|_| timed_out())??;
        seen.value().map_err(|error| TestError::Decode { what: channel.to_owned(), reason: error.to_string() })
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
        let values = self.host.store_values(&self.name).await?;
        values
            .get(key)
            .map(|bytes| {
                extension_api::wire::decode(bytes)
                    .map_err(|error| TestError::Decode { what: key.to_owned(), reason: error.to_string() })
            })
            .transpose()
    }

    /// Deactivates the extension, then closes everything.
    pub async fn stop(self) -> Result<crate::DeactivateReport, TestError> {
        let report = self.host.deactivate(&self.name).await?;
        self.host.shutdown().await;
        Ok(report)
    }
}
