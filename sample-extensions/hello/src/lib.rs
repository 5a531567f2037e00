//! `hello`: the reference extension.
//!
//! - Every renderer half, once activated, broadcasts `initialize` with an id; main listens and
//!   logs it.
//! - Every renderer half then invokes main's `greet` handler and logs the answer.
//!
//! The channels are declared once, typed, in [`channels`], and used by both halves.
//!
//! Its web renderer (`web/index.js`, for web frames) does the same in the page and shows it.

use extension_api::{BoxError, Main, MainExtension, Renderer, RendererExtension, export_extension};

/// The channels of this extension, shared by both halves.
pub mod channels {
    use extension_api::{EventChannel, RequestChannel};

    /// A renderer announces itself with an id.
    pub const INITIALIZE: EventChannel<String> = EventChannel::new("initialize");
    /// A renderer asks main to greet a name.
    pub const GREET: RequestChannel<String, String> = RequestChannel::new("greet");
}

pub struct HelloMain;

impl MainExtension for HelloMain {
    async fn activate(ipc: Main) -> Result<Self, BoxError> {
        ipc.listen(channels::INITIALIZE, |event| {
            tracing::info!("main got `initialize` from {}: {}", event.sender, event.value);
        })?;
        ipc.handle(channels::GREET, |name, meta| async move {
            tracing::info!("main greets {name} for {}", meta.sender);
            Ok::<_, String>(format!("Hello, {name}! (from {}'s main)", env!("CARGO_PKG_NAME")))
        })?;
        tracing::info!("{} main activated", env!("CARGO_PKG_NAME"));
        Ok(HelloMain)
    }

    async fn deactivate(self) {
        tracing::info!("{} main deactivated", env!("CARGO_PKG_NAME"));
    }
}

pub struct HelloRenderer;

impl RendererExtension for HelloRenderer {
    async fn activate(ipc: Renderer) -> Result<Self, BoxError> {
        let id = format!("renderer-{}", ipc.frame().0);
        ipc.broadcast(channels::INITIALIZE, &id)?;
        // Runs after activate returns; `Renderer::current()` works inside, no handle needed.
        ipc.spawn(async move {
            let Ok(renderer) = Renderer::current() else { return };
            match renderer.invoke(channels::GREET, &id).await {
                Ok(greeting) => tracing::info!("{} got: {greeting}", renderer.frame()),
                Err(error) => tracing::warn!("greet failed: {error}"),
            }
        })?;
        Ok(HelloRenderer)
    }
}

// The web renderer is `web/` (`web/index.js` does in a web frame what `HelloRenderer` does).
// Written `../hello/web` rather than `web` because `hello-twin` compiles this very file: the
// path is relative to the crate being built, and both crates get the same web renderer.
export_extension!(main = HelloMain, renderer = HelloRenderer, web = "../hello/web");
