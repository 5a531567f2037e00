//! The three examples of Gluon's IPC reference, as the `gluon` sample does them, checked end to
//! end: an exposed `log` function, a `config` store value, a `get config` request. Unlike the
//! reference, nothing is silently turned into `null`.

use std::time::Duration;

use extension_api::InvokeErrorKind;

use crate::support::{self, FAILSAFE, Transport, wait_logs};

async fn the_reference_examples_work_from_every_frame(transport: Transport) {
    let host = support::host_for(transport, &["gluon"]).await;
    let mut logs = host.logs();
    support::open_frames(&host, transport, 1).await;
    support::open_frames(&host, transport, 1).await;
    let expected: Vec<String> = [1, 2]
        .iter()
        .flat_map(|frame| {
            [
                format!("frame {frame} sees config env=production"),
                format!("frame {frame}: log returned true"),
                format!("frame {frame}: get config answered env=production"),
                format!("frame {frame} is titled \"Window {frame}\""),
            ]
        })
        .chain(["frame 1 saw the log grow to 2 lines (written by main)".to_owned()])
        .collect();
    wait_logs(&mut logs, "gluon", &expected).await;

    // The exposed functions travel on reserved channels the host can call too.
    let lines: Vec<String> = host.invoke("gluon", "expose:Logger.lines", &(), FAILSAFE).await.unwrap();
    assert_eq!(lines, vec!["Message from frame 1!".to_owned(), "Message from frame 2!".to_owned()]);
    // Unknown functions are an error, never a silent `null`.
    let error = host.invoke::<_, ()>("gluon", "expose:Logger.erase", &(), FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::NoHandler);
    let _ = Duration::ZERO;
}

conformance!(the_reference_examples_work_from_every_frame,);
