//! Where an extension is in its lifecycle: a leaf, so that errors (which name a state) and
//! the `Host` (which keeps it) both depend on it, and not on each other.

use serde::Serialize;

/// Where an extension is in its lifecycle.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum ExtensionState {
    /// Loaded and validated, never activated.
    Loaded,
    /// Its activation runs (main's `activate`, then each frame's renderer half).
    Activating,
    /// Running: its namespace routes messages.
    Active,
    /// Its deactivation runs; nothing is routed to or from it any more.
    Deactivating,
    /// Deactivated; can be activated again.
    Inactive,
    /// Activation failed (returned an error, panicked or timed out), or its isolated process
    /// crashed past its budget; can be activated again.
    Failed(String),
}

impl std::fmt::Display for ExtensionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtensionState::Loaded => f.write_str("loaded"),
            ExtensionState::Activating => f.write_str("activating"),
            ExtensionState::Active => f.write_str("active"),
            ExtensionState::Deactivating => f.write_str("deactivating"),
            ExtensionState::Inactive => f.write_str("inactive"),
            ExtensionState::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}
