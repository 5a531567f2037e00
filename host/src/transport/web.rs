//! The web transport: an extension's renderer half running as JavaScript in a page, reached
//! through that page's renderer socket (`web/renderer_socket.rs`). Delivering never blocks: a
//! message is encoded into the socket's bounded queue (full: `BUSY`, the sender gets
//! `Overloaded`). Control commands become the page's CONTROL commands; the ones a page has no
//! use for are answered here, and main-only ones are refused.

use std::sync::Arc;

use extension_api::abi::{self, Peer};
use extension_api::message::Message;
use extension_api::wire::{Completion, Control};

use crate::web::protocol::{self, Command};
use crate::web::{PageConnection, ShellHandle, Tokens};

/// One page's renderer half of one extension, in one web frame.
pub(crate) struct WebInstance {
    extension: String,
    frame: Peer,
    token: String,
    connection: Arc<PageConnection>,
    shell: ShellHandle,
    tokens: Arc<Tokens>,
}

impl WebInstance {
    pub(crate) fn new(
        extension: &str,
        frame: Peer,
        token: &str,
        connection: Arc<PageConnection>,
        shell: ShellHandle,
        tokens: Arc<Tokens>,
    ) -> WebInstance {
        WebInstance { extension: extension.to_owned(), frame, token: token.to_owned(), connection, shell, tokens }
    }

    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        match message.kind {
            // Main's side of the persisted tier (a renderer's write, the host's commits): never
            // meant for a page. Its updates and refusals are, as the store's are.
            abi::kind::STORAGE_WRITE | abi::kind::STORAGE_COMMIT | abi::kind::STORAGE_COMMITTED => abi::status::OK,
            // A broadcast or a request can be turned away; what answers a message already
            // accepted cannot be dropped, so a page that stops reading loses its connection.
            abi::kind::BROADCAST | abi::kind::INVOKE => self.connection.send(protocol::encode_message(message), false),
            _ => self.connection.send(protocol::encode_message(message), true),
        }
    }

    pub(crate) fn control(&self, command: Control) -> u32 {
        let (completion, command) = match command {
            Control::SeedStore { completion, snapshot } => (completion, Command::Seed(snapshot)),
            Control::OpenFrame { completion, frame } if frame == self.frame => (completion, Command::Open(frame)),
            Control::CloseFrame { completion, frame, timeout_ms } if frame == self.frame => {
                (completion, Command::Close(timeout_ms))
            }
            Control::SeedStorage { completion, seed } => (completion, Command::SeedStorage(seed)),
            Control::Inspect { completion } => (completion, Command::Inspect),
            // A page keeps no requests of its halves within itself: there is nothing for it to
            // do.
            Control::StopRouting { completion } => {
                self.connection.answer(completion, Completion::Done);
                return abi::status::OK;
            }
            // Main-only commands, or another frame's: never meant for a page.
            _ => return abi::status::INVALID,
        };
        self.connection.send(protocol::encode_control(completion, &command), true)
    }

    /// The half is not meant to run there any more: its token is void, the shell removes the
    /// iframe, and the socket closes (1000). (Unless another connection took this one's place
    /// with its token: the host ends this connection's half, whose requests failed as lost,
    /// and the new one's half is to start; the host destroys that one too if it is not.)
    pub(crate) async fn destroy(&self) -> bool {
        if self.tokens.revoke_for(&self.token, &Arc::downgrade(&self.connection)) {
            self.shell.remove(&self.extension);
        }
        self.connection.close_by_host();
        true
    }
}
