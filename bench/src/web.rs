//! The web frames' rows: a page in headless Chromium invoking main (the `bench` fixture's web
//! renderer, in its iframe inside the host's shell), against a bare WebSocket echo from a page
//! in the same browser to a minimal tokio-tungstenite echo server on loopback, measured in
//! turns within each round.
//!
//! The echo page is served by the bench on `http://127.0.0.1:PORT/` (the extension's iframe
//! could not host it: its Content-Security-Policy refuses sockets to any other origin), and it
//! sends messages of the size of the invoke's WebSocket message, so both move the same bytes
//! out (the host's reply carries one more small field, its origin). The echo counts nothing
//! but the socket: no MessagePack, no request ids, no promise per request beyond the one it
//! awaits. It is the floor a page's round trip over a WebSocket on this machine stands on.
//!
//! Both pages time their loops themselves (`performance.now()`), so the DevTools round trip
//! that starts each loop is not in the figures. Before each loop its tab is brought to the
//! front, so neither runs as a background tab.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use extension_host::{Host, WebConfig};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::across::{Figure, cpu_ms};
use crate::{ROUNDS, config, library, median, micros};

/// Invokes (or echoes) in flight at once in the pipelined rows, as in the Rust rows.
const IN_FLIGHT: usize = 256;

/// The size of the value the rows send (the `Payload`'s bytes), as the 16-byte Rust rows.
const SIZE: usize = 16;

/// The browser window's size: the whole of the extension's card, its iframe included, on
/// screen (in headless Chromium's default 800x600 window only its top 25 pixels are).
const WINDOW: &str = "--window-size=1280,1000";

/// What the web rows measured, or why they were not.
pub enum WebRows {
    Measured(Box<Web>),
    NotMeasured(String),
}

/// The pages a round measures, in the order of the figures' arrays.
#[derive(Clone, Copy)]
enum Page {
    /// The `bench` fixture's web renderer, in its iframe in the host's shell: the invoke.
    Ours,
    /// The echo from a sandboxed cross-origin iframe set up as the extension's is: the
    /// baseline of the targets.
    FramedEcho,
    /// The echo from a top-level page on `http://127.0.0.1`.
    TopEcho,
}

const PAGES: [Page; 3] = [Page::Ours, Page::FramedEcho, Page::TopEcho];

/// The web rows' figures, nanoseconds per round trip (pipelined: per reply); each array in
/// the order of [`PAGES`]: ours, the framed echo, the top-level echo.
pub struct Web {
    pub invoke: [Figure; 3],
    pub pipelined: [Figure; 3],
    /// CPU time per reply (ns; medians of the rounds) of the bench's process (the host's in
    /// ours, the echo server's in the echos), sequential then pipelined.
    pub cpu: [[f64; 3]; 2],
    /// The same, of all of Chromium's processes together.
    pub browser_cpu: [[f64; 3]; 2],
    /// The bytes of the page's WebSocket message for one invoke (and of each echo message).
    pub message_bytes: usize,
    /// Chromium's version string.
    pub browser: String,
    /// The flags Chromium ran with besides the harness's [`headless::OFFLINE_FLAGS`].
    pub flags: Vec<String>,
    /// What each page reported of its visibility before the rounds (the iframes: on screen or
    /// not), in the order of [`PAGES`].
    pub placement: [String; 3],
}

