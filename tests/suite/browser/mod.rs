//! The browser harness: headless Chromium from Debian's packages (`/usr/bin/chromium`, or
//! `$CHROMIUM`), driven over the DevTools protocol (`cdp.rs`, on `--remote-debugging-pipe`).
//! A [`Browser`] is one Chromium with a fresh profile in the test's temp dir, killed when it
//! drops (on a panic too; and Chromium exits by itself when its pipe closes, so it never
//! outlives the test process). A [`Tab`] is a page; a [`Session`] evaluates JavaScript in a
//! page or in one of its cross-origin iframes (out of process in Chromium: reached through
//! `Target.setAutoAttach` with `flatten: true`). Waiting is polling the page for a condition
//! with a bounded deadline, never a fixed sleep. Missing Chromium fails the test, saying how
//! to install it: the browser tests are never skipped.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod cdp;
mod errors;
mod isolation;
mod lifecycle;
mod ordering;
mod screenshot;
mod selftest;
mod store;
mod values;
mod web;

use cdp::Cdp;

/// Where Debian's `chromium` package puts the browser.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Only a guard against a hung test: every wait ends as soon as its condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The flags every Chromium of the suite runs with (the network is closed: nothing in the
/// background may try to reach it).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
];

/// The Chromium binary to run: `chosen` (the value of `$CHROMIUM`) or [`DEFAULT_CHROMIUM`];
/// an error saying how to install it if it is not there.
pub fn chromium_path(chosen: Option<OsString>) -> Result<PathBuf, String> {
    let from_env = chosen.is_some();
    let path = chosen.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    if path.is_file() {
        return Ok(path);
    }
    let which = if from_env { "CHROMIUM names" } else { "the default is" };
    Err(format!(
        "the browser tests need headless Chromium, and `{}` ({which}) does not exist. Install it \
         with `sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium` \
         (Debian/Ubuntu; `cargo xtask test` does this itself when run as root), or set CHROMIUM \
         to a Chromium or Chrome binary",
        path.display()
    ))
}

/// One headless Chromium, with a profile of its own; killed when dropped.
pub struct Browser {
    cdp: Arc<Cdp>,
    child: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium (`$CHROMIUM` or [`DEFAULT_CHROMIUM`]); panics saying how to install it
    /// if it is missing, or with its log if it does not answer.
    pub async fn launch() -> Browser {
        let program = chromium_path(std::env::var_os("CHROMIUM")).unwrap_or_else(|message| panic!("{message}"));
        let profile = crate::loading::tempdir().join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("the profile directory is created");
        let log = std::fs::File::create(profile.with_file_name("chromium.log")).expect("the log file is created");
        let (ours, theirs) = UnixStream::pair().expect("a socket pair for the DevTools pipe");
        // Above fds 3 and 4 (which it must end up on in the child): dup2 onto itself would
        // keep close-on-exec.
        let theirs = raise_fd(theirs.into());
        let mut command = Command::new(&program);
        command
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
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
        let child =
            command.spawn().unwrap_or_else(|error| panic!("cannot start Chromium ({}): {error}", program.display()));
        drop(theirs);
        let browser = Browser { cdp: Cdp::start(ours), child, profile };
        if let Err(error) = browser.cdp.call(None, "Browser.getVersion", json!({})).await {
            panic!("Chromium ({}) does not answer over its pipe: {error}\n{}", program.display(), browser.log());
        }
        browser
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
    /// for what the test needs with [`Session::wait_for`].
    pub async fn open(&self, url: &str) -> Tab {
        let created = self.command(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let target = created["targetId"].as_str().expect("a target id").to_owned();
        let attached =
            self.command(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true })).await;
        let session = attached["sessionId"].as_str().expect("a session id").to_owned();
        self.cdp.name_session(&session, &format!("tab {url}"));
        let page = Session { cdp: self.cdp.clone(), id: session, what: format!("the tab at {url}") };
        page.command("Runtime.enable", json!({})).await;
        page.command("Page.enable", json!({})).await;
        page.command(
            "Target.setAutoAttach",
            json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        )
        .await;
        page.command("Page.navigate", json!({ "url": url })).await;
        Tab { page, target, cdp: self.cdp.clone() }
    }

