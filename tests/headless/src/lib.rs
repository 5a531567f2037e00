//! Headless Chromium from Debian's packages (`/usr/bin/chromium`, or `$CHROMIUM`), driven over
//! the DevTools protocol (`cdp.rs`, on `--remote-debugging-pipe`): the browser harness of the
//! integration suite and of the benchmarks.
//!
//! A [`Browser`] is one Chromium with a fresh profile, killed when it drops (on a panic too;
//! and Chromium exits by itself when its pipe closes, so it never outlives its process). A
//! [`Tab`] is a page; a [`Session`] evaluates JavaScript in a page or in one of its
//! cross-origin iframes (out of process in Chromium: reached through `Target.setAutoAttach`
//! with `flatten: true`). Waiting is polling the page for a condition with a bounded deadline
//! ([`DEADLINE`]), never a fixed sleep. Everything that can fail returns an [`Error`] saying
//! what and why; nothing here panics.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod cdp;

use cdp::Cdp;

/// Where Debian's `chromium` package puts the browser.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Only a guard against a hang: every wait ends as soon as its condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a wait polls the page (it has no way to call us back).
const POLL: Duration = Duration::from_millis(15);

/// The flags every headless Chromium of ours runs with, the harness's and `cargo xtask
/// demo`'s (the network is closed: nothing in the background may try to reach it). Each adds
/// its DevTools endpoint: the harness a pipe, the demo a port.
pub const OFFLINE_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The flags with which a page is scheduled as a page in a foreground window is, as puppeteer
/// and playwright launch Chromium by default: no lowered priority for renderer processes it
/// deems in the background, no throttled timers, no backgrounding of windows it deems
/// occluded, and no IPC flooding protection. For measuring what a person's browser does with
/// the page in front of them (the benchmarks); not among [`OFFLINE_FLAGS`].
pub const FOREGROUND_FLAGS: &[&str] = &[
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-ipc-flooding-protection",
];

/// What went wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Chromium where it was looked for.
    #[error(
        "headless Chromium is needed, and `{}` ({}) does not exist. Install it with `sudo apt-get \
         update && sudo apt-get install -y --no-install-recommends chromium` (Debian/Ubuntu; `cargo \
         xtask test` does this itself when run as root), or set CHROMIUM to a Chromium or Chrome binary",
        path.display(),
        if *from_env { "CHROMIUM names" } else { "the default is" }
    )]
    NotInstalled { path: PathBuf, from_env: bool },
    /// The profile directory or the log file could not be made.
    #[error("cannot prepare Chromium's profile at {}: {source}", path.display())]
    Profile { path: PathBuf, source: std::io::Error },
    /// The DevTools pipe could not be set up.
    #[error("cannot set up the DevTools pipe: {0}")]
    Pipe(std::io::Error),
    /// The process did not start.
    #[error("cannot start Chromium ({}): {source}", program.display())]
    Launch { program: PathBuf, source: std::io::Error },
    /// It started but does not speak DevTools on its pipe.
    #[error("Chromium ({}) does not answer over its pipe: {source}\n{log}", program.display())]
    Unresponsive { program: PathBuf, source: Box<Error>, log: String },
    /// A command could not be written to the pipe.
    #[error("cannot send {method} to Chromium: {source}")]
    Send { method: String, source: std::io::Error },
    /// Chromium went away before replying.
    #[error("Chromium closed its pipe before answering {method}")]
    Closed { method: String },
    /// No reply in time.
    #[error("Chromium did not answer {method} within {timeout:?}")]
    Unanswered { method: String, timeout: Duration },
    /// Chromium answered the command with an error.
    #[error("{method} failed: {message}")]
    Protocol { method: String, message: String },
    /// A reply lacks what the command returns.
    #[error("Chromium's reply to {method} has no `{field}`: {reply}")]
    Reply { method: &'static str, field: &'static str, reply: Value },
    /// The evaluated expression threw (or its promise rejected).
    #[error("`{expression}` threw in {what}: {description}")]
    Thrown { expression: String, what: String, description: String },
    /// A condition polled for did not hold in time.
    #[error("`{expression}` not true in {what} within {timeout:?} ({last})")]
    NotTrue { expression: String, what: String, timeout: Duration, last: String },
    /// No iframe at the URL asked for.
    #[error("no iframe at {prefix}* in {what} within {timeout:?} (iframes: {seen:?})")]
    NoFrame { prefix: String, what: String, timeout: Duration, seen: Vec<String> },
    /// A closed tab is still listed.
    #[error("{what} is still open {timeout:?} after closing it")]
    NotClosed { what: String, timeout: Duration },
    /// No console line with these texts in time.
    #[error("no console line with {needles:?} within {timeout:?}")]
    NoConsoleLine { needles: Vec<String>, timeout: Duration },
    /// The browser is gone: no more console lines.
    #[error("the console stream ended: {0}")]
    ConsoleEnded(tokio::sync::broadcast::error::RecvError),
    /// What follows a console needle is not JSON.
    #[error("`{text}` after `{needle}` is not JSON: {source}")]
    NotJson { needle: String, text: String, source: serde_json::Error },
    /// The page server could not listen on loopback.
    #[error("cannot serve pages on 127.0.0.1: {0}")]
    Serve(std::io::Error),
    /// A screenshot's data is not base64.
    #[error("the screenshot is not base64: {0}")]
    Screenshot(#[from] base64::DecodeError),
}

