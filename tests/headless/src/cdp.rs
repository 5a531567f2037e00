//! A small client of the Chrome DevTools Protocol over `--remote-debugging-pipe`: Chromium reads
//! JSON commands from fd 3 and writes replies and events to fd 4, each message ended by a NUL
//! byte. Here both fds are one end of a Unix socket pair; a reader thread routes replies to
//! their callers by id, and keeps what the harness needs from the events: which targets
//! (out-of-process iframes, workers) attached under which session, and the pages' console.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{DEADLINE, Error};

/// How many console lines the client keeps (the newest), for failure messages.
const CONSOLE_KEPT: usize = 300;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A target attached under a session (auto-attach, `flatten: true`): its own session id.
#[derive(Debug, Clone)]
pub struct Attached {
    pub session: String,
    pub kind: String,
    pub url: String,
}

/// A command's `result`, or its protocol `error` as text.
type Reply = Result<Value, String>;

/// The client: one per browser.
pub struct Cdp {
    writer: Mutex<UnixStream>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Targets attached under each session (the key), in attach order.
    children: Mutex<HashMap<String, Vec<Attached>>>,
    /// What each session is, for console lines: the target's URL when it attached.
    names: Mutex<HashMap<String, String>>,
    console: Mutex<Vec<String>>,
    /// Every console line as it arrives, for tests that wait for one.
    lines: tokio::sync::broadcast::Sender<String>,
}

impl Cdp {
    /// Starts the client on `stream` (the parent's end of the pipe socket pair).
    pub fn start(stream: UnixStream) -> Result<Arc<Cdp>, Error> {
        let reader = stream.try_clone().map_err(Error::Pipe)?;
        let cdp = Arc::new(Cdp {
            writer: Mutex::new(stream),
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            children: Mutex::default(),
            names: Mutex::default(),
            console: Mutex::default(),
            lines: tokio::sync::broadcast::channel(4096).0,
        });
        let routed = cdp.clone();
        std::thread::Builder::new()
            .name("cdp-reader".into())
            .spawn(move || routed.read(reader))
            .map_err(Error::Pipe)?;
        Ok(cdp)
    }

