// The store replica in the page: seeded before activate, updates applied in seq order, writes
// resolved by their own sequenced update, refusals rejected.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start, tierUpdate, FakeSocket, KIND, PEER_ALL, PEER_MAIN } from "../test-support/support.js";

const { encodeValue, decodeValue, StoreError } = client;

const update = tierUpdate;

test("the seed is in place before activate runs: get is synchronous, has and keys agree", async () => {
  let seen;
  const { ipc } = await start({
    store: { config: { theme: "dark" }, big: 2n ** 64n - 1n },
    seq: 4,
    module: { activate: (ipc) => (seen = [ipc.store.get("config"), ipc.store.has("big"), ipc.store.keys()]) },
  });
  assert.deepEqual(seen, [{ theme: "dark" }, true, ["big", "config"]]);
  assert.equal(ipc.store.get("big"), 2n ** 64n - 1n);
  assert.equal(ipc.store.get("absent"), undefined);
  assert.equal(ipc.store.has("absent"), false);
  // Each get decodes afresh: changing what it returned does not change the replica.
  ipc.store.get("config").theme = "light";
  assert.deepEqual(ipc.store.get("config"), { theme: "dark" });
});

test("updates apply in seq order: early ones wait, stale ones are skipped, watchers see each change", async () => {
  const { socket, ipc, connection } = await start({ store: { n: 0 }, seq: 10 });
  const changes = [];
  ipc.store.watch("n", (change) => changes.push([change.old, change.new, change.writer]));
  update(socket, { seq: 13, key: "n", old: 2, value: 3, writer: 5, writeId: 1 });
  update(socket, { seq: 12, key: "n", old: 1, value: 2 });
  assert.equal(ipc.store.get("n"), 0);
  update(socket, { seq: 10, key: "n", old: -1, value: -2 });
  update(socket, { seq: 11, key: "n", old: 0, value: 1 });
  assert.equal(ipc.store.get("n"), 3);
  assert.deepEqual(changes, [
    [0, 1, { kind: "main" }],
    [1, 2, { kind: "main" }],
    [2, 3, { kind: "frame", frame: 5 }],
  ]);
  const inspected = await socket.control(999, [3]);
  assert.deepEqual([inspected[2][1].store_seq, inspected[2][1].store_keys, inspected[2][1].watchers], [13, 1, 1]);
  // A delete, and a write of the same value (no change: no watcher call).
  update(socket, { seq: 14, key: "n", old: 3, value: undefined });
  update(socket, { seq: 15, key: "m", old: undefined, value: undefined });
  assert.equal(ipc.store.has("n"), false);
  assert.equal(changes.length, 4);
  assert.deepEqual(changes[3], [3, undefined, { kind: "main" }]);
  assert.equal(connection.seq, 15);
});

test("updates before the seed wait for it, and those the seed already holds are dropped", async () => {
  const socket = new FakeSocket();
  let seen;
  const connection = new client.Client(socket, { importModule: async () => ({ activate: (ipc) => (seen = ipc.store.get("k")) }) });
  socket.welcome(2, "probe");
  update(socket, { seq: 3, key: "k", old: "a", value: "b" });
  update(socket, { seq: 4, key: "k", old: "b", value: "c" });
  await socket.control(1, [0, 3, { k: encodeValue("b") }]);
  await socket.control(2, [1, 2]);
  assert.equal(seen, "c");
  assert.equal(connection.seq, 4);
});

test("set sends STORE_WRITE and resolves only when its own update is applied", async () => {
  const { socket, ipc } = await start({ frame: 4 });
  let done = false;
  const written = ipc.store.set("k", new Map([[1, "one"]])).then(() => (done = true));
  const [, kind, status, target, , channel, payload] = await socket.nextMessage(KIND.STORE_WRITE);
  assert.deepEqual([kind, status, target, channel], [5, 0, PEER_MAIN, ""]);
  const write = decodeValue(payload);
  assert.equal(write.key, "k");
  assert.ok(write.value instanceof Uint8Array);
  assert.deepEqual([...decodeValue(write.value)], [[1, "one"]]);
  // Another frame's write with the same id, and main's, do not resolve it.
  update(socket, { seq: 1, key: "k", value: 1, writer: 9, writeId: write.write_id });
  update(socket, { seq: 2, key: "k", old: 1, value: 2, writer: PEER_MAIN, writeId: write.write_id });
  await Promise.resolve();
  assert.equal(done, false);
  update(socket, { seq: 3, key: "k", old: 2, value: new Map([[1, "one"]]), writer: 4, writeId: write.write_id });
  await written;
  assert.deepEqual([...ipc.store.get("k")], [[1, "one"]]);

  const deleted = ipc.store.delete("k");
  const [, , , , , , deletion] = await socket.nextMessage(KIND.STORE_WRITE);
  const removal = decodeValue(deletion);
  assert.deepEqual([removal.key, removal.value], ["k", null]);
  update(socket, { seq: 4, key: "k", old: new Map([[1, "one"]]), value: undefined, writer: 4, writeId: removal.write_id });
  await deleted;
  assert.equal(ipc.store.has("k"), false);
  await assert.rejects(ipc.store.set("k", undefined), TypeError);
  await assert.rejects(ipc.store.set("k", () => 1), TypeError);
});

test("a refused write rejects with a StoreError saying why; a watcher's disposer stops it", async () => {
  const { socket, ipc } = await start({ frame: 4 });
  const refused = ipc.store.set("big", "x".repeat(10));
  const [, , , , , , payload] = await socket.nextMessage(KIND.STORE_WRITE);
  const { write_id } = decodeValue(payload);
  socket.message({
    kind: KIND.STORE_REFUSAL,
    origin: PEER_MAIN,
    target: 4,
    value: { write_id, key: "big", outcome: { TooLarge: { size: 10, max: 5 } } },
  });
  const error = await refused.catch((error) => error);
  assert.ok(error instanceof StoreError);
  assert.deepEqual([error.key, error.reason, error.size, error.max], ["big", "TooLarge", 10, 5]);
  assert.match(error.message, /10 bytes, over the 5-byte limit/);

  const seen = [];
  const stop = ipc.store.watch("w", (change) => seen.push(change.new));
  update(socket, { seq: 1, key: "w", value: 1 });
  stop();
  stop.dispose();
  update(socket, { seq: 2, key: "w", old: 1, value: 2 });
  assert.deepEqual(seen, [1]);
});
