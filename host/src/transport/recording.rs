//! A transport that records what it is given, with a status to answer: routing's unit tests
//! run on it, with no library and no process.

use std::sync::Mutex;

use extension_api::abi;
use extension_api::message::Message;
use extension_api::wire::OwnedMessage;

use crate::core::lock;

#[derive(Default)]
pub(crate) struct Recording {
    delivered: Mutex<Vec<OwnedMessage>>,
    /// Non-zero: refuse every delivery with this status.
    refuse: std::sync::atomic::AtomicU32,
}

impl Recording {
    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        let refuse = self.refuse.load(std::sync::atomic::Ordering::Relaxed);
        if refuse != abi::status::OK {
            return refuse;
        }
        lock(&self.delivered).push(message.to_owned());
        abi::status::OK
    }

    /// Everything delivered so far, taken out.
    pub(crate) fn take(&self) -> Vec<OwnedMessage> {
        std::mem::take(&mut *lock(&self.delivered))
    }

    /// Refuses every later delivery with `status` (`OK`: accepts again).
    pub(crate) fn refuse_with(&self, status: u32) {
        self.refuse.store(status, std::sync::atomic::Ordering::Relaxed);
    }
}
