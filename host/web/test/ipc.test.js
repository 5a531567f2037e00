// The client against a fake host speaking spec §3: broadcasts, invokes both ways, exposed
// functions, controls. Every expectation is on the frames the page sends or on what `ipc` does.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start, errorPayload, settle, FakeSocket, KIND, PEER_ALL, PEER_HOST, PEER_MAIN } from "../test-support/support.js";

const { encodeValue, decodeValue, InvokeError } = client;

test("the page's hello is [0, token], and the welcome gives the frame and the extension", async () => {
  assert.deepEqual(decodeValue(client.helloFrame("abc")), [0, "abc"]);
  const { ipc, opened } = await start({ frame: 9, extension: "gluon" });
  assert.deepEqual(opened[2], [0]);
  assert.equal(ipc.frame, 9);
  assert.equal(ipc.extension, "gluon");
});

test("broadcast sends [1, BROADCAST, 0, ALL, 0, channel, value]; an unencodable value throws TypeError", async () => {
  const { socket, ipc } = await start();
  ipc.broadcast("news", { n: 1 });
  const [tag, kind, status, target, requestId, channel, payload] = await socket.nextMessage(KIND.BROADCAST);
  assert.deepEqual([tag, kind, status, target, requestId, channel], [1, 1, 0, PEER_ALL, 0, "news"]);
  assert.deepEqual(decodeValue(payload), { n: 1 });
  assert.throws(() => ipc.broadcast("news", () => 1), TypeError);
  assert.equal(socket.messages(KIND.BROADCAST).length, 0);
});

test("listen gets the value and its sender; its disposer stops it, twice is a no-op", async () => {
  const { socket, ipc } = await start();
  const seen = [];
  const stop = ipc.listen("news", (value, sender) => seen.push([value, sender]));
  socket.message({ kind: KIND.BROADCAST, origin: PEER_MAIN, target: PEER_ALL, channel: "news", value: 1 });
  socket.message({ kind: KIND.BROADCAST, origin: 7, target: PEER_ALL, channel: "news", value: 2n ** 64n - 1n });
  socket.message({ kind: KIND.BROADCAST, origin: 7, target: PEER_ALL, channel: "other", value: 3 });
  stop();
  stop.dispose();
  socket.message({ kind: KIND.BROADCAST, channel: "news", value: 4 });
  assert.deepEqual(seen, [
    [1, { kind: "main" }],
    [2n ** 64n - 1n, { kind: "frame", frame: 7 }],
  ]);
});

test("invoke sends INVOKE to main and resolves with the reply's value", async () => {
  const { socket, ipc } = await start();
  const reply = ipc.invoke("add", [1, 2]);
  const [, , status, target, id, channel, payload] = await socket.nextMessage(KIND.INVOKE);
  assert.deepEqual([status, target, channel, decodeValue(payload)], [0, PEER_MAIN, "add", [1, 2]]);
  socket.message({ kind: KIND.REPLY, requestId: id, value: new Map([[1, new Uint8Array([9])]]) });
  const value = await reply;
  assert.deepEqual([...value], [[1, new Uint8Array([9])]]);
});

test("an error reply rejects with an InvokeError of the kind its status names, with message and data", async () => {
  const { socket, ipc } = await start();
  for (const [index, kind] of client.ERROR_KINDS.entries()) {
    const reply = ipc.invoke("fails", kind);
    const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
    const data = kind === "Handler" ? { code: 2n ** 64n - 1n } : undefined;
    socket.message({ kind: KIND.REPLY, status: 100 + index, requestId: id, payload: errorPayload(`${kind} happened`, data) });
    const error = await reply.then(
      () => assert.fail("resolved"),
      (error) => error,
    );
    assert.ok(error instanceof InvokeError, `${kind}: ${error}`);
    assert.equal(error.kind, kind);
    assert.equal(error.message, `${kind} happened`);
    assert.deepEqual(error.data, data);
  }
  // A refusal status on the way reads as Rust's refusal kinds.
  const busy = ipc.invoke("busy");
  const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
  socket.message({ kind: KIND.REPLY, status: 6, requestId: id, payload: errorPayload("full") });
  await assert.rejects(busy, { name: "InvokeError", kind: "Overloaded" });
});

