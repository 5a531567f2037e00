//! The traits an author implements, and the macro that exports them.

use std::future::Future;

use crate::error::BoxError;
use crate::ipc::{Main, Renderer};

/// The main half of an extension: runs in the host process, once.
///
/// `activate` builds the half's state from its IPC handle; `deactivate` consumes it. Whatever
/// `activate` registered or spawned through the handle is removed after `deactivate` anyway.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a main half",
    label = "implement `extension_api::MainExtension` for `{Self}`",
    note = "a main half is a type with `async fn activate(ipc: Main) -> Result<Self, BoxError>`"
)]
pub trait MainExtension: Sized + Send + 'static {
    /// Starts the main half with its IPC handle; an error leaves the extension inactive.
    fn activate(ipc: Main) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Stops the main half, within the host's timeout. Does nothing by default.
    fn deactivate(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The renderer half of an extension: runs once in every open frame.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a renderer half",
    label = "implement `extension_api::RendererExtension` for `{Self}`",
    note = "a renderer half is a type with `async fn activate(ipc: Renderer) -> Result<Self, BoxError>`"
)]
pub trait RendererExtension: Sized + Send + 'static {
    /// Starts the renderer half in one frame with its IPC handle.
    fn activate(ipc: Renderer) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Stops the renderer half when its frame closes or the extension is deactivated, within
    /// the host's timeout. Does nothing by default.
    fn deactivate(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The renderer half of an extension that has none.
pub struct NoRenderer;

impl RendererExtension for NoRenderer {
    async fn activate(_: Renderer) -> Result<Self, BoxError> {
        Ok(NoRenderer)
    }
}

/// Exports an extension from a `cdylib` crate: the one descriptor symbol the host looks for.
/// The name and version default to the crate's `CARGO_PKG_NAME` and `CARGO_PKG_VERSION`.
///
/// `export_extension!(main = M)` exports a main half only; `export_extension!(main = M,
/// renderer = R)` both; `export_extension!(name = "n", main = M, renderer = R)` also sets the
/// name.
///
/// A last argument `web = "DIR"` embeds a **web renderer**: the files of the directory `DIR`
/// (relative to the crate's directory, where its `Cargo.toml` is), which the host serves to
/// web frames, with `DIR/index.js` as the entry module (an ES module exporting
/// `activate(ipc)`). The files are embedded in the library, so the one `.so` file is still the
/// whole extension. They are read at compile time: a missing directory, no `index.js` at its
/// root, a symbolic link, a name that is not UTF-8 or starts with `.`, a file over 16 MiB or
/// more than 4096 files is a compile error naming the path. Cargo rebuilds the crate when an
/// embedded file changes; it cannot see a file *added* to the directory (or removed) unless
/// something tells it: touch a source file, or give the crate a `build.rs` containing
/// `fn main() { println!("cargo::rerun-if-changed=web"); }`, which makes cargo watch the whole
/// directory.
///
/// ```
/// use extension_api::{BoxError, Main, MainExtension, Renderer, RendererExtension};
///
/// struct HelloMain;
/// impl MainExtension for HelloMain {
///     async fn activate(_: Main) -> Result<Self, BoxError> {
///         Ok(HelloMain)
///     }
/// }
///
/// struct HelloRenderer;
/// impl RendererExtension for HelloRenderer {
///     async fn activate(_: Renderer) -> Result<Self, BoxError> {
///         Ok(HelloRenderer)
///     }
/// }
///
/// extension_api::export_extension!(name = "hello", main = HelloMain, renderer = HelloRenderer);
/// assert_eq!(EXTENSION_DESCRIPTOR.abi_version, extension_api::abi::ABI_VERSION);
/// assert_eq!(EXTENSION_DESCRIPTOR.web_asset_count, 0);
/// ```
///
/// With a web renderer (`web/index.js` in the crate, and whatever it imports):
///
/// ```text
/// extension_api::export_extension!(main = HelloMain, renderer = HelloRenderer, web = "web");
/// ```
#[macro_export]
macro_rules! export_extension {
    (main = $main:ty, renderer = $renderer:ty $(, web = $web:literal)? $(,)?) => {
        $crate::export_extension!(
            name = env!("CARGO_PKG_NAME"),
            main = $main,
            renderer = $renderer
            $(, web = $web)?
        );
    };
    (main = $main:ty $(, web = $web:literal)? $(,)?) => {
        $crate::export_extension!(main = $main, renderer = $crate::NoRenderer $(, web = $web)?);
    };
    (name = $name:expr, main = $main:ty $(, renderer = $renderer:ty)? $(, web = $web:literal)? $(,)?) => {
        $crate::export_extension!(@export $name, $main, ($($renderer)?), ($($web)?));
    };
    (@export $name:expr, $main:ty, (), $web:tt) => {
        $crate::export_extension!(@export $name, $main, ($crate::NoRenderer), $web);
    };
    (@export $name:expr, $main:ty, ($renderer:ty), ()) => {
        #[unsafe(no_mangle)]
        pub static EXTENSION_DESCRIPTOR: $crate::abi::Descriptor =
            $crate::__private::descriptor::<$main, $renderer>($name, env!("CARGO_PKG_VERSION"));
    };
    (@export $name:expr, $main:ty, ($renderer:ty), ($web:literal)) => {
        #[unsafe(no_mangle)]
        pub static EXTENSION_DESCRIPTOR: $crate::abi::Descriptor = $crate::__private::with_web_assets(
            $crate::__private::descriptor::<$main, $renderer>($name, env!("CARGO_PKG_VERSION")),
            $crate::__private::web_assets!($crate, $web),
        );
    };
    ($($anything:tt)*) => {
        compile_error!(
            "export_extension! takes `main = MainType`, optionally `renderer = RendererType`, optionally \
             `name = \"...\"` first and `web = \"dir\"` last: \
             export_extension!(main = MyMain, renderer = MyRenderer, web = \"web\")"
        );
    };
}