/// Measures the web rows with `chromium` (`$CHROMIUM`; `None`: `/usr/bin/chromium`);
/// [`WebRows::NotMeasured`] when there is no Chromium there (the bench is for people: it says
/// so and goes on; the test suite is where a missing browser fails).
///
/// Chromium runs with [`headless::FOREGROUND_FLAGS`] (the pages scheduled as in a person's
/// foreground window) in a window of [`WINDOW`]'s size, or with the flags `IPC_BENCH_CHROMIUM_FLAGS` names (separated by
/// spaces; empty for none), for comparing.
pub async fn web(artifacts: &Path, scale: u64, chromium: Option<OsString>) -> Result<WebRows> {
    let program = match headless::chromium_path(chromium) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("web frames' rows not measured: {error}");
            return Ok(WebRows::NotMeasured(
                "no headless Chromium (`apt-get install chromium`, or set CHROMIUM)".into(),
            ));
        }
    };
    let flags: Vec<String> = match std::env::var("IPC_BENCH_CHROMIUM_FLAGS") {
        Ok(flags) => flags.split_whitespace().map(str::to_owned).collect(),
        Err(_) => headless::FOREGROUND_FLAGS.iter().chain([&WINDOW]).map(|flag| (*flag).to_owned()).collect(),
    };
    let host = Host::new(config(artifacts));
    let measured = async {
        host.load(library(artifacts, "bench"))?;
        host.activate("bench").await?;
        let server = host.serve_web(WebConfig::default())?;
        let figures = with_browser(&program, &server.url(), server.local_addr().port(), scale, flags).await;
        server.shutdown().await;
        figures
    }
    .await;
    host.shutdown().await;
    measured.map(|web| WebRows::Measured(Box::new(web)))
}

/// The bytes of the page's WebSocket message for one invoke of `echo` with a `size`-byte value:
/// `[MESSAGE, INVOKE, status, target, request id, channel, payload]` (the wire of the web
/// transport), the payload `Payload { bytes }` as named MessagePack, as the client sends it.
fn message_bytes(size: usize) -> Result<usize> {
    #[derive(Serialize)]
    struct Payload {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    }
    let payload = rmp_serde::to_vec_named(&Payload { bytes: vec![7; size] })?;
    // Request ids count from 1 per page load: most of the bench's take two bytes (uint16).
    let message = (1u8, 2u8, 0u8, 0u8, 1000u32, "echo", serde_bytes::ByteBuf::from(payload));
    Ok(rmp_serde::to_vec(&message)?.len())
}

/// A fresh directory for Chromium's profile, under the temp dir.
fn profile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ipc-bench-{}", std::process::id())).join("chromium-profile")
}

/// Where a page's loops run: its tab (brought to the front for each loop) and the session
/// that evaluates them (the page, or its iframe), and the name of its global.
struct Runner<'a> {
    tab: &'a headless::Tab,
    session: &'a headless::Session,
    global: &'static str,
    size: usize,
}