/// A GET request to [`serve_pages`]'s server.
#[derive(Debug)]
pub struct Request<'a> {
    /// The `Host` header, lowercased (`127.0.0.1:PORT`, `a.localhost:PORT`).
    pub host: &'a str,
    /// The request's path (`/`).
    pub path: &'a str,
    /// The server's port.
    pub port: u16,
}

/// What [`serve`] answers a GET with: `200`, its content type, extra headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The `content-type` (`text/html; charset=utf-8`, `text/javascript`).
    pub content_type: &'static str,
    /// Further headers (name, value), such as a `content-security-policy`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// An HTML page, with no further headers.
    pub fn html(body: String) -> Response {
        Response { content_type: "text/html; charset=utf-8", headers: Vec::new(), body }
    }
}

/// A tiny HTTP server on `127.0.0.1` for pages of one's own (a test's, a benchmark's): each
/// GET is answered by `page`, `Some(html)` as `200 text/html`, `None` as 404; one request per
/// connection. It runs on the current Tokio runtime until that ends. Its port.
pub async fn serve_pages<F>(page: F) -> Result<u16, Error>
where
    F: Fn(&Request<'_>) -> Option<String> + Send + Sync + 'static,
{
    serve(move |request| page(request).map(Response::html)).await
}

/// [`serve_pages`], each GET answered with a [`Response`] of its own (its content type and
/// headers), `None` as 404.
pub async fn serve<F>(page: F) -> Result<u16, Error>
where
    F: Fn(&Request<'_>) -> Option<Response> + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(Error::Serve)?;
    let port = listener.local_addr().map_err(Error::Serve)?.port();
    let page = Arc::new(page);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_lowercase();
                let mut words = request.split_whitespace();
                let path = match (words.next(), words.next()) {
                    (Some("get"), Some(path)) => path,
                    _ => "",
                };
                let host = request.lines().find_map(|line| line.strip_prefix("host:")).unwrap_or_default().trim();
                let answer = if path.is_empty() { None } else { page(&Request { host, path, port }) };
                let response = match answer {
                    Some(Response { content_type, headers, body }) => {
                        let headers: String =
                            headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{headers}\
                             connection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

/// The Chromium binary to run: `chosen` (the value of `$CHROMIUM`) or [`DEFAULT_CHROMIUM`];
/// [`Error::NotInstalled`], saying how to install it, if it is not there.
pub fn chromium_path(chosen: Option<OsString>) -> Result<PathBuf, Error> {
    let from_env = chosen.is_some();
    let path = chosen.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    if path.is_file() { Ok(path) } else { Err(Error::NotInstalled { path, from_env }) }
}

/// One headless Chromium, with a profile of its own; killed when dropped.
pub struct Browser {
    cdp: Arc<Cdp>,
    child: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts `program` (see [`chromium_path`]) with a fresh profile in `profile` (created; it
    /// and the log beside it, `chromium.log`, are removed when the browser drops), and waits
    /// until it answers over its pipe.
    pub async fn launch(program: &Path, profile: PathBuf) -> Result<Browser, Error> {
        Browser::launch_with(program, profile, &[]).await
    }

    /// [`Browser::launch`], with `flags` after [`OFFLINE_FLAGS`] (such as
    /// [`FOREGROUND_FLAGS`], or `--host-resolver-rules=MAP app.test 127.0.0.1` for a name of the
    /// test's own).
    pub async fn launch_with(program: &Path, profile: PathBuf, flags: &[&str]) -> Result<Browser, Error> {
        let prepare = |path: &Path, source| Error::Profile { path: path.to_owned(), source };
        std::fs::create_dir_all(&profile).map_err(|source| prepare(&profile, source))?;
        // Until the browser owns them (its drop removes them), they go on every error below.
        let made = Made(Some(profile));
        let profile = made.path();
        let log_path = profile.with_file_name("chromium.log");
        let log = std::fs::File::create(&log_path).map_err(|source| prepare(&log_path, source))?;
        let scratch = profile.join("tmp");
        std::fs::create_dir_all(&scratch).map_err(|source| prepare(&scratch, source))?;
        let (ours, theirs) = UnixStream::pair().map_err(Error::Pipe)?;
        // Above fds 3 and 4 (which it must end up on in the child): dup2 onto itself would
        // keep close-on-exec.
        let theirs = raise_fd(theirs.into())?;
        let mut command = Command::new(program);
        command
            .args(OFFLINE_FLAGS)
            .args(flags)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.display()))
            // Its singleton directory (org.chromium.Chromium.*, which a killed browser leaves)
            // goes in the profile, and goes with it.
            .env("TMPDIR", &scratch)
            // A group of its own: dropping the browser kills its helper processes with it
            // (they write into the profile until they die).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        let onto_3_and_4 = move || {
            for target in [3, 4] {
                // SAFETY: `raw` is open in the child (the parent keeps `theirs` until after the
                // spawn); fd 3/4 of the child become the pipe, and the returned OwnedFd is
                // forgotten, so nothing closes it.
                let duplicated = unsafe { nix::unistd::dup2_raw(std::os::fd::BorrowedFd::borrow_raw(raw), target) }
                    .map_err(std::io::Error::from)?;
                std::mem::forget(duplicated);
            }
            Ok(())
        };
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it only calls dup2 (through nix, no allocation).
        unsafe { command.pre_exec(onto_3_and_4) };
        let child = command.spawn().map_err(|source| Error::Launch { program: program.to_owned(), source })?;
        drop(theirs);
        let cdp = match Cdp::start(ours) {
            Ok(cdp) => cdp,
            Err(error) => {
                let mut child = child;
                end(&mut child);
                return Err(error);
            }
        };
        let browser = Browser { cdp, child, profile: made.keep() };
        if let Err(error) = browser.cdp.call(None, "Browser.getVersion", json!({})).await {
            let log = browser.log();
            return Err(Error::Unresponsive { program: program.to_owned(), source: Box::new(error), log });
        }
        Ok(browser)
    }

    /// The browser's name and version (`HeadlessChrome/…`: `Browser.getVersion`'s `product`).
    pub async fn version(&self) -> Result<String, Error> {
        const VERSION: &str = "Browser.getVersion";
        let reply = self.cdp.call(None, VERSION, json!({})).await?;
        string_field(&reply, VERSION, "product")
    }

    /// The browser process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Chromium's own log (its stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.with_file_name("chromium.log")).unwrap_or_default()
    }

    /// Opens a tab at `url`. Its cross-origin iframes are attached as they appear, and their
    /// console is recorded from their first line. Returns once the navigation started; wait
    /// for what is needed with [`Session::wait_for`].
    pub async fn open(&self, url: &str) -> Result<Tab, Error> {
        const CREATE: &str = "Target.createTarget";
        const ATTACH: &str = "Target.attachToTarget";
        let created = self.cdp.call(None, CREATE, json!({ "url": "about:blank" })).await?;
        let target = string_field(&created, CREATE, "targetId")?;
        let attached = self.cdp.call(None, ATTACH, json!({ "targetId": target, "flatten": true })).await?;
        let session = string_field(&attached, ATTACH, "sessionId")?;
        self.cdp.name_session(&session, &format!("tab {url}"));
        let page = Session { cdp: self.cdp.clone(), id: session, what: format!("the tab at {url}") };
        page.command("Runtime.enable", json!({})).await?;
        page.command("Log.enable", json!({})).await?;
        page.command("Page.enable", json!({})).await?;
        page.command(
            "Target.setAutoAttach",
            json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        )
        .await?;
        page.command("Page.navigate", json!({ "url": url })).await?;
        Ok(Tab { page, target })
    }

    /// The console lines of every page and frame from now on (`[what] console.log: text`).
    pub fn console(&self) -> Console {
        Console { lines: self.cdp.subscribe() }
    }

    /// The ids of the open tabs (page targets).
    pub async fn tabs(&self) -> Result<Vec<String>, Error> {
        let targets = self.cdp.call(None, "Target.getTargets", json!({})).await?;
        Ok(page_targets(&targets))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        end(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(self.profile.with_file_name("chromium.log"));
    }
}

/// Kills Chromium's whole process group (it leads it: its helpers write into the profile until
/// they die), then the browser itself should the group be gone already, and reaps it.
fn end(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A profile directory [`Browser::launch`] made, removed with the log beside it when this
/// drops unless [`Made::keep`] took it.
struct Made(Option<PathBuf>);

impl Made {
    fn path(&self) -> PathBuf {
        self.0.clone().unwrap_or_default()
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if let Some(profile) = self.0.take() {
            let _ = std::fs::remove_dir_all(&profile);
            let _ = std::fs::remove_file(profile.with_file_name("chromium.log"));
        }
    }
}

/// The ids of the page targets in a `Target.getTargets` reply.
fn page_targets(targets: &Value) -> Vec<String> {
    targets["targetInfos"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .filter(|info| info["type"] == "page")
                .filter_map(|info| info["targetId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The string `field` of `method`'s reply.
fn string_field(reply: &Value, method: &'static str, field: &'static str) -> Result<String, Error> {
    reply[field].as_str().map(str::to_owned).ok_or_else(|| Error::Reply { method, field, reply: reply.clone() })
}

/// A copy of `fd` numbered 10 or more (close-on-exec; the child's copies are made by dup2).
fn raise_fd(fd: OwnedFd) -> Result<OwnedFd, Error> {
    use std::os::fd::FromRawFd;
    let raised = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|errno| Error::Pipe(errno.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raised) })
}

/// Console lines as they arrive (see [`Browser::console`]).
pub struct Console {
    lines: tokio::sync::broadcast::Receiver<String>,
}

impl Console {
    /// The next line (lines missed because this reader lagged are skipped).
    async fn next(&mut self) -> Result<String, Error> {
        loop {
            match self.lines.recv().await {
                Ok(line) => return Ok(line),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => return Err(Error::ConsoleEnded(error)),
            }
        }
    }

    /// Waits for the next console line containing `needle`; returns the text after it.
    pub async fn wait(&mut self, needle: &str) -> Result<String, Error> {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let line = self.next().await?;
                if let Some(at) = line.find(needle) {
                    return Ok(line[at + needle.len()..].trim().to_owned());
                }
            }
        });
        found.await.map_err(|_| Error::NoConsoleLine { needles: vec![needle.to_owned()], timeout: DEADLINE })?
    }

    /// Waits for a line containing each of `needles`, in any order; the rest of each line
    /// (after its needle) parsed as JSON, in the order of `needles`.
    pub async fn wait_all<const N: usize>(&mut self, needles: [&str; N]) -> Result<[Value; N], Error> {
        let mut found: [Option<Value>; N] = std::array::from_fn(|_| None);
        let collected = tokio::time::timeout(DEADLINE, async {
            while found.iter().any(Option::is_none) {
                let line = self.next().await?;
                for (needle, slot) in needles.iter().zip(found.iter_mut()) {
                    if let Some(at) = line.find(needle)
                        && slot.is_none()
                    {
                        *slot = Some(parse(needle, &line[at + needle.len()..])?);
                    }
                }
            }
            Ok::<_, Error>(())
        });
        if let Ok(outcome) = collected.await {
            outcome?;
            return Ok(found.map(|slot| slot.unwrap_or(Value::Null)));
        }
        let missing =
            needles.iter().zip(&found).filter(|(_, slot)| slot.is_none()).map(|(needle, _)| (*needle).to_owned());
        Err(Error::NoConsoleLine { needles: missing.collect(), timeout: DEADLINE })
    }

    /// The lines from now until the first containing `needle` (that one included).
    pub async fn until(&mut self, needle: &str) -> Result<Vec<String>, Error> {
        let mut lines = Vec::new();
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let line = self.next().await?;
                let done = line.contains(needle);
                lines.push(line);
                if done {
                    return Ok::<_, Error>(());
                }
            }
        });
        found.await.map_err(|_| Error::NoConsoleLine { needles: vec![needle.to_owned()], timeout: DEADLINE })??;
        Ok(lines)
    }

    /// [`Console::wait`], the rest of the line parsed as JSON.
    pub async fn wait_json(&mut self, needle: &str) -> Result<Value, Error> {
        let rest = self.wait(needle).await?;
        parse(needle, &rest)
    }
}

