//! Durations a user supplies: `Duration::MAX` means "no limit" everywhere (nothing overflows),
//! and a zero activate timeout is refused with the reason.

use std::time::Duration;

use extension_host::{CrashBudget, ExtensionState, Host, HostConfig, HostError};
use probe_protocol::*;

use crate::support::*;

/// Every duration of the host's configuration at its maximum.
fn unbounded() -> HostConfig {
    HostConfig {
        activate_timeout: Duration::MAX,
        deactivate_timeout: Duration::MAX,
        crash_budget: CrashBudget { crashes: 3, window: Duration::MAX },
        ..config()
    }
}

async fn every_duration_at_its_maximum_means_no_limit(transport: Transport) {
    let host = host_from(transport, unbounded(), &["probe"]).await;
    let frame = open_frame(&host, transport).await;
    let mut broadcasts = host.broadcasts();

    // The host invokes main, main asks a frame, a frame invokes main: each with no limit.
    let frames: Vec<u64> = host.invoke("probe", MAIN_FRAMES.name(), &(), Duration::MAX).await.unwrap();
    assert_eq!(frames, vec![frame.0]);
    let ask = AskFrame { frame: frame.0, channel: "frame-info".into(), timeout_ms: u64::MAX };
    let side: String = host.invoke("probe", ASK_FRAME.name(), &ask, Duration::MAX).await.unwrap();
    assert_eq!(side, format!("frame:{}", frame.0));
    host.broadcast("probe", INVOKE_WITH_TIMEOUT.name(), &u64::MAX).unwrap();
    let pongs = expect_pongs(&host, &mut broadcasts, "probe", 1, 2).await;
    assert_eq!(pongs[0].tag, "timed-invoke:ok");

    // Closing, reloading and deactivating are bounded by `deactivate_timeout`.
    host.reload_frame(frame).await.unwrap();
    host.close_frame(frame).await.unwrap();
    let report = host.deactivate("probe").await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // And again from a deactivation with a frame open.
    host.activate("probe").await.unwrap();
    open_frame(&host, transport).await;
    let report = host.deactivate("probe").await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    host.shutdown().await;
}

conformance!(every_duration_at_its_maximum_means_no_limit, a_zero_deactivate_timeout_drops_everything_at_once);

#[tokio::test]
async fn a_zero_activate_timeout_is_refused_with_the_reason() {
    let host = Host::new(HostConfig { activate_timeout: Duration::ZERO, ..config() });
    host.load(library("probe")).unwrap();
    let error = host.activate("probe").await.unwrap_err();
    assert!(matches!(error, HostError::InvalidConfig { field: "activate_timeout", .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("activate_timeout") && message.contains("Duration::MAX"), "{message}");
    // Refused before anything ran: the extension is as it was.
    assert_eq!(host.state("probe"), Some(ExtensionState::Loaded));
}

async fn a_zero_deactivate_timeout_drops_everything_at_once(transport: Transport) {
    let host = host_from(transport, HostConfig { deactivate_timeout: Duration::ZERO, ..config() }, &["probe"]).await;
    let frame = open_frame(&host, transport).await;
    // A `deactivate` that would never finish gets no time at all.
    host.invoke::<_, ()>("probe", DEACTIVATE_BEHAVIOUR.name(), &"hang", FAILSAFE).await.unwrap();
    host.close_frame(frame).await.unwrap();
    let report = host.deactivate("probe").await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("did not finish within 0 ms"), "{:?}", report.problems);
    assert_eq!(host.state("probe"), Some(ExtensionState::Inactive));
}

/// `host run --duration SECONDS`: an infinite duration runs until interrupted (it does not
/// overflow), and one that is no duration at all is refused with the reason.
#[tokio::test]
async fn the_cli_duration_saturates_or_is_refused() {
    use tokio::io::AsyncBufReadExt;

    for bad in ["-1", "NaN", "soon"] {
        let output = tokio::process::Command::new(host_binary())
            .env("XDG_DATA_HOME", crate::support::fresh_data_dir())
            .arg("run")
            .arg(format!("--duration={bad}"))
            .arg(library("probe"))
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "--duration {bad} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--duration") && stderr.contains("number of seconds"), "{bad}: {stderr}");
    }

    let mut child = tokio::process::Command::new(host_binary())
        .env("XDG_DATA_HOME", crate::support::fresh_data_dir())
        .args(["run", "--duration", "inf"])
        .arg(library("probe"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let running = tokio::time::timeout(FAILSAFE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("running until interrupted") {
                return true;
            }
        }
        false
    });
    assert!(running.await.unwrap(), "the host ran with `--duration inf`");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(FAILSAFE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}