async fn with_browser(program: &Path, shell: &str, host_port: u16, scale: u64, flags: Vec<String>) -> Result<Web> {
    let message_bytes = message_bytes(SIZE)?;
    let echo = echo_server().await?;
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let browser = headless::Browser::launch_with(program, profile_dir(), &flag_refs).await?;
    let version = browser.version().await?;

    let shell_tab = browser.open(shell).await?;
    let ours = shell_tab.frame("http://bench-").await?;
    ours.wait_for("globalThis.bench?.ready === true").await?;
    // The framed echo's document carries the headers the host gives the extension's.
    let origin = ours.eval("location.origin").await?;
    let origin = origin.as_str().with_context(|| format!("the bench iframe's origin is {origin}"))?;
    let headers = framed_headers(host_port, origin, echo).await?;
    // And its iframe the box of the extension's.
    let size = shell_tab
        .eval("(() => { const r = document.querySelector('iframe').getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; })()")
        .await?;
    let box_of = |at: usize| size[at].as_u64().with_context(|| format!("the bench iframe's box is {size}"));
    let size = (box_of(0)?, box_of(1)?);
    let page = headless::serve(move |request| echo_pages(request, echo, &headers, size)).await?;

    let framed_tab = browser.open(&format!("http://127.0.0.1:{page}/framed")).await?;
    let framed = framed_tab.frame("http://echo.localhost").await?;
    framed.wait_for("globalThis.echo?.ready === true").await?;
    let top_tab = browser.open(&format!("http://127.0.0.1:{page}/")).await?;
    top_tab.wait_for("globalThis.echo?.ready === true").await?;

    let runners = [
        Runner { tab: &shell_tab, session: &ours, global: "bench", size: SIZE },
        Runner { tab: &framed_tab, session: &framed, global: "echo", size: message_bytes },
        Runner { tab: &top_tab, session: top_tab.page(), global: "echo", size: message_bytes },
    ];
    let mut placement: [String; 3] = Default::default();
    for (runner, placed) in runners.iter().zip(&mut placement) {
        runner.tab.bring_to_front().await?;
        *placed = where_it_is(runner).await?;
    }
    let browser_pid = browser.pid();
    // For finding what the page's status display costs: its redraws (one per animation frame
    // while messages flow: the iframe's status line, and a `postMessage` to the shell, which
    // redraws the card) stop.
    if std::env::var_os("IPC_BENCH_WEB_NO_REDRAW").is_some() {
        ours.eval("window.requestAnimationFrame = () => 0").await?;
        eprintln!("the bench iframe's status redraws are off (IPC_BENCH_WEB_NO_REDRAW)");
    }

    // Warm-up: the pages' code and the host's paths run hot before the rounds.
    for runner in &runners {
        round(runner, "sequential", 200, browser_pid).await?;
        round(runner, "pipelined", 200, browser_pid).await?;
    }

    if let Some(path) = std::env::var_os("IPC_BENCH_WEB_PROFILE") {
        profile_pages(&runners, Path::new(&path)).await?;
    }

    let (sequential, pipelined) = (2_000 / scale, 10_000 / scale);
    // Sequential rounds of ours, the framed echo, the top-level echo, then pipelined ones.
    let mut samples: [Vec<Sample>; 6] = Default::default();
    for turn in 0..ROUNDS {
        // The order turns from round to round, so none always runs first.
        for (loop_at, (name, count)) in [("sequential", sequential), ("pipelined", pipelined)].into_iter().enumerate() {
            for at in 0..PAGES.len() {
                let page = (at + turn) % PAGES.len();
                samples[loop_at * 3 + page].push(round(&runners[page], name, count, browser_pid).await?);
            }
        }
    }
    let of = |at: usize, value: fn(&Sample) -> f64| median(samples[at].iter().map(value).collect());
    let cpu = [0, 1].map(|loop_at| [0, 1, 2].map(|page| of(loop_at * 3 + page, |sample| sample.cpu)));
    let browser_cpu = [0, 1].map(|loop_at| [0, 1, 2].map(|page| of(loop_at * 3 + page, |sample| sample.browser_cpu)));
    // Chromium's CPU by kind of process, for finding where a page's time goes (stderr only).
    for (at, name) in ["ours", "framed echo", "top-level echo"].iter().enumerate() {
        for (loop_at, loop_name) in ["sequential", "pipelined"].iter().enumerate() {
            let rounds = &samples[loop_at * 3 + at];
            let kinds: Vec<String> =
                rounds.first().map(|sample| sample.by_kind.keys().cloned().collect()).unwrap_or_default();
            let split: Vec<String> = kinds
                .iter()
                .filter_map(|kind| {
                    let of_kind =
                        median(rounds.iter().map(|sample| sample.by_kind.get(kind).copied().unwrap_or(0.0)).collect());
                    let nice = rounds.last().and_then(|sample| sample.nice.get(kind));
                    let nice = nice.map(|nice| format!(" (nice {nice})")).unwrap_or_default();
                    (of_kind >= 1000.0).then(|| format!("{kind} {}{nice}", micros(of_kind)))
                })
                .collect();
            eprintln!("Chromium's CPU per reply, {name}, {loop_name}: {}", split.join(", "));
        }
    }
    let figure = |at: usize| Figure::of(&samples[at].iter().map(|sample| sample.elapsed).collect::<Vec<_>>());
    Ok(Web {
        invoke: [figure(0), figure(1), figure(2)],
        pipelined: [figure(3), figure(4), figure(5)],
        cpu,
        browser_cpu,
        message_bytes,
        browser: version,
        flags,
        placement,
    })
}

/// What a page says of where it is: its visibility and focus, and, for an iframe, its box
/// in its parent's viewport (on screen or not).
async fn where_it_is(runner: &Runner<'_>) -> Result<String> {
    let inside = runner
        .session
        .eval("`visibilityState ${document.visibilityState}, ${document.hasFocus() ? 'focused' : 'not focused'}`")
        .await?;
    let iframe = runner
        .tab
        .eval(
            "(() => { const f = document.querySelector('iframe'); if (!f) return 'a top-level page'; \
             const r = f.getBoundingClientRect(); \
             const seen = r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth; \
             return `iframe ${Math.round(r.width)}x${Math.round(r.height)} at ${Math.round(r.left)},${Math.round(r.top)} \
             in a ${innerWidth}x${innerHeight} viewport, ${seen ? 'on screen' : 'off screen'}`; })()",
        )
        .await?;
    Ok(format!("{}; {}", iframe.as_str().unwrap_or("?"), inside.as_str().unwrap_or("?")))
}

