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

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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

/// What the web rows measured, or why they were not.
pub enum WebRows {
    Measured(Web),
    NotMeasured(String),
}

/// The web rows' figures, nanoseconds per round trip (pipelined: per reply).
pub struct Web {
    pub invoke: (Figure, Figure),
    pub pipelined: (Figure, Figure),
    /// CPU time of the bench's process per reply (ns; medians of the rounds): the host's in
    /// ours, the echo server's in the echo; sequential ours, echo, pipelined ours, echo.
    pub cpu: [f64; 4],
    /// The bytes of the page's WebSocket message for one invoke (and of each echo message).
    pub message_bytes: usize,
    /// Chromium's version string.
    pub browser: String,
}

/// Measures the web rows with `chromium` (`$CHROMIUM`; `None`: `/usr/bin/chromium`);
/// [`WebRows::NotMeasured`] when there is no Chromium there (the bench is for people: it says
/// so and goes on; the test suite is where a missing browser fails).
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
    let host = Host::new(config(artifacts));
    let measured = async {
        host.load(library(artifacts, "bench"))?;
        host.activate("bench").await?;
        let server = host.serve_web(WebConfig::default())?;
        let figures = with_browser(&program, &server.url(), scale).await;
        server.shutdown().await;
        figures
    }
    .await;
    host.shutdown().await;
    measured.map(WebRows::Measured)
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

async fn with_browser(program: &Path, shell: &str, scale: u64) -> Result<Web> {
    let message_bytes = message_bytes(SIZE)?;
    let echo = echo_server().await?;
    let html = echo_html(echo);
    let page = headless::serve_pages(move |request| (request.path == "/").then(|| html.clone())).await?;
    let browser = headless::Browser::launch(program, profile_dir()).await?;
    let version = browser.version().await?;

    let shell_tab = browser.open(shell).await?;
    let ours = shell_tab.frame("http://bench-").await?;
    ours.wait_for("globalThis.bench?.ready === true").await?;
    let echo_tab = browser.open(&format!("http://127.0.0.1:{page}/")).await?;
    echo_tab.wait_for("globalThis.echo?.ready === true").await?;

    let (sequential, pipelined) = (2_000 / scale, 10_000 / scale);
    let calls = |count: u64| {
        (
            format!("bench.sequential({count}, {SIZE})"),
            format!("echo.sequential({count}, {message_bytes})"),
            format!("bench.pipelined({count}, {SIZE})"),
            format!("echo.pipelined({count}, {message_bytes})"),
        )
    };
    // Warm-up: the pages' code and the host's paths run hot before the rounds.
    let (ours_seq, echo_seq, ours_pipe, echo_pipe) = calls(200);
    round(&shell_tab, &ours, ours_seq, 200).await?;
    round(&echo_tab, echo_tab.page(), echo_seq, 200).await?;
    round(&shell_tab, &ours, ours_pipe, 200).await?;
    round(&echo_tab, echo_tab.page(), echo_pipe, 200).await?;

    if let Some(path) = std::env::var_os("IPC_BENCH_WEB_PROFILE") {
        profile_pages(&shell_tab, &ours, &echo_tab, Path::new(&path), message_bytes).await?;
    }

    let mut samples: [Vec<Sample>; 4] = Default::default();
    for turn in 0..ROUNDS {
        let (ours_seq, echo_seq, _, _) = calls(sequential);
        let (_, _, ours_pipe, echo_pipe) = calls(pipelined);
        // The order alternates from round to round, so neither always runs first.
        if turn % 2 == 1 {
            samples[1].push(round(&echo_tab, echo_tab.page(), echo_seq.clone(), sequential).await?);
        }
        samples[0].push(round(&shell_tab, &ours, ours_seq, sequential).await?);
        if turn % 2 == 0 {
            samples[1].push(round(&echo_tab, echo_tab.page(), echo_seq, sequential).await?);
        }
        if turn % 2 == 1 {
            samples[3].push(round(&echo_tab, echo_tab.page(), echo_pipe.clone(), pipelined).await?);
        }
        samples[2].push(round(&shell_tab, &ours, ours_pipe, pipelined).await?);
        if turn % 2 == 0 {
            samples[3].push(round(&echo_tab, echo_tab.page(), echo_pipe, pipelined).await?);
        }
    }
    let cpu = samples.each_ref().map(|samples| median(samples.iter().map(|sample| sample.cpu).collect()));
    let [ours_seq, echo_seq, ours_pipe, echo_pipe] = samples.map(|samples| {
        let elapsed: Vec<f64> = samples.iter().map(|sample| sample.elapsed).collect();
        Figure::of(&elapsed)
    });
    Ok(Web { invoke: (ours_seq, echo_seq), pipelined: (ours_pipe, echo_pipe), cpu, message_bytes, browser: version })
}

