//! The review of the web frames' direct writes and what landed with them (the pages' changes
//! taken in order, reconnection): each test failed before its fix.

use extension_host::{Host, HostError, WebConfig, WebStartError};

use crate::support;

/// `serve_web` outside a Tokio runtime says so (`WebStartError::NoRuntime`), as its docs
/// promise: starting the task that takes the pages' changes in order must not panic first.
#[test]
fn serving_web_frames_outside_a_tokio_runtime_is_refused_saying_why() {
    let host = Host::new(support::config());
    let error = host.serve_web(WebConfig::default()).err().expect("the server started without a runtime");
    assert!(matches!(error, HostError::WebServer(WebStartError::NoRuntime(_))), "{error}");
    assert!(error.to_string().contains("needs a Tokio runtime"), "{error}");
}
