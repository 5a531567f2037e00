//! A page's socket read 16 KiB at a time (`renderer_socket::READ_BUFFER`), and its messages
//! written by the host's one buffer each (`protocol::encode_message`): requests of every size
//! around a read's come back whole, and many in flight at once come back in order, each
//! exactly once, whether main's reply went out in place or through the queue.

use extension_host::WebConfig;
use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;

use super::{closed, msgpack, open_web_frame, port, web_host};

/// The value a reply carries (its payload, an `echo-optional` reply).
fn reply_of(reply: &Value) -> WithOptional {
    let payload = reply[7].as_slice().unwrap_or_else(|| panic!("a reply's payload is binary: {reply}"));
    rmp_serde::from_slice(payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_requests_of_every_size_around_a_read_come_back_whole() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let read = 16 << 10;
    let sizes = [0, 1, read - 40, read - 1, read, read + 1, 3 * read + 7, 200 << 10, 1 << 20];
    for (id, size) in (1u32..).zip(sizes) {
        let note: String = (0..size).map(|at| char::from(b'a' + (at % 26) as u8)).collect();
        let value = WithOptional { id, note: Some(note) };
        page.message(2, 0, 0, u64::from(id), ECHO_OPTIONAL.name(), msgpack(&value)).await;
        let reply = page.message_where(|m| m[1] == Value::from(3)).await;
        assert_eq!(reply[2], Value::from(0), "request {id} ({size} bytes) failed: {reply}");
        assert_eq!(reply[5].as_u64(), Some(u64::from(id)));
        assert_eq!(reply_of(&reply), value, "request {id} ({size} bytes) came back changed");
    }
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_requests_in_flight_at_once_come_back_in_order_exactly_once() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    const COUNT: u32 = 512;
    for round in 0..4u32 {
        for id in 1..=COUNT {
            let value = WithOptional { id: round * COUNT + id, note: None };
            page.message(2, 0, 0, u64::from(value.id), ECHO_OPTIONAL.name(), msgpack(&value)).await;
        }
        for id in 1..=COUNT {
            let expected = round * COUNT + id;
            let reply = page.message_where(|m| m[1] == Value::from(3)).await;
            assert_eq!(reply[5].as_u64(), Some(u64::from(expected)), "replies out of order: {reply}");
            assert_eq!(reply_of(&reply).id, expected);
        }
    }
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_from_its_header_before_the_rest_is_sent() {
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::MaybeTlsStream;

    let config = WebConfig::default();
    let max = config.max_message;
    let (host, server) = web_host(&["probe"], true, config).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    // A binary frame (FIN) whose header claims one byte over the limit, masked as a client's
    // must be, then one read's worth of its payload; the rest is never sent.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(max as u64 + 1).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(0u8, 16 << 10));
    let MaybeTlsStream::Plain(stream) = page.ws.get_mut() else { panic!("the test's socket is plain TCP") };
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap();
    let (code, reason) = closed(&mut page.ws).await;
    assert_eq!(code, 1009, "refused from the header, not after {max} bytes: {reason}");
    server.shutdown().await;
    host.shutdown().await;
}
