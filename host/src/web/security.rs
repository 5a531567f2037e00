//! What the server checks before it serves anything: the `Host` allow-list (DNS rebinding),
//! exact `Origin`s for WebSocket upgrades (cross-site WebSocket hijacking), and the headers
//! and Content-Security-Policies every response carries. Also the extension origins: one per
//! extension per server, `http://LABEL.localhost:PORT`.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{HeaderMap, HeaderValue, header};

/// Most characters of an extension's name kept in its origin's label.
const LABEL_NAME_CHARS: usize = 20;

/// Who a request's `Host` says it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Site {
    /// The shell (`127.0.0.1:PORT`, `localhost:PORT`).
    Shell,
    /// An extension's origin: its name.
    Extension(String),
    /// One of [`crate::web::WebConfig::allowed_hosts`]: served as the shell.
    Extra,
}

/// The origins of one server: the shell's, and one per extension (made on first use).
pub(crate) struct Origins {
    port: u16,
    extra: BTreeSet<String>,
    /// Extension name → its label.
    labels: BTreeMap<String, String>,
    /// Label → extension name.
    names: BTreeMap<String, String>,
}

impl Origins {
    pub(crate) fn new(port: u16, extra: &[String]) -> Origins {
        Origins {
            port,
            extra: extra.iter().map(|host| host.to_ascii_lowercase()).collect(),
            labels: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    /// The shell's origin (what its documents are served from).
    pub(crate) fn shell(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The origins the shell may be served from: an upgrade to the shell socket must come
    /// from one of these.
    pub(crate) fn shell_origins(&self) -> [String; 2] {
        [format!("http://127.0.0.1:{}", self.port), format!("http://localhost:{}", self.port)]
    }

    /// Extension `name`'s origin, made the first time it is asked for.
    pub(crate) fn extension(&mut self, name: &str) -> Result<String, String> {
        if let Some(label) = self.labels.get(name) {
            return Ok(self.origin_of(label));
        }
        let label = loop {
            let label = format!("{}-{}", label_base(name), super::tokens::random_hex(4)?);
            if !self.names.contains_key(&label) {
                break label;
            }
        };
        self.labels.insert(name.to_owned(), label.clone());
        self.names.insert(label.clone(), name.to_owned());
        Ok(self.origin_of(&label))
    }

    /// Extension `name`'s origin if it has one already.
    pub(crate) fn existing(&self, name: &str) -> Option<String> {
        self.labels.get(name).map(|label| self.origin_of(label))
    }

    fn origin_of(&self, label: &str) -> String {
        format!("http://{label}.localhost:{}", self.port)
    }

    /// Who the `Host` value is for; `None`: not allowed (a forged or rebound name).
    pub(crate) fn site(&self, host: &str) -> Option<Site> {
        let host = host.to_ascii_lowercase();
        let port = format!(":{}", self.port);
        if let Some(name) = host.strip_suffix(&port) {
            if name == "127.0.0.1" || name == "localhost" {
                return Some(Site::Shell);
            }
            if let Some(label) = name.strip_suffix(".localhost") {
                if let Some(extension) = self.names.get(label) {
                    return Some(Site::Extension(extension.clone()));
                }
            }
        }
        self.extra.contains(&host).then_some(Site::Extra)
    }
}

/// An extension name reduced to what a DNS label may hold: lowercase `[a-z0-9]`, at most 20.
fn label_base(name: &str) -> String {
    let base: String = name
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(LABEL_NAME_CHARS)
        .collect();
    if base.is_empty() { "ext".to_owned() } else { base }
}

/// Whether the request's `Origin` is exactly `expected` (a missing one is not).
pub(crate) fn origin_is(headers: &HeaderMap, expected: &[String]) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|origin| origin.to_str().ok())
        .is_some_and(|origin| expected.iter().any(|each| each == origin))
}

/// The headers every response carries.
pub(crate) fn add_common_headers(headers: &mut HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The Content-Security-Policy of the shell's documents, served on `port`.
pub(crate) fn shell_csp(port: u16) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src ws://127.0.0.1:{port} ws://localhost:{port}; \
         frame-src http://*.localhost:{port}; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The Content-Security-Policy of everything an extension's origin serves.
pub(crate) fn extension_csp(origin: &str, port: u16) -> String {
    let socket = origin.replacen("http://", "ws://", 1);
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         font-src 'self'; connect-src {socket}; base-uri 'none'; form-action 'none'; \
         frame-ancestors http://127.0.0.1:{port} http://localhost:{port}"
    )
}

/// Escapes text for an HTML attribute or element.
pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_only_what_a_dns_label_may_hold() {
        assert_eq!(label_base("Hello_World-2"), "helloworld2");
        assert_eq!(label_base("a".repeat(40).as_str()).len(), 20);
        assert_eq!(label_base("__"), "ext");
    }

    #[test]
    fn hosts_are_checked_against_the_shell_the_extensions_and_the_extras() {
        let mut origins = Origins::new(8080, &["app.example:443".to_owned()]);
        let origin = origins.extension("Probe").unwrap();
        assert!(origin.starts_with("http://probe-") && origin.ends_with(".localhost:8080"), "{origin}");
        assert_eq!(origins.extension("Probe").unwrap(), origin, "one origin per extension");
        let host = origin.trim_start_matches("http://");
        assert_eq!(origins.site(host), Some(Site::Extension("Probe".to_owned())));
        assert_eq!(origins.site("127.0.0.1:8080"), Some(Site::Shell));
        assert_eq!(origins.site("LOCALHOST:8080"), Some(Site::Shell));
        assert_eq!(origins.site("app.example:443"), Some(Site::Extra));
        assert_eq!(origins.site("127.0.0.1:8081"), None);
        assert_eq!(origins.site("evil.example:8080"), None);
        assert_eq!(origins.site("probe-00000000.localhost:8080"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
