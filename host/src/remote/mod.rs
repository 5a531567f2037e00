//! Child processes: renderer processes that host child-process frames, and the processes of
//! isolated extensions. `protocol` is the plain-data wire format, `connection` the host's end,
//! `child` the child's end (the `host child` subcommand).

pub mod child;
mod connection;
pub mod protocol;

pub(crate) use connection::{Connection, Role};
