//! The child-process transport: an instance in a child process (a renderer process, or an
//! isolated extension's), reached through its connection's packets.

use std::sync::Arc;

use extension_api::message::Message;
use extension_api::wire::Control;

use crate::remote::{Connection, Role};

/// One instance behind a child connection, under its key.
pub(crate) struct ChildInstance {
    connection: Arc<Connection>,
    key: u64,
}

impl ChildInstance {
    pub(crate) fn new(connection: Arc<Connection>, key: u64) -> ChildInstance {
        ChildInstance { connection, key }
    }

    /// What the child process is for.
    pub(crate) fn role(&self) -> &Role {
        &self.connection.role
    }

    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        self.connection.deliver(self.key, message)
    }

    pub(crate) fn control(&self, command: Control) -> u32 {
        self.connection.control(self.key, command)
    }

    /// Tells the child to destroy the instance; true once it confirms.
    pub(crate) async fn destroy(&self) -> bool {
        self.connection.destroy(self.key).await
    }
}
