//! The inbound edge: where messages, completions and log records from instances enter the
//! host, and are checked and validated before anything routes them. Two ways in: the
//! `extern "C"` callbacks libraries of this process call (`callbacks`), and a child
//! connection's reader (`child_reader`). Each finds the namespace (link) and endpoint from the
//! instance key it was given, never from the message, and hands routing a safe `Message`.

mod callbacks;
mod child_reader;
pub(crate) mod main_drain;
mod read_side;

pub(crate) use callbacks::{HOST_VTABLE, forget, register};
pub(crate) use child_reader::ChildReader;
pub(crate) use main_drain::release as release_drain;