test("a reply that does not decode rejects Deserialize; a value that does not encode rejects Serialize", async () => {
  const { socket, ipc } = await start();
  const reply = ipc.invoke("odd");
  const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
  socket.message({ kind: KIND.REPLY, requestId: id, payload: new Uint8Array([0xc1]) });
  await assert.rejects(reply, { kind: "Deserialize" });
  await assert.rejects(ipc.invoke("odd", Symbol("x")), { kind: "Serialize" });
});

/** Lets `ms` of mocked time pass a millisecond at a time (Node 20's `tick` runs no timer armed within it). */
function pass(t, ms) {
  for (let i = 0; i < ms; i++) t.mock.timers.tick(1);
}

test("an invoke with no reply within its timeout rejects Timeout and cancels it", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { socket, ipc } = await start();
  const reply = ipc.invoke("slow", null, { timeout: 50 });
  const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
  pass(t, 49);
  assert.equal(socket.messages(KIND.CANCEL).length, 0);
  pass(t, 1);
  await assert.rejects(reply, { name: "InvokeError", kind: "Timeout" });
  const [, , , target, cancelled] = await socket.nextMessage(KIND.CANCEL);
  assert.deepEqual([target, cancelled], [PEER_MAIN, id]);
  // A late reply is ignored.
  socket.message({ kind: KIND.REPLY, requestId: id, value: 1 });
  // The default is 30 s.
  const later = ipc.invoke("slow");
  await socket.nextMessage(KIND.INVOKE);
  pass(t, 29_999);
  assert.equal(socket.messages(KIND.CANCEL).length, 0);
  pass(t, 1);
  await assert.rejects(later, { kind: "Timeout" });
});

test("one sweep times out every invoke: never before its timeout, at most a sweep (10 ms) after, in order", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { socket, ipc } = await start();
  const outcomes = [];
  const watch = (name, promise) => promise.then(
    (value) => outcomes.push([name, "resolved", value]),
    (error) => outcomes.push([name, error.kind]),
  );
  // `first` starts the sweep; `second` is made 5 ms into it, `third` (answered) and `fourth`
  // (no timeout) with it.
  watch("first", ipc.invoke("slow", null, { timeout: 30 }));
  const [, , , , firstId] = await socket.nextMessage(KIND.INVOKE);
  pass(t, 5);
  watch("second", ipc.invoke("slow", null, { timeout: 30 }));
  const [, , , , secondId] = await socket.nextMessage(KIND.INVOKE);
  watch("third", ipc.invoke("quick", null, { timeout: 30 }));
  const [, , , , thirdId] = await socket.nextMessage(KIND.INVOKE);
  watch("fourth", ipc.invoke("slow", null, { timeout: Infinity }));
  const [, , , , fourthId] = await socket.nextMessage(KIND.INVOKE);
  socket.message({ kind: KIND.REPLY, requestId: thirdId, value: 3 });
  await settle();
  pass(t, 25);
  await settle();
  // 30 ms: `first`'s timeout passed; `second`'s (made at 5 ms) has not.
  assert.deepEqual(outcomes, [["third", "resolved", 3], ["first", "Timeout"]]);
  assert.deepEqual(socket.messages(KIND.CANCEL).map((message) => message[4]), [firstId]);
  pass(t, 4);
  await settle();
  assert.equal(outcomes.length, 2, "not before its 30 ms");
  pass(t, 6);
  await settle();
  // 40 ms: the next sweep (35 ms would be the exact time, 40 the sweep after it).
  assert.deepEqual(outcomes.slice(2), [["second", "Timeout"]]);
  assert.deepEqual(socket.messages(KIND.CANCEL).map((message) => message[4]), [firstId, secondId]);
  // The untimed one waits on; its reply still settles it.
  pass(t, 100);
  socket.message({ kind: KIND.REPLY, requestId: fourthId, value: 4 });
  await settle();
  assert.deepEqual(outcomes.slice(3), [["fourth", "resolved", 4]]);
});

