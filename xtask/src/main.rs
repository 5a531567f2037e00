//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `demo`: builds the sample extensions and the host, then runs the host with them for a few
//!   seconds, one frame in process and one in a renderer process: the IPC working, in the log.
//! - `test`: the whole test suite, browser tests included: makes sure Chromium and Node.js are
//!   installed (with `apt-get` as root, else says how), runs the web client's checks, then
//!   `cargo test --locked --workspace` (see `test.rs`).
//! - `bench`: builds in release and runs the benchmark table (`BENCHMARKS.md`).
//! - `soak`: builds in release and runs the soak and leak checks (fails on a leak).
//! - `memcheck [FILTER...]`: the integration suite under valgrind memcheck (children too).
//! - `ci`: what CI runs: formatting, clippy with warnings denied, the test suite.
//! - `new-extension NAME`: scaffolds a working extension crate with a test.
//! - `dev NAME|DIR [-- HOST_ARGS...]`: builds the extension and the host, runs `host run --watch`
//!   with it, and rebuilds the extension's crate whenever its sources change: the host
//!   reloads each new build.
//! - `fuzz [TARGET] [--seconds N] [--asan]`: runs the cargo-fuzz targets in `fuzz/` on the
//!   stable toolchain (installs cargo-fuzz if missing); see `fuzz/README.md`.
//! - `web build | check | test`: the JavaScript side in `host/web/` (`web.rs`): bundle the
//!   vendored `@msgpack/msgpack` from the lock file, check the committed bundle equals a fresh
//!   one, run the client's Node tests.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod dev;
mod test;
mod web;

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
        /// How long the host runs, in seconds (long enough for a browser to join its web frame).
        #[arg(long, default_value_t = 6.0)]
        seconds: f64,
    },
    /// Run the whole test suite, browser tests included (installs Chromium and Node.js with
    /// apt-get when run as root and they are missing; otherwise says how to install them).
    Test,
    /// Build in release and run the benchmarks; prints the table and writes BENCHMARKS.md.
    Bench {
        /// Fewer iterations: a quick, noisier look.
        #[arg(long)]
        quick: bool,
    },
    /// Build in release and run the soak and leak checks: 10,000 activate/deactivate cycles
    /// (also with a renderer process open) and frame cycles, renderer processes, a million
    /// messages. Fails if anything leaked, in the host or in the renderer process.
    Soak {
        /// A tenth of the counts: a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// Run the integration suite under valgrind memcheck, child processes included: every read
    /// and write across the library boundary and the socket is checked. Fails on any error.
    Memcheck {
        /// Only the tests whose names contain one of these (default: all but those in
        /// `MEMCHECK_SKIPS`).
        filters: Vec<String>,
    },
    /// Run everything CI checks: fmt, clippy and rustdoc (warnings denied), tests.
    Ci,
    /// Scaffold a working extension crate (both halves, a listener, a handler, an exposed
    /// function, a store value, and a test).
    NewExtension {
        /// The crate name: what cargo accepts for a package name, in ASCII (letters, digits,
        /// `-` and `_`, not starting with a digit; not a Rust keyword).
        name: String,
        /// Where to create it; defaults to `sample-extensions/NAME`, added to the workspace.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Develop an extension: build it and the host, run the host on it with `--watch`, and
    /// rebuild the crate (`cargo build -p NAME`) whenever a file in its directory changes; the
    /// host swaps each new build in, keeping its frames open. Ends when the host does.
    Dev {
        /// The extension's package name in this workspace, or the directory of a crate of its
        /// own (as `new-extension --dir` makes: a path with a `/`).
        name: String,
        /// Arguments for `host run` after `--watch` (`-- --console --child-frames 1`, say).
        #[arg(last = true)]
        host_args: Vec<String>,
    },
    /// Run the fuzz targets in `fuzz/` with cargo-fuzz (installed if missing), on stable.
    Fuzz {
        /// `child_frame` or `boundary_values`; every target, one after the other, if omitted.
        target: Option<String>,
        /// How long each target runs, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// With AddressSanitizer (slower; sets RUSTC_BOOTSTRAP=1 for the build, see `fuzz`).
        #[arg(long)]
        asan: bool,
    },
    /// The JavaScript side in `host/web/`: `build` (the vendored bundle), `check` (it equals a
    /// fresh build of the lock file), `test` (the client's Node tests).
    Web {
        #[command(subcommand)]
        action: web::Action,
    },
}

/// The sample extensions the demo runs: `hello` and its twin with the same channel names,
/// and `gluon` (exposed functions, the store, main-to-frame requests).
const SAMPLES: &[&str] = &["hello", "hello-twin", "gluon"];

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Demo { seconds } => demo(seconds),
        Task::Test => test::run(),
        Task::Bench { quick } => bench(quick),
        Task::Soak { quick } => soak(quick),
        Task::Memcheck { filters } => memcheck(&filters),
        Task::NewExtension { name, dir } => new_extension(&name, dir),
        Task::Dev { name, host_args } => dev::run(&name, &host_args),
        Task::Fuzz { target, seconds, asan } => fuzz(target.as_deref(), seconds, asan),
        Task::Web { action } => web::run(&action),
        Task::Ci => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
                .current_dir(workspace_root())
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings")
                .status()?;
            if !status.success() {
                bail!("cargo doc found warnings");
            }
            test::run()
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
    host.args(["run", "--frames", "1", "--child-frames", "1", "--web", "127.0.0.1:0", "--duration"]);
    host.arg(seconds.to_string());
    for sample in SAMPLES {
        host.arg(target.join("debug").join(library_file_name(sample)));
    }
    if std::env::var_os("RUST_LOG").is_none() {
        host.env("RUST_LOG", "info");
    }
    host.stdout(Stdio::piped());
    let mut running = host.spawn().with_context(|| format!("cannot start {host:?}"))?;
    // Ctrl-C reaches the host too (the terminal signals the whole group): the host shuts down
    // and exits, and the demo outlives it to end its Chromium (a group of its own, which the
    // terminal does not signal) and remove its profile, instead of dying at once and leaving
    // both behind.
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: ignoring a signal installs no handler (no code runs on delivery), and nothing
    // else in the demo sets SIGINT's disposition.
    let ignored = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
    if let Err(error) = ignored {
        println!("(cannot ignore Ctrl-C: {error}; Ctrl-C would leave the demo's Chromium running)");
    }
    // The host prints `web frames: URL` once it serves them: a headless Chromium opens that
    // page, so the log shows the web frame's renderers too. A person can open it as well.
    // Killed, and its profile removed, when it drops: on every way out of here.
    let mut browser = None;
    if let Some(stdout) = running.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the host's output")?;
            println!("{line}");
            if let Some(url) = line.strip_prefix("web frames: ")
                && browser.is_none()
            {
                browser = join_web_frame(&chromium_path(), url);
            }
        }
    }
    let status = running.wait().context("waiting for the host")?;
    drop(browser);
    if !status.success() {
        bail!("the host failed with {status}");
    }
    Ok(())
}

