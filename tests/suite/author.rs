//! The author's path: a scaffolded extension builds, loads, and passes its own test, which
//! uses the `extension_host::testing` harness.

use std::process::Command;

use crate::loading::tempdir;
use crate::support;

#[test]
fn a_scaffolded_extension_builds_loads_and_passes_its_own_test() {
    let dir = tempdir().join("fresh-ext");
    let xtask = support::artifacts().join("xtask");
    let output = Command::new(&xtask).args(["new-extension", "fresh-ext", "--dir"]).arg(&dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for file in ["Cargo.toml", "src/lib.rs", "tests/extension.rs"] {
        assert!(dir.join(file).exists(), "{file} was written");
    }

    // Its own `cargo test`, sharing this build's target directory (and so its compiled deps).
    let target = support::artifacts().parent().unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["test", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("test it_greets_counts_and_stores ... ok"), "{stdout}");

    // And the host sees a valid extension in what it built.
    let library = ["debug", "debug/deps"]
        .iter()
        .map(|sub| target.join(sub).join("libfresh_ext.so"))
        .find(|path| path.exists())
        .expect("the library was built");
    let info = extension_host::check(&library).unwrap();
    assert_eq!(info.name, "fresh-ext");
}

#[test]
fn the_scaffolder_refuses_bad_names_and_existing_directories() {
    let xtask = support::artifacts().join("xtask");
    let output = Command::new(&xtask).args(["new-extension", "bad name!", "--dir"]).arg(tempdir()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a usable crate name"));

    let output = Command::new(&xtask).args(["new-extension", "host", "--dir"]).arg(tempdir()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already a crate of this workspace"));

    let occupied = tempdir();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    let output = Command::new(&xtask).args(["new-extension", "ok-name", "--dir"]).arg(&occupied).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not empty"));
    assert_eq!(std::fs::read_to_string(occupied.join("keep.txt")).unwrap(), "mine", "nothing was lost");
}