test("aborting an invoke's signal sends CANCEL and rejects with the signal's reason as cause", async () => {
  const { socket, ipc } = await start();
  const controller = new AbortController();
  const reply = ipc.invoke("slow", null, { signal: controller.signal });
  const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
  const reason = new Error("user left");
  controller.abort(reason);
  const error = await reply.catch((error) => error);
  assert.ok(error instanceof InvokeError);
  assert.equal(error.kind, "Timeout");
  assert.equal(error.cause, reason);
  const [, , , , cancelled] = await socket.nextMessage(KIND.CANCEL);
  assert.equal(cancelled, id);
  // Already aborted: nothing is sent.
  await assert.rejects(ipc.invoke("slow", null, { signal: AbortSignal.abort() }), { kind: "Timeout" });
  assert.equal(socket.messages(KIND.INVOKE).length, 0);
});

test("handle answers main's request with its value, a throw with Handler, none with NoHandler", async () => {
  const { socket, ipc } = await start();
  ipc.handle("double", (value, sender) => ({ value: value * 2, sender }));
  ipc.handle("boom", () => {
    throw Object.assign(new Error("it broke"), { data: { code: 7 } });
  });
  ipc.handle("async", async (value) => new Uint8Array([value]));
  assert.throws(() => ipc.handle("double", () => 0), /already has a handler/);

  socket.message({ kind: KIND.INVOKE, origin: PEER_MAIN, requestId: 11, channel: "double", value: 21 });
  let [, kind, status, target, id, , payload] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([kind, status, target, id], [KIND.REPLY, 0, PEER_MAIN, 11]);
  assert.deepEqual(decodeValue(payload), { value: 42, sender: { kind: "main" } });

  socket.message({ kind: KIND.INVOKE, origin: PEER_MAIN, requestId: 12, channel: "boom", value: null });
  [, , status, , id, , payload] = await socket.nextMessage(KIND.REPLY);
  const body = decodeValue(payload);
  assert.deepEqual([status, id, body.message, decodeValue(body.data)], [101, 12, "it broke", { code: 7 }]);

  // From the host acting as main, with a request id past 2^53: echoed exactly.
  socket.message({ kind: KIND.INVOKE, origin: PEER_HOST, requestId: 2n ** 64n - 5n, channel: "async", value: 5 });
  [, , status, target, id, , payload] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, target, id, decodeValue(payload)], [0, PEER_HOST, 2n ** 64n - 5n, new Uint8Array([5])]);

  socket.message({ kind: KIND.INVOKE, origin: PEER_MAIN, requestId: 13, channel: "nobody", value: null });
  [, , status, , id, , payload] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id], [100, 13]);
  assert.match(decodeValue(payload).message, /no handler for `nobody`/);
  assert.equal(decodeValue(payload).data, null);
});

test("a handler's disposer frees its channel; a reply that does not encode answers Serialize", async () => {
  const { socket, ipc } = await start();
  const stop = ipc.handle("ch", () => () => "a function");
  socket.message({ kind: KIND.INVOKE, requestId: 1, channel: "ch", value: null });
  const [, , status] = await socket.nextMessage(KIND.REPLY);
  assert.equal(status, 107);
  stop();
  stop();
  ipc.handle("ch", () => "again");
  socket.message({ kind: KIND.INVOKE, requestId: 2, channel: "ch", value: null });
  const [, , ok, , , , payload] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([ok, decodeValue(payload)], [0, "again"]);
});

test("main's CANCEL aborts the handler's signal and no reply is sent", async () => {
  const { socket, ipc } = await start();
  let aborted;
  let release;
  ipc.handle("wait", (_value, _sender, signal) => {
    aborted = new Promise((resolve) => signal.addEventListener("abort", resolve));
    return new Promise((resolve) => (release = resolve));
  });
  socket.message({ kind: KIND.INVOKE, requestId: 5, channel: "wait", value: null });
  socket.message({ kind: KIND.CANCEL, requestId: 5 });
  await aborted;
  release("too late");
  await settle();
  assert.equal(socket.messages(KIND.REPLY).length, 0);
});

