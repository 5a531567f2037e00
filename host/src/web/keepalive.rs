//! Noticing a dead connection (half-open: the peer went without a word, through a proxy or a
//! laptop's sleep, and the host's TCP stack has not found out): a socket idle for
//! [`WebConfig::ping_interval`](super::WebConfig::ping_interval) (nothing received from it)
//! is sent a WebSocket Ping, which a browser answers by itself; one from which nothing (a
//! Pong, or any message) arrives for
//! [`WebConfig::ping_timeout`](super::WebConfig::ping_timeout) is taken for dead.
//!
//! Cheap on the read path: a message received only notes the time; the timer is not reset
//! per message but looked at when it fires (at most once an interval while messages flow).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What the timer says when it fires.
pub(crate) enum Due {
    /// The connection is idle: send a Ping.
    Ping,
    /// Nothing arrived for the timeout: the connection is dead (the reason).
    Dead(String),
    /// Something arrived meanwhile: nothing to do yet.
    Nothing,
}

/// One socket's keepalive.
pub(crate) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    heard: Instant,
    timer: Pin<Box<Sleep>>,
}

/// How far off a time a duration too long to run out (`Duration::MAX`: never) is taken to be:
/// an instant that far away overflows (and panicked); tokio's timers do the same.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Keepalive {
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Keepalive {
        let heard = Instant::now();
        let (interval, timeout) = (interval.min(FAR), timeout.min(FAR));
        Keepalive { interval, timeout, heard, timer: Box::pin(tokio::time::sleep_until(heard + interval)) }
    }

    /// Something arrived from the peer (`what`, handed back).
    pub(crate) fn heard<T>(&mut self, what: T) -> T {
        self.heard = Instant::now();
        what
    }

    /// Resolves when the timer fires; then [`Keepalive::due`] says what to do.
    pub(crate) async fn fired(&mut self) {
        self.timer.as_mut().await;
    }

    /// What to do now that the timer fired; it is set again.
    pub(crate) fn due(&mut self) -> Due {
        let now = Instant::now();
        let quiet = now.saturating_duration_since(self.heard);
        if quiet >= self.timeout {
            return Due::Dead(format!(
                "nothing arrived for {quiet:?}, pings unanswered (ping_timeout {:?})",
                self.timeout
            ));
        }
        if quiet < self.interval {
            self.timer.as_mut().reset(self.heard + self.interval);
            return Due::Nothing;
        }
        // Idle: ping, and again an interval later, until the timeout.
        self.timer.as_mut().reset((now + self.interval).min(self.heard + self.timeout));
        Due::Ping
    }
}
