//! The author's path: a scaffolded extension builds, loads, and passes its own test, which
//! uses the `extension_host::testing` harness.

use std::process::Command;

use crate::loading::tempdir;
use crate::scaffold::own_test_passes;
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

    // Its own `cargo test` passes, and the host sees a valid extension in what it built.
    let (_, library) = own_test_passes(&dir, "fresh_ext");
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