test("exposed functions invoke expose:Trait.method with the arguments as Rust's tuple", async () => {
  const { socket, ipc } = await start();
  const logger = ipc.exposed("Logger");
  const one = logger.log("x");
  const two = logger.pair(1, 2n ** 64n - 1n);
  const none = logger.count();
  const sent = [await socket.nextMessage(KIND.INVOKE), await socket.nextMessage(KIND.INVOKE), await socket.nextMessage(KIND.INVOKE)];
  assert.deepEqual(
    sent.map(([, , , , , channel, payload]) => [channel, decodeValue(payload)]),
    [
      ["expose:Logger.log", ["x"]],
      ["expose:Logger.pair", [1, 2n ** 64n - 1n]],
      ["expose:Logger.count", null],
    ],
  );
  // The hex of what rmp_serde writes for `("x",)` and `()`.
  assert.equal(Buffer.from(sent[0][6]).toString("hex"), "91a178");
  assert.equal(Buffer.from(sent[2][6]).toString("hex"), "c0");
  // Main answers an unknown function NoHandler: it rejects, never resolves to a default.
  socket.message({ kind: KIND.REPLY, requestId: sent[0][4], value: null });
  socket.message({ kind: KIND.REPLY, status: 100, requestId: sent[1][4], payload: errorPayload("no handler") });
  socket.message({ kind: KIND.REPLY, requestId: sent[2][4], value: 3 });
  assert.equal(await one, null);
  await assert.rejects(two, { kind: "NoHandler" });
  assert.equal(await none, 3);
  // Awaiting the proxy itself does not send anything (it is not a thenable).
  assert.equal(typeof logger.then, "undefined");
});

test("open imports the entry module once per page and runs activate; its failures are reported", async () => {
  const socket = new FakeSocket();
  let imports = 0;
  let activations = 0;
  let fail = null;
  const module = {
    activate: async (ipc) => {
      activations++;
      ipc.listen("x", () => {});
      if (fail) throw fail;
    },
    deactivate: async () => {},
  };
  const connection = new client.Client(socket, { importModule: async (url) => (imports++, assert.equal(url, "/index.js"), module) });
  socket.welcome(1, "probe");
  assert.deepEqual((await socket.control(1, [1, 1]))[2], [0]);
  assert.deepEqual((await socket.control(2, [2, 1000]))[2], [0]);
  fail = new Error("no config");
  const failed = await socket.control(3, [1, 1]);
  assert.equal(failed[2][0], 2);
  assert.match(failed[2][1], /no config/);
  assert.deepEqual([imports, activations], [1, 2]);
  assert.equal(connection.half, null);

  const bare = new client.Client(new FakeSocket(), { importModule: async () => ({}) });
  bare.socket.welcome(1, "probe");
  const none = await bare.socket.control(1, [1, 1]);
  assert.deepEqual([none[2][0], /exports no activate/.test(none[2][1])], [1, true]);
  const broken = new client.Client(new FakeSocket(), { importModule: async () => Promise.reject(new SyntaxError("bad token")) });
  broken.socket.welcome(1, "probe");
  const unloadable = await broken.socket.control(1, [1, 1]);
  assert.deepEqual([unloadable[2][0], /bad token/.test(unloadable[2][1])], [1, true]);
});