/// The demo's Chromium: `$CHROMIUM`, else `/usr/bin/chromium`.
fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// A headless Chromium the demo started: killed, reaped and its profile directory removed
/// when it drops.
struct DemoBrowser {
    child: std::process::Child,
    profile: PathBuf,
}

impl Drop for DemoBrowser {
    fn drop(&mut self) {
        // Its whole group (it leads it): its helper processes write into the profile until
        // they die.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(error) = std::fs::remove_dir_all(&self.profile)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            println!("(could not remove Chromium's profile {}: {error})", self.profile.display());
        }
    }
}

/// Opens `url` in a headless Chromium (`chromium`) with a profile of its own in the temp dir
/// (removed when the returned browser drops); `None`, after saying so, where there is no
/// Chromium: the web frame is still served.
fn join_web_frame(chromium: &Path, url: &str) -> Option<DemoBrowser> {
    if !chromium.exists() {
        println!("(no Chromium at {}: open {url} in a browser to see the web frame)", chromium.display());
        return None;
    }
    let profile = std::env::temp_dir().join(format!("xtask-demo-chromium-{}", std::process::id()));
    // Created here, so that it is ours to remove whatever Chromium got to do; with Chromium's
    // temp dir in it (a killed Chromium leaves its org.chromium.Chromium.* singleton there).
    let scratch = profile.join("tmp");
    if let Err(error) = std::fs::create_dir_all(&scratch) {
        println!("(cannot create {}: {error}; open {url} in a browser to see the web frame)", profile.display());
        return None;
    }
    let mut command = Command::new(chromium);
    command
        .args(headless::OFFLINE_FLAGS)
        // Headless Chromium needs a DevTools endpoint to stay open on a page.
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .env("TMPDIR", &scratch)
        // A group of its own, killed whole when the demo ends.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match command.spawn() {
        Ok(child) => {
            println!("(a headless Chromium opened {url})");
            Some(DemoBrowser { child, profile })
        }
        Err(error) => {
            println!("(could not start {}: {error}; open {url} in a browser to see the web frame)", chromium.display());
            let _ = std::fs::remove_dir_all(&profile);
            None
        }
    }
}

