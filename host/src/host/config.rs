//! How a host is set up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use extension_api::wire::MailboxLimit;
use tracing::level_filters::LevelFilter;

use crate::error::HostError;

/// How the host bounds the code it runs, and how it starts child processes.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Longest an extension's `activate` (main or renderer) may take; also bounds starting an
    /// instance in a child process. `Duration::MAX` (or any duration too long to represent as
    /// a point in time) means no limit. Zero is refused: [`Host::activate`] fails with
    /// [`HostError::InvalidConfig`], since no activation can finish in no time.
    ///
    /// [`Host::activate`]: crate::Host::activate
    pub activate_timeout: Duration,
    /// Longest an extension's `deactivate` (all halves together) may take; then everything it
    /// had is dropped anyway. Bounds closing and reloading a frame the same way.
    /// `Duration::MAX` means no limit; zero gives `deactivate` no time: it is dropped as soon
    /// as it waits for anything (reported as a problem in the [`DeactivateReport`]).
    ///
    /// [`DeactivateReport`]: crate::DeactivateReport
    pub deactivate_timeout: Duration,
    /// Most verbose level extensions forward (to [`Host::logs`], and re-emitted through the
    /// host's `tracing`). Defaults to `INFO`, whatever subscriber the application has (or
    /// none); an application that wants to follow its own filter sets
    /// `LevelFilter::current()` after installing its subscriber, as the `host` binary does.
    ///
    /// [`Host::logs`]: crate::Host::logs
    pub max_log_level: LevelFilter,
    /// The program started for child processes (renderer processes, isolated extensions),
    /// followed by `child_args`, then `child --socket PATH --token TOKEN`. The `host` binary
    /// is such a program; an embedding application can dispatch that subcommand to
    /// [`crate::run_child`]. Defaults to the running executable.
    pub child_program: PathBuf,
    /// Arguments given to `child_program` before the `child` subcommand (none by default).
    pub child_args: Vec<OsString>,
    /// How many crashes of one child process (a frame's, or an isolated extension's) the host
    /// restarts within a window; past that it leaves it stopped, with the reason.
    pub crash_budget: CrashBudget,
    /// How much may wait for each instance's thread; past it, broadcasts to the instance are
    /// dropped (counted in inspect) and requests refused as overloaded. See [`MailboxLimit`].
    pub mailbox: MailboxLimit,
    /// An extension whose thread takes no message from its mailbox for this long while some
    /// wait is reported unresponsive ([`HostEvent::ExtensionUnresponsive`] and the log), then
    /// responsive again once it moves. The watchdog looks at an instance with work every
    /// quarter of the shorter of this and `slow_handler` (at most every second, at least every
    /// 10 ms), so a report comes up to one look late; a stall counts from when the work came
    /// (the instance asks for the look), and while every instance is idle nothing looks.
    /// `Duration::MAX`: never (with `slow_handler` `Duration::MAX` too, the watchdog never
    /// looks).
    ///
    /// [`HostEvent::ExtensionUnresponsive`]: crate::HostEvent::ExtensionUnresponsive
    pub unresponsive_after: Duration,
    /// A handler running longer than this is warned about once
    /// ([`HostEvent::SlowHandler`] and the log), naming the extension, the channel and the
    /// time: while it blocks the thread (at least this long so far), or, for a handler that
    /// waits, when it answers (the time it took). `Duration::MAX`: never.
    ///
    /// [`HostEvent::SlowHandler`]: crate::HostEvent::SlowHandler
    pub slow_handler: Duration,
    /// Where and how much each extension's persisted tier (`Main::storage()`) keeps.
    pub storage: StorageConfig,
}

/// The persisted tier: one database file per extension in `data_dir`, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The host's data directory (`host run --data-dir`). Defaults to the per-user data
    /// directory: `$XDG_DATA_HOME/extension-host`, else `~/.local/share/extension-host`. One
    /// host at a time may use it: a second finds each database locked.
    pub data_dir: PathBuf,
    /// Largest encoded value, in bytes (1 MiB by default).
    pub value_limit: u64,
    /// Largest an extension's data may grow, counting keys, values and 16 bytes an entry
    /// (8 MiB by default, which is also the most: the tier reaches a frame as one snapshot).
    pub total_limit: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
            value_limit: extension_api::STORE_VALUE_LIMIT as u64,
            total_limit: extension_api::STORE_TOTAL_LIMIT as u64,
        }
    }
}