test("close runs deactivate, then drops every registration; later calls fail", async () => {
  const order = [];
  const { socket, ipc, nextCompletion } = await start({
    module: {
      activate: (ipc) => {
        ipc.listen("a", () => {});
        ipc.listen("a", () => {});
        ipc.handle("h", () => 1);
        ipc.store.watch("k", () => {});
      },
      deactivate: async () => {
        order.push("deactivate");
        // IPC still works inside deactivate.
        ipc.broadcast("bye", 1);
      },
    },
  });
  const pending = ipc.invoke("slow");
  await socket.nextMessage(KIND.INVOKE);
  const before = await socket.control(nextCompletion(), [3]);
  assert.deepEqual(before[2], [
    4,
    { listeners: { a: 2 }, handlers: ["h"], pending_requests: 1, running_handlers: 0, store_keys: 0, store_seq: 0, watchers: 1, storage_keys: 0, storage_seq: 0 },
  ]);
  const closed = await socket.control(nextCompletion(), [2, 5000]);
  assert.deepEqual(closed[2], [0]);
  assert.deepEqual(order, ["deactivate"]);
  assert.equal(socket.messages(KIND.BROADCAST).length, 1);
  await assert.rejects(pending, { kind: "FrameClosed" });
  const after = await socket.control(nextCompletion(), [3]);
  assert.deepEqual(after[2][1], { listeners: {}, handlers: [], pending_requests: 0, running_handlers: 0, store_keys: 0, store_seq: 0, watchers: 0, storage_keys: 0, storage_seq: 0 });
  await assert.rejects(ipc.invoke("late"), { name: "InvokeError", kind: "Deactivated" });
  assert.throws(() => ipc.broadcast("late"), Error);
  assert.throws(() => ipc.listen("late", () => {}), Error);
  await assert.rejects(ipc.store.set("k", 1), Error);
  // Main's request to the closed half is still answered.
  socket.message({ kind: KIND.INVOKE, requestId: 77, channel: "h", value: null });
  const [, , status, , id] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id], [100, 77]);
});

test("a deactivate that overruns its timeout completes as timed out, and the half is closed anyway", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { socket, ipc, nextCompletion } = await start({ module: { deactivate: () => new Promise(() => {}) } });
  ipc.listen("a", () => {});
  const completion = nextCompletion();
  const closed = socket.control(completion, [2, 20]);
  await settle();
  t.mock.timers.tick(20);
  assert.deepEqual((await closed)[2], [3, 20]);
  const inspected = await socket.control(nextCompletion(), [3]);
  assert.deepEqual(inspected[2][1].listeners, {});
  // A deactivate that throws: reported as panicked.
  const other = await start({ module: { deactivate: () => { throw new Error("oops"); } } });
  const thrown = await other.socket.control(other.nextCompletion(), [2, 1000]);
  assert.equal(thrown[2][0], 2);
  assert.match(thrown[2][1], /oops/);
});

test("a lost connection fails what waits ConnectionLost; a host breaking the protocol is disconnected", async () => {
  const { socket, ipc, connection } = await start();
  const pending = ipc.invoke("slow");
  socket.drop(1006);
  await assert.rejects(pending, { kind: "ConnectionLost" });
  assert.equal(connection.state, "lost");
  await assert.rejects(ipc.invoke("later"), { kind: "Deactivated" });

  for (const bad of [(s) => s.deliverText("hi"), (s) => s.deliver(encodeValue({ not: "an array" })), (s) => s.deliver([9]), (s) => s.deliver([1, 1])]) {
    const other = await start();
    bad(other.socket);
    assert.equal(other.socket.closedWith?.code, 1008);
    assert.equal(other.connection.state, "lost");
  }
});

test("log sends [3, level, text] with the parts joined", async () => {
  const { socket, ipc } = await start();
  ipc.log.error("bad", { n: 2n ** 64n - 1n });
  ipc.log.debug("fine");
  const first = await socket.next((frame) => frame[0] === 3);
  const second = await socket.next((frame) => frame[0] === 3);
  assert.deepEqual(first, [3, 1, 'bad {"n":"18446744073709551615n"}']);
  assert.deepEqual(second, [3, 4, "fine"]);
});

test("messages in and out are counted for the status line", async () => {
  const changes = [];
  const socket = new FakeSocket();
  const connection = new client.Client(socket, { importModule: async () => ({ activate() {} }), onChange: (c) => changes.push([c.messagesIn, c.messagesOut]) });
  socket.welcome(1, "probe");
  await socket.control(1, [1, 1]);
  assert.deepEqual([connection.messagesIn, connection.messagesOut], [2, 1]);
  assert.ok(changes.length >= 3);
});

