//! `cargo xtask test`: the README's test command. The browser tests need Chromium and the web
//! client's checks need Node.js and npm, so this makes sure they are there first (installing
//! them with `apt-get` when it runs as root on a Debian-like machine, else failing with how to
//! install them), then runs the web client's checks and the whole workspace's tests with
//! `CHROMIUM` set. Nothing is skipped: a missing tool is an error, never a silent pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where Debian's `chromium` package puts the browser; `$CHROMIUM` overrides it.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Runs the whole test suite, browser tests included.
pub fn run() -> Result<()> {
    let chromium = ensure_chromium()?;
    ensure_node()?;
    web_checks()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.current_dir(crate::workspace_root()).args(["test", "--locked", "--workspace"]).env("CHROMIUM", &chromium);
    crate::run(&mut command)
}

/// The web client's checks: `cargo xtask web check` (the vendored bundle equals a fresh build
/// of the lock file) and `cargo xtask web test` (the client's Node tests).
fn web_checks() -> Result<()> {
    crate::web::run(&crate::web::Action::Check)?;
    crate::web::run(&crate::web::Action::Test)
}

/// The Chromium binary the browser tests drive: `$CHROMIUM` if set (it must run), else
/// [`DEFAULT_CHROMIUM`], installed with `apt-get` if missing and this runs as root.
fn ensure_chromium() -> Result<PathBuf> {
    ensure_chromium_from(std::env::var_os("CHROMIUM"))
}

/// [`ensure_chromium`] with `chosen` as the value of `$CHROMIUM`.
fn ensure_chromium_from(chosen: Option<std::ffi::OsString>) -> Result<PathBuf> {
    if let Some(chosen) = chosen {
        let path = PathBuf::from(&chosen);
        return match version(&path) {
            Some(version) => {
                println!("browser tests: {version} ({}, from $CHROMIUM)", path.display());
                Ok(path)
            }
            None => bail!(
                "CHROMIUM is set to `{}`, which does not run (`{} --version` failed); \
                 point it at a Chromium or Chrome binary, or unset it to use {DEFAULT_CHROMIUM}",
                path.display(),
                path.display()
            ),
        };
    }
    let path = PathBuf::from(DEFAULT_CHROMIUM);
    if version(&path).is_none() {
        install("Chromium (for the browser tests)", &["chromium"])?;
    }
    let version = version(&path)
        .with_context(|| format!("`apt-get install chromium` succeeded but {DEFAULT_CHROMIUM} still does not run"))?;
    println!("browser tests: {version} ({DEFAULT_CHROMIUM})");
    Ok(path)
}

/// Node.js and npm, which the web client's checks run.
fn ensure_node() -> Result<()> {
    let found = |program: &str| version(Path::new(program)).is_some();
    if !(found("node") && found("npm")) {
        install("Node.js and npm (for the web client's checks)", &["nodejs", "npm"])?;
    }
    for program in ["node", "npm"] {
        if !found(program) {
            bail!("`apt-get install nodejs npm` succeeded but `{program} --version` still fails");
        }
    }
    Ok(())
}

/// What `PROGRAM --version` prints (its first line), if it runs and succeeds.
fn version(program: &Path) -> Option<String> {
    let output = Command::new(program).arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Installs Debian `packages` with `apt-get` if this runs as root and `apt-get` is there;
/// otherwise fails saying exactly how to install them.
fn install(what: &str, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    let how = how_to_install(what, packages);
    let has_apt = Command::new("apt-get").arg("--version").output().is_ok_and(|output| output.status.success());
    if !(running_as_root() && has_apt) {
        bail!("{how}");
    }
    println!("installing {list} with apt-get ({what})");
    let mut update = Command::new("apt-get");
    update.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
    crate::run(&mut update).with_context(|| how.clone())?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "--no-install-recommends"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive");
    crate::run(&mut install).with_context(|| how.clone())
}

/// What to tell someone who cannot be installed for: exactly how to install `packages`.
fn how_to_install(what: &str, packages: &[&str]) -> String {
    format!(
        "{what} is not installed. Install it with `sudo apt-get update && sudo apt-get install -y \
         --no-install-recommends {}` (Debian/Ubuntu), then run `cargo xtask test` again",
        packages.join(" ")
    )
}

/// Whether this process runs as root (uid 0), from `/proc/self/status` (Linux) or `id -u`.
fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(uid) = status.lines().find_map(|line| line.strip_prefix("Uid:"))
    {
        return uid.split_whitespace().next() == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::ensure_chromium_from;

    #[test]
    fn a_chromium_named_by_the_environment_must_run() {
        let error = ensure_chromium_from(Some("/nonexistent/chromium".into())).unwrap_err().to_string();
        assert!(error.contains("CHROMIUM is set to `/nonexistent/chromium`"), "{error}");
        assert!(error.contains("does not run"), "{error}");
    }

    #[test]
    fn who_cannot_install_is_told_exactly_how() {
        let how = super::how_to_install("Node.js and npm", &["nodejs", "npm"]);
        assert!(how.starts_with("Node.js and npm is not installed."), "{how}");
        assert!(
            how.contains("`sudo apt-get update && sudo apt-get install -y --no-install-recommends nodejs npm`"),
            "{how}"
        );
    }
}
