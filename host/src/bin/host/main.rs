//! `host`: runs extensions (`host run`) or checks a library (`host check`).

mod console;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use extension_host::{Host, HostConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "A Lens-style extension host: loads extension libraries and runs their IPC."
)]
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
        /// Frames to open at start.
        #[arg(long, default_value_t = 1)]
        frames: u32,
        /// Stop after this many seconds (fractions allowed).
        #[arg(long)]
        duration: Option<f64>,
        /// Read dev-console commands from stdin (`help` lists them).
        #[arg(long)]
        console: bool,
        /// Print the inspect snapshot as JSON before shutting down.
        #[arg(long)]
        inspect: bool,
    },
    /// Validate a library and print its metadata, or what is wrong with it.
    Check { library: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { library } => check(&library),
        Command::Run {
            paths,
            frames,
            duration,
            console,
            inspect,
        } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(paths, frames, duration, console, inspect))
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match extension_host::check(path) {
        Ok(info) => {
            println!("ok: `{}` is an extension", path.display());
            println!("  name:          {}", info.name);
            println!("  version:       {}", info.version);
            println!("  abi version:   {}", info.abi_version);
            println!("  extension-api: {}", info.api_version);
            println!(
                "  build:         {}",
                if info.debug_build { "debug" } else { "release" }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(paths: Vec<PathBuf>, frames: u32, duration: Option<f64>, console: bool, inspect: bool) -> ExitCode {
    let host = Host::new(HostConfig::default());
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
    for name in &names {
        if let Err(error) = host.activate(name).await {
            tracing::error!("{error}");
        }
    }
    for _ in 0..frames {
        let frame = host.open_frame().await;
        tracing::info!("opened {frame}");
    }
    if console {
        console::run(&host).await;
    } else {
        let stop = async {
            match duration {
                Some(seconds) => tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop => tracing::info!("duration elapsed"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
    }
    if inspect {
        match serde_json::to_string_pretty(&host.inspect().await) {
            Ok(json) => println!("{json}"),
            Err(error) => tracing::error!("cannot print the snapshot: {error}"),
        }
    }
    host.shutdown().await;
    tracing::info!("host stopped");
    ExitCode::SUCCESS
}
