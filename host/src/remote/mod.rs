//! Child processes: renderer processes that host child-process frames, and the processes of
//! isolated extensions. `protocol` is the plain-data wire format; on the host's end,
//! `connection` writes (the child-process transport's wire), `reader` reads and validates
//! (inbound), `process` holds both for the host; `child` is the child's end (the `host child`
//! subcommand).

pub(crate) mod child;
mod connection;
mod process;
pub(crate) mod protocol;
mod reader;

pub(crate) use connection::{Connection, Role};
pub(crate) use process::{ChildProcess, LoadFailed};
pub(crate) use reader::ChildReader;
