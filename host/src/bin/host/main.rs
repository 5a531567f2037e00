//! `host`: runs extensions (`host run`) or checks a library (`host check`).

mod console;
mod notation;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use extension_host::{Host, HostConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(name = "host", version, about = "A Lens-style extension host: loads extension libraries and runs their IPC.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the given libraries (or every library in the given directories), activate them,
    /// open frames, and run until Ctrl-C, the end of `--duration`, or `quit` on the console.
    Run {
        /// Extension libraries, or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Validate a library and print its metadata, or what is wrong with it.
    Check { library: PathBuf },
    /// Serve as a child process of a host (started by the host itself).
    #[command(hide = true)]
    Child {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        token: String,
    },
}

fn main() -> ExitCode {
    let filter = log_filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { library } => check(&library),
        Command::Child { socket, token } => extension_host::run_child(&socket, &token),
        Command::Run { paths, options } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(paths, options))
        }
    }
}

/// `--duration`: a number of seconds, zero or more. Too many to count (`inf`, `1e300`) means
/// no limit; anything else is refused with the reason.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let refused = || format!("`{text}` is not a number of seconds, zero or more (fractions and `inf` allowed)");
    let seconds: f64 = text.trim().parse().map_err(|_| refused())?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(refused());
    }
    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// The log filter: `RUST_LOG`'s directives (`info` if unset or refused), and, whatever they
/// say, the WebSocket library no further than debug: it traces every frame's payload, web
/// frames' tokens included. The cap is a second filter both must pass, not a directive among
/// `RUST_LOG`'s: a directive would raise the library to debug at `info` (printing every close
/// frame it read), and lose to a more specific one (`tungstenite::protocol=trace`) or to a
/// span's (`[span]=trace` enables every event inside the span, whatever its target).
fn log_filter<S>(directives: Option<&str>) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let filter =
        directives.and_then(|directives| EnvFilter::try_new(directives).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG);
    filter.and(cap)
}

