//! The child protocol and its two ends' plumbing, below routing: `protocol` is the plain-data
//! wire format; `connection` is the host's end of one child process (spawn, handshake, the
//! packets the host writes: the child-process transport's wire); `child` is the child's end
//! (the `host child` subcommand); `batch` is both ends' socket writer, which defers an instance
//! thread's sends to one write before the thread parks; `lending` lends a large frame a reader read
//! to the library its message is delivered to. What a child sends is read by `inbound::ChildReader`. Nothing
//! here knows of endpoints, links or requests.

pub(crate) mod batch;
pub(crate) mod child;
mod connection;
pub(crate) mod lending;
pub(crate) mod protocol;
pub(crate) mod recv;

pub(crate) use connection::{Connection, Role, Spawned, describe_exit, packet_name};