test("a listener that throws is logged and the others still run; a value that does not decode is logged", async () => {
  const { socket, ipc } = await start();
  const seen = [];
  ipc.listen("ch", () => {
    throw new Error("listener broke");
  });
  ipc.listen("ch", (value) => seen.push(value));
  socket.message({ kind: KIND.BROADCAST, channel: "ch", value: 1 });
  socket.message({ kind: KIND.BROADCAST, channel: "ch", payload: new Uint8Array([0xc1]) });
  assert.deepEqual(seen, [1]);
  const logged = socket.sent.filter((frame) => frame[0] === 3);
  assert.equal(logged.length, 2);
  assert.equal(logged[0][1], 1);
  assert.match(logged[0][2], /a listener of `ch` threw: Error: listener broke/);
  assert.equal(logged[1][1], 2);
  assert.match(logged[1][2], /did not decode/);
});

test("a request that does not decode answers Deserialize; a thrown non-Error answers Handler with its text", async () => {
  const { socket, ipc } = await start();
  ipc.handle("h", (value) => {
    throw `plain ${value}`;
  });
  socket.message({ kind: KIND.INVOKE, requestId: 1, channel: "h", payload: new Uint8Array([0xc1]) });
  let [, , status, , id] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id], [108, 1]);
  socket.message({ kind: KIND.INVOKE, requestId: 2, channel: "h", value: "text" });
  let payload;
  [, , status, , id, , payload] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id, decodeValue(payload).message], [101, 2, "plain text"]);
});

test("main's request before the half opened is answered NoHandler; an unknown control fails; a second welcome ends it", async () => {
  const socket = new FakeSocket();
  const connection = new client.Client(socket, { importModule: async () => ({ activate() {} }) });
  socket.welcome(1, "probe");
  socket.message({ kind: KIND.INVOKE, requestId: 4, channel: "early", value: null });
  const [, , status, , id] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id], [100, 4]);
  const unknown = await socket.control(1, [42]);
  assert.equal(unknown[2][0], 1);
  assert.match(unknown[2][1], /unknown control command 42/);
  socket.welcome(1, "probe");
  assert.equal(socket.closedWith?.code, 1008);
  assert.equal(connection.state, "lost");
});

test("messages over the 16 MiB limit are refused to their sender at once, never sent", async () => {
  const { socket, ipc } = await start();
  const huge = new Uint8Array(client.MAX_MESSAGE);
  await assert.rejects(ipc.invoke("big", huge), { name: "InvokeError", kind: "TooLarge" });
  assert.throws(() => ipc.broadcast("big", huge), RangeError);
  const error = await ipc.store.set("big", new Uint8Array(client.STORE_VALUE_LIMIT)).catch((error) => error);
  assert.deepEqual([error.name, error.reason, error.max], ["StoreError", "TooLarge", client.STORE_VALUE_LIMIT]);
  assert.equal(socket.messages(KIND.INVOKE).length + socket.messages(KIND.BROADCAST).length + socket.messages(KIND.STORE_WRITE).length, 0);
  // A handler's reply over the limit answers TooLarge, and says so in the log.
  ipc.handle("big", () => huge);
  socket.message({ kind: KIND.INVOKE, requestId: 3, channel: "big", value: null });
  const [, , status, , id] = await socket.nextMessage(KIND.REPLY);
  assert.deepEqual([status, id], [110, 3]);
  const [, level, text] = await socket.next((frame) => frame[0] === 3);
  assert.equal(level, 2);
  assert.match(text, /the reply of the handler of `big` was not sent/);
  // Just within the limit is sent.
  const channel = "edge";
  const fitting = new Uint8Array(client.MAX_MESSAGE - channel.length - 5);
  ipc.broadcast(channel, fitting);
  assert.equal(socket.messages(KIND.BROADCAST).length, 1);
});
