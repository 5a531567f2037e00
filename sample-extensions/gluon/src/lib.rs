//! `gluon`: the three examples of Gluon's IPC reference, the Rust way.
//!
//! 1. Main **exposes** a `log` function; renderers call it through the generated
//!    `LoggerClient`, with no channel string and checked types.
//! 2. Main puts a `config` value in the **store**; every frame reads it synchronously, and
//!    already has it when its `activate` runs.
//! 3. Main **handles** a `get config` request, which renderers `invoke`.
//!
//! And what the reference has no word for: main asks each frame for its title (a
//! **main-to-frame request**), and frames **watch** a store key that main updates.
//!
//! Its web renderer (`web/index.js`, embedded below) does all of it in a web frame's page.

use std::sync::Mutex;
use std::time::Duration;

use extension_api::{
    BoxError, Event, Main, MainExtension, Renderer, RendererExtension, RequestChannel, Sender, Store, StoreKey,
    export_extension,
};
use serde::{Deserialize, Serialize};

/// What main exposes to renderers.
#[extension_api::exposed]
pub trait Logger {
    /// Appends `message` to the log; `true` once it is recorded.
    async fn log(&self, message: String) -> bool;
    /// Every message logged so far.
    async fn lines(&self) -> Vec<String>;
}

/// The shared configuration, as the reference's `Window.ipc.store.config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub env: String,
}

pub const CONFIG: StoreKey<Config> = StoreKey::new("config");
/// How many lines the log has; frames watch it.
pub const LOG_LINES: StoreKey<u64> = StoreKey::new("log-lines");
/// The reference's `Gluon.ipc.send('get config')`.
pub const GET_CONFIG: RequestChannel<(), Config> = RequestChannel::new("get config");
/// Main asks a frame for its title.
pub const TITLE: RequestChannel<(), String> = RequestChannel::new("title");
/// A renderer says it is ready for main's questions.
pub const READY: &str = "renderer-ready";

struct Log {
    lines: Mutex<Vec<String>>,
    store: Store,
}

impl Logger for Log {
    async fn log(&self, message: String) -> bool {
        let count = {
            let mut lines = self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            lines.push(message);
            lines.len() as u64
        };
        self.store.set(LOG_LINES, &count).await.is_ok()
    }

    async fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

pub struct GluonMain;

impl MainExtension for GluonMain {
    async fn activate(ipc: Main) -> Result<Self, BoxError> {
        ipc.store().set(CONFIG, &Config { env: "production".into() }).await?;
        expose_logger(&ipc, Log { lines: Mutex::new(Vec::new()), store: ipc.store() })?;
        ipc.handle(GET_CONFIG, |(), _| async {
            let main = Main::get().map_err(|error| error.to_string())?;
            main.store().get(CONFIG).map_err(|error| error.to_string())?.ok_or_else(|| "no config".to_owned())
        })?;
        ipc.listen(READY, |event: Event<()>| {
            let (Ok(main), Sender::Frame(frame)) = (Main::get(), event.sender) else {
                return;
            };
            let question = main.invoke_frame(frame, TITLE, &(), Duration::from_secs(5));
            let _ = main.spawn(async move {
                match question.await {
                    Ok(title) => tracing::info!("{frame} is titled {title:?}"),
                    Err(error) => tracing::warn!("{frame} did not say its title: {error}"),
                }
            });
        })?;
        Ok(GluonMain)
    }
}

pub struct GluonRenderer;

impl RendererExtension for GluonRenderer {
    async fn activate(ipc: Renderer) -> Result<Self, BoxError> {
        let frame = ipc.frame();
        // Already here: the frame got the store's snapshot before `activate`.
        match ipc.store().get(CONFIG)? {
            Some(config) => tracing::info!("{frame} sees config env={}", config.env),
            None => tracing::warn!("{frame} sees no config"),
        }
        ipc.store().watch(LOG_LINES.name(), move |change| {
            if let Ok(Some(lines)) = change.new_value::<u64>() {
                tracing::info!("{frame} saw the log grow to {lines} lines (written by {})", change.writer);
            }
        })?;
        ipc.handle(TITLE, move |(), _| async move { Ok::<_, String>(format!("Window {}", frame.0)) })?;
        let logger = LoggerClient::new(&ipc);
        ipc.spawn(async move {
            let Ok(renderer) = Renderer::current() else { return };
            match logger.log(format!("Message from {frame}!")).await {
                Ok(logged) => tracing::info!("{frame}: log returned {logged}"),
                Err(error) => tracing::warn!("{frame}: log failed: {error}"),
            }
            match renderer.invoke(GET_CONFIG, &()).await {
                Ok(config) => tracing::info!("{frame}: get config answered env={}", config.env),
                Err(error) => tracing::warn!("{frame}: get config failed: {error}"),
            }
            let _ = renderer.broadcast(READY, &());
        })?;
        Ok(GluonRenderer)
    }
}

export_extension!(main = GluonMain, renderer = GluonRenderer, web = "web");