/// `rest` (what followed `needle` on a console line) as JSON.
fn parse(needle: &str, rest: &str) -> Result<Value, Error> {
    let text = rest.trim();
    serde_json::from_str(text).map_err(|source| Error::NotJson {
        needle: needle.to_owned(),
        text: text.to_owned(),
        source,
    })
}

/// Where JavaScript runs: a page, or one of its out-of-process iframes.
#[derive(Clone)]
pub struct Session {
    cdp: Arc<Cdp>,
    id: String,
    what: String,
}

impl Session {
    /// Sends a DevTools command to this page or frame; its result.
    pub async fn command(&self, method: &str, params: Value) -> Result<Value, Error> {
        self.cdp.call(Some(&self.id), method, params).await
    }

    /// Evaluates `expression` (awaiting it if it is a promise) and returns its value as JSON
    /// (`null` for `undefined`; a BigInt or another value JSON cannot hold, as its text, such as
    /// `"18446744073709551615n"`); [`Error::Thrown`] with the exception's description if it
    /// threw.
    pub async fn eval(&self, expression: &str) -> Result<Value, Error> {
        let params = json!({
            "expression": expression,
            "awaitPromise": true,
            "returnByValue": true,
            "userGesture": true,
        });
        let reply = self.command("Runtime.evaluate", params).await?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
            return Err(Error::Thrown {
                expression: expression.to_owned(),
                what: self.what.clone(),
                description: text.to_owned(),
            });
        }
        let result = &reply["result"];
        Ok(match result.get("unserializableValue").and_then(Value::as_str) {
            Some(text) => Value::String(text.to_owned()),
            None => result.get("value").cloned().unwrap_or(Value::Null),
        })
    }

    /// Polls `expression` until its value is truthy; returns that value. [`Error::NotTrue`]
    /// after [`DEADLINE`], with the last value or exception.
    pub async fn wait_for(&self, expression: &str) -> Result<Value, Error> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = match self.eval(expression).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => format!("last value {value}"),
                Err(Error::Thrown { description, .. }) => format!("last error {description}"),
                Err(error) => return Err(error),
            };
            if Instant::now() > deadline {
                return Err(Error::NotTrue {
                    expression: expression.to_owned(),
                    what: self.what.clone(),
                    timeout: DEADLINE,
                    last,
                });
            }
            // Polling the page, not synchronising: the page has no way to call us back.
            tokio::time::sleep(POLL).await; // SLEEP-OK: polling the page, see above
        }
    }

    /// The newest lines of every page's and frame's console (for failure messages).
    pub fn console(&self) -> String {
        format!("console (newest last):\n{}", self.cdp.console_tail(60))
    }
}

