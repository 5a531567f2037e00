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
    /// [`crate::web::WebConfig::shell_origins`], validated: an application's own shells.
    app_shells: Vec<String>,
    /// Extension name → its label.
    labels: BTreeMap<String, String>,
    /// Label → extension name.
    names: BTreeMap<String, String>,
}

impl Origins {
    pub(crate) fn new(port: u16, extra: &[String], app_shells: Vec<String>) -> Origins {
        Origins {
            port,
            extra: extra.iter().map(|host| host.to_ascii_lowercase()).collect(),
            app_shells,
            labels: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    /// The origins a shell may be served from: the host's own (both names, then each of
    /// [`crate::web::WebConfig::allowed_hosts`], over `http:` and, behind a proxy that adds
    /// TLS, `https:`), then the application's. An upgrade to the shell socket must come from
    /// one of these; they are the only ancestors an extension's document may have, and the
    /// only parents its bootstrap takes a token from. An allowed host is a name the embedder
    /// vouched for (not one a rebinding attacker chose): its shell is the host's shell.
    /// Each once, where it first comes (an allowed host `localhost:PORT`, or an application's
    /// shell that is one of the others, adds nothing).
    pub(crate) fn shell_origins(&self) -> Vec<String> {
        let mut origins = vec![format!("http://127.0.0.1:{}", self.port), format!("http://localhost:{}", self.port)];
        for host in &self.extra {
            origins.extend(extra_origins(host));
        }
        origins.extend(self.app_shells.iter().cloned());
        let mut seen = BTreeSet::new();
        origins.retain(|origin| seen.insert(origin.clone()));
        origins
    }

    /// The origins that may open the shell socket with a request for `site` whose `Host` is
    /// `host` (lowercased): the host's own and the application's shells, and an allowed
    /// host's origins only through that name. A page on such an origin not served through it
    /// (the name's other scheme, which a network attacker can serve when a proxy adds TLS;
    /// another server of that name) does not get the socket, and every token of its frame, by
    /// connecting to `127.0.0.1` directly.
    pub(crate) fn socket_origins(&self, site: &Site, host: &str) -> Vec<String> {
        let mut origins: Vec<String> =
            self.shell_origins().into_iter().filter(|origin| !self.is_extra_origin(origin)).collect();
        if *site == Site::Extra {
            origins.extend(extra_origins(host));
        }
        origins
    }

    /// Whether `origin` is an allowed host's and neither the host's own nor an application's.
    fn is_extra_origin(&self, origin: &str) -> bool {
        let own = [format!("http://127.0.0.1:{}", self.port), format!("http://localhost:{}", self.port)];
        !own.iter().any(|each| each == origin)
            && !self.is_app_shell(origin)
            && self.extra.iter().any(|host| extra_origins(host).iter().any(|each| each == origin))
    }

    /// Whether `origin` is one of the application's own shells (which may load the host's
    /// embeddable scripts across origins).
    pub(crate) fn is_app_shell(&self, origin: &str) -> bool {
        self.app_shells.iter().any(|each| each == origin)
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

/// The origins of a shell served under allowed host `host` (`name[:port]`): over `http:` and,
/// behind a proxy that adds TLS, `https:`, the scheme's default port left out.
fn extra_origins(host: &str) -> [String; 2] {
    let http = host.strip_suffix(":80").unwrap_or(host);
    let https = host.strip_suffix(":443").unwrap_or(host);
    [format!("http://{http}"), format!("https://{https}")]
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

/// The Content-Security-Policy of the shell's documents, served on `port`; `allowed_host`:
/// served under that name of [`crate::web::WebConfig::allowed_hosts`], whose socket it opens.
pub(crate) fn shell_csp(port: u16, allowed_host: Option<&str>) -> String {
    let named = allowed_host.map(|host| format!(" ws://{host} wss://{host}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src ws://127.0.0.1:{port} ws://localhost:{port}{named}; \
         frame-src http://*.localhost:{port}; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// Checks one of [`crate::web::WebConfig::allowed_hosts`]: a `Host` value, `name[:port]`, as
/// a browser sends it (no scheme or path, no default port; it also becomes a shell's origin,
/// so it obeys [`shell_origin`]'s rules). Returns it lowercased, or why it is not one.
pub(crate) fn allowed_host(entry: &str) -> Result<String, String> {
    if entry.contains("://") {
        return Err("a `Host` value is `name[:port]`, with no scheme".into());
    }
    // An entry checked as the origin it becomes: a correction is said as a `Host` value.
    let origin = shell_origin(&format!("http://{entry}")).map_err(|reason| reason.replace("`http://", "`"))?;
    Ok(origin.trim_start_matches("http://").to_owned())
}

/// The Content-Security-Policy of everything an extension's origin serves: it may be framed
/// by the shells' origins only (`shells`, from [`Origins::shell_origins`]).
pub(crate) fn extension_csp(origin: &str, shells: &[String]) -> String {
    let socket = origin.replacen("http://", "ws://", 1);
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         font-src 'self'; connect-src {socket}; base-uri 'none'; form-action 'none'; \
         frame-ancestors {}",
        shells.join(" ")
    )
}

/// Checks one of [`crate::web::WebConfig::shell_origins`]: an exact origin,
/// `scheme://host[:port]`, as a browser writes it in `Origin` (lowercase; no default port).
/// Returns it lowercased, or why it is not one.
pub(crate) fn shell_origin(entry: &str) -> Result<String, String> {
    if entry.eq_ignore_ascii_case("null") {
        return Err("`null` is the origin of every sandboxed, file and data page: any of them would pass".into());
    }
    if entry.contains('*') {
        return Err("wildcards are not allowed: list each origin exactly".into());
    }
    let origin = entry.to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err("not an origin: expected `scheme://host[:port]`".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("the scheme is not a URL scheme (a letter, then letters, digits, `+`, `-`, `.`)".into());
    }
    if matches!(scheme, "file" | "data" | "blob" | "about" | "javascript" | "filesystem" | "ws" | "wss") {
        return Err(format!(
            "`{scheme}:` is never in a page's `Origin` (a browser sends `null` for such a page, or it is \
             not a page's scheme): this entry could never match"
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment (nor a trailing `/`): `scheme://host[:port]`".into());
    }
    if authority.contains('@') {
        return Err("an origin has no user name or password".into());
    }
    let (host, port) = match authority.find(']') {
        // `[v6]` or `[v6]:port`
        Some(end) if authority.starts_with('[') => match &authority[end + 1..] {
            "" => (authority, None),
            rest => (&authority[..=end], Some(rest.strip_prefix(':').unwrap_or(rest))),
        },
        _ => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.starts_with('[') {
        // CSP's host-source grammar has no IPv6 literal: Chromium drops such a source, so
        // `frame-ancestors` would never let this shell frame an extension's document.
        return Err("an IPv6 address cannot be named in a Content-Security-Policy (`frame-ancestors` would \
                    refuse the shell every iframe): serve the shell on 127.0.0.1 or a name such as localhost"
            .into());
    }
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok {
        return Err("the host is empty or has characters a host name cannot have".into());
    }
    if let Some(address) = ipv4_host(host)? {
        if address != host {
            return Err(match port {
                Some(port) => format!("a browser writes it as `{scheme}://{address}:{port}`: list it so"),
                None => format!("a browser writes it as `{scheme}://{address}`: list it so"),
            });
        }
    }
    if let Some(port) = port {
        let number = port.parse::<u16>().ok().filter(|number| *number != 0 && !port.starts_with(['0', '+']));
        if number.is_none() {
            return Err("the port is not a number from 1 to 65535".into());
        }
        if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
            return Err("a browser leaves the scheme's default port out of an origin: drop it".into());
        }
    }
    Ok(origin)
}

/// A host a browser reads as an IPv4 address (its last label is a number, as the URL
/// standard says), in the dotted decimal a browser writes in `Origin`; `None` for a name.
fn ipv4_host(host: &str) -> Result<Option<String>, String> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let number = |part: &str| -> Option<u64> {
        if let Some(hex) = part.strip_prefix("0x") {
            return if hex.is_empty() { Some(0) } else { u64::from_str_radix(hex, 16).ok() };
        }
        if part.len() > 1 && part.starts_with('0') {
            return u64::from_str_radix(&part[1..], 8).ok();
        }
        part.parse().ok()
    };
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    if !numeric {
        return Ok(None);
    }
    let not_ipv4 = || format!("a browser reads {host} as an IPv4 address, and it is not an IPv4 address");
    let parts = trimmed.split('.').map(number).collect::<Option<Vec<u64>>>().ok_or_else(not_ipv4)?;
    let Some((last, leading)) = parts.split_last() else {
        return Err(not_ipv4());
    };
    let leading_bytes = u32::try_from(leading.len()).map_err(|_| not_ipv4())?;
    if leading.len() > 3 || leading.iter().any(|part| *part > 255) || *last >= 1u64 << (8 * (4 - leading_bytes)) {
        return Err(not_ipv4());
    }
    let address = leading.iter().enumerate().fold(*last, |address, (i, part)| address + (part << (8 * (3 - i))));
    let address = u32::try_from(address).map_err(|_| not_ipv4())?;
    Ok(Some(std::net::Ipv4Addr::from(address).to_string()))
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
        let mut origins = Origins::new(8080, &["app.example:443".to_owned()], Vec::new());
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
    fn the_shells_origins_list_each_once_in_order() {
        let extra = ["localhost:8080".to_owned(), "app.example".to_owned()];
        let app_shells =
            ["http://127.0.0.1:8080", "http://app.example", "app://x", "https://localhost:8080", "app://x"];
        let origins = Origins::new(8080, &extra, app_shells.iter().map(|origin| (*origin).to_owned()).collect());
        assert_eq!(
            origins.shell_origins(),
            [
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "http://app.example",
                "https://app.example",
                "https://localhost:8080",
                "app://x",
            ]
        );
        // The socket's list, for a request through the shell's own name, drops the allowed
        // hosts' origins that are no one else's, and still lists each once.
        assert_eq!(
            origins.socket_origins(&Site::Shell, "127.0.0.1:8080"),
            [
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "http://app.example",
                "https://localhost:8080",
                "app://x"
            ]
        );
    }

    #[test]
    fn shell_origins_are_exact_origins() {
        assert_eq!(shell_origin("http://127.0.0.1:3000"), Ok("http://127.0.0.1:3000".to_owned()));
        assert_eq!(shell_origin("APP://Dashboard"), Ok("app://dashboard".to_owned()));
        assert_eq!(shell_origin("http://10.0.0.1"), Ok("http://10.0.0.1".to_owned()));
        assert_eq!(shell_origin("http://app1.example:8080"), Ok("http://app1.example:8080".to_owned()));
        for (bad, why) in [
            ("null", "`null`"),
            ("NULL", "`null`"),
            ("http://*.example", "wildcards"),
            ("*", "wildcards"),
            ("http://app.example/", "no path"),
            ("http://app.example/shell", "no path"),
            ("http://app.example?x", "no path"),
            ("app.example:3000", "not an origin"),
            ("1http://a", "scheme"),
            ("http://user@a", "user name"),
            ("http://", "host"),
            ("http://a b", "host"),
            ("https://[::1]:8443", "IPv6"),
            ("http://[::1]", "IPv6"),
            ("file://localhost", "never in a page's"),
            ("wss://a", "never in a page's"),
            ("http://127.1:3000", "writes it as `http://127.0.0.1:3000`"),
            ("http://0177.0.0.1", "writes it as `http://127.0.0.1`"),
            ("http://0x7f000001:1", "writes it as `http://127.0.0.1:1`"),
            ("http://1.2.3.4.5", "not an IPv4"),
            ("http://1.2.65536", "not an IPv4"),
            ("http://a:99999", "port"),
            ("http://a:", "port"),
            ("http://a:0", "port"),
            ("http://a:80", "default port"),
            ("https://a:443", "default port"),
        ] {
            let reason = shell_origin(bad).expect_err(bad);
            assert!(reason.contains(why), "{bad}: {reason}");
        }
    }

    #[test]
    fn the_shell_origins_are_the_hosts_then_the_applications() {
        let origins =
            Origins::new(8080, &[], vec!["http://127.0.0.1:8080".to_owned(), "http://127.0.0.1:3000".to_owned()]);
        assert_eq!(
            origins.shell_origins(),
            ["http://127.0.0.1:8080", "http://localhost:8080", "http://127.0.0.1:3000"],
            "once each"
        );
        assert!(origins.is_app_shell("http://127.0.0.1:3000"));
        assert!(!origins.is_app_shell("http://localhost:8080"));
        let named = Origins::new(8080, &["app.test:8080".to_owned(), "proxy.test:443".to_owned()], Vec::new());
        assert_eq!(
            named.shell_origins(),
            [
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "http://app.test:8080",
                "https://app.test:8080",
                "http://proxy.test:443",
                "https://proxy.test"
            ],
            "an allowed host's shell is a shell"
        );
        let own = ["http://127.0.0.1:8080", "http://localhost:8080"];
        assert_eq!(named.socket_origins(&Site::Shell, "127.0.0.1:8080"), own, "not through the name");
        assert_eq!(
            named.socket_origins(&Site::Extra, "proxy.test:443"),
            [own[0], own[1], "http://proxy.test:443", "https://proxy.test"],
            "through the name: its own origins only"
        );
        assert_eq!(allowed_host("App.Test:8080"), Ok("app.test:8080".to_owned()));
        for (bad, why) in [("http://app.test", "no scheme"), ("app.test/x", "no path"), ("*.test", "wildcards")] {
            let reason = allowed_host(bad).expect_err(bad);
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        let csp = extension_csp("http://a-1.localhost:8080", &origins.shell_origins());
        assert!(
            csp.ends_with("frame-ancestors http://127.0.0.1:8080 http://localhost:8080 http://127.0.0.1:3000"),
            "{csp}"
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
