//! Forwards this library's `tracing` events (its own copy of tracing) to the host, which
//! re-emits them under the extension's name. Also routes this library's panic messages there.

use std::fmt::Write as _;
use std::sync::Once;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::abi::HostVTable;
use crate::runtime::vtable::HostCalls;

static HOST: OnceLock<HostVTable> = OnceLock::new();
static KEY: AtomicU64 = AtomicU64::new(0);
static MAX_LEVEL: AtomicU32 = AtomicU32::new(3);

/// Points this library's tracing at the host; the first call installs the subscriber and the
/// panic hook, later calls (re-activations) only update the instance key and level.
pub(crate) fn install(host: HostVTable, key: u64, max_level: u32) {
    let _ = HOST.set(host);
    KEY.store(key, Ordering::Release);
    MAX_LEVEL.store(max_level, Ordering::Relaxed);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Forward);
        let _ = tracing::subscriber::set_global_default(subscriber);
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let message = crate::runtime::panic_message(info.payload());
            forward(1, "panic", &format!("panicked{location}: {message}"));
        }));
    });
}

/// Longest log message forwarded (64 KiB): a record must fit in one message to the host
/// wherever the instance runs; the rest is cut, saying how long it was.
const MAX_LOG_MESSAGE: usize = 64 << 10;

fn forward(level: u32, target: &str, message: &str) {
    let message = crate::error::cut(message, MAX_LOG_MESSAGE);
    let target = crate::error::shown(target);
    if let Some(host) = HOST.get() {
        // SAFETY: `HOST` is set only by `install`, which `instantiate` calls with the host's
        // vtable after checking its ABI version.
        let calls = unsafe { HostCalls::new(*host, KEY.load(Ordering::Acquire)) };
        calls.log(level, &target, &message);
    }
}

struct Forward;

impl<S: Subscriber> Layer<S> for Forward {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        // Re-asked on every event, so a re-activation with another level takes effect.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        crate::message::level_number(*metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        forward(crate::message::level_number(*event.metadata().level()), event.metadata().target(), &text.finish());
    }
}

/// The event's `message` followed by its other fields as `name=value`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(mut self) -> String {
        if !self.fields.is_empty() {
            if !self.message.is_empty() {
                self.message.push(' ');
            }
            self.message.push_str(self.fields.trim_start());
        }
        self.message
    }
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}
