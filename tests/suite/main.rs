//! The integration suite: the real `host` library and binary, driving real extension
//! libraries built from `sample-extensions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod console;
mod frames;
mod ipc;
mod lifecycle;
mod loading;
mod support;
