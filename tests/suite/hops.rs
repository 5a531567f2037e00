//! The thread hops of the child-process path: what cuts a wake or a write (the mailbox taking
//! what arrives while its dispatcher works, a run's sends deferred to its park, see
//! `host/src/remote/batch.rs`) must lose nothing and keep each sender's order, whether a
//! message arrives while the dispatcher works or after it has parked.

use probe_protocol::*;

use crate::support::{FAILSAFE, Transport, host_with_frames, pongs};

async fn bursts_with_pauses_between_arrive_whole_and_in_order(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    let mut expected = Vec::new();
    let mut next = 0u32;
    // Bursts of 1 to 7 from the host, each awaited (main goes idle: it parks), and between
    // them a burst from frame 2's renderer, also awaited.
    for round in 0..40u32 {
        let mut replies = Vec::new();
        for _ in 0..round % 7 + 1 {
            if next % 3 == 0 {
                host.broadcast("probe", SEQ_EVENT.name(), &next).unwrap();
                expected.push(format!("event:{next}"));
            } else {
                replies.push(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &next, FAILSAFE));
                expected.push(format!("invoke:{next}"));
            }
            next += 1;
        }
        for reply in replies {
            reply.await.unwrap();
        }
        let count = round % 5 + 1;
        host.broadcast("probe", RENDERER_SEQ.name(), &RendererSeq { frame: 2, count }).unwrap();
        let done = pongs(&mut seen, "probe", 1).await;
        assert_eq!(done[0].tag, "seq-done failed=0", "round {round}");
        expected.extend((0..count).map(|n| if n % 3 == 0 { format!("event:{n}") } else { format!("invoke:{n}") }));
    }
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log, expected);
}

conformance!(bursts_with_pauses_between_arrive_whole_and_in_order);
