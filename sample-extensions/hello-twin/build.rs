//! Rebuilds the library when a file is added to (or removed from) hello's `web/`, which this
//! crate embeds too: cargo cannot see those on its own (it tracks the embedded files, not the
//! directory).
fn main() {
    println!("cargo::rerun-if-changed=../hello/web");
}
