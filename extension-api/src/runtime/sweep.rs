//! The timeout sweeper: one task per instance that times out waiting requests, instead of a
//! timer per request.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Shared;
use crate::runtime::requests::{Answer, NO_TIMEOUT};

/// How often waiting requests are checked for their timeout: a request times out between its
/// timeout and one tick later. One sweep per tick replaces a timer per request.
pub(crate) const TIMEOUT_TICK: Duration = Duration::from_millis(10);

/// Sweeps for a request with `timeout`: enough that it never times out early; [`NO_TIMEOUT`]
/// when it is too long to count (over about 497 days; `Duration::MAX` among them), which means
/// no limit.
#[inline]
pub(crate) fn timeout_ticks(timeout: Duration) -> u32 {
    let ticks = timeout.as_nanos().div_ceil(TIMEOUT_TICK.as_nanos()) + 1;
    u32::try_from(ticks).unwrap_or(NO_TIMEOUT)
}

/// Times out waiting requests: every [`TIMEOUT_TICK`] while any request of the instance waits,
/// each one's ticks count down, and those at zero are answered [`Answer::TimedOut`] (their
/// invokers then cancel them). Idle (no timer at all) while nothing waits.
pub(crate) async fn sweep_timeouts(shared: Arc<Shared>) {
    loop {
        shared.sweep.notified().await;
        loop {
            tokio::time::sleep(TIMEOUT_TICK).await;
            let (expired, waiting) = shared.state().sweep_requests();
            for waiter in expired {
                waiter.answer(Answer::TimedOut);
            }
            if !waiting {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_never_times_out_before_its_timeout() {
        // The first sweep comes anywhere up to one tick after the request starts.
        assert_eq!(timeout_ticks(Duration::ZERO), 1);
        assert_eq!(timeout_ticks(TIMEOUT_TICK), 2);
        assert_eq!(timeout_ticks(TIMEOUT_TICK + Duration::from_nanos(1)), 3);
        assert_eq!(timeout_ticks(Duration::from_secs(30)), 3001);
        assert_eq!(timeout_ticks(Duration::MAX), NO_TIMEOUT);
        assert_eq!(timeout_ticks(Duration::from_secs(u64::from(u32::MAX) / 100 + 1)), NO_TIMEOUT);
    }
}
