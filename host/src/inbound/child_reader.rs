//! A child connection's inbound side: the reader thread's loop and the validation of every
//! packet a child sends, and the keys given to the connection with what each routes to. The
//! host trusts no child: a packet that is oversized, malformed, unexpected, or names an
//! instance key not given to this connection closes the connection (and ends the child), with
//! the reason logged; nothing else is affected.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Weak};

use extension_api::abi::{self, PEER_MAIN};

use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::link::Link;
use crate::remote::protocol::{self, Framing, Packet};
use crate::remote::{Connection, Role, packet_name};

use super::main_drain;
use super::read_side::ReadSide;

/// What a key given to the connection routes to.
struct Routed {
    link: Weak<Link>,
    endpoint: Weak<Endpoint>,
}

/// A key's endpoint, with its link if that still exists.
type Found = (Option<Arc<Link>>, Arc<Endpoint>);

/// The reading side of one child connection. It holds what it routes to (weakly: the host
/// owns namespaces and endpoints); the connection's writer knows nothing of it.
pub(crate) struct ChildReader {
    connection: Arc<Connection>,
    /// The keys given to this connection.
    /// Looked up for every packet: hashed with foldhash, not std's SipHash (the keys are the
    /// host's own, unguessable: a child names one, it cannot choose what the table holds).
    routes: Mutex<HashMap<u64, Routed>>,
    /// Keys this connection had: late packets for them are dropped, not violations.
    retired: Mutex<HashSet<u64>>,
    /// The socket, read by the reader thread and, while every packet goes to one main of this
    /// process, by that main's thread (`read_side`); `None` for a reader fed by hand (tests,
    /// fuzzing).
    side: Option<ReadSide>,
    me: Weak<ChildReader>,
}