/// What the benchmarks load, besides their runner.
const BENCH_CRATES: &[&str] = &["host", "bench", "hello", "hello-twin", "gluon", "probe", "ipc-bench"];

fn bench(quick: bool) -> Result<()> {
    let release = build_release()?;
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

fn soak(quick: bool) -> Result<()> {
    let release = build_release()?;
    let mut runner = Command::new(release.join(format!("ipc-bench{}", std::env::consts::EXE_SUFFIX)));
    runner.current_dir(workspace_root()).arg("--artifacts").arg(&release).arg("--soak");
    if quick {
        runner.arg("--quick");
    }
    run(&mut runner)
}

/// Tests `memcheck` leaves out by default: those that only run cargo (compile errors,
/// scaffolding), those whose children crash on purpose (memcheck would report the deliberate
/// invalid access), and the hundred-extension load test (minutes under memcheck).
const MEMCHECK_SKIPS: &[&str] = &["macros::", "author::", "crashes::", "dangling_pointer", "a_hundred_extensions"];

fn memcheck(filters: &[String]) -> Result<()> {
    let found = Command::new("valgrind").arg("--version").output();
    if !found.is_ok_and(|output| output.status.success()) {
        bail!("valgrind is not installed (Debian/Ubuntu: `apt-get install valgrind`)");
    }
    // Build the suite and find its executable (cargo names it on stderr).
    let cargo_program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(&cargo_program)
        .current_dir(workspace_root())
        .args(["test", "-p", "integration-tests", "--test", "suite", "--no-run"])
        .output()
        .context("cannot run cargo")?;
    let stderr = String::from_utf8_lossy(&built.stderr);
    if !built.status.success() {
        bail!("building the suite failed:\n{stderr}");
    }
    let suite = stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("Executable suite/main.rs (")?.strip_suffix(')'))
        .context("cargo did not name the suite's executable")?;
    let mut command = Command::new("valgrind");
    command.current_dir(workspace_root().join("tests")).args([
        "--tool=memcheck",
        "--error-exitcode=99",
        "--quiet",
        // The host's child processes (`host child`) run under memcheck too; the builds the
        // suite starts do not.
        "--trace-children=yes",
        "--trace-children-skip=*/cargo,*/rustc,*/rustup,*/cc,*/ld,*/sh,*/bash,*/git",
    ]);
    command.arg(workspace_root().join(suite));
    if filters.is_empty() {
        for skipped in MEMCHECK_SKIPS {
            command.args(["--skip", skipped]);
        }
    } else {
        command.args(filters);
    }
    // Memcheck serialises threads; two tests at a time keep it within minutes.
    command.args(["--test-threads=2"]);
    run(&mut command)
}

/// Builds what the benchmarks and soak need in release; returns where it is.
fn build_release() -> Result<PathBuf> {
    let mut build = vec!["build", "--release"];
    for name in BENCH_CRATES {
        build.extend(["-p", name]);
    }
    cargo(&build)?;
    Ok(target_dir().join("release"))
}

/// The cargo-fuzz targets in `fuzz/`.
const FUZZ_TARGETS: &[&str] = &["child_frame", "boundary_values"];

