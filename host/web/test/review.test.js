// What a review of the client against the Rust side's semantics found: values that did not
// survive the wire, host messages the page could not read that it did not treat as a protocol
// violation, and a close that came while the module was still being imported.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start, settle, FakeSocket, KIND, PEER_MAIN } from "../test-support/support.js";

const { encodeValue, decodeValue } = client;

/** Whether `bytes` are valid UTF-8 (what the host's decoder and Rust's `String` require). */
function validUtf8(bytes) {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

test("a string with a lone surrogate is sent as valid UTF-8 (U+FFFD), as the host requires", async () => {
  // A string cut in the middle of an emoji: short strings took the encoder's own UTF-8 path,
  // which wrote the surrogate's CESU-8 bytes, and the host ended the connection ("not valid UTF-8").
  const cut = "ok \uD83D";
  const bytes = encodeValue(cut);
  assert.ok(validUtf8(bytes.subarray(1)), `encoded as ${[...bytes]}`);
  assert.equal(decodeValue(bytes), "ok \uFFFD");
  // Map keys and object keys too; long strings (the TextEncoder path) were already replaced.
  assert.deepEqual(decodeValue(encodeValue({ [cut]: 1 })), { "ok \uFFFD": 1 });
  assert.deepEqual([...decodeValue(encodeValue(new Map([[1, cut]])))], [[1, "ok \uFFFD"]]);
  assert.equal(decodeValue(encodeValue(cut.repeat(40))), "ok \uFFFD".repeat(40));

  // On the wire: a log line and a channel name.
  const { socket, ipc } = await start();
  ipc.log.info("half an emoji:", cut);
  ipc.broadcast(`news${cut}`, 1);
  const log = await socket.next((frame) => frame[0] === 3);
  assert.equal(log[2], "half an emoji: ok \uFFFD");
  const [, , , , , channel] = await socket.nextMessage(KIND.BROADCAST);
  assert.equal(channel, "newsok \uFFFD");
});

test("a `__proto__` key is an ordinary key both ways, in the store, in values and in maps", async () => {
  // Rust may write any string key (a store key, a HashMap<String, _> key): the decoder refused
  // `__proto__`, so a seed holding it ended the connection, and an update holding it stopped
  // the replica for good.
  const object = JSON.parse('{"__proto__": 1, "b": {"__proto__": [2]}}');
  const back = decodeValue(encodeValue(object));
  assert.equal(Object.getPrototypeOf(back), Object.prototype);
  assert.deepEqual(Object.keys(back).sort(), ["__proto__", "b"]);
  assert.equal(Object.getOwnPropertyDescriptor(back, "__proto__").value, 1);
  assert.deepEqual(Object.getOwnPropertyDescriptor(back.b, "__proto__").value, [2]);
  const again = decodeValue(encodeValue(back));
  assert.deepEqual([Object.getPrototypeOf(again), Object.keys(again).sort()], [Object.prototype, ["__proto__", "b"]]);
  assert.equal(Object.getOwnPropertyDescriptor(again, "__proto__").value, 1);
  assert.equal({}.polluted, undefined);
  const mixed = decodeValue(encodeValue(new Map([["__proto__", 1], [2, 3]])));
  assert.deepEqual([...mixed], [["__proto__", 1], [2, 3]]);

  const { socket, ipc, connection } = await start({ store: { ["__proto__"]: "seeded", other: 1 } });
  assert.equal(connection.state, "running");
  assert.equal(ipc.store.get("__proto__"), "seeded");
  assert.deepEqual(ipc.store.keys(), ["__proto__", "other"]);
  const seen = [];
  ipc.store.watch("__proto__", (change) => seen.push(change.new));
  socket.message({ kind: KIND.STORE_UPDATE, value: { seq: 1, key: "__proto__", old: encodeValue("seeded"), new: encodeValue(2), writer: 0, write_id: 0 } });
  socket.message({ kind: KIND.STORE_UPDATE, value: { seq: 2, key: "other", old: encodeValue(1), new: encodeValue(3), writer: 0, write_id: 0 } });
  assert.deepEqual(seen, [2]);
  assert.equal(ipc.store.get("other"), 3);
  assert.equal(socket.closedWith, null);
});

/** Delivers `frame` and returns what the page did: the close it made, or the exception that escaped. */
function deliverExpectingClose(socket, frame) {
  let escaped = null;
  try {
    socket.deliver(frame);
  } catch (error) {
    escaped = error;
  }
  return { escaped, closedWith: socket.closedWith };
}

test("a host message the page cannot read closes the connection 1008, whatever part is malformed", async () => {
  const malformed = [
    ["a payload that is not binary", [1, KIND.BROADCAST, 0, PEER_MAIN, 1, 0, "news", "text"]],
    ["an undecodable store update", [1, KIND.STORE_UPDATE, 0, PEER_MAIN, 1, 0, "", new Uint8Array([0xc1])]],
    ["a store update whose value is not binary", [1, KIND.STORE_UPDATE, 0, PEER_MAIN, 1, 0, "", encodeValue({ seq: 1, key: "k", old: null, new: "x", writer: 0, write_id: 0 })]],
    ["an undecodable store refusal", [1, KIND.STORE_REFUSAL, 0, PEER_MAIN, 1, 0, "", new Uint8Array([0xc1])]],
    ["a seed whose value is not binary", [2, 900, [0, 0, { k: "x" }]]],
    // The close reason names it: within WebSocket's 123 bytes (`close` throws past them).
    ["an unknown tag, long and not ASCII", ["é".repeat(200)]],
  ];
  for (const [what, frame] of malformed) {
    const { socket, connection, ipc } = await start();
    const pending = ipc.invoke("waits");
    const { escaped, closedWith } = deliverExpectingClose(socket, frame);
    assert.equal(escaped, null, `${what}: ${escaped}`);
    assert.equal(closedWith?.code, 1008, what);
    assert.ok(new TextEncoder().encode(closedWith.reason).length <= 123, `${what}: ${closedWith.reason}`);
    assert.equal(connection.state, "lost", what);
    await assert.rejects(pending, { name: "InvokeError", kind: "ConnectionLost" }, what);
  }
});

test("a close while the module is still being imported: activate never runs, open fails, close is done", async () => {
  // As Rust's runtime: a half closed while it activated keeps nothing, and its open fails.
  const socket = new FakeSocket();
  let release;
  const imported = new Promise((resolve) => (release = resolve));
  let activated = 0;
  const module = { activate: async () => activated++, deactivate: async () => activated-- };
  new client.Client(socket, { importModule: () => imported });
  socket.welcome(3, "probe");
  assert.deepEqual((await socket.control(1, [0, 0, {}]))[2], [0]);
  socket.deliver([2, 2, [1, 3]]);
  const closed = await socket.control(3, [2, 1000]);
  assert.deepEqual(closed[2], [0]);
  release(module);
  const opened = await socket.completion(2);
  await settle();
  assert.equal(activated, 0);
  assert.equal(opened[2][0], 1, `open completed ${JSON.stringify(opened[2])}`);
  assert.match(opened[2][1], /closed while it activated/);
});

test("a close while activate runs: the open completes failed, not done", async () => {
  const socket = new FakeSocket();
  let finish;
  const running = new Promise((resolve) => (finish = resolve));
  const module = { activate: () => running };
  const connection = new client.Client(socket, { importModule: async () => module });
  socket.welcome(3, "probe");
  await socket.control(1, [0, 0, {}]);
  socket.deliver([2, 2, [1, 3]]);
  await settle();
  assert.deepEqual((await socket.control(3, [2, 0]))[2], [0]);
  finish();
  const opened = await socket.completion(2);
  assert.equal(opened[2][0], 1, `open completed ${JSON.stringify(opened[2])}`);
  assert.equal(connection.state, "closed");
});

test("invoke's options: null is the defaults; a signal that is not an AbortSignal rejects and leaves nothing pending", async () => {
  const { socket, ipc, nextCompletion } = await start();
  // `null` threw a TypeError out of `invoke` instead of returning a promise.
  const reply = ipc.invoke("add", 1, null);
  const [, , , , id] = await socket.nextMessage(KIND.INVOKE);
  socket.message({ kind: KIND.REPLY, requestId: id, value: 2 });
  assert.equal(await reply, 2);
  // A signal without addEventListener failed inside the promise, after the request was
  // recorded and its timer armed: it stayed pending (and its timeout would CANCEL it).
  await assert.rejects(ipc.invoke("add", 1, { signal: {} }), TypeError);
  const inspected = await socket.control(nextCompletion(), [3]);
  assert.equal(inspected[2][1].pending_requests, 0);
  assert.equal(socket.messages(KIND.INVOKE).length, 0);
});

test("inspect counts a listener on any channel, `__proto__` included", async () => {
  const { socket, ipc, nextCompletion } = await start();
  ipc.listen("__proto__", () => {});
  ipc.listen("news", () => {});
  const inspected = await socket.control(nextCompletion(), [3]);
  const listeners = inspected[2][1].listeners;
  assert.deepEqual(
    Object.keys(listeners)
      .sort()
      .map((channel) => [channel, Object.getOwnPropertyDescriptor(listeners, channel).value]),
    [
      ["__proto__", 1],
      ["news", 1],
    ],
  );
});

test("a store write the host did not route is refused with the route's reason: FrameClosed, Deactivated, Overloaded", async () => {
  // The host answers such a write at once with a STORE_REFUSAL whose status is the route's.
  const { socket, ipc } = await start();
  const cases = [
    [5, { Unavailable: { reason: "the frame is closing: the write was not sent to main" } }, "FrameClosed", /the frame is closing/],
    [3, { Unavailable: { reason: "the write was not sent to main: the extension is deactivating or inactive" } }, "Deactivated", /deactivating/],
    [6, "Overloaded", "Overloaded", /main is overloaded/],
    [0, { Full: { size: 10, max: 5 } }, "Full", /over its 5-byte limit/],
  ];
  for (const [status, outcome, reason, message] of cases) {
    const set = ipc.store.set("saved", 1);
    const [, , , , , , payload] = await socket.nextMessage(KIND.STORE_WRITE);
    const { write_id } = decodeValue(payload);
    socket.message({ kind: KIND.STORE_REFUSAL, status, value: { write_id, key: "saved", outcome } });
    await assert.rejects(set, (error) => {
      assert.equal(error.name, "StoreError");
      assert.deepEqual([error.key, error.reason], ["saved", reason]);
      assert.match(error.message, message);
      return true;
    });
  }
});

test("a store write main never sequences rejects TimedOut after 30 s, as a Rust half's does", async (t) => {
  // Nothing answered it (main gone with the write, say): the `set` waited for ever.
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { socket, ipc } = await start();
  const set = ipc.store.set("k", 1);
  const [, , , , , , payload] = await socket.nextMessage(KIND.STORE_WRITE);
  const { write_id } = decodeValue(payload);
  let settled = false;
  set.then(
    () => (settled = true),
    () => (settled = true),
  );
  t.mock.timers.tick(29_999);
  await settle();
  assert.equal(settled, false);
  t.mock.timers.tick(1);
  await assert.rejects(set, { name: "StoreError", key: "k", reason: "TimedOut" });
  // Sequenced after all: it applies, and nothing else happens.
  socket.message({ kind: KIND.STORE_UPDATE, value: { seq: 1, key: "k", old: null, new: encodeValue(1), writer: 3, write_id } });
  assert.equal(ipc.store.get("k"), 1);
  // One answered in time leaves no timer behind.
  const quick = ipc.store.set("k", 2);
  const [, , , , , , second] = await socket.nextMessage(KIND.STORE_WRITE);
  socket.message({ kind: KIND.STORE_UPDATE, value: { seq: 2, key: "k", old: encodeValue(1), new: encodeValue(2), writer: 3, write_id: decodeValue(second).write_id } });
  await quick;
  t.mock.timers.tick(30_000);
});

test("a close fails the half's invokes FrameClosed and stops its handlers before deactivate runs, as in Rust", async (t) => {
  // Rust's deactivation fails what the half waits on at once ("can never be answered now"):
  // the host has failed those requests already and does not route to a closing frame. A
  // `deactivate` awaiting an invoke made before the close waited until its timeout.
  t.mock.timers.enable({ apis: ["setTimeout"] });
  let asked;
  let handlerSignal;
  const seen = [];
  const module = {
    activate: async (ipc) => {
      ipc.handle("slow", (_value, _sender, signal) => {
        handlerSignal = signal;
        return new Promise(() => {});
      });
    },
    deactivate: async () => {
      seen.push(`handler aborted: ${handlerSignal.aborted}`);
      await asked.catch((error) => seen.push(error.kind));
    },
  };
  const { socket, ipc, nextCompletion } = await start({ module });
  asked = ipc.invoke("save", 1);
  await socket.nextMessage(KIND.INVOKE);
  socket.message({ kind: KIND.INVOKE, origin: PEER_MAIN, requestId: 5, channel: "slow", value: null });
  await settle();
  const completion = nextCompletion();
  socket.deliver([2, completion, [2, 50]]);
  await settle();
  t.mock.timers.tick(50);
  const closed = await socket.completion(completion);
  assert.deepEqual(closed[2], [0]);
  assert.deepEqual(seen, ["handler aborted: true", "FrameClosed"]);
  assert.equal(socket.messages(KIND.REPLY).length, 0);
});

test("the connection lost while deactivate runs: the client stays lost and sends nothing more", async () => {
  let finish;
  const module = { deactivate: () => new Promise((resolve) => (finish = resolve)) };
  const { socket, connection, nextCompletion } = await start({ module });
  const completion = nextCompletion();
  socket.deliver([2, completion, [2, 10_000]]);
  await settle();
  socket.drop();
  assert.equal(connection.state, "lost");
  const sent = socket.sent.length;
  finish();
  await settle();
  assert.equal(connection.state, "lost");
  assert.equal(socket.sent.length, sent, "a completion went to a closed socket");
});

test("a log line is cut at 64 KiB, saying how long it was, as a Rust half's", async () => {
  // Sent whole, a line over the host's message limit ended the connection (1009), and any
  // line reached the host's log uncut.
  const { socket, ipc } = await start();
  ipc.log.info("x".repeat(100_000));
  ipc.log.warn("é".repeat(40_000)); // 80000 bytes, two per character
  ipc.log.debug("short");
  const lines = socket.sent.filter((frame) => frame[0] === 3).map((frame) => frame[2]);
  assert.equal(lines.length, 3);
  assert.equal(lines[0], `${"x".repeat(65_536)}… (100000 bytes in all)`);
  assert.equal(lines[1], `${"é".repeat(32_768)}… (80000 bytes in all)`);
  assert.equal(lines[2], "short");
});

test("each listener and each watcher gets its own decoded value, as each Rust listener decodes its own", async () => {
  // One decoded object was shared: a listener sorting or filling it changed what the next saw.
  const { socket, ipc } = await start();
  const seen = [];
  ipc.listen("list", (value) => value.items.push("mine"));
  ipc.listen("list", (value) => seen.push(value.items.length));
  ipc.store.watch("k", (change) => change.new.push("mine"));
  ipc.store.watch("k", (change) => seen.push(change.new.length));
  socket.message({ kind: KIND.BROADCAST, channel: "list", value: { items: [1, 2] } });
  socket.message({ kind: KIND.STORE_UPDATE, value: { seq: 1, key: "k", old: null, new: encodeValue([1]), writer: 0, write_id: 0 } });
  assert.deepEqual(seen, [2, 1]);
  assert.deepEqual(ipc.store.get("k"), [1]);
});

test("a close while activate runs does not call deactivate alongside it (Rust runs deactivate only for an activated half)", async () => {
  const socket = new FakeSocket();
  let finish;
  const calls = [];
  const module = {
    activate: async () => {
      calls.push("activate");
      await new Promise((resolve) => (finish = resolve));
      calls.push("activated");
    },
    deactivate: async () => calls.push("deactivate"),
  };
  new client.Client(socket, { importModule: async () => module });
  socket.welcome(3, "probe");
  await socket.control(1, [0, 0, {}]);
  socket.deliver([2, 2, [1, 3]]);
  await settle();
  assert.deepEqual((await socket.control(3, [2, 1000]))[2], [0]);
  finish();
  await socket.completion(2);
  assert.deepEqual(calls, ["activate", "activated"]);
});

test("deactivate is bounded by a timeout past setTimeout's 2^31 - 1 ms too; u64::MAX is no limit", async (t) => {
  // A timeout over setTimeout's largest delay set no timer at all: deactivate was unbounded.
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const module = { deactivate: () => new Promise(() => {}) };
  const { socket, nextCompletion } = await start({ module });
  const completion = nextCompletion();
  const long = 2 ** 31 + 100; // 24.9 days: one step of 2^31 - 1 ms, then 101 ms
  socket.deliver([2, completion, [2, long]]);
  await settle();
  // In steps (the mock runs a timer armed within a tick from the tick's end).
  const step = 2 ** 31 - 1;
  t.mock.timers.tick(step);
  t.mock.timers.tick(100);
  await settle();
  assert.equal(socket.sent.filter((frame) => frame[0] === 2).length, 0);
  t.mock.timers.tick(1);
  assert.deepEqual((await socket.completion(completion))[2], [3, long]);

  let finish;
  const unbounded = { deactivate: () => new Promise((resolve) => (finish = resolve)) };
  const second = await start({ module: unbounded });
  const last = second.nextCompletion();
  second.socket.deliver([2, last, [2, 2n ** 64n - 1n]]);
  await settle();
  for (let i = 0; i < 4; i++) t.mock.timers.tick(step);
  await settle();
  assert.equal(second.socket.sent.filter((frame) => frame[0] === 2).length, 0);
  finish();
  assert.deepEqual((await second.socket.completion(last))[2], [0]);
});
