//! The host's handle on one child process: its connection (the writing side, which the
//! instances' transports use) and its reader (the inbound side, which routes what the child
//! sends). Starting an instance there gives its key to both; this handle joins the layers
//! for a child process as `instances.rs` does for this one.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use extension_api::wire::InstanceConfig;

use crate::endpoint::Endpoint;
use crate::error::ChildStartError;
use crate::inbound::ChildReader;
use crate::keys::next_key;
use crate::link::Link;
use crate::remote::{Connection, Role, Spawned, describe_exit};
use crate::transport::{ChildInstance, Transport};

/// Called once when a child process is lost unexpectedly (it crashed, exited, or broke the
/// protocol), with the reason.
pub(crate) type OnLost = Box<dyn Fn(Arc<ChildProcess>, String) + Send + Sync>;

/// Why an instance could not be started in a child process.
#[derive(Debug, thiserror::Error)]
#[error("the child process could not load the library: {0}")]
pub(crate) struct LoadFailed(String);

/// One child process of the host.
pub(crate) struct ChildProcess {
    connection: Arc<Connection>,
    reader: Arc<ChildReader>,
    /// For the async part of cleaning up after the connection ends.
    runtime: tokio::runtime::Handle,
    on_lost: OnLost,
}

impl ChildProcess {
    /// Starts `program prefix_args... child --socket PATH --token TOKEN`, completes the
    /// handshake, and starts the reader thread.
    pub(crate) async fn spawn(
        program: &Path,
        prefix_args: &[OsString],
        role: Role,
        on_lost: OnLost,
    ) -> Result<Arc<ChildProcess>, ChildStartError> {
        let Spawned { connection, stream, framing } = Connection::spawn(program, prefix_args, role).await?;
        let connection = Arc::new(connection);
        let process = Arc::new(ChildProcess {
            reader: ChildReader::reading(connection.clone(), stream, framing),
            connection,
            runtime: tokio::runtime::Handle::current(),
            on_lost,
        });
        let reading = process.clone();
        std::thread::Builder::new()
            .name(format!("child-{}", process.pid()))
            .spawn(move || {
                // Returns on this thread whoever saw the end (main's thread may read the socket:
                // the clean-up below must never run there).
                let reason = reading.reader.read_loop();
                let runtime = reading.runtime.clone();
                runtime.spawn(async move { reading.lost(reason).await });
            })
            .map_err(|e| ChildStartError::Connection { reason: format!("cannot start the reader thread: {e}") })?;
        Ok(process)
    }

    pub(crate) fn role(&self) -> &Role {
        &self.connection.role
    }

    pub(crate) fn pid(&self) -> u32 {
        self.connection.pid
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.connection.is_closed()
    }

    /// Starts an instance of the library at `path` in this process, for `link`. The key is
    /// given to the reader before the load, so the instance's first packets route.
    pub(crate) async fn start_instance(
        &self,
        link: &Arc<Link>,
        path: &Path,
        config: InstanceConfig,
        timeout: Duration,
    ) -> Result<Arc<Endpoint>, LoadFailed> {
        let key = next_key();
        let endpoint = Endpoint::new(key, Transport::ChildProcess(ChildInstance::new(self.connection.clone(), key)));
        self.reader.register(key, Arc::downgrade(link), Arc::downgrade(&endpoint));
        // Routing from another process is a round trip: every message takes it.
        let config = InstanceConfig { route_within: false, ..config };
        match self.connection.load(key, path, config, timeout).await {
            Ok(()) => Ok(endpoint),
            Err(reason) => {
                self.reader.retire(key);
                Err(LoadFailed(reason))
            }
        }
    }

    /// Ends the child on purpose (its frame closed, its extension deactivated).
    pub(crate) async fn end(self: &Arc<Self>) {
        self.connection.set_retiring();
        self.lost("retired by the host".to_owned()).await;
    }

    /// Ends the child now, without waiting (the host is being dropped).
    pub(crate) fn kill_now(&self) {
        self.connection.kill_now();
    }

    /// The connection broke: every instance behind it is gone.
    async fn lost(self: &Arc<Self>, reason: String) {
        if !self.connection.close() {
            return;
        }
        let expected = self.connection.is_retiring();
        // Ends the reader thread too, even if the child lingers.
        self.connection.shut_socket();
        let Some(mut child) = self.connection.take_child() else { return };
        let _ = child.start_kill();
        // Everything waiting on the child fails now; how it ended is reported after.
        self.reader.fail_everything(&reason);
        let ended = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            _ => "did not end".to_owned(),
        };
        let reason = format!("{reason}; the child process (pid {}) {ended}", self.pid());
        if !expected {
            tracing::warn!(role = ?self.role(), "child connection lost: {reason}");
            (self.on_lost)(self.clone(), reason);
        }
    }
}