    /// The console lines of every page and frame from now on (`[what] console.log: text`).
    pub fn console(&self) -> Console {
        Console { lines: self.cdp.subscribe() }
    }

    /// The ids of the open tabs (page targets).
    pub async fn tabs(&self) -> Vec<String> {
        let targets = self.command(None, "Target.getTargets", json!({})).await;
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

    async fn command(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.cdp.call(session, method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}\n{}", self.log()),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A copy of `fd` numbered 10 or more (close-on-exec; the child's copies are made by dup2).
fn raise_fd(fd: OwnedFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    let raised = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).expect("fcntl(F_DUPFD)");
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raised) }
}

/// Console lines as they arrive (see [`Browser::console`]).
pub struct Console {
    lines: tokio::sync::broadcast::Receiver<String>,
}

impl Console {
    /// Waits for the next console line containing `needle`; returns the text after it.
    pub async fn wait(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                match self.lines.recv().await {
                    Ok(line) => {
                        if let Some(at) = line.find(needle) {
                            return line[at + needle.len()..].trim().to_owned();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(error) => panic!("the console stream ended: {error}"),
                }
            }
        });
        found.await.unwrap_or_else(|_| panic!("no console line with `{needle}` within {DEADLINE:?}"))
    }

    /// Waits for a line containing each of `needles`, in any order; the rest of each line
    /// (after its needle) parsed as JSON, in the order of `needles`.
    pub async fn wait_all<const N: usize>(&mut self, needles: [&str; N]) -> [Value; N] {
        let mut found: [Option<Value>; N] = std::array::from_fn(|_| None);
        let collected = tokio::time::timeout(DEADLINE, async {
            while found.iter().any(Option::is_none) {
                let line = match self.lines.recv().await {
                    Ok(line) => line,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(error) => panic!("the console stream ended: {error}"),
                };
                for (needle, slot) in needles.iter().zip(found.iter_mut()) {
                    if let Some(at) = line.find(needle)
                        && slot.is_none()
                    {
                        let rest = line[at + needle.len()..].trim();
                        let value = serde_json::from_str(rest)
                            .unwrap_or_else(|error| panic!("`{rest}` after `{needle}` is not JSON: {error}"));
                        *slot = Some(value);
                    }
                }
            }
        });
        if collected.await.is_err() {
            let missing: Vec<&str> =
                needles.iter().zip(&found).filter(|(_, slot)| slot.is_none()).map(|(needle, _)| *needle).collect();
            panic!("no console line with {missing:?} within {DEADLINE:?}");
        }
        found.map(|slot| slot.unwrap_or(Value::Null))
    }

    /// [`Console::wait`], the rest of the line parsed as JSON.
    pub async fn wait_json(&mut self, needle: &str) -> Value {
        let rest = self.wait(needle).await;
        serde_json::from_str(&rest).unwrap_or_else(|error| panic!("`{rest}` after `{needle}` is not JSON: {error}"))
    }
}

/// Where JavaScript runs: a page, or one of its out-of-process iframes.
pub struct Session {
    cdp: Arc<Cdp>,
    id: String,
    what: String,
}

