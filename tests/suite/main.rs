//! The integration suite: the real `host` library and binary, driving real extension
//! libraries built from `sample-extensions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod adversary;
mod attribution;
mod author;
mod batched_writes;
mod browser;
mod console;
mod console_values;
mod crashes;
mod deactivate_invoke;
mod durations;
mod exposed;
mod frame_handles;
mod frames;
mod gluon;
mod harness;
mod hops;
mod host_drain;
mod hot_reload;
mod idle;
mod idle_dispatching;
mod inspect_halves;
mod ipc;
mod large_frames;
mod lifecycle;
mod limits;
mod listeners;
mod load;
mod loading;
mod logs;
mod macros;
mod renderer_cycles;
mod scaffold;
mod storage;
mod storage_faults;
mod store;
mod stuck_renderer;
mod truncated;
mod watchdog_bursts;
mod watchdog_listener;
mod watchdog_silent;
mod web_packaging;
mod web_protocol;
mod wire_layout;