fn check(path: &std::path::Path) -> ExitCode {
    match extension_host::check(path) {
        Ok(info) => {
            println!("ok: `{}` is an extension", path.display());
            println!("  name:          {}", info.name);
            println!("  version:       {}", info.version);
            println!("  abi version:   {}", info.abi_version);
            println!("  extension-api: {}", info.api_version);
            println!("  build:         {}", if info.debug_build { "debug" } else { "release" });
            println!("  web renderer:  {}", if info.web_renderer { "yes" } else { "no" });
            if info.debug_build && !cfg!(debug_assertions) {
                println!("note: a debug build in a release host works, but runs slower; build it with --release");
            }
            if info.api_version != extension_host::API_VERSION {
                println!(
                    "note: built with extension-api {} (this host has {}); the ABI matches, so it loads",
                    info.api_version,
                    extension_host::API_VERSION
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `host run`'s options besides its paths.
#[derive(clap::Args)]
struct RunOptions {
    /// In-process frames to open at start.
    #[arg(long, default_value_t = 1)]
    frames: u32,
    /// Frames to open at start in renderer processes of their own.
    #[arg(long, default_value_t = 0)]
    child_frames: u32,
    /// Run this extension's main half in a child process of its own (repeatable).
    #[arg(long = "isolate", value_name = "NAME")]
    isolated: Vec<String>,
    /// Stop after this many seconds (fractions allowed; `inf`, or more than the clock can
    /// count, runs until interrupted).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Read dev-console commands from stdin (`help` lists them).
    #[arg(long)]
    console: bool,
    /// Print the inspect snapshot as JSON before shutting down.
    #[arg(long)]
    inspect: bool,
    /// Watch the loaded libraries and reload an extension when its library is rebuilt
    /// (the new build is loaded and validated first; frames stay open).
    #[arg(long)]
    watch: bool,
    /// Where extensions' persisted data is kept (one database file per extension).
    /// Defaults to the per-user data directory: `$XDG_DATA_HOME/extension-host`, else
    /// `~/.local/share/extension-host`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve web frames on this address (loopback, e.g. `127.0.0.1:0` for any free port) and
    /// print `web frames: URL`: every page open at that URL is a frame.
    #[arg(long, value_name = "ADDR")]
    web: Option<std::net::SocketAddr>,
    /// An origin (`scheme://host[:port]`) from which an application serves a shell page of
    /// its own for the web frames (`WebConfig::shell_origins`); repeat for several.
    /// Needs `--web`.
    #[arg(long = "shell-origin", value_name = "ORIGIN", requires = "web")]
    shell_origins: Vec<String>,
}

async fn run(paths: Vec<PathBuf>, options: RunOptions) -> ExitCode {
    let RunOptions { frames, child_frames, isolated, duration, console, inspect, watch, data_dir, web, shell_origins } =
        options;
    // Extensions log as verbosely as `RUST_LOG` lets the host log (the subscriber is installed).
    let mut config = HostConfig { max_log_level: extension_host::LevelFilter::current(), ..HostConfig::default() };
    if let Some(data_dir) = data_dir {
        config.storage.data_dir = data_dir;
    }
    let host = Host::new(config);
    let mut names = Vec::new();
    for path in &paths {
        let results = if path.is_dir() {
            match host.load_dir(path) {
                Ok(results) => results,
                Err(error) => {
                    tracing::error!("cannot read directory `{}`: {error}", path.display());
                    continue;
                }
            }
        } else {
            vec![(path.clone(), host.load(path))]
        };
        for (_, result) in results {
            match result {
                Ok(info) => names.push(info.name),
                Err(error) => tracing::error!("{error}"),
            }
        }
    }
    for name in &isolated {
        if let Err(error) = host.set_isolated(name, true) {
            tracing::error!("--isolate {name}: {error}");
        }
    }
    for name in &names {
        if let Err(error) = host.activate(name).await {
            tracing::error!("{error}");
        }
    }
    for _ in 0..frames {
        let frame = host.open_frame().await;
        tracing::info!("opened {frame}");
    }
    for _ in 0..child_frames {
        match host.open_child_frame().await {
            Ok(frame) => tracing::info!("opened {frame} in a renderer process"),
            Err(error) => tracing::error!("{error}"),
        }
    }
    let mut web_server = match web {
        Some(addr) => match host.serve_web(extension_host::WebConfig { addr, shell_origins, ..Default::default() }) {
            Ok(server) => {
                println!("web frames: {}", server.url());
                Some(server)
            }
            Err(error) => {
                tracing::error!("--web {addr}: {error}");
                host.shutdown().await;
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Watching starts once the extensions and frames are up: a rebuild from here on reloads.
    let watcher = if watch {
        match extension_host::LibraryWatcher::start(&host, extension_host::LibraryWatcher::DEFAULT_DEBOUNCE) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!("--watch: {error}");
                host.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if console {
        web_server = console::run(&host, web_server).await;
    } else {
        // Too far away to represent: no limit, as without `--duration`.
        let deadline = duration.and_then(|duration| tokio::time::Instant::now().checked_add(duration));
        let stop = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        // Ctrl-C is caught from here on: the log line below says the host is ready for it.
        let mut interrupt = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(interrupt) => interrupt,
            Err(error) => {
                tracing::error!("cannot listen for Ctrl-C: {error}");
                host.shutdown().await;
                return ExitCode::FAILURE;
            }
        };
        match (deadline, duration) {
            (Some(_), Some(duration)) => tracing::info!("running for {duration:?}, or until interrupted"),
            _ => tracing::info!("running until interrupted"),
        }
        tokio::select! {
            _ = stop => tracing::info!("duration elapsed"),
            _ = interrupt.recv() => tracing::info!("interrupted"),
        }
    }
    if inspect {
        match serde_json::to_string_pretty(&host.inspect().await) {
            Ok(json) => println!("{json}"),
            Err(error) => tracing::error!("cannot print the snapshot: {error}"),
        }
    }
    drop(watcher);
    // The host first, so that web frames' halves are closed (their `deactivate` runs in the
    // page) while the pages are still connected; then the server.
    host.shutdown().await;
    if let Some(server) = web_server {
        server.shutdown().await;
    }
    tracing::info!("host stopped");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::log_filter;

    /// A subscriber logging (nowhere) through `directives`' filter, as `main`'s does.
    fn subscriber(directives: Option<&str>) -> impl tracing::Subscriber + Send + Sync {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(log_filter(directives));
        tracing_subscriber::registry().with(layer)
    }

    /// Whether `directives`' filter lets an event of `level` from `target` through.
    fn enabled(directives: Option<&str>, target: &str, level: Level) -> bool {
        let subscriber = subscriber(directives);
        tracing::subscriber::with_default(subscriber, || match (target, level) {
            ("tungstenite::protocol", Level::DEBUG) => tracing::enabled!(target: "tungstenite::protocol", Level::DEBUG),
            ("tungstenite::protocol", Level::TRACE) => tracing::enabled!(target: "tungstenite::protocol", Level::TRACE),
            ("tokio_tungstenite", Level::TRACE) => tracing::enabled!(target: "tokio_tungstenite", Level::TRACE),
            ("host", Level::INFO) => tracing::enabled!(target: "host", Level::INFO),
            ("host", Level::TRACE) => tracing::enabled!(target: "host", Level::TRACE),
            other => panic!("no case for {other:?}"),
        })
    }

    /// One test, not several: tracing's callsite interest and its global most verbose level
    /// are rebuilt whenever a subscriber is registered, and subscribers set as the default on
    /// two test threads at once race there (one run saw `info` refuse an info event while
    /// another thread's subscriber was `off`).
    #[test]
    fn the_websocket_library_logs_no_more_than_the_rest_and_never_past_debug() {
        // At the default, and at `info`: its debug lines stay out (the cap used to raise it).
        for directives in [None, Some("info")] {
            assert!(enabled(directives, "host", Level::INFO), "{directives:?}");
            assert!(!enabled(directives, "tungstenite::protocol", Level::DEBUG), "{directives:?}");
        }
        // At `trace`, and asked for by name: debug, never trace (it would log the tokens).
        for directives in ["trace", "info,tungstenite=trace", "tokio_tungstenite=trace"] {
            assert!(!enabled(Some(directives), "tungstenite::protocol", Level::TRACE), "{directives}");
            assert!(!enabled(Some(directives), "tokio_tungstenite", Level::TRACE), "{directives}");
        }
        assert!(enabled(Some("trace"), "host", Level::TRACE));
        assert!(enabled(Some("trace"), "tungstenite::protocol", Level::DEBUG));
        assert!(enabled(Some("info,tungstenite=trace"), "tungstenite::protocol", Level::DEBUG));

        // The cap holds against any directive: one on a module of the library (more specific
        // than the cap's target, so it used to win), and one on a span (which enabled every
        // event inside it, the library's too, whatever the static directives said).
        for directives in ["tungstenite::protocol=trace", "warn,tungstenite::protocol=trace", "[serving]=trace"] {
            let subscriber = subscriber(Some(directives));
            let traced = tracing::subscriber::with_default(subscriber, || {
                let _serving = tracing::info_span!("serving").entered();
                tracing::enabled!(target: "tungstenite::protocol", Level::TRACE)
            });
            assert!(!traced, "{directives}: the library traces");
        }
        // `off` stays off, the library included.
        assert!(!enabled(Some("off"), "tungstenite::protocol", Level::DEBUG));
        assert!(!enabled(Some("off"), "host", Level::INFO));
    }
}
