//! Transports: how the host reaches one instance of an extension. Each is the only code that
//! knows its wire (the C ABI in process, the child protocol's packets, a web page's socket); above them, an
//! endpoint and routing see only [`Message`]s and [`Control`] commands.
//!
//! A transport joins by adding a variant here and its file beside this one: routing, the
//! request table and the endpoints do not change. A transport knows nothing of links,
//! endpoints or requests: what comes back from an instance arrives through the inbound side.

mod child_process;
mod in_process;
#[cfg(test)]
pub(crate) mod recording;
mod web;

use extension_api::message::Message;
use extension_api::wire::Control;

pub(crate) use child_process::ChildInstance;
pub(crate) use in_process::InProcess;
pub(crate) use web::WebInstance;

use crate::remote::Role;

/// How an endpoint reaches its instance. An enum, not a trait object: delivering is the hot
/// path, and a match costs no indirect call.
pub(crate) enum Transport {
    /// A library instance in this process.
    InProcess(InProcess),
    /// An instance in a child process.
    ChildProcess(ChildInstance),
    /// A renderer half in a web page, behind its renderer socket.
    Web(WebInstance),
    /// Records what it is given (routing's unit tests).
    #[cfg(test)]
    Recording(recording::Recording),
}

impl Transport {
    /// Hands a message to the instance; returns a status code.
    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        match self {
            Transport::InProcess(instance) => instance.deliver(message),
            Transport::ChildProcess(child) => child.deliver(message),
            Transport::Web(page) => page.deliver(message),
            #[cfg(test)]
            Transport::Recording(recording) => recording.deliver(message),
        }
    }

    /// Hands a control command to the instance (answered later, as a completion); returns a
    /// status code.
    pub(crate) fn control(&self, command: Control) -> u32 {
        match self {
            Transport::InProcess(instance) => instance.control(&command),
            Transport::ChildProcess(child) => child.control(command),
            Transport::Web(page) => page.control(command),
            #[cfg(test)]
            Transport::Recording(_) => extension_api::abi::status::OK,
        }
    }

    /// Stops the instance for good; true if it stopped cleanly in time.
    pub(crate) async fn destroy(&self) -> bool {
        match self {
            Transport::InProcess(instance) => instance.destroy().await,
            Transport::ChildProcess(child) => child.destroy().await,
            Transport::Web(page) => page.destroy().await,
            #[cfg(test)]
            Transport::Recording(_) => true,
        }
    }

    /// Whether the instance is a web page's renderer half.
    pub(crate) fn is_web(&self) -> bool {
        matches!(self, Transport::Web(_))
    }

    /// The role of the child process the instance runs in, if it runs in one.
    pub(crate) fn child_role(&self) -> Option<&Role> {
        match self {
            Transport::ChildProcess(child) => Some(child.role()),
            _ => None,
        }
    }
}
