//! `cargo xtask new-extension` takes the names cargo takes (underscores included) and says why
//! it refuses the others.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::loading::tempdir;
use crate::support;

fn new_extension(name: &str, dir: &Path) -> std::process::Output {
    let xtask = support::artifacts().join("xtask");
    // `--` so that a name starting with `-` is taken as the name.
    Command::new(xtask).args(["new-extension", "--dir"]).arg(dir).args(["--", name]).output().unwrap()
}

/// Runs the scaffolded crate's own `cargo test` (the crate in `dir`), sharing this build's target
/// directory (and so its compiled deps), and checks that it passed, the scaffold's test
/// included; returns the test run's stderr and the library (`lib{crate_name}.so`) it built.
pub(crate) fn own_test_passes(dir: &Path, crate_name: &str) -> (String, PathBuf) {
    let target = support::artifacts().parent().unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["test", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("test it_greets_counts_and_stores ... ok"), "{stdout}");
    let file = format!("lib{crate_name}.so");
    let library = ["debug", "debug/deps"]
        .iter()
        .map(|sub| target.join(sub).join(&file))
        .find(|path| path.exists())
        .expect("the library was built");
    (stderr, library)
}

#[test]
fn an_underscore_name_builds_loads_and_passes_its_own_test() {
    let dir = tempdir().join("my_ext");
    let output = new_extension("my_ext", &dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my_ext\""), "{manifest}");
    let code = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(code.contains("pub struct MyExtMain;"), "a CamelCase type name");

    let (stderr, library) = own_test_passes(&dir, "my_ext");
    assert!(!stderr.contains("upper camel case"), "the scaffolded type names are CamelCase: {stderr}");
    assert_eq!(extension_host::check(&library).unwrap().name, "my_ext");
}

#[test]
fn names_cargo_refuses_are_refused_with_the_reason_and_nothing_is_written() {
    let cases = [
        ("", "the name is empty"),
        ("1ext", "starts with a digit"),
        ("-ext", "starts with `-`"),
        ("my.ext", "`.` is not allowed"),
        ("caf\u{e9}", "is not ASCII"),
        ("async", "is a Rust keyword"),
        ("test", "built-in `test` library"),
        ("_", "`_` alone"),
        ("std", "standard library"),
        ("tokio", "depends on"),
    ];
    for (name, reason) in cases {
        let dir = tempdir().join("refused");
        let output = new_extension(name, &dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "`{name}` was accepted");
        assert!(stderr.contains(reason), "`{name}`: {stderr}");
        assert!(!dir.exists(), "`{name}`: nothing is written");
    }
}
