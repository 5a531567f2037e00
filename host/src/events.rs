//! What the host lets an embedder watch: extension log records and broadcasts.

use extension_api::abi::Peer;
use extension_api::{FrameId, Sender};
use serde::Serialize;

/// A tracing event emitted inside an extension, as the host received it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogRecord {
    /// The extension whose instance logged it (from the instance key it came with, never
    /// from the record).
    pub extension: String,
    /// "ERROR", "WARN", "INFO", "DEBUG" or "TRACE".
    pub level: String,
    /// The module path (tracing target) inside the extension.
    pub target: String,
    /// The formatted message, as the extension sent it.
    pub message: String,
}

impl LogRecord {
    pub(crate) fn new(extension: &str, level: u32, target: &str, message: &str) -> LogRecord {
        LogRecord {
            extension: extension.to_owned(),
            level: extension_api::message::level_of(level).as_str().to_owned(),
            target: target.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Re-emits the record through the host's own tracing, under target `extension`, so the
    /// host's filter (`RUST_LOG=extension=debug`, say) applies.
    /// Control characters are escaped there: an extension's text cannot forge lines of the
    /// host's log (the record itself keeps the text as sent).
    pub(crate) fn emit(&self) {
        let (name, module, message) = (OneLine(&self.extension), OneLine(&self.target), OneLine(&self.message));
        match self.level.as_str() {
            "ERROR" => tracing::error!(target: "extension", extension = %name, module = %module, "{message}"),
            "WARN" => tracing::warn!(target: "extension", extension = %name, module = %module, "{message}"),
            "INFO" => tracing::info!(target: "extension", extension = %name, module = %module, "{message}"),
            "DEBUG" => tracing::debug!(target: "extension", extension = %name, module = %module, "{message}"),
            _ => tracing::trace!(target: "extension", extension = %name, module = %module, "{message}"),
        }
    }
}

/// Text an extension chose (a log message, a channel name, an error), displayed on one line:
/// control characters, newlines included, are shown escaped, so the text cannot forge lines
/// of its own in a log or a console.
pub struct OneLine<'a>(
    /// The text, unescaped.
    pub &'a str,
);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                for escaped in c.escape_default() {
                    f.write_char(escaped)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// A broadcast seen by the host on its way to the extension's listeners.
#[derive(Debug, Clone)]
pub struct ObservedBroadcast {
    /// The extension whose namespace it was sent in.
    pub extension: String,
    pub(crate) sender: Peer,
    /// Its channel name.
    pub channel: String,
    /// The value as MessagePack.
    pub payload: Vec<u8>,
    /// The frames whose renderer half it was routed to, in order: their listeners of the
    /// channel get it, unless a mailbox was full (see `InstanceSnapshot::dropped_broadcasts`)
    /// or a listener's type does not decode it (logged, and counted in inspect). This is where
    /// the host delivered it, not a report from the frame.
    pub frames: Vec<FrameId>,
}

impl ObservedBroadcast {
    /// Who sent it: main, a frame's renderer half, or the host.
    pub fn sender(&self) -> Sender {
        extension_api::message::sender_of(self.sender)
    }

    /// Whether it was routed to the renderer half in `frame` (see [`ObservedBroadcast::frames`]).
    pub fn reaches(&self, frame: FrameId) -> bool {
        self.frames.contains(&frame)
    }

    /// The value decoded as `T`.
    pub fn value<T: serde::de::DeserializeOwned>(&self) -> Result<T, rmp_serde::decode::Error> {
        extension_api::wire::decode(&self.payload)
    }
}

/// Something the host did on its own, for embedders (and tests) to follow.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostEvent {
    /// An isolated extension's process ended unexpectedly.
    ExtensionCrashed {
        /// The extension.
        extension: String,
        /// How the process ended (a signal, an exit status, a protocol violation).
        reason: String,
        /// Whether it is restarted: false once past its crash budget (it is left `Failed`).
        restarting: bool,
    },
    /// It was activated again after a crash.
    ExtensionRestarted {
        /// The extension.
        extension: String,
    },
    /// A child-process frame's renderer process ended unexpectedly.
    FrameCrashed {
        /// The frame's number.
        frame: u64,
        /// How the process ended.
        reason: String,
        /// Whether it is restarted: false once past its crash budget (the frame stays open,
        /// with no renderer halves).
        restarting: bool,
    },
    /// Its renderer process was started again and its renderer halves reopened.
    FrameRestarted {
        /// The frame's number.
        frame: u64,
    },
    /// A web frame's page ended its connection (a tab closed or reloaded, an iframe navigated:
    /// `lost` false) or lost it (`lost` true): the extension's half there is gone, its requests
    /// failed (`FrameClosed`, `ConnectionLost`), and main told. The frame stays open; the page
    /// may connect again with its token, and its half then starts again.
    WebRendererClosed {
        /// The extension.
        extension: String,
        /// The web frame.
        frame: u64,
        /// Whether the connection was lost rather than closed.
        lost: bool,
        /// Why, in words.
        reason: String,
    },
    /// A rebuilt library was swapped in ([`crate::Host::reload`]): the old version was
    /// deactivated and, if it was running, the new one activated, in main and every open frame.
    ExtensionReloaded {
        /// The extension.
        extension: String,
        /// The new build's version.
        version: String,
    },
    /// A rebuilt library was not, or not fully, swapped in. `kept_old_version` says the
    /// failure came before the swap (the new copy did not load or validate, or is another
    /// extension), so the version loaded before is kept, still running if it was; otherwise
    /// the new build failed to activate and the extension is stopped (`Failed`) until a build
    /// that activates.
    ReloadFailed {
        /// The extension.
        extension: String,
        /// The [`crate::ReloadError`]'s message.
        reason: String,
        /// Whether the version loaded before is kept (the failure came before the swap).
        kept_old_version: bool,
    },
    /// An instance of the extension has taken no message from its mailbox for `stalled_ms`
    /// (at least) while `queued` waited (in its mailbox, or behind the message it runs in the
    /// batch its dispatcher took); `running` says what its thread is running, if it is
    /// in a handler (`main request `channel``, say). Or, while it had work, it has not
    /// answered the watchdog's inspect for `stalled_ms` (its process is stopped or hung;
    /// `queued` is what waited at its last answer). `reason` says which. See
    /// `HostConfig::unresponsive_after`.
    ExtensionUnresponsive {
        /// The extension.
        extension: String,
        /// How long, at least, its mailbox has not moved, in milliseconds.
        stalled_ms: u64,
        /// Messages waiting meanwhile.
        queued: u64,
        /// What its thread is running, if it is in a handler.
        running: Option<String>,
        /// Why, in words: its thread takes no message, or the instance does not answer at all
        /// (its process stopped or hung: the watchdog's inspect went unanswered).
        reason: String,
    },
    /// The unresponsive instance takes messages again, after about `stalled_ms`.
    ExtensionResponsive {
        /// The extension.
        extension: String,
        /// About how long it was stalled, in milliseconds.
        stalled_ms: u64,
    },
    /// A handler ran past `HostConfig::slow_handler`: a handler or a listener still running
    /// after at least `elapsed_ms`, blocking its thread (`finished: false`; `kind` says
    /// which), or, for a handler that waited, answered after `elapsed_ms` (`finished: true`).
    /// Said once for each.
    SlowHandler {
        /// The extension.
        extension: String,
        /// The half whose handler it is.
        half: extension_api::Half,
        /// A listener or a request handler.
        kind: extension_api::wire::ChannelKind,
        /// Its channel.
        channel: String,
        /// How long it ran (or has been running), in milliseconds.
        elapsed_ms: u64,
        /// Whether it has answered (a handler that waited) or still blocks its thread.
        finished: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::OneLine;

    #[test]
    fn one_line_escapes_control_characters_and_keeps_the_rest() {
        let forged = "saved\nevent probe ping from main: {}\r\t\u{1b}[31mred\u{0}";
        let shown = OneLine(forged).to_string();
        assert_eq!(shown, "saved\\nevent probe ping from main: {}\\r\\t\\u{1b}[31mred\\u{0}");
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(OneLine("héllo wörld ✓").to_string(), "héllo wörld ✓");
    }
}
