//! How the host writes to a page, at the protocol level (a Rust WebSocket client plays the
//! page against the real host and the real probe library): a message for a page whose socket
//! has nothing waiting is written by the thread that sends it (main's thread writes its
//! reply itself); once the socket is full, what follows waits in the page's queue. Either way
//! the page gets main's messages in the order main sent them, each once.

use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;

use super::{msgpack, open_web_frame, payload_of, port, web_host};
use extension_host::WebConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_main_writes_itself_and_those_queued_behind_a_full_socket_reach_the_page_in_order_once() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    // 1,000 requests of main, each answered with 48 KiB (47 MiB: more than loopback's socket
    // buffers can hold both ways, 32 MiB and 4 MiB at most here; less than the page's queue,
    // 64 MiB), while the page reads nothing: the first replies go straight onto the socket,
    // until its buffers are full; the rest wait in the page's queue, and go out once the page
    // reads.
    const COUNT: u64 = 1000;
    let note = "n".repeat(48 << 10);
    for id in 1..=COUNT {
        let value = WithOptional { id: u32::try_from(id).unwrap(), note: Some(note.clone()) };
        page.message(2, 0, 0, id, ECHO_OPTIONAL.name(), msgpack(&value)).await;
    }
    for id in 1..=COUNT {
        let reply = page.message_where(|m| m[1] == Value::from(3)).await;
        assert_eq!(reply[5].as_u64(), Some(id), "the page got the reply to {} where {id}'s was due", reply[5]);
        assert_eq!(reply[2], Value::from(0), "{}", reply[2]);
        let value: WithOptional = rmp_serde::from_slice(payload_of(&reply)).unwrap();
        assert_eq!((u64::from(value.id), value.note.as_deref()), (id, Some(note.as_str())));
    }
    // The queue drained: a reply is written in place again, and is the next message.
    page.message(2, 0, 0, COUNT + 1, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 0, note: None })).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(COUNT + 1), "{reply}");
    server.shutdown().await;
    host.shutdown().await;
}