/// `$XDG_DATA_HOME/extension-host` (or the platform's equivalent), else a directory of that
/// name in the working directory when the user has no home.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("extension-host")
}

impl HostConfig {
    /// Refuses the values the host cannot work with, saying which field and why. Every other
    /// value is valid: durations saturate (`Duration::MAX` means no limit).
    /// [`Host::activate`](crate::Host::activate) checks it first.
    pub fn validate(&self) -> Result<(), HostError> {
        if self.activate_timeout.is_zero() {
            return Err(HostError::InvalidConfig {
                field: "activate_timeout",
                reason: "is zero, and no activation can finish in no time (use `Duration::MAX` for no limit)",
            });
        }
        let storage = &self.storage;
        if storage.total_limit > extension_api::STORE_TOTAL_LIMIT as u64 {
            return Err(HostError::InvalidConfig {
                field: "storage.total_limit",
                reason: "is over 8 MiB (STORE_TOTAL_LIMIT), the most a frame's snapshot carries",
            });
        }
        if storage.value_limit == 0 || storage.value_limit > storage.total_limit {
            return Err(HostError::InvalidConfig {
                field: "storage.value_limit",
                reason: "must be at least 1 byte and at most `storage.total_limit`",
            });
        }
        Ok(())
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            activate_timeout: Duration::from_secs(10),
            deactivate_timeout: Duration::from_secs(5),
            max_log_level: LevelFilter::INFO,
            child_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("host")),
            child_args: Vec::new(),
            crash_budget: CrashBudget::default(),
            mailbox: MailboxLimit::default(),
            storage: StorageConfig::default(),
            unresponsive_after: Duration::from_secs(5),
            slow_handler: Duration::from_secs(1),
        }
    }
}

/// At most `crashes` restarts within `window`: `crashes: 0` restarts nothing; a `window` of
/// `Duration::MAX` counts every crash forever; a zero `window` forgets each crash at once, so
/// (with `crashes` at least 1) every crash is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashBudget {
    /// How many crashes within `window` are restarted.
    pub crashes: u32,
    /// How long a crash counts against the budget.
    pub window: Duration,
}

impl Default for CrashBudget {
    fn default() -> Self {
        CrashBudget { crashes: 3, window: Duration::from_secs(300) }
    }
}

/// When something crashed, to hold it to its budget.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrashLog {
    crashes: Vec<Instant>,
}

impl CrashLog {
    /// Records a crash now; true if a restart is still within `budget`.
    pub(crate) fn record(&mut self, budget: CrashBudget) -> bool {
        let now = Instant::now();
        self.crashes.retain(|at| now.duration_since(*at) < budget.window);
        self.crashes.push(now);
        self.crashes.len() <= budget.crashes as usize
    }

    pub(crate) fn count(&self) -> usize {
        self.crashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_crashes_then_refuses() {
        let budget = CrashBudget { crashes: 2, window: Duration::from_secs(60) };
        let mut log = CrashLog::default();
        assert!(log.record(budget));
        assert!(log.record(budget));
        assert!(!log.record(budget));
        assert_eq!(log.count(), 3);
    }

    #[test]
    fn storage_limits_past_a_snapshot_or_inverted_are_refused_naming_the_field() {
        let mut config = HostConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.storage.total_limit = extension_api::STORE_TOTAL_LIMIT as u64 + 1;
        assert!(matches!(config.validate(), Err(HostError::InvalidConfig { field: "storage.total_limit", .. })));
        config.storage.total_limit = 100;
        config.storage.value_limit = 101;
        assert!(matches!(config.validate(), Err(HostError::InvalidConfig { field: "storage.value_limit", .. })));
        config.storage.value_limit = 0;
        assert!(matches!(config.validate(), Err(HostError::InvalidConfig { field: "storage.value_limit", .. })));
        config.storage.value_limit = 100;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_default_data_dir_is_the_per_user_data_directory() {
        let dir = default_data_dir();
        assert!(dir.ends_with("extension-host"), "{}", dir.display());
        if let Some(data) = dirs::data_dir() {
            assert_eq!(dir, data.join("extension-host"));
        }
    }

    #[test]
    fn old_crashes_leave_the_window() {
        let budget = CrashBudget { crashes: 1, window: Duration::ZERO };
        let mut log = CrashLog::default();
        assert!(log.record(budget));
        assert!(log.record(budget), "the first crash is already outside a zero-length window");
    }
}
