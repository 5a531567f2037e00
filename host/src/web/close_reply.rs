//! The end of a socket the host closed: what the page still sends is read before the
//! socket goes. A socket closed with bytes unread is reset, which throws away what the kernel
//! has not sent yet, the host's close frame too: the page would see 1006, a lost
//! network, and come back, rather than stop with the host's code and reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::Message as WsMessage;
use futures_util::{Stream, StreamExt};

use super::Server;

/// How long a socket the host closed is read for its close reply, unless a test set another
/// wait (see [`WebServer::set_close_reply_wait_for_testing`](super::WebServer::set_close_reply_wait_for_testing)).
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Reads what the page still sends after the host's close frame (the rest of an
/// oversized message, what it sent before it read the close, its close reply), until the
/// socket ends, for at most 2 s, and not past the server's shutdown unless `past_shutdown`.
pub(super) async fn read_close_reply<S>(stream: &mut S, server: &Server, past_shutdown: bool)
where
    S: Stream<Item = Result<WsMessage, axum::Error>> + Unpin,
{
    let wait = match server.close_reply_wait.load(Ordering::Acquire) {
        0 => CLOSE_REPLY_WAIT,
        millis => Duration::from_millis(millis),
    };
    let read = tokio::time::timeout(wait, async { while let Some(Ok(_)) = stream.next().await {} });
    if past_shutdown {
        let _ = read.await;
    } else {
        tokio::select! {
            _ = read => {}
            () = server.shutdown.cancelled() => {}
        }
    }
}
