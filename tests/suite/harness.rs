//! The test harness (`extension_host::testing::TestHost`) as an outside author uses it: child
//! processes without configuring a child program, and acting as main towards a frame (calling
//! its renderer half's handlers, seeing what its listeners receive), in process and in a
//! renderer process.

use extension_host::testing::TestHost;
use extension_host::{FrameId, InvokeErrorKind, Sender};
use probe_protocol::*;

use crate::support;

#[tokio::test]
async fn the_harness_starts_child_processes_without_being_told_the_program() {
    // What an author writes: no `child_program`. The test binary cannot serve as a child.
    let test = TestHost::start(support::library("probe")).await.unwrap();
    let frame = test.host().open_child_frame().await.unwrap();
    let side: String = test.invoke(ASK_FRAME.name(), &ask(frame, "frame-info")).await.unwrap();
    assert_eq!(side, format!("frame:{}", frame.0), "the renderer half runs in the renderer process");
    let snapshot = test.host().inspect().await;
    assert!(snapshot.frames[0].pid.is_some(), "{snapshot:?}");

    let program = TestHost::child_program().unwrap();
    assert_eq!(program.file_name().and_then(|name| name.to_str()), Some("host"), "{program:?}");
    test.stop().await.unwrap();
}

fn ask(frame: FrameId, channel: &str) -> AskFrame {
    AskFrame { frame: frame.0, channel: channel.to_owned(), timeout_ms: 10_000 }
}

#[tokio::test]
async fn the_harness_acts_as_main_towards_in_process_and_child_frames() {
    let mut test = TestHost::start(support::library("probe")).await.unwrap();
    let in_process = test.open_frame().await;
    let child = test.open_child_frame().await.unwrap();
    for frame in [in_process, child] {
        // A renderer half's handler, called as main would.
        let side: String = test.invoke_frame(frame, "frame-info", &()).await.unwrap();
        assert_eq!(side, format!("frame:{}", frame.0));
        let missing = test.invoke_frame::<_, String>(frame, "no-such-handler", &()).await.unwrap_err();
        assert_eq!(missing.kind, InvokeErrorKind::NoHandler, "{missing}");
        assert!(missing.message.contains(&format!("frame {}", frame.0)), "{missing}");

        // What the frame's listeners receive (the test's own broadcast, and main's), and what
        // it sends (its listener answers each ping). Each observation comes after the one
        // before it, so none is skipped on the way.
        let pong = |tag: &str, sender: &str| Pong {
            side: format!("frame:{}", frame.0),
            tag: tag.into(),
            sender: sender.into(),
        };
        let tag = format!("from-test-{}", frame.0);
        test.broadcast(PING.name(), &Ping { tag: tag.clone() }).unwrap();
        let got = test.next_received::<Ping>(frame, PING.name()).await.unwrap();
        assert_eq!((got.sender, &got.value.tag), (Sender::Host, &tag));
        assert_eq!(test.next_broadcast_from::<Pong>(frame, PONG.name()).await.unwrap(), pong(&tag, "host"));

        let tag = format!("from-main-{}", frame.0);
        test.broadcast(RELAY_PING.name(), &Relay { side: "main".into(), tag: tag.clone() }).unwrap();
        let got = test.next_received::<Ping>(frame, PING.name()).await.unwrap();
        assert_eq!((got.sender, &got.value.tag), (Sender::Main, &tag));
        assert_eq!(test.next_broadcast_from::<Pong>(frame, PONG.name()).await.unwrap(), pong(&tag, "main"));
    }

    // A frame that is not open, or not a frame at all: FrameClosed, at once.
    for frame in [FrameId(99), FrameId(0)] {
        let closed = test.invoke_frame::<_, String>(frame, "frame-info", &()).await.unwrap_err();
        assert_eq!(closed.kind, InvokeErrorKind::FrameClosed, "{closed}");
    }
    // In flight when its frame closes: FrameClosed, without waiting for the timeout.
    for frame in [in_process, child] {
        let pending = test.host().invoke_frame::<_, String>("probe", frame, "frame-hang", &(), support::FAILSAFE * 10);
        test.host().close_frame(frame).await.unwrap();
        let closed = pending.await.unwrap_err();
        assert_eq!(closed.kind, InvokeErrorKind::FrameClosed, "{closed}");
    }
    test.stop().await.unwrap();
}

#[tokio::test]
async fn an_observed_broadcast_names_the_frames_it_reaches() {
    let host = support::host_with(&["probe"]).await;
    let first = host.open_frame().await;
    let second = host.open_child_frame().await.unwrap();
    let mut seen = host.broadcasts();
    host.broadcast("probe", TICK.name(), &()).unwrap();
    host.close_frame(first).await.unwrap();
    host.broadcast("probe", TICK.name(), &()).unwrap();
    let mut reached = Vec::new();
    while reached.len() < 2 {
        let observed = tokio::time::timeout(support::FAILSAFE, seen.recv()).await.unwrap().unwrap();
        if observed.channel == TICK.name() {
            reached.push(observed.frames);
        }
    }
    assert_eq!(reached, [vec![first, second], vec![second]]);
}