/// With `IPC_BENCH_WEB_PROFILE=DIR`: V8's CPU profile (the DevTools protocol's `Profiler`)
/// of one sequential and one pipelined loop of each page, written to `DIR` as
/// `{ours,echo}-{sequential,pipelined}.cpuprofile` (Chromium's DevTools opens them), for
/// seeing what the page's side of a round trip spends.
async fn profile_pages(
    shell_tab: &headless::Tab,
    ours: &headless::Session,
    echo_tab: &headless::Tab,
    dir: &Path,
    message_bytes: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let loops = [
        ("ours-sequential", shell_tab, ours, format!("bench.sequential(2000, {SIZE})")),
        ("ours-pipelined", shell_tab, ours, format!("bench.pipelined(10000, {SIZE})")),
        ("echo-sequential", echo_tab, echo_tab.page(), format!("echo.sequential(2000, {message_bytes})")),
        ("echo-pipelined", echo_tab, echo_tab.page(), format!("echo.pipelined(10000, {message_bytes})")),
    ];
    for (name, tab, session, call) in loops {
        tab.bring_to_front().await?;
        session.command("Profiler.enable", serde_json::json!({})).await?;
        session.command("Profiler.setSamplingInterval", serde_json::json!({ "interval": 100 })).await?;
        session.command("Profiler.start", serde_json::json!({})).await?;
        let elapsed = session.eval(&call).await?;
        let profile = session.command("Profiler.stop", serde_json::json!({})).await?;
        session.command("Profiler.disable", serde_json::json!({})).await?;
        let path = dir.join(format!("{name}.cpuprofile"));
        std::fs::write(&path, serde_json::to_vec(&profile["profile"])?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("profiled {name}: {elapsed} ms, in {}", path.display());
    }
    Ok(())
}

/// One loop's figures, nanoseconds per reply: the page's own timing, and the CPU time this
/// process (the host, or the echo server) used meanwhile.
struct Sample {
    elapsed: f64,
    cpu: f64,
}

/// One loop: its tab in front, the page's own timing of `count` (`call` returns elapsed ms).
async fn round(tab: &headless::Tab, session: &headless::Session, call: String, count: u64) -> Result<Sample> {
    tab.bring_to_front().await?;
    let cpu_before = cpu_ms("self")?;
    let value = session.eval(&call).await?;
    let cpu = (cpu_ms("self")? - cpu_before) * 1e6 / count as f64;
    let ms = value.as_f64().with_context(|| format!("`{call}` returned {value}, not a number"))?;
    Ok(Sample { elapsed: ms * 1e6 / count as f64, cpu })
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

/// The echo page (`globalThis.echo.sequential(count, size)` and `pipelined(count, size)`,
/// elapsed ms), connecting to the echo server on `echo`.
fn echo_html(echo: u16) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>WebSocket echo</title><script>
const socket = new WebSocket("ws://127.0.0.1:{echo}/");
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
</script>"#
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
    let web = match rows {
        WebRows::Measured(web) => web,
        WebRows::NotMeasured(why) => {
            line("| row | ours | bare WebSocket echo | ratio | target |".into());
            line("| --- | --- | --- | --- | --- |".into());
            line(format!("| invoke round trip, page → main → page | not measured: {why} | | | ≤ 1.3x the echo |"));
            line(format!("| pipelined invokes (256 in flight) | not measured: {why} | | | ≥ 0.8x the echo's |"));
            line(String::new());
            return out;
        }
    };
    line(format!(
        "{}, headless, in the same run. Ours: the `bench` fixture's web renderer in its iframe in the \
         host's shell invokes main's `echo` ({SIZE}-byte value; the page's WebSocket message is {} bytes). \
         The echo: a page on `http://127.0.0.1` in the same browser, sending {}-byte messages to a \
         minimal tokio-tungstenite echo server on loopback. Rounds alternate ours and the echo.",
        web.browser, web.message_bytes, web.message_bytes
    ));
    line(String::new());
    line("| row | ours | bare WebSocket echo | ratio | target |".into());
    line("| --- | --- | --- | --- | --- |".into());
    let spread =
        |figure: Figure| format!("{} (rounds {}–{})", micros(figure.median), micros(figure.min), micros(figure.max));
    let (ours, echo) = web.invoke;
    line(format!(
        "| invoke round trip, page → main → page | {} | {} | {:.2}x the echo | ≤ 1.3x |",
        spread(ours),
        spread(echo),
        ours.median / echo.median
    ));
    let rate = |nanos: f64| 1e9 / nanos;
    let rates = |figure: Figure| {
        format!("{:.0}/s (rounds {:.0}–{:.0})", rate(figure.median), rate(figure.max), rate(figure.min))
    };
    let (ours, echo) = web.pipelined;
    line(format!(
        "| pipelined invokes ({IN_FLIGHT} in flight) | {} | {} | {:.2}x the echo's throughput | ≥ 0.8x |",
        rates(ours),
        rates(echo),
        echo.median / ours.median
    ));
    let [ours_seq, echo_seq, ours_pipe, echo_pipe] = web.cpu;
    line(format!(
        "| CPU of the bench's process per reply (the host's; the echo server's), sequential / pipelined | {} / {} | \
         {} / {} | | |",
        micros(ours_seq),
        micros(ours_pipe),
        micros(echo_seq),
        micros(echo_pipe)
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
    fn the_echo_sends_what_an_invoke_sends() {
        // A 7-array (1 byte): 1, 2, 0, 0 (4), the id 1000 (3), "echo" (5), and a bin (2) of
        // `{"bytes": bin(16 bytes)}` (1 + 6 + 2 + 16).
        assert_eq!(message_bytes(16).unwrap(), 40);
    }
}
