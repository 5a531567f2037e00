//! The browser tests, on the `headless` crate (`tests/headless`: headless Chromium driven over
//! the DevTools protocol). This module is the tests' thin layer over it: the same types,
//! whose failures panic with what went wrong and the pages' console (or Chromium's log).
//! Missing Chromium fails the test, saying how to install it: the browser tests are never
//! skipped.

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::Value;

mod allowed_hosts;
mod app_shell;
mod console_quiet;
mod errors;
mod isolation;
mod lifecycle;
mod ordering;
mod reconnect;
mod screenshot;
mod selftest;
mod storage;
mod storage_inspect;
mod store;
mod values;
mod web;

pub use headless::DEADLINE;

/// The Chromium binary to run: `chosen` (the value of `$CHROMIUM`) or `/usr/bin/chromium`;
/// an error saying how to install it if it is not there.
pub fn chromium_path(chosen: Option<OsString>) -> Result<PathBuf, String> {
    headless::chromium_path(chosen).map_err(|error| error.to_string())
}

/// One headless Chromium, with a profile of its own in the test's temp dir; killed when
/// dropped (on a panic too).
pub struct Browser(headless::Browser);

impl Browser {
    /// Starts Chromium (`$CHROMIUM` or `/usr/bin/chromium`); panics saying how to install it
    /// if it is missing, or with its log if it does not answer.
    pub async fn launch() -> Browser {
        Browser::launch_with(&[]).await
    }

    /// [`Browser::launch`] with these flags added (see [`headless::Browser::launch_with`]).
    pub async fn launch_with(flags: &[&str]) -> Browser {
        let program = chromium_path(std::env::var_os("CHROMIUM")).unwrap_or_else(|message| panic!("{message}"));
        let profile = crate::loading::tempdir().join("chromium-profile");
        let browser = headless::Browser::launch_with(&program, profile, flags).await;
        Browser(browser.unwrap_or_else(|error| panic!("{error}")))
    }

    /// The browser process's id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Opens a tab at `url` (see [`headless::Browser::open`]).
    pub async fn open(&self, url: &str) -> Tab {
        let tab = self.0.open(url).await.unwrap_or_else(|error| panic!("{error}\n{}", self.0.log()));
        Tab { page: Session(tab.page().clone()), tab }
    }

    /// The console lines of every page and frame from now on (`[what] console.log: text`).
    pub fn console(&self) -> Console {
        Console(self.0.console())
    }

    /// The ids of the open tabs (page targets).
    pub async fn tabs(&self) -> Vec<String> {
        self.0.tabs().await.unwrap_or_else(|error| panic!("{error}\n{}", self.0.log()))
    }
}

/// Console lines as they arrive (see [`Browser::console`]).
pub struct Console(headless::Console);

impl Console {
    /// Waits for the next console line containing `needle`; returns the text after it.
    pub async fn wait(&mut self, needle: &str) -> String {
        self.0.wait(needle).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits for a line containing each of `needles`, in any order; the rest of each line
    /// (after its needle) parsed as JSON, in the order of `needles`.
    pub async fn wait_all<const N: usize>(&mut self, needles: [&str; N]) -> [Value; N] {
        self.0.wait_all(needles).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// The lines from now until the first containing `needle` (that one included).
    pub async fn until(&mut self, needle: &str) -> Vec<String> {
        self.0.until(needle).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Console::wait`], the rest of the line parsed as JSON.
    pub async fn wait_json(&mut self, needle: &str) -> Value {
        self.0.wait_json(needle).await.unwrap_or_else(|error| panic!("{error}"))
    }
}

/// Where JavaScript runs: a page, or one of its out-of-process iframes.
pub struct Session(headless::Session);

impl Session {
    /// Panics with `error` and the console.
    fn fail(&self, error: headless::Error) -> ! {
        panic!("{error}\n{}", self.0.console())
    }

    /// Evaluates `expression` (awaiting it if it is a promise) and returns its value as JSON
    /// (`null` for `undefined`; a BigInt as its text, such as `"18446744073709551615n"`);
    /// `Err` with the exception's description if it threw.
    pub async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        self.0.eval(expression).await.map_err(|error| match error {
            headless::Error::Thrown { description, .. } => description,
            other => other.to_string(),
        })
    }

    /// [`Session::try_eval`], panicking (with the page's console) if it threw.
    pub async fn eval(&self, expression: &str) -> Value {
        self.0.eval(expression).await.unwrap_or_else(|error| self.fail(error))
    }

    /// Polls `expression` until its value is truthy; returns that value. Panics after
    /// [`DEADLINE`] with the last value or exception, and the console.
    pub async fn wait_for(&self, expression: &str) -> Value {
        self.0.wait_for(expression).await.unwrap_or_else(|error| self.fail(error))
    }
}

/// A tab: its page's [`Session`] (through `Deref`), and the iframes in it.
pub struct Tab {
    tab: headless::Tab,
    page: Session,
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
        Session(self.tab.frame(prefix).await.unwrap_or_else(|error| self.page.fail(error)))
    }

    /// Reloads the page (its iframes are new documents afterwards: ask [`Tab::frame`] again).
    pub async fn reload(&self) {
        self.tab.reload().await.unwrap_or_else(|error| self.page.fail(error))
    }

    /// Closes the tab, as a person closing it would; returns once the target is gone.
    pub async fn close(self) {
        let Tab { tab, page } = self;
        tab.close().await.unwrap_or_else(|error| page.fail(error))
    }

    /// The tab's target id (as [`Browser::tabs`] lists it).
    pub fn id(&self) -> &str {
        self.tab.id()
    }

    /// Sets the page's viewport (CSS pixels), for screenshots of a known size.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        self.tab.set_viewport(width, height).await.unwrap_or_else(|error| self.page.fail(error))
    }

    /// A PNG of the page as it is drawn now.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.tab.screenshot().await.unwrap_or_else(|error| self.page.fail(error))
    }
}
