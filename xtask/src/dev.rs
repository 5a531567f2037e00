//! `cargo xtask dev NAME`: the development loop of one extension. Its crate is built, the host
//! runs it with `--watch`, and every change under the crate's directory rebuilds it; the host
//! then loads and validates the new library and swaps it in (a build that fails, to compile or
//! to load, leaves the running version as it is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

use crate::{cargo, target_dir, workspace_root};

/// Long enough for an editor's save (write, rename, touch) to be one change.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the loop waits for.
enum Happening {
    /// Files under the crate's directory changed (outside its build output).
    Changed(Vec<PathBuf>),
    /// The watcher failed.
    WatchError(String),
    /// The host exited: the loop ends.
    HostExited(std::io::Result<ExitStatus>),
}

/// The package `name` of the workspace, as `cargo metadata` describes it.
struct Package {
    dir: PathBuf,
    library: PathBuf,
    target_dir: PathBuf,
}

pub(crate) fn run(name: &str, host_args: &[String]) -> Result<()> {
    let (package, build) = find(name)?;
    let build: Vec<&str> = build.iter().map(String::as_str).collect();
    // Built on its own, as every rebuild is: built together with the host, its dependencies
    // could be resolved with other features, and the first rebuild would relink it for nothing.
    cargo(&build).context("the first build failed; fix it and run `cargo xtask dev` again")?;
    cargo(&["build", "-p", "host"])?;
    let (sender, events) = mpsc::channel();
    let mut debouncer = {
        let sender = sender.clone();
        let ignored = [package.target_dir.clone(), package.dir.join("target"), package.dir.join(".git")];
        // The watcher reports files merely opened too (cargo reads every source it checks):
        // only a file whose size, times or inode changed, or that appeared or went, counts.
        let mut seen = BTreeMap::new();
        record(&package.dir, &ignored, &mut seen);
        new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
            let happening = match result {
                Ok(events) => {
                    let changed: Vec<PathBuf> = events
                        .into_iter()
                        .map(|event| event.path)
                        .filter(|path| !ignored.iter().any(|dir| path.starts_with(dir)))
                        .filter(|path| {
                            let now = identity(path);
                            seen.insert(path.clone(), now) != Some(now)
                        })
                        .collect();
                    if changed.is_empty() {
                        return;
                    }
                    Happening::Changed(changed)
                }
                Err(error) => Happening::WatchError(error.to_string()),
            };
            let _ = sender.send(happening);
        })
        .context("cannot start watching files")?
    };
    debouncer
        .watcher()
        .watch(&package.dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch `{}`", package.dir.display()))?;

    let host_program = target_dir().join("debug").join(format!("host{}", std::env::consts::EXE_SUFFIX));
    let mut host = Command::new(&host_program);
    host.current_dir(workspace_root()).args(["run", "--watch"]).args(host_args).arg(&package.library);
    if std::env::var_os("RUST_LOG").is_none() {
        host.env("RUST_LOG", "info");
    }
    let mut child = host.spawn().with_context(|| format!("cannot start `{}`", host_program.display()))?;
    let pid = child.id();
    std::thread::Builder::new()
        .name("host-wait".into())
        .spawn(move || {
            let _ = sender.send(Happening::HostExited(child.wait()));
        })
        .context("cannot start a thread")?;
    eprintln!(
        "dev: watching `{}`; each change rebuilds `{name}` and the host (pid {pid}) reloads it",
        package.dir.display()
    );

    // What arrived while the changes before it were folded together, handled next.
    let mut held: Option<Happening> = None;
    loop {
        let next = match held.take() {
            Some(happening) => Ok(happening),
            None => events.recv(),
        };
        match next {
            Ok(Happening::Changed(changed)) => {
                let changed = fold(changed, &events, &mut held);
                let first = changed.first().map(|path| path.display().to_string()).unwrap_or_default();
                eprintln!("dev: `{first}` changed ({} files); rebuilding `{name}`", changed.len());
                match cargo(&build) {
                    Ok(()) => eprintln!("dev: built; the host reloads `{}` if it changed", package.library.display()),
                    Err(error) => eprintln!("dev: the build failed ({error}); the host keeps the running version"),
                }
            }
            Ok(Happening::WatchError(error)) => eprintln!("dev: watching files: {error}"),
            Ok(Happening::HostExited(status)) => {
                let status = status.context("waiting for the host")?;
                if !status.success() {
                    bail!("the host exited with {status}");
                }
                return Ok(());
            }
            Err(_) => bail!("the file watcher stopped"),
        }
    }
}

