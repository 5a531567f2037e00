//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `demo`: builds the sample extensions and the host, then runs the host with them for a few
//!   seconds, one frame in process and one in a renderer process: the IPC working, in the log.
//! - `test`: the whole test suite (`cargo test --workspace`).
//! - `bench`: builds in release and runs the benchmark table (`BENCHMARKS.md`).
//! - `ci`: what CI runs: formatting, clippy with warnings denied, the test suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project automation for the extension host")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the samples and run the host with them (two frames, a few seconds).
    Demo {
        /// How long the host runs, in seconds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Run the whole test suite.
    Test,
    /// Build in release and run the benchmarks; prints the table and writes BENCHMARKS.md.
    Bench {
        /// Fewer iterations: a quick, noisier look.
        #[arg(long)]
        quick: bool,
    },
    /// Run everything CI checks: fmt, clippy (warnings denied), tests.
    Ci,
}

/// The sample extensions the demo runs: `hello` and its twin with the same channel names,
/// and `gluon` (exposed functions, the store, main-to-frame requests).
const SAMPLES: &[&str] = &["hello", "hello-twin", "gluon"];

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Demo { seconds } => demo(seconds),
        Task::Test => cargo(&["test", "--workspace"]),
        Task::Bench { quick } => bench(quick),
        Task::Ci => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
            cargo(&["test", "--workspace"])
        }
    }
}

fn demo(seconds: f64) -> Result<()> {
    let mut build = vec!["build", "-p", "host"];
    for sample in SAMPLES {
        build.extend(["-p", sample]);
    }
    cargo(&build)?;
    let target = target_dir();
    let mut host = Command::new(target.join("debug").join(format!("host{}", std::env::consts::EXE_SUFFIX)));
    host.current_dir(workspace_root());
    host.args(["run", "--frames", "1", "--child-frames", "1", "--duration", &seconds.to_string()]);
    for sample in SAMPLES {
        let file =
            format!("{}{}{}", std::env::consts::DLL_PREFIX, sample.replace('-', "_"), std::env::consts::DLL_SUFFIX);
        host.arg(target.join("debug").join(file));
    }
    if std::env::var_os("RUST_LOG").is_none() {
        host.env("RUST_LOG", "info");
    }
    run(&mut host)
}

/// What the benchmarks load, besides their runner.
const BENCH_CRATES: &[&str] = &["host", "bench", "hello", "hello-twin", "gluon", "probe", "ipc-bench"];

fn bench(quick: bool) -> Result<()> {
    let mut build = vec!["build", "--release"];
    for name in BENCH_CRATES {
        build.extend(["-p", name]);
    }
    cargo(&build)?;
    let release = target_dir().join("release");
    let mut runner = Command::new(release.join(format!("ipc-bench{}", std::env::consts::EXE_SUFFIX)));
    runner
        .current_dir(workspace_root())
        .arg("--artifacts")
        .arg(&release)
        .arg("--out")
        .arg(workspace_root().join("BENCHMARKS.md"));
    if quick {
        runner.arg("--quick");
    }
    run(&mut runner)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args(args);
    run(&mut command)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
