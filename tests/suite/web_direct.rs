//! The review of the web frames' direct writes and what landed with them (the pages' changes
//! taken in order, reconnection): each test failed before its fix.

use extension_host::{Host, HostError, WebConfig, WebStartError};

use super::{echo_one_at_a_time, open_web_frame, port, web_host};
use crate::support;

/// `serve_web` outside a Tokio runtime says so (`WebStartError::NoRuntime`), as its docs
/// promise: starting the task that takes the pages' changes in order must not panic first.
#[test]
fn serving_web_frames_outside_a_tokio_runtime_is_refused_saying_why() {
    let host = Host::new(support::config());
    let Err(error) = host.serve_web(WebConfig::default()) else { panic!("the server started without a runtime") };
    assert!(matches!(error, HostError::WebServer(WebStartError::NoRuntime(_))), "{error}");
    assert!(error.to_string().contains("needs a Tokio runtime"), "{error}");
}

/// A page's requests answered one at a time: each reply is main's, written in place, and the
/// page's request arriving does not wake the writer task to flush a socket with nothing in
/// it (it did for every message a page sent: the waker of the last write in place was still
/// the socket's, and tokio-tungstenite wakes it on a read too, so the writer took the socket
/// just as main's reply came, and the reply went the queue's way, a hop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_requests_answered_one_at_a_time_wake_no_flush_of_an_empty_socket() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let before = server.idle_flushes_for_testing("probe");
    const COUNT: u64 = 200;
    echo_one_at_a_time(&mut page, COUNT).await;
    let idle = server.idle_flushes_for_testing("probe") - before;
    assert_eq!(idle, 0, "the writer task was woken {idle} times for {COUNT} requests to flush nothing");
    server.shutdown().await;
    host.shutdown().await;
}