/// `changed` and the changes queued behind it, folded into one build; the first thing queued
/// that is not a change (the host exiting, a watch error) is kept in `held` for after the
/// build, not dropped (dropped, the loop would wait for ever on a host that has exited).
fn fold(
    mut changed: Vec<PathBuf>,
    events: &std::sync::mpsc::Receiver<Happening>,
    held: &mut Option<Happening>,
) -> Vec<PathBuf> {
    while let Ok(happening) = events.try_recv() {
        match happening {
            Happening::Changed(more) => changed.extend(more),
            other => {
                *held = Some(other);
                break;
            }
        }
    }
    changed
}

/// Size, modification and change times and inode of a file; `None` if it is not there.
type Identity = Option<(u64, i64, i64, i64, i64, u64)>;

fn identity(path: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.ino()))
}

/// Records the identity of every file and directory under `dir`, outside `ignored`.
fn record(dir: &Path, ignored: &[PathBuf], seen: &mut BTreeMap<PathBuf, Identity>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if ignored.iter().any(|skip| path.starts_with(skip)) {
            continue;
        }
        seen.insert(path.clone(), identity(&path));
        if path.is_dir() {
            record(&path, ignored, seen);
        }
    }
}

/// Finds the extension's package: `name` in this workspace, or, for a directory, the package
/// whose manifest is there (a crate of its own, as `new-extension --dir` makes). Returns it and
/// the `cargo build` arguments that build it.
fn find(name: &str) -> Result<(Package, Vec<String>)> {
    let manifest = Path::new(name).join("Cargo.toml");
    let outside = name.contains(std::path::MAIN_SEPARATOR) && manifest.is_file();
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(workspace_root()).args(["metadata", "--format-version", "1", "--no-deps"]);
    let manifest = if outside {
        let manifest = std::fs::canonicalize(&manifest).with_context(|| format!("`{}`", manifest.display()))?;
        command.arg("--manifest-path").arg(&manifest);
        Some(manifest)
    } else {
        None
    };
    let output = command.output().context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("`cargo metadata` output")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` names no target directory")?;
    let packages = metadata["packages"].as_array().context("`cargo metadata` lists no packages")?;
    let found = packages.iter().find(|package| match &manifest {
        Some(manifest) => package["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()),
        None => package["name"] == name,
    });
    let Some(package) = found else {
        let mut names: Vec<&str> = packages.iter().filter_map(|package| package["name"].as_str()).collect();
        names.sort_unstable();
        bail!(
            "no package `{name}` in the workspace (there are: {}; or give the directory of a crate of its own)",
            names.join(", ")
        );
    };
    let package_name = package["name"].as_str().context("the package has no name")?;
    let manifest_path = package["manifest_path"].as_str().context("the package has no manifest path")?;
    let dir = Path::new(manifest_path).parent().map(Path::to_owned).context("the manifest has no directory")?;
    let targets = package["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
    let is_cdylib = |target: &&serde_json::Value| {
        target["crate_types"].as_array().is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"))
    };
    let Some(library) = targets.iter().find(is_cdylib).and_then(|target| target["name"].as_str()) else {
        bail!(
            "package `{package_name}` builds no cdylib, so it is not an extension (its `[lib]` needs `crate-type = [\"cdylib\"]`)"
        );
    };
    let library = target_dir.join("debug").join(super::library_file_name(library));
    let build = match manifest {
        Some(_) => vec!["build".to_owned(), "--manifest-path".to_owned(), manifest_path.to_owned()],
        None => vec!["build".to_owned(), "-p".to_owned(), package_name.to_owned()],
    };
    Ok((Package { dir, library, target_dir }, build))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_exiting_during_a_build_is_kept_for_after_it() {
        let (sender, events) = std::sync::mpsc::channel();
        sender.send(Happening::Changed(vec!["b.rs".into()])).unwrap();
        sender.send(Happening::WatchError("gone".into())).unwrap();
        sender.send(Happening::Changed(vec!["c.rs".into()])).unwrap();
        let mut held = None;
        let changed = fold(vec!["a.rs".into()], &events, &mut held);
        assert_eq!(changed, [PathBuf::from("a.rs"), PathBuf::from("b.rs")]);
        assert!(matches!(held, Some(Happening::WatchError(ref error)) if error == "gone"));
        // What followed it is still queued, in order.
        assert!(matches!(events.try_recv(), Ok(Happening::Changed(ref more)) if more == &[PathBuf::from("c.rs")]));
    }
}
