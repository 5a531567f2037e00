//! `cargo xtask web build | check | test`: the JavaScript side in `host/web/`.
//!
//! The host embeds `host/web/vendor/msgpack.js`, `@msgpack/msgpack` bundled by esbuild into one
//! ES module. Both come from the npm registry through `host/web/package-lock.json`, so the
//! file is reproducible: `build` installs exactly the lock file's packages (`npm ci`) and
//! bundles; `check` does the same into a temporary directory and fails if the committed file
//! differs; `test` runs the client's tests with Node's own runner (no browser).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

/// What `cargo xtask web` does.
#[derive(Subcommand)]
pub enum Action {
    /// Install the locked npm packages and bundle `@msgpack/msgpack` into `host/web/vendor/`.
    Build,
    /// Bundle afresh into a temporary directory and fail if `host/web/vendor/msgpack.js`
    /// differs (what CI runs).
    Check,
    /// Run the JavaScript client's tests (`node --test host/web/test/`).
    Test,
}

/// The bundle the host serves as `/.host/msgpack.js`, relative to `host/web/`.
const VENDORED: &str = "vendor/msgpack.js";

/// The first line of the bundle: what it is and how it is made.
const BANNER: &str =
    "// @msgpack/msgpack, bundled by `cargo xtask web build` from host/web/package-lock.json. Do not edit.";

pub fn run(action: &Action) -> Result<()> {
    let web = super::workspace_root().join("host").join("web");
    match action {
        Action::Build => {
            npm_ci(&web)?;
            bundle(&web, &web.join(VENDORED))?;
            println!("wrote {}", web.join(VENDORED).display());
            Ok(())
        }
        Action::Check => check(&web),
        Action::Test => {
            require("node")?;
            let mut command = Command::new("node");
            command.current_dir(&web).args(["--test", "test/"]);
            super::run(&mut command)
        }
    }
}

fn check(web: &Path) -> Result<()> {
    npm_ci(web)?;
    let dir = std::env::temp_dir().join(format!("xtask-web-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let fresh = dir.join("msgpack.js");
    let outcome = bundle(web, &fresh).and_then(|()| {
        let fresh = std::fs::read(&fresh).with_context(|| format!("cannot read {}", fresh.display()))?;
        let committed = web.join(VENDORED);
        let committed = std::fs::read(&committed)
            .with_context(|| format!("cannot read {} (run `cargo xtask web build` to make it)", committed.display()))?;
        if fresh != committed {
            bail!(
                "host/web/{VENDORED} differs from a fresh build of host/web/package-lock.json \
                 ({} bytes committed, {} bytes built): run `cargo xtask web build` and commit the result",
                committed.len(),
                fresh.len()
            );
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    println!("host/web/{VENDORED} equals a fresh build of the lock file");
    Ok(())
}

/// Installs exactly what the lock file names, without running install scripts (esbuild's
/// binary comes as an optional dependency package; its postinstall only double-checks it).
fn npm_ci(web: &Path) -> Result<()> {
    require("node")?;
    require("npm")?;
    let mut command = Command::new("npm");
    command.current_dir(web).args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]);
    super::run(&mut command)
}

/// Bundles `@msgpack/msgpack`'s ES module build into one file at `out`. Deterministic: no
/// minification (method names and the licence stay readable), no source map, fixed target.
fn bundle(web: &Path, out: &Path) -> Result<()> {
    let esbuild: PathBuf = web.join("node_modules").join(".bin").join("esbuild");
    if !esbuild.exists() {
        bail!("{} is missing after `npm ci`", esbuild.display());
    }
    let mut command = Command::new(esbuild);
    command.current_dir(web).args([
        "node_modules/@msgpack/msgpack/dist.esm/index.mjs",
        "--bundle",
        "--format=esm",
        "--platform=browser",
        "--target=es2022",
        "--charset=utf8",
        "--legal-comments=inline",
        "--log-level=warning",
    ]);
    command.arg(format!("--banner:js={BANNER}"));
    command.arg(format!("--outfile={}", out.display()));
    super::run(&mut command)
}

/// Fails, saying how to install it, when `program` is not on the PATH.
fn require(program: &str) -> Result<()> {
    match Command::new(program).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!(
            "`{program}` is needed for the JavaScript side (host/web/) and was not found on the PATH: \
             install Node.js 20 or later with npm (Debian: `apt-get install nodejs npm`)"
        ),
    }
}
