//! What the server serves as files: the host's own (the shell, the bootstrap, the client,
//! embedded in the host binary), the renderer document it generates for each extension
//! origin, with content types (an extension's own files are its [`crate::WebAssets`]).

use super::security::html_escape;

/// The shell page and what it loads (`host/web/`).
pub(crate) const SHELL_HTML: &[u8] = include_bytes!("../../web/shell.html");
pub(crate) const SHELL_JS: &[u8] = include_bytes!("../../web/shell.js");
pub(crate) const SHELL_CSS: &[u8] = include_bytes!("../../web/shell.css");
/// What the host's shell and an application's own shell share (the iframes, the tokens).
pub(crate) const FRAMES_JS: &[u8] = include_bytes!("../../web/frames.js");
/// The module an application's own shell page imports (`host/web/embed.js`).
pub(crate) const EMBED_JS: &[u8] = include_bytes!("../../web/embed.js");
/// What every extension origin serves under `/.host/`.
pub(crate) const BOOTSTRAP_JS: &[u8] = include_bytes!("../../web/bootstrap.js");
pub(crate) const CLIENT_JS: &[u8] = include_bytes!("../../web/client.js");
pub(crate) const MSGPACK_JS: &[u8] = include_bytes!("../../web/vendor/msgpack.js");

/// The host's file at `path` on the shell's origin.
pub(crate) fn shell_file(path: &str) -> Option<&'static [u8]> {
    match path {
        "/" => Some(SHELL_HTML),
        "/shell.js" => Some(SHELL_JS),
        "/shell.css" => Some(SHELL_CSS),
        "/frames.js" => Some(FRAMES_JS),
        "/embed.js" => Some(EMBED_JS),
        _ => None,
    }
}

/// Whether the shell's file at `path` is one an application's own shell loads across origins.
pub(crate) fn embeddable(path: &str) -> bool {
    matches!(path, "/frames.js" | "/embed.js")
}

/// The host's file at `path` on every extension's origin.
pub(crate) fn extension_host_file(path: &str) -> Option<&'static [u8]> {
    match path {
        "/.host/bootstrap.js" => Some(BOOTSTRAP_JS),
        "/.host/client.js" => Some(CLIENT_JS),
        "/.host/msgpack.js" => Some(MSGPACK_JS),
        _ => None,
    }
}

/// The document an extension's iframe loads (`/` on its origin): it names the shells'
/// origins, space-separated (the only parents its bootstrap talks to), and runs the bootstrap.
pub(crate) fn renderer_document(extension: &str, shell_origins: &[String]) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"extension-host-shell\" content=\"{}\">\
         <title>{}</title><script type=\"module\" src=\"/.host/bootstrap.js\"></script></head><body></body></html>",
        html_escape(&shell_origins.join(" ")),
        html_escape(extension)
    )
}

/// The content type of a route on the shell's origin (`/` is its document).
pub(crate) fn content_type_of_route(path: &str) -> &'static str {
    if path == "/" { "text/html; charset=utf-8" } else { content_type(path) }
}

/// The content type a file is served with, from its name.
pub(crate) fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map_or("", |(_, extension)| extension).to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renderer_document_escapes_what_it_interpolates() {
        let shells = ["http://127.0.0.1:1".to_owned(), "app://x".to_owned()];
        let document = renderer_document("<x>", &shells);
        assert!(document.contains("<title>&lt;x&gt;</title>"), "{document}");
        assert!(document.contains("content=\"http://127.0.0.1:1 app://x\""));
        assert!(document.starts_with("<!doctype html>"));
    }

    #[test]
    fn content_types_follow_the_name() {
        assert_eq!(content_type("a/index.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