/// JavaScript's truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A tab: its page's [`Session`] (through `Deref`), and the iframes in it.
pub struct Tab {
    page: Session,
    target: String,
}

impl std::ops::Deref for Tab {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.page
    }
}

impl Tab {
    /// The page's session.
    pub fn page(&self) -> &Session {
        &self.page
    }

    /// The out-of-process iframe (at any depth) whose `location.href` starts with `prefix`,
    /// once it is there and its document has loaded.
    pub async fn frame(&self, prefix: &str) -> Result<Session, Error> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            let mut queue = vec![self.page.id.clone()];
            while let Some(parent) = queue.pop() {
                for child in self.page.cdp.children(&parent) {
                    queue.push(child.session.clone());
                    if child.kind != "iframe" {
                        continue;
                    }
                    let session =
                        Session { cdp: self.page.cdp.clone(), id: child.session.clone(), what: String::new() };
                    if let Ok(Value::String(href)) = session.eval("location.href").await {
                        if href.starts_with(prefix) {
                            return Ok(Session { what: format!("the iframe at {href}"), ..session });
                        }
                        seen.push(href);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::NoFrame {
                    prefix: prefix.to_owned(),
                    what: self.page.what.clone(),
                    timeout: DEADLINE,
                    seen,
                });
            }
            tokio::time::sleep(POLL).await; // SLEEP-OK: polling the page, see `Session::wait_for`
        }
    }

    /// Reloads the page (its iframes are new documents afterwards: ask [`Tab::frame`] again).
    pub async fn reload(&self) -> Result<(), Error> {
        self.page.command("Page.reload", json!({ "ignoreCache": true })).await.map(drop)
    }

    /// Makes this the browser's active tab (as a person switching to it would).
    pub async fn bring_to_front(&self) -> Result<(), Error> {
        self.page.command("Page.bringToFront", json!({})).await.map(drop)
    }

    /// Closes the tab, as a person closing it would; returns once the browser no longer lists
    /// it (closing is asynchronous in Chromium).
    pub async fn close(self) -> Result<(), Error> {
        let cdp = &self.page.cdp;
        cdp.call(None, "Target.closeTarget", json!({ "targetId": self.target })).await?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let targets = cdp.call(None, "Target.getTargets", json!({})).await?;
            if !page_targets(&targets).contains(&self.target) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotClosed { what: self.page.what.clone(), timeout: DEADLINE });
            }
            tokio::time::sleep(POLL).await; // SLEEP-OK: polling the browser, see `Session::wait_for`
        }
    }

    /// The tab's target id (as [`Browser::tabs`] lists it).
    pub fn id(&self) -> &str {
        &self.target
    }

    /// Sets the page's viewport (CSS pixels), for screenshots of a known size.
    pub async fn set_viewport(&self, width: u32, height: u32) -> Result<(), Error> {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.page.command("Emulation.setDeviceMetricsOverride", metrics).await.map(drop)
    }

    /// A PNG of the page as it is drawn now.
    pub async fn screenshot(&self) -> Result<Vec<u8>, Error> {
        use base64::Engine;
        const CAPTURE: &str = "Page.captureScreenshot";
        let shot = self.page.command(CAPTURE, json!({ "format": "png" })).await?;
        let data = string_field(&shot, CAPTURE, "data")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{Browser, Error};

    #[test]
    fn a_browser_that_cannot_start_leaves_no_profile_behind() {
        let scratch = std::env::temp_dir().join(format!("headless-test-no-chromium-{}", std::process::id()));
        let profile = scratch.join("profile");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let launched = runtime.block_on(Browser::launch(&scratch.join("no-such-chromium"), profile.clone()));
        assert!(matches!(launched, Err(Error::Launch { .. })), "{:?}", launched.err());
        assert!(!profile.exists(), "the profile {} is left behind", profile.display());
        assert!(!scratch.join("chromium.log").exists(), "the log is left behind");
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    #[test]
    fn a_dropped_browser_leaves_nothing_behind() {
        let Ok(program) = super::chromium_path(std::env::var_os("CHROMIUM")) else {
            panic!("no Chromium: install it (apt-get install chromium) or set CHROMIUM");
        };
        let scratch = std::env::temp_dir().join(format!("headless-test-drop-{}", std::process::id()));
        let profile = scratch.join("profile");
        // Chromium's singleton directories in the temp dir (a killed browser leaves its own).
        let singletons = || -> std::collections::BTreeSet<_> {
            std::fs::read_dir(std::env::temp_dir())
                .unwrap()
                .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
                .filter(|name| name.to_string_lossy().starts_with("org.chromium.Chromium."))
                .collect()
        };
        let before = singletons();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let browser = Browser::launch(&program, profile.clone()).await.unwrap();
            // A page, so that Chromium's helper processes run and write into the profile.
            let tab = browser.open("data:text/html,<p>hi</p>").await.unwrap();
            tab.page.wait_for("document.readyState === 'complete'").await.unwrap();
            drop(tab);
            drop(browser);
        });
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().map(|entry| entry.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let new: Vec<_> = singletons().difference(&before).cloned().collect();
        assert!(new.is_empty(), "left behind in the temp dir: {new:?}");
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