/// The headers of the framed echo's document: those the host serves the extension's iframe
/// document at `origin` with (fetched from it on `host_port`), its Content-Security-Policy's
/// `connect-src` the echo server (on `echo`) instead of the host, and its `frame-ancestors`
/// the bench's pages on `127.0.0.1` instead of the host's shell.
async fn framed_headers(host_port: u16, origin: &str, echo: u16) -> Result<Vec<(String, String)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = origin.strip_prefix("http://").with_context(|| format!("{origin} is not an http origin"))?;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", host_port)).await?;
    stream.write_all(format!("GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        let value = match name.as_str() {
            "content-security-policy" => framed_csp(value, echo),
            "x-content-type-options" | "referrer-policy" | "cache-control" => value.to_owned(),
            _ => continue,
        };
        headers.push((name, value));
    }
    if !headers.iter().any(|(name, _)| name == "content-security-policy") {
        bail!("the host served {origin}/ without a Content-Security-Policy:\n{head}");
    }
    Ok(headers)
}

/// The extension iframe's Content-Security-Policy `csp` for the framed echo: its `connect-src`
/// the echo server on `echo`, its `frame-ancestors` the bench's pages; every other directive
/// as it is.
fn framed_csp(csp: &str, echo: u16) -> String {
    csp.split(';')
        .map(|directive| {
            let directive = directive.trim();
            if directive.starts_with("connect-src") {
                format!("connect-src ws://echo.localhost:{echo}")
            } else if directive.starts_with("frame-ancestors") {
                "frame-ancestors http://127.0.0.1:*".to_owned()
            } else {
                directive.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// With `IPC_BENCH_WEB_PROFILE=DIR`: V8's CPU profile (the DevTools protocol's `Profiler`)
/// of one sequential and one pipelined loop of each page, written to `DIR` as
/// `{ours,framed-echo,echo}-{sequential,pipelined}.cpuprofile` (Chromium's DevTools opens
/// them), for seeing what the page's side of a round trip spends.
async fn profile_pages(runners: &[Runner<'_>; 3], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (runner, page) in runners.iter().zip(["ours", "framed-echo", "echo"]) {
        for (name, count) in [("sequential", 2000), ("pipelined", 10000)] {
            runner.tab.bring_to_front().await?;
            let session = runner.session;
            session.command("Profiler.enable", serde_json::json!({})).await?;
            session.command("Profiler.setSamplingInterval", serde_json::json!({ "interval": 100 })).await?;
            session.command("Profiler.start", serde_json::json!({})).await?;
            let elapsed = session.eval(&format!("{}.{name}({count}, {})", runner.global, runner.size)).await?;
            let profile = session.command("Profiler.stop", serde_json::json!({})).await?;
            session.command("Profiler.disable", serde_json::json!({})).await?;
            let path = dir.join(format!("{page}-{name}.cpuprofile"));
            std::fs::write(&path, serde_json::to_vec(&profile["profile"])?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("profiled {page}-{name}: {elapsed} ms, in {}", path.display());
        }
    }
    Ok(())
}

/// One loop's figures, nanoseconds per reply: the page's own timing, and the CPU time this
/// process (the host, or the echo server) and Chromium's processes used meanwhile.
struct Sample {
    elapsed: f64,
    cpu: f64,
    browser_cpu: f64,
    /// `browser_cpu` by kind of Chromium process.
    by_kind: BTreeMap<String, f64>,
    /// The nice value of each renderer that worked, as the loop ended.
    nice: BTreeMap<String, i64>,
}

/// One loop (`sequential` or `pipelined`) of `count`: its tab in front, the page's own timing
/// (the call returns elapsed ms).
async fn round(runner: &Runner<'_>, name: &str, count: u64, browser: u32) -> Result<Sample> {
    let call = format!("{}.{name}({count}, {})", runner.global, runner.size);
    runner.tab.bring_to_front().await?;
    let cpu_before = cpu_ms("self")?;
    let browser_before = tree_cpu_ms(browser)?;
    let value = runner.session.eval(&call).await?;
    let cpu = (cpu_ms("self")? - cpu_before) * 1e6 / count as f64;
    let by_kind = per_reply(&browser_before, &tree_cpu_ms(browser)?, count);
    // The scheduling priority of the renderers that worked, as the loop ends (its tab still in
    // front): Chromium lowers that of renderers it deems in the background.
    let nice = by_kind
        .iter()
        .filter(|(_, ns)| **ns > 0.0)
        .filter_map(|(kind, _)| {
            let pid = kind.strip_prefix("renderer ")?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After ')': the nice value is field 19.
            let nice = stat.rsplit_once(')')?.1.split_whitespace().nth(16)?.parse().ok()?;
            Some((kind.clone(), nice))
        })
        .collect();
    let ms = value.as_f64().with_context(|| format!("`{call}` returned {value}, not a number"))?;
    Ok(Sample { elapsed: ms * 1e6 / count as f64, cpu, browser_cpu: by_kind.values().sum(), by_kind, nice })
}

/// CPU time (ms) of process `root` (Chromium: `/usr/bin/chromium` is a script that starts the
/// browser) and its descendants, those alive now, by kind of process (`browser`, `renderer`,
/// `gpu-process`, `utility network.mojom.NetworkService`, ...).
fn tree_cpu_ms(root: u32) -> Result<BTreeMap<String, f64>> {
    struct Process {
        parent: u32,
        cpu_ms: f64,
        kind: String,
    }
    let mut processes = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, fields)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        // After ')': the state (field 3), the parent (4); utime, stime (14, 15).
        let number = |at: usize| fields.get(at).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
        let Some(parent) = fields.get(1).and_then(|parent| parent.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Chromium's helpers rewrite their command line as one string (`setproctitle`): the
        // arguments are separated by spaces there.
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0 || *byte == b' ')
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let arg = |prefix: &str| args.iter().find_map(|arg| arg.strip_prefix(prefix).map(str::to_owned));
        let kind = match (arg("--type="), arg("--utility-sub-type=")) {
            (Some(kind), Some(sub)) => format!("{kind} {sub}"),
            // Each renderer on its own: which page's it is shows in which loop it works.
            (Some(kind), None) if kind == "renderer" => format!("renderer {pid}"),
            (Some(kind), None) => kind,
            (None, _) => "browser".to_owned(),
        };
        processes.insert(pid, Process { parent, cpu_ms: (number(11) + number(12)) * 10.0, kind });
    }
    let in_tree = |mut pid: u32| {
        while pid > 1 {
            if pid == root {
                return true;
            }
            pid = processes.get(&pid).map_or(0, |process| process.parent);
        }
        false
    };
    let mut total = BTreeMap::new();
    for (pid, process) in &processes {
        if in_tree(*pid) {
            *total.entry(process.kind.clone()).or_insert(0.0) += process.cpu_ms;
        }
    }
    Ok(total)
}

/// `after - before`, by kind of process, per reply of `count` (ns).
fn per_reply(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, count: u64) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(kind, ms)| (kind.clone(), (ms - before.get(kind).copied().unwrap_or(0.0)) * 1e6 / count as f64))
        .collect()
}

/// The echo server: tokio-tungstenite on loopback, each binary message sent back as it is.
/// Its port.
async fn echo_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // As the host's web server does: no Nagle delay on small messages.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_binary() && socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The echo's pages, on the bench's page server: `/` on `127.0.0.1` the top-level echo page;
/// `/framed` on `127.0.0.1` a page holding the framed echo's iframe as the host's shell holds
/// an extension's (the same `sandbox`, `referrerpolicy` and box, `width` by `height`); `/` on `echo.localhost`
/// that iframe's document, served with `headers` (see [`framed_headers`]); `/echo.js` the
/// loops both run (its CSP allows no inline script).
fn echo_pages(
    request: &headless::Request<'_>,
    echo: u16,
    headers: &[(String, String)],
    (width, height): (u64, u64),
) -> Option<headless::Response> {
    let framed = request.host.starts_with("echo.localhost");
    match request.path {
        "/echo.js" => Some(headless::Response {
            content_type: "text/javascript; charset=utf-8",
            headers: if framed { headers.to_vec() } else { Vec::new() },
            body: echo_js(echo),
        }),
        "/" if framed => Some(headless::Response {
            content_type: "text/html; charset=utf-8",
            headers: headers.to_vec(),
            body: r#"<!doctype html><meta charset="utf-8"><title>WebSocket echo, framed</title><script src="/echo.js"></script>"#
                .to_owned(),
        }),
        "/" => Some(headless::Response::html(
            r#"<!doctype html><meta charset="utf-8"><title>WebSocket echo</title><script src="/echo.js"></script>"#
                .to_owned(),
        )),
        "/framed" => Some(headless::Response::html(format!(
            r#"<!doctype html><meta charset="utf-8"><title>WebSocket echo in a sandboxed iframe</title>
<style>body {{ margin: 0; }} .card {{ margin: 16px 20px; }} iframe {{ border: 0; width: {width}px; height: {height}px; }}</style>
<div class="card"><iframe sandbox="{SANDBOX}" referrerpolicy="no-referrer" src="http://echo.localhost:{}/"></iframe></div>"#,
            request.port
        ))),
        _ => None,
    }
}

/// The `sandbox` of an extension's iframe in the host's shell (`host/web/frames.js`).
const SANDBOX: &str = "allow-scripts allow-same-origin";

/// The echo loops (`globalThis.echo.sequential(count, size)` and `pipelined(count, size)`,
/// elapsed ms), on a socket to the echo server on `echo` on the page's own host name.
fn echo_js(echo: u16) -> String {
    format!(
        r#"const socket = new WebSocket(`ws://${{location.hostname}}:{echo}/`);
socket.binaryType = "arraybuffer";
let received = () => {{}};
socket.onmessage = () => received();
async function sequential(count, size) {{
  const message = new Uint8Array(size).fill(7);
  const start = performance.now();
  for (let i = 0; i < count; i++) {{
    await new Promise((resolve) => {{ received = resolve; socket.send(message); }});
  }}
  return performance.now() - start;
}}
async function pipelined(count, size) {{
  const message = new Uint8Array(size).fill(7);
  let sent = 0, replies = 0;
  const start = performance.now();
  await new Promise((resolve) => {{
    received = () => {{
      replies++;
      if (sent < count) {{ sent++; socket.send(message); }}
      if (replies === count) resolve();
    }};
    while (sent < Math.min({IN_FLIGHT}, count)) {{ sent++; socket.send(message); }}
  }});
  return performance.now() - start;
}}
globalThis.echo = {{ sequential, pipelined, ready: false }};
socket.onopen = () => {{ globalThis.echo.ready = true; }};
"#
    )
}

/// The web frames' table.
pub fn table(rows: &WebRows) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        eprintln!("{text}");
        out.push_str(&text);
        out.push('\n');
    };
    line("## Web frames (headless Chromium)".into());
    line(String::new());
    let header = "| row | ours | echo, sandboxed cross-origin iframe (the baseline) | ratio | target | echo, top-level page | ratio |";
    let web = match rows {
        WebRows::Measured(web) => web,
        WebRows::NotMeasured(why) => {
            line(header.into());
            line("| --- | --- | --- | --- | --- | --- | --- |".into());
            line(format!("| invoke round trip, page → main → page | not measured: {why} | | | ≤ 1.3x the echo | | |"));
            line(format!("| pipelined invokes (256 in flight) | not measured: {why} | | | ≥ 0.8x the echo's | | |"));
            line(String::new());
            return out;
        }
    };
    let flags = if web.flags.is_empty() { "none".to_owned() } else { format!("`{}`", web.flags.join(" ")) };
    line(format!(
        "{}, headless, in the same run, one tab per page, each brought to the front for its loops; Chromium's \
         flags besides the harness's offline ones: {flags}. Rounds turn through the three pages.",
        web.browser
    ));
    line(String::new());
    line(format!(
        "- **Ours**: the `bench` fixture's web renderer, in its sandboxed iframe on its own origin in the host's \
         shell ({}), invokes main's `echo` through the client ({SIZE}-byte value; the page's WebSocket message is \
         {} bytes).",
        web.placement[0], web.message_bytes
    ));
    line(format!(
        "- **Echo, sandboxed cross-origin iframe** (the baseline the targets compare with, the same kind of page as \
         ours): a page on `http://127.0.0.1` holds an iframe on `http://echo.localhost` with the extension iframe's \
         `sandbox` (`{SANDBOX}`), box and document headers (the host's Content-Security-Policy, its `connect-src` \
         the echo server; {}); it sends {}-byte messages to a minimal tokio-tungstenite echo server on loopback.",
        web.placement[1], web.message_bytes
    ));
    line(format!(
        "- **Echo, top-level page**: the same loop from a page on `http://127.0.0.1` itself ({}), to the same server.",
        web.placement[2]
    ));
    line(String::new());
    line(header.into());
    line("| --- | --- | --- | --- | --- | --- | --- |".into());
    let spread =
        |figure: Figure| format!("{} (rounds {}–{})", micros(figure.median), micros(figure.min), micros(figure.max));
    let [ours, framed, top] = web.invoke;
    line(format!(
        "| invoke round trip, page → main → page | {} | {} | {:.2}x the echo | ≤ 1.3x | {} | {:.2}x |",
        spread(ours),
        spread(framed),
        ours.median / framed.median,
        spread(top),
        ours.median / top.median
    ));
    let rate = |nanos: f64| 1e9 / nanos;
    let rates = |figure: Figure| {
        format!("{:.0}/s (rounds {:.0}–{:.0})", rate(figure.median), rate(figure.max), rate(figure.min))
    };
    let [ours, framed, top] = web.pipelined;
    line(format!(
        "| pipelined invokes ({IN_FLIGHT} in flight) | {} | {} | {:.2}x the echo's throughput | ≥ 0.8x | {} | {:.2}x |",
        rates(ours),
        rates(framed),
        framed.median / ours.median,
        rates(top),
        top.median / ours.median
    ));
    let cpu = |of: &[[f64; 3]; 2], page: usize| format!("{} / {}", micros(of[0][page]), micros(of[1][page]));
    line(format!(
        "| CPU of the bench's process per reply (the host's; the echo server's), sequential / pipelined | {} | {} | | | {} | |",
        cpu(&web.cpu, 0),
        cpu(&web.cpu, 1),
        cpu(&web.cpu, 2)
    ));
    line(format!(
        "| CPU of Chromium's processes per reply, sequential / pipelined | {} | {} | | | {} | |",
        cpu(&web.browser_cpu, 0),
        cpu(&web.browser_cpu, 1),
        cpu(&web.browser_cpu, 2)
    ));
    line(String::new());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_chromium_the_rows_say_not_measured() {
        let rows = web(Path::new("/nonexistent"), 10, Some("/nonexistent/chromium".into())).await.unwrap();
        let table = table(&rows);
        assert!(table.contains("## Web frames (headless Chromium)"), "{table}");
        let not_measured = table.lines().filter(|line| line.contains("not measured: no headless Chromium")).count();
        assert_eq!(not_measured, 2, "{table}");
    }

    #[test]
    fn the_framed_echo_has_the_extension_iframe_s_policy_but_its_socket_and_ancestors() {
        let csp = "default-src 'none'; script-src 'self'; connect-src ws://bench-1.localhost:8080; \
                   base-uri 'none'; frame-ancestors http://127.0.0.1:8080 http://localhost:8080";
        assert_eq!(
            framed_csp(csp, 9000),
            "default-src 'none'; script-src 'self'; connect-src ws://echo.localhost:9000; base-uri 'none'; \
             frame-ancestors http://127.0.0.1:*"
        );
    }

    #[test]
    fn the_echo_sends_what_an_invoke_sends() {
        // A 7-array (1 byte): 1, 2, 0, 0 (4), the id 1000 (3), "echo" (5), and a bin (2) of
        // `{"bytes": bin(16 bytes)}` (1 + 6 + 2 + 16).
        assert_eq!(message_bytes(16).unwrap(), 40);
    }
}
