//! The integration suite: the real `host` library and binary, driving real extension
//! libraries built from `sample-extensions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod adversary;
mod author;
mod console;
mod crashes;
mod exposed;
mod frames;
mod gluon;
mod ipc;
mod lifecycle;
mod load;
mod loading;
mod macros;
mod renderer_cycles;
mod store;