impl Session {
    /// Sends a DevTools command to this page or frame; panics with the error and the console.
    pub async fn command(&self, method: &str, params: Value) -> Value {
        match self.cdp.call(Some(&self.id), method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} in {} failed: {error}\n{}", self.what, self.console()),
        }
    }

    /// Evaluates `expression` (awaiting it if it is a promise) and returns its value as JSON
    /// (`null` for `undefined`; a BigInt or another value JSON cannot hold, as its text, such as
    /// `"18446744073709551615n"`); `Err` with the exception's description if it threw.
    pub async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let params = json!({
            "expression": expression,
            "awaitPromise": true,
            "returnByValue": true,
            "userGesture": true,
        });
        let reply = self.cdp.call(Some(&self.id), "Runtime.evaluate", params).await?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
            return Err(text.to_owned());
        }
        let result = &reply["result"];
        Ok(match result.get("unserializableValue").and_then(Value::as_str) {
            Some(text) => Value::String(text.to_owned()),
            None => result.get("value").cloned().unwrap_or(Value::Null),
        })
    }

    /// [`Session::try_eval`], panicking (with the page's console) if it threw.
    pub async fn eval(&self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(error) => panic!("`{expression}` threw in {}: {error}\n{}", self.what, self.console()),
        }
    }

    /// Polls `expression` until its value is truthy; returns that value. Panics after
    /// [`DEADLINE`] with the last value or exception, and the console.
    pub async fn wait_for(&self, expression: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = match self.try_eval(expression).await {
                Ok(value) if truthy(&value) => return value,
                Ok(value) => format!("last value {value}"),
                Err(error) => format!("last error {error}"),
            };
            if Instant::now() > deadline {
                panic!("`{expression}` not true in {} within {DEADLINE:?} ({last})\n{}", self.what, self.console());
            }
            // Polling the page, not synchronising: the page has no way to call us back.
            tokio::time::sleep(Duration::from_millis(15)).await; // SLEEP-OK: polling the page, see above
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
    cdp: Arc<Cdp>,
}

impl std::ops::Deref for Tab {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.page
    }
}

impl Tab {
    /// The out-of-process iframe (at any depth) whose `location.href` starts with `prefix`,
    /// once it is there and its document has loaded.
    pub async fn frame(&self, prefix: &str) -> Session {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            let mut queue = vec![self.page.id.clone()];
            while let Some(parent) = queue.pop() {
                for child in self.cdp.children(&parent) {
                    queue.push(child.session.clone());
                    if child.kind != "iframe" {
                        continue;
                    }
                    let session = Session { cdp: self.cdp.clone(), id: child.session.clone(), what: String::new() };
                    if let Ok(Value::String(href)) = session.try_eval("location.href").await {
                        if href.starts_with(prefix) {
                            return Session { what: format!("the iframe at {href}"), ..session };
                        }
                        seen.push(href);
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no iframe at {prefix}* in {} within {DEADLINE:?} (iframes: {seen:?})\n{}",
                    self.what,
                    self.console()
                );
            }
            tokio::time::sleep(Duration::from_millis(15)).await; // SLEEP-OK: polling the page, see `Session::wait_for`
        }
    }

    /// Reloads the page (its iframes are new documents afterwards: ask [`Tab::frame`] again).
    pub async fn reload(&self) {
        self.page.command("Page.reload", json!({ "ignoreCache": true })).await;
    }

    /// Closes the tab, as a person closing it would.
    pub async fn close(self) {
        let closed = self.cdp.call(None, "Target.closeTarget", json!({ "targetId": self.target })).await;
        if let Err(error) = closed {
            panic!("closing {} failed: {error}", self.what);
        }
        // Closing is asynchronous in Chromium: returns once the target is gone.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let targets = self.cdp.call(None, "Target.getTargets", json!({})).await.unwrap_or_default();
            let listed = targets["targetInfos"]
                .as_array()
                .is_some_and(|infos| infos.iter().any(|info| info["targetId"] == self.target.as_str()));
            if !listed {
                return;
            }
            if Instant::now() > deadline {
                panic!("{} is still open {DEADLINE:?} after closing it", self.what);
            }
            tokio::time::sleep(Duration::from_millis(15)).await; // SLEEP-OK: polling the browser, see `Session::wait_for`
        }
    }

    /// The tab's target id (as [`Browser::tabs`] lists it).
    pub fn id(&self) -> &str {
        &self.target
    }

    /// Sets the page's viewport (CSS pixels), for screenshots of a known size.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.page.command("Emulation.setDeviceMetricsOverride", metrics).await;
    }

    /// A PNG of the page as it is drawn now.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.page.command("Page.captureScreenshot", json!({ "format": "png" })).await;
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("the screenshot is base64")
    }
}