fn fuzz(target: Option<&str>, seconds: u64, asan: bool) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(target) if FUZZ_TARGETS.contains(&target) => vec![target],
        Some(target) => bail!("no fuzz target `{target}`: the targets are {}", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let installed = Command::new(&cargo_bin).args(["fuzz", "--version"]).output().is_ok_and(|out| out.status.success());
    if !installed {
        println!("installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    // cargo-fuzz's default sanitizer, AddressSanitizer, needs `-Zsanitizer=address`, which stable
    // rustc refuses. Without a sanitizer every flag cargo-fuzz passes (`-Cpasses=sancov-module`,
    // `-Cllvm-args=...`, `--cfg fuzzing`) is stable: no nightly toolchain is needed. `--asan`
    // sets RUSTC_BOOTSTRAP=1, which makes stable rustc accept `-Z` flags (for this build only),
    // and builds into a target directory of its own so the two builds do not replace each other.
    let sanitizer = if asan { "address" } else { "none" };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| fuzz_dir.join("target"));
    let target_dir = if asan { target_dir.join("asan") } else { target_dir };
    for target in targets {
        let mut command = Command::new(&cargo_bin);
        command
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", "--sanitizer", sanitizer, "--release", "--target-dir"])
            .arg(&target_dir)
            .args([target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            // Deep nesting needs inputs longer than libFuzzer's default 4096 bytes.
            .args(["-max_len=16384", "-rss_limit_mb=2048", "-malloc_limit_mb=512", "-print_final_stats=1"]);
        if asan {
            command.env("RUSTC_BOOTSTRAP", "1");
        }
        run(&mut command)?;
    }
    Ok(())
}

/// Why `name` cannot name a scaffolded extension, if it cannot: the rules `cargo new` applies
/// to a package name, narrowed to ASCII (the host's rule for extension names, and crates.io's),
/// plus the names the scaffolded code itself cannot use.
fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first = chars.next()?;
    let ascii_only = |c: char| {
        format!(
            "`{c}` is not ASCII (cargo accepts Unicode letters, with a warning, but an extension's name is ASCII letters, digits, `-` and `_`)"
        )
    };
    if first.is_ascii_digit() {
        return Some("it starts with a digit".into());
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Some(if first.is_ascii() {
            format!("it starts with `{first}`; start with a letter or `_`")
        } else {
            ascii_only(first)
        });
    }
    if let Some(c) = chars.find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        return Some(if c.is_ascii() {
            format!("`{c}` is not allowed; use ASCII letters, digits, `-` and `_`")
        } else {
            ascii_only(c)
        });
    }
    // Refused by `cargo new` too (cargo's list of Rust keywords).
    const KEYWORDS: &[&str] = &[
        "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do",
        "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "if", "impl", "in", "let", "loop", "macro",
        "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
        "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
    ];
    if KEYWORDS.contains(&name) {
        return Some("it is a Rust keyword".into());
    }
    if name == "test" {
        return Some("it conflicts with Rust's built-in `test` library".into());
    }
    if name == "_" {
        return Some("`_` alone is not a path Rust code can name the crate by".into());
    }
    // `cargo new` only warns about these, but the scaffolded code names its crate in paths
    // (`{snake}::channels`), which would then mean the standard library's crate.
    if ["std", "core", "alloc", "proc_macro", "proc-macro"].contains(&name) {
        return Some(format!("it is the name of a crate of Rust's standard library (`{}`)", name.replace('-', "_")));
    }
    None
}

fn new_extension(name: &str, dir: Option<PathBuf>) -> Result<()> {
    if name.is_empty() {
        bail!("the name is empty: give the crate's name, e.g. `my-ext` or `my_ext`");
    }
    if let Some(problem) = name_problem(name) {
        bail!("`{name}` is not a usable crate name: {problem}");
    }
    let root = workspace_root();
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)?;
    let taken = manifest.contains(&format!("/{name}\"")) || manifest.contains(&format!("\"{name}\""));
    if taken {
        bail!("`{name}` is reserved or already a crate of this workspace: pick another name");
    }
    // Cargo refuses a package that depends on a package of its own name.
    let dependencies = ["extension-api", "extension_api", "host", "serde", "tokio", "tracing"];
    if dependencies.contains(&name) {
        bail!("`{name}` is the name of a crate the scaffolded extension depends on: pick another name");
    }
    let in_workspace = dir.is_none();
    let dir = dir.unwrap_or_else(|| root.join("sample-extensions").join(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("`{}` already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    let snake = name.replace('-', "_");
    let mut camel: String = name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    // `_1` gives `1`: a type name cannot start with a digit.
    if !camel.starts_with(|c: char| c.is_ascii_alphabetic()) {
        camel.insert_str(0, "Ext");
    }
    let (api, host, workspace) = if in_workspace {
        ("../../extension-api".to_owned(), "../../host".to_owned(), String::new())
    } else {
        let absolute = |crate_dir: &str| root.join(crate_dir).display().to_string();
        // Outside this workspace: a workspace of its own, so no parent one claims it.
        (absolute("extension-api"), absolute("host"), "\n[workspace]\n".to_owned())
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{snake}}", &snake)
            .replace("{{Camel}}", &camel)
            .replace("{{api}}", &api)
            .replace("{{host}}", &host)
            .replace("{{workspace}}", &workspace)
    };
    std::fs::write(dir.join("Cargo.toml"), fill(include_str!("../templates/Cargo.toml.txt")))?;
    std::fs::write(dir.join("src/lib.rs"), fill(include_str!("../templates/lib.rs.txt")))?;
    std::fs::write(dir.join("tests/extension.rs"), fill(include_str!("../templates/test.rs.txt")))?;
    if in_workspace {
        let member = format!("    \"sample-extensions/{name}\",\n");
        let updated = manifest.replacen("members = [\n", &format!("members = [\n{member}"), 1);
        if updated == manifest {
            bail!("cannot find `members = [` in {}: add `sample-extensions/{name}` by hand", manifest_path.display());
        }
        std::fs::write(&manifest_path, updated)?;
    } else {
        // Same dependency versions as this workspace, so nothing is resolved afresh.
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    }
    println!("created `{name}` in {}", dir.display());
    println!("  test it:  cargo test --manifest-path {}", dir.join("Cargo.toml").display());
    let dev = if in_workspace { name.to_owned() } else { dir.display().to_string() };
    println!("  run it:   cargo xtask dev {dev} -- --console   (rebuilt and reloaded on every change)");
    Ok(())
}

/// The file cargo writes the cdylib of crate `name` to (`libname.so` on Linux): xtask's one
/// copy of the rule (it does not depend on the host, whose `testing::library_file_name` is the
/// suite's).
fn library_file_name(name: &str) -> String {
    format!("{}{}{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"), std::env::consts::DLL_SUFFIX)
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

#[cfg(test)]
mod tests {
    use super::{join_web_frame, library_file_name, name_problem};

    #[cfg(target_os = "linux")]
    #[test]
    fn the_demos_chromium_is_killed_and_its_profile_removed_when_it_drops() {
        use std::os::unix::fs::PermissionsExt;
        // A stand-in for Chromium that runs until it is killed.
        let scratch = std::env::temp_dir().join(format!("xtask-test-fake-chromium-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let fake = scratch.join("chromium");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let browser = join_web_frame(&fake, "http://127.0.0.1:9/").expect("the fake Chromium starts");
        let (pid, profile) = (browser.child.id(), browser.profile.clone());
        assert!(profile.is_dir(), "{}", profile.display());
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(browser);
        assert!(!profile.exists(), "the profile {} is left behind", profile.display());
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "Chromium {pid} still runs");
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_file_name_is_cargos_for_the_crate() {
        assert_eq!(library_file_name("reload-v1"), "libreload_v1.so");
    }

    #[test]
    fn names_cargo_accepts_are_accepted() {
        for name in ["my_ext", "my-ext", "MyExt", "_private", "a-_b", "x1", "__", "deps", "con"] {
            assert_eq!(name_problem(name), None, "{name}");
        }
    }

    #[test]
    fn names_cargo_or_the_host_refuse_say_why() {
        let cases = [
            ("1x", "starts with a digit"),
            ("-x", "starts with `-`"),
            ("bad name!", "` ` is not allowed"),
            ("my.ext", "`.` is not allowed"),
            ("caf\u{e9}", "`\u{e9}` is not ASCII"),
            ("fn", "Rust keyword"),
            ("Self", "Rust keyword"),
            ("test", "built-in `test` library"),
            ("_", "`_` alone"),
            ("proc-macro", "standard library (`proc_macro`)"),
        ];
        for (name, reason) in cases {
            let problem = name_problem(name).unwrap_or_default();
            assert!(problem.contains(reason), "{name}: {problem}");
        }
    }
}