    /// Sends a command without waiting for its reply.
    fn send(&self, session: Option<&str>, method: &str, params: Value) -> Result<(), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(id, session, method, params)
    }

    fn write(&self, id: u64, session: Option<&str>, method: &str, params: Value) -> Result<(), Error> {
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_owned());
        }
        // A `Value` always serializes.
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        lock(&self.writer).write_all(&bytes).map_err(|source| Error::Send { method: method.to_owned(), source })
    }

    /// Sends a command and waits for its reply: its `result`, or [`Error::Protocol`] with its
    /// `error`.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Error> {
        let (tx, rx) = oneshot::channel();
        // Registered before sending, under the same id: the reply cannot race past us.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(id, tx);
        if let Err(error) = self.write(id, session, method, params) {
            lock(&self.pending).remove(&id);
            return Err(error);
        }
        let method = method.to_owned();
        match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(reply)) => reply.map_err(|message| Error::Protocol { method, message }),
            Ok(Err(_)) => Err(Error::Closed { method }),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Error::Unanswered { method, timeout: DEADLINE })
            }
        }
    }

    /// The targets attached under `session` (iframes in processes of their own, workers).
    pub fn children(&self, session: &str) -> Vec<Attached> {
        lock(&self.children).get(session).cloned().unwrap_or_default()
    }

    /// The newest console lines and uncaught exceptions of every page and frame.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = lock(&self.console);
        let start = console.len().saturating_sub(lines);
        console[start..].join("\n")
    }

    fn read(&self, stream: UnixStream) {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(0, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buffer.last() == Some(&0) {
                buffer.pop();
            }
            match serde_json::from_slice::<Value>(&buffer) {
                Ok(message) => self.dispatch(message),
                Err(error) => self.note(format!("[cdp] unreadable message from Chromium: {error}")),
            }
        }
        // Chromium is gone: every caller still waiting learns it (their senders drop).
        lock(&self.pending).clear();
    }

    /// Console lines from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.lines.subscribe()
    }

    fn note(&self, line: String) {
        let _ = self.lines.send(line.clone());
        let mut console = lock(&self.console);
        console.push(line);
        if console.len() > CONSOLE_KEPT * 2 {
            console.drain(..CONSOLE_KEPT);
        }
    }

    fn dispatch(&self, message: Value) {
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            if let Some(tx) = lock(&self.pending).remove(&id) {
                let reply = match message.get("error") {
                    Some(error) => Err(error.to_string()),
                    None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(reply);
            }
            return;
        }
        let session = message.get("sessionId").and_then(Value::as_str).unwrap_or_default().to_owned();
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        match message.get("method").and_then(Value::as_str).unwrap_or_default() {
            "Target.attachedToTarget" => self.attached(session, &params),
            "Target.detachedFromTarget" => {
                if let Some(gone) = params["sessionId"].as_str() {
                    for list in lock(&self.children).values_mut() {
                        list.retain(|child| child.session != gone);
                    }
                }
            }
            "Runtime.consoleAPICalled" => {
                let args: Vec<String> =
                    params["args"].as_array().map(|args| args.iter().map(describe).collect()).unwrap_or_default();
                let kind = params["type"].as_str().unwrap_or("log");
                let line = format!("[{}] console.{kind}: {}", self.name(&session), args.join(" "));
                self.note(line);
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                let level = entry["level"].as_str().unwrap_or("info");
                let text = entry["text"].as_str().unwrap_or_default();
                let line = format!("[{}] log.{level}: {text}", self.name(&session));
                self.note(line);
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
                let line = format!("[{}] uncaught: {text}", self.name(&session));
                self.note(line);
            }
            _ => {}
        }
    }

    /// A target attached under `parent` (paused, `waitForDebuggerOnStart`): the console of it
    /// and of its own children is recorded from its first line, then it runs.
    fn attached(&self, parent: String, params: &Value) {
        let Some(session) = params["sessionId"].as_str().map(str::to_owned) else { return };
        let info = &params["targetInfo"];
        let child = Attached {
            session: session.clone(),
            kind: info["type"].as_str().unwrap_or_default().to_owned(),
            url: info["url"].as_str().unwrap_or_default().to_owned(),
        };
        lock(&self.names).insert(session.clone(), format!("{} {}", child.kind, child.url));
        lock(&self.children).entry(parent).or_default().push(child);
        // Fire and forget: the replies are not waited for (the reader cannot wait on itself).
        let _ = self.send(Some(&session), "Runtime.enable", json!({}));
        // The browser's own messages (a refused postMessage, a CSP violation), not the page's.
        let _ = self.send(Some(&session), "Log.enable", json!({}));
        let _ = self.send(
            Some(&session),
            "Target.setAutoAttach",
            json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        );
        let _ = self.send(Some(&session), "Runtime.runIfWaitingForDebugger", json!({}));
    }

    /// Names `session` (a page) for console lines.
    pub fn name_session(&self, session: &str, name: &str) {
        lock(&self.names).insert(session.to_owned(), name.to_owned());
    }

    fn name(&self, session: &str) -> String {
        lock(&self.names).get(session).cloned().unwrap_or_else(|| "browser".to_owned())
    }
}

/// A console argument as a line of text.
fn describe(arg: &Value) -> String {
    match (&arg["value"], arg["description"].as_str(), arg["unserializableValue"].as_str()) {
        (Value::String(text), _, _) => text.clone(),
        (Value::Null, Some(description), _) => description.to_owned(),
        (Value::Null, None, Some(value)) => value.to_owned(),
        (Value::Null, None, None) => arg["type"].as_str().unwrap_or("undefined").to_owned(),
        (value, _, _) => value.to_string(),
    }
}