impl ChildReader {
    /// A reader fed packets by hand ([`ChildReader::receive`]), with no socket of its own.
    pub(crate) fn new(connection: Arc<Connection>) -> ChildReader {
        ChildReader {
            connection,
            routes: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashSet::new()),
            side: None,
            me: Weak::new(),
        }
    }

    /// The reader of `connection`'s socket `stream`, with what `framing` already holds of it
    /// (what the handshake read past the hello); [`ChildReader::read_loop`] reads it.
    pub(crate) fn reading(connection: Arc<Connection>, stream: UnixStream, framing: Framing) -> Arc<ChildReader> {
        Arc::new_cyclic(|me| ChildReader {
            connection,
            routes: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashSet::new()),
            side: Some(ReadSide::new(stream, framing)),
            me: me.clone(),
        })
    }

    /// Gives `key` to this connection: its packets route into `link`, from `endpoint`.
    pub(crate) fn register(&self, key: u64, link: Weak<Link>, endpoint: Weak<Endpoint>) {
        lock(&self.routes).insert(key, Routed { link, endpoint });
        self.settle();
    }

    /// Takes `key` back: its late packets are dropped from now on.
    pub(crate) fn retire(&self, key: u64) {
        lock(&self.routes).remove(&key);
        lock(&self.retired).insert(key);
        self.settle();
    }

    /// After the keys changed: who reads the socket. A renderer process serving one extension
    /// sends only to that extension's main (and the host); when that main runs in this process
    /// its thread reads the socket itself (`main_drain`), otherwise (two extensions' halves
    /// share the process, main is isolated, or this is an isolated extension's process) the
    /// reader thread alone does.
    fn settle(&self) {
        let Some(side) = &self.side else { return };
        let drain = match self.connection.role {
            Role::Frame(_) => {
                self.only_link().and_then(|link| link.endpoint_of(PEER_MAIN)).and_then(|main| main_drain::of(main.key))
            }
            Role::Isolated(_) => None,
        };
        match drain {
            Some(drain) => side.claim(&drain, self.me.clone()),
            None => side.unclaim(),
        }
    }

    /// The namespace of the one key this connection has, if it has exactly one.
    fn only_link(&self) -> Option<Arc<Link>> {
        let routes = lock(&self.routes);
        if routes.len() != 1 {
            return None;
        }
        routes.values().next().and_then(|routed| routed.link.upgrade())
    }

    /// Main's thread reads what the socket has (it claimed it); false if it stopped with more
    /// to read.
    pub(crate) fn drain(&self) -> bool {
        self.side.as_ref().is_none_or(|side| side.drain(&|bytes| self.receive(bytes)))
    }

    /// The main that read the socket is gone: the reader thread reads it alone.
    pub(crate) fn give_back(&self) {
        if let Some(side) = &self.side {
            side.unclaim();
        }
    }

    /// Routes what the child sends until the connection ends; returns why it ended. On the
    /// connection's reader thread, whoever saw the end (see `read_side`).
    pub(crate) fn read_loop(&self) -> String {
        match &self.side {
            Some(side) => side.read_loop(&|bytes| self.receive(bytes)),
            None => "the connection has no socket to read".to_owned(),
        }
    }

    /// Handles one packet from the child; an error is a protocol violation.
    pub(crate) fn receive(&self, bytes: &[u8]) -> Result<(), String> {
        // A message borrows from the frame: it is routed (and copied by whoever keeps it) from
        // the read buffer.
        let packet = protocol::decode_borrowed(bytes).map_err(|error| format!("malformed packet: {error}"))?;
        match packet {
            Packet::Message { key, message } => {
                if let Some((Some(link), endpoint)) = self.route_of(key)? {
                    let status = link.route(&endpoint, &message);
                    // A refused request is answered on this connection, under the key that
                    // sent it, if its origin runs or ran there: a closing half's `deactivate`
                    // hears why at once, a forged origin gets nothing, and no other half does.
                    // So is a refused write (main never sees it), as main answers a write it
                    // does not make.
                    if status != abi::status::OK {
                        match message.kind {
                            abi::kind::INVOKE => endpoint.refuse_invoke(&message, status),
                            abi::kind::STORE_WRITE | abi::kind::STORAGE_WRITE => {
                                endpoint.refuse_write(&message, status)
                            }
                            _ => {}
                        }
                    }
                }
            }
            Packet::Complete { key, completion, result } => match self.route_of(key)? {
                Some((Some(link), endpoint)) if completion == extension_api::wire::ATTENTION => {
                    link.attention(&endpoint)
                }
                Some((_, endpoint)) => endpoint.complete(completion, result),
                None => {}
            },
            Packet::Log { key, level, target, message } => {
                if let Some((Some(link), _)) = self.route_of(key)? {
                    link.forward_log(level, &target, &message);
                }
            }
            Packet::Loaded { key } => self.finish_load(key, Ok(()))?,
            Packet::LoadFailed { key, reason } => self.finish_load(key, Err(reason))?,
            Packet::Destroyed { key } => {
                // The instance the host is destroying is gone: anything later for its key is
                // late, and dropped. An answer the host did not ask for changes nothing: the key
                // stays the instance's, so that losing the connection still loses its halves
                // (their requests fail at once, and they are taken out of their namespace).
                if self.connection.finish_destroy(key) {
                    self.retire(key);
                }
            }
            other => return Err(format!("a child may not send {}", packet_name(&other))),
        }
        Ok(())
    }

    /// What `key` routes to: it must have been given to this connection. `None` for a key it
    /// had, or one whose endpoint is gone (a late packet of a destroyed instance, dropped).
    fn route_of(&self, key: u64) -> Result<Option<Found>, String> {
        if let Some(routed) = lock(&self.routes).get(&key) {
            return Ok(routed.endpoint.upgrade().map(|endpoint| (routed.link.upgrade(), endpoint)));
        }
        if lock(&self.retired).contains(&key) {
            return Ok(None);
        }
        Err(format!("instance key {key} does not belong to this connection"))
    }

    fn finish_load(&self, key: u64, result: Result<(), String>) -> Result<(), String> {
        if self.connection.finish_load(key, result) || lock(&self.retired).contains(&key) {
            return Ok(());
        }
        Err(format!("an unrequested load answer for key {key}"))
    }

    /// The connection is gone: every instance behind it is lost, and every request involving
    /// their halves fails.
    pub(crate) fn fail_everything(&self, reason: &str) {
        let routed: Vec<Routed> = lock(&self.routes).drain().map(|(_, routed)| routed).collect();
        for Routed { link, endpoint } in routed {
            let Some(endpoint) = endpoint.upgrade() else { continue };
            endpoint.fail_completions(reason);
            if let Some(link) = link.upgrade() {
                link.lose_endpoint(&endpoint, reason);
            }
        }
        self.connection.drop_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Core;
    use crate::transport::Transport;
    use crate::transport::recording::Recording;
    use extension_api::abi::PEER_MAIN;
    use extension_api::message::{self, Message};
    use extension_api::wire::OwnedMessage;

    const KEY: u64 = 5;
    const FRAME: u64 = 2;

    fn recording(endpoint: &Endpoint) -> &Recording {
        match endpoint.transport() {
            Transport::Recording(recording) => recording,
            _ => panic!("not a recording transport"),
        }
    }

    fn packet(key: u64, message: OwnedMessage) -> Vec<u8> {
        protocol::encode(&Packet::Message { key, message }).unwrap()
    }

    fn invoke(origin: u64, request_id: u64) -> OwnedMessage {
        Message {
            kind: abi::kind::INVOKE,
            status: 0,
            origin,
            target: PEER_MAIN,
            request_id,
            channel: "ch",
            payload: &[1],
        }
        .to_owned()
    }

    /// A namespace with main in this process and frame `FRAME` behind a child connection
    /// (under `KEY`), both on recording transports, and that connection's reader.
    struct Fixture {
        link: Arc<Link>,
        main: Arc<Endpoint>,
        child: Arc<Endpoint>,
        connection: Arc<Connection>,
        reader: ChildReader,
        _other_end: UnixStream,
    }

    fn fixture() -> Fixture {
        let link = Link::new("t", Arc::new(Core::new()));
        let main = Endpoint::new(1, Transport::Recording(Recording::default()));
        main.place(PEER_MAIN);
        let child = Endpoint::new(KEY, Transport::Recording(Recording::default()));
        child.place(FRAME);
        link.add_endpoint(main.clone());
        link.add_endpoint(child.clone());
        let (writer, other_end) = UnixStream::pair().unwrap();
        let connection = Arc::new(Connection::detached(writer, &[]));
        let reader = ChildReader::new(connection.clone());
        reader.register(KEY, Arc::downgrade(&link), Arc::downgrade(&child));
        Fixture { link, main, child, connection, reader, _other_end: other_end }
    }

    /// Writes `count` invokes of frame `frame` under `key` to `socket`, each behind its length,
    /// with request ids from `first`.
    fn send_invokes(socket: &mut UnixStream, key: u64, frame: u64, first: u64, count: u64) {
        use std::io::Write;
        for id in first..first + count {
            let bytes = packet(key, invoke(frame, id));
            socket.write_all(&u32::try_from(bytes.len()).unwrap().to_be_bytes()).unwrap();
            socket.write_all(&bytes).unwrap();
        }
    }

    #[test]
    fn mains_drain_reads_one_socket_directly_and_a_second_through_its_set_losing_nothing() {
        // Main's set of its own (this test's thread is main's), with two renderer processes
        // of the namespace, each serving one frame.
        let main_key = u64::MAX - 20;
        let link = Link::new("t", Arc::new(Core::new()));
        let main = Endpoint::new(main_key, Transport::Recording(Recording::default()));
        main.place(PEER_MAIN);
        link.add_endpoint(main.clone());
        assert!(main_drain::inbound_fd(main_key) >= 0);
        assert_eq!(main_drain::drain(main_key), abi::drain::IDLE, "its runtime drains once, watching it");
        let connect = |key: u64, frame: u64| {
            let child = Endpoint::new(key, Transport::Recording(Recording::default()));
            child.place(frame);
            link.add_endpoint(child.clone());
            let (writer, writer_end) = UnixStream::pair().unwrap();
            let (ours, theirs) = UnixStream::pair().unwrap();
            let reader = ChildReader::reading(Arc::new(Connection::detached(writer, &[])), ours, Framing::default());
            reader.register(key, Arc::downgrade(&link), Arc::downgrade(&child));
            (child, reader, theirs, writer_end)
        };
        let drain_all = || {
            let mut drains = 1;
            while main_drain::drain(main_key) == abi::drain::MORE {
                drains += 1;
                assert!(drains < 100, "the drain never came back idle");
            }
            drains
        };
        let ids = |from: u64| -> Vec<u64> {
            recording(&main).take().iter().filter(|m| m.origin == from).map(|m| m.request_id).collect()
        };

        // One socket, more than a drain takes at once: read directly, the rest on the next.
        let (_a, a_reader, mut a, _a_writer) = connect(KEY, FRAME);
        assert!(a_reader.side.as_ref().unwrap().is_claimed_by(&main_drain::of(main_key).unwrap()));
        send_invokes(&mut a, KEY, FRAME, 0, 70);
        assert_eq!(main_drain::drain(main_key), abi::drain::MORE, "it stops after 64 frames");
        assert_eq!(drain_all(), 1);
        assert_eq!(ids(FRAME), (0..70).collect::<Vec<_>>());
        assert_eq!(main_drain::drain(main_key), abi::drain::IDLE, "nothing left: a read that finds nothing");

        // The first socket left with frames to read when a second joins: the set is asked for
        // the second, and the first's rest is not forgotten.
        send_invokes(&mut a, KEY, FRAME, 70, 70);
        assert_eq!(main_drain::drain(main_key), abi::drain::MORE);
        let (_b, b_reader, mut b, _b_writer) = connect(KEY + 1, FRAME + 1);
        assert!(b_reader.side.as_ref().unwrap().is_claimed_by(&main_drain::of(main_key).unwrap()));
        send_invokes(&mut b, KEY + 1, FRAME + 1, 0, 3);
        drain_all();
        let main_got = recording(&main).take();
        let from = |frame: u64| main_got.iter().filter(|m| m.origin == frame).map(|m| m.request_id).collect::<Vec<_>>();
        assert_eq!(from(FRAME), (70..140).collect::<Vec<_>>());
        assert_eq!(from(FRAME + 1), vec![0, 1, 2]);

        // And with the second gone again, the one left is read directly.
        drop(b_reader);
        send_invokes(&mut a, KEY, FRAME, 140, 2);
        drain_all();
        assert_eq!(ids(FRAME), vec![140, 141]);
        main_drain::release(main_key, true);
    }

    #[test]
    fn a_childs_packets_route_only_as_the_halves_it_runs_and_only_under_its_keys() {
        // Bound, not dropped: the reader holds the namespace weakly, and a destroy writes to
        // the socket's other end.
        let Fixture { link: _link, main, child, connection, reader, _other_end: _peer } = fixture();

        // A request of the half that runs there reaches main.
        reader.receive(&packet(KEY, invoke(FRAME, 1))).unwrap();
        assert_eq!(recording(&main).take(), vec![invoke(FRAME, 1)]);
        // One claiming another origin is refused, and nobody gets an answer for it.
        reader.receive(&packet(KEY, invoke(3, 2))).unwrap();
        assert!(recording(&main).take().is_empty());
        assert!(recording(&child).take().is_empty());
        // A request refused on its way is answered to its invoker at once.
        recording(&main).refuse_with(abi::status::BUSY);
        reader.receive(&packet(KEY, invoke(FRAME, 3))).unwrap();
        let answers = recording(&child).take();
        assert_eq!(answers.len(), 1);
        assert_eq!((answers[0].kind, answers[0].request_id), (abi::kind::REPLY, 3));
        assert_eq!(message::error_kind(answers[0].status), Some(extension_api::InvokeErrorKind::Overloaded));
        recording(&main).refuse_with(abi::status::OK);

        // A key not given to this connection is a violation.
        let violation = reader.receive(&packet(KEY + 1, invoke(FRAME, 4))).unwrap_err();
        assert!(violation.contains("does not belong"), "{violation}");
        // Once the child confirms the host's destroy, the instance's late packets are dropped,
        // not routed.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let mut destroy = std::pin::pin!(connection.destroy(KEY));
            assert!(futures_util::poll!(&mut destroy).is_pending());
            reader.receive(&protocol::encode(&Packet::Destroyed { key: KEY }).unwrap()).unwrap();
            assert!(destroy.await, "the destroy is confirmed");
        });
        reader.receive(&packet(KEY, invoke(FRAME, 5))).unwrap();
        assert!(recording(&main).take().is_empty());
    }

    /// `wire::ATTENTION` is a completion no command has (they are numbered from 1): a child's
    /// `Complete` with it asks the watchdog to look at that instance, under its own keys only,
    /// and completes nothing; a forged one for another key is a violation.
    #[test]
    fn a_childs_attention_call_asks_only_for_its_own_instance_and_completes_no_command() {
        use extension_api::wire::{ATTENTION, Completion, Control};

        let Fixture { link, child, reader, _other_end: _peer, .. } = fixture();
        let complete = |key, completion| {
            protocol::encode(&Packet::Complete { key, completion, result: Completion::Done }).unwrap()
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let command =
                child.control(|completion| Control::Inspect { completion }, std::time::Duration::from_secs(600));
            let mut command = std::pin::pin!(command);
            assert!(futures_util::poll!(&mut command).is_pending());

            reader.receive(&complete(KEY, ATTENTION)).unwrap();
            assert_eq!(link.core().attention.take().into_keys().collect::<Vec<_>>(), [KEY]);
            assert!(futures_util::poll!(&mut command).is_pending(), "the attention call completed a command");

            let violation = reader.receive(&complete(KEY + 1, ATTENTION)).unwrap_err();
            assert!(violation.contains("does not belong"), "{violation}");
            assert!(link.core().attention.take().is_empty(), "a forged key asked the watchdog");

            // The command's own completion (the first number) still completes it.
            reader.receive(&complete(KEY, 1)).unwrap();
            assert_eq!(command.await.unwrap(), Completion::Done);
        });
    }

    #[test]
    fn a_closing_halfs_refused_request_is_answered_on_its_own_connection_and_a_forged_one_is_not() {
        let Fixture { link, main, child, reader, .. } = fixture();
        let answer = |request_id| {
            let answers = recording(&child).take();
            assert_eq!(answers.len(), 1, "{answers:?}");
            let answer = &answers[0];
            assert_eq!(
                (answer.kind, answer.origin, answer.target, answer.request_id),
                (abi::kind::REPLY, PEER_MAIN, FRAME, request_id)
            );
            message::error_kind(answer.status)
        };
        // The frame closes: the host no longer routes for its half, whose `deactivate` runs.
        link.unplace(&child, FRAME);
        reader.receive(&packet(KEY, invoke(FRAME, 1))).unwrap();
        assert_eq!(answer(1), Some(extension_api::InvokeErrorKind::FrameClosed));
        // Origins that never ran under this key (another endpoint's half, a made-up frame) get
        // no answer anywhere.
        reader.receive(&packet(KEY, invoke(PEER_MAIN, 2))).unwrap();
        reader.receive(&packet(KEY, invoke(FRAME + 1, 3))).unwrap();
        assert!(recording(&main).take().is_empty());
        assert!(recording(&child).take().is_empty());
        // The extension deactivates: the same half hears that.
        link.stop_routing();
        reader.receive(&packet(KEY, invoke(FRAME, 4))).unwrap();
        assert_eq!(answer(4), Some(extension_api::InvokeErrorKind::Deactivated));
        assert!(recording(&main).take().is_empty());
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn an_endpoint_remembers_only_the_halves_still_running_or_closing() {
        let Fixture { link, child, reader, .. } = fixture();
        // Frames open and close at one endpoint (an isolated extension's), as `close_renderer`
        // closes them: unplaced, the close's completion awaited, then forgotten.
        for frame in FRAME + 1..FRAME + 1001 {
            child.place(frame);
            link.unplace(&child, frame);
            child.forget(frame);
        }
        assert_eq!(child.remembered(), 1, "only FRAME, which still runs");
        // A closed half's late request is not answered, as a forged origin's.
        reader.receive(&packet(KEY, invoke(FRAME + 1, 1))).unwrap();
        assert!(recording(&child).take().is_empty());
        // A half that still runs is not forgotten.
        child.forget(FRAME);
        assert_eq!(child.remembered(), 1);
    }

    #[test]
    fn a_refused_write_is_answered_to_its_writer_on_its_own_connection() {
        use extension_api::wire::{StorageOutcome, StoreWrite, WriteRefusal};
        let Fixture { link, main, child, reader, .. } = fixture();
        let write = |origin: u64, write_id: u64| {
            let payload = rmp_serde::to_vec_named(&StoreWrite { write_id, key: "k".into(), value: None }).unwrap();
            let message = Message {
                kind: abi::kind::STORE_WRITE,
                status: 0,
                origin,
                target: PEER_MAIN,
                request_id: 0,
                channel: "",
                payload: &payload,
            };
            packet(KEY, message.to_owned())
        };
        let refusal = || {
            let answers = recording(&child).take();
            assert_eq!(answers.len(), 1, "{answers:?}");
            let answer = &answers[0];
            assert_eq!((answer.kind, answer.origin, answer.target), (abi::kind::STORE_REFUSAL, PEER_MAIN, FRAME));
            let refusal: WriteRefusal = extension_api::wire::decode(&answer.payload).unwrap();
            (answer.status, refusal)
        };
        // Main's mailbox is full: the writer hears it at once (main never saw the write).
        recording(&main).refuse_with(abi::status::BUSY);
        reader.receive(&write(FRAME, 1)).unwrap();
        let (status, refused) = refusal();
        assert_eq!((status, refused.write_id, refused.outcome), (abi::status::BUSY, 1, StorageOutcome::Overloaded));
        recording(&main).refuse_with(abi::status::OK);
        // The frame closes: its half's write in `deactivate` is refused as the frame's.
        link.unplace(&child, FRAME);
        reader.receive(&write(FRAME, 2)).unwrap();
        let (status, refused) = refusal();
        assert_eq!((status, refused.write_id), (abi::status::NO_SUCH_PEER, 2));
        // A forged writer gets nothing.
        reader.receive(&write(FRAME + 1, 3)).unwrap();
        assert!(recording(&child).take().is_empty());
        assert!(recording(&main).take().is_empty());
    }

    #[test]
    fn a_destroyed_nobody_asked_for_does_not_hide_an_instance_from_its_connections_loss() {
        let Fixture { link, main, child, reader, .. } = fixture();
        let request = Message {
            kind: abi::kind::INVOKE,
            status: 0,
            origin: PEER_MAIN,
            target: FRAME,
            request_id: 1,
            channel: "ch",
            payload: &[1],
        };
        assert_eq!(link.route(&main, &request), abi::status::OK);
        assert_eq!(recording(&child).take().len(), 1);

        // The child says its instance is gone though the host never asked, then dies.
        reader.receive(&protocol::encode(&Packet::Destroyed { key: KEY }).unwrap()).unwrap();
        reader.fail_everything("the child crashed");

        // Its frame's half is lost with it: main's request to it fails at once, and the frame
        // no longer runs there (a restarted renderer process places it afresh).
        let answers = recording(&main).take();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(message::error_kind(answers[0].status), Some(extension_api::InvokeErrorKind::ConnectionLost));
        assert!(link.endpoint_of(FRAME).is_none());
        assert_eq!(link.pending_requests(), 0);
    }
}
