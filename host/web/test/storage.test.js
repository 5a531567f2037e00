// The persisted tier in the page (`ipc.storage`): seeded before activate with the host's limits,
// updates applied in seq order apart from the store's, writes sent as STORAGE_WRITE and resolved
// only by their own update (main publishes it once the host committed and synced it), refusals
// rejected with their kind, an unavailable tier failing reads and writes.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start, tierUpdate, FakeSocket, KIND, PEER_ALL, PEER_MAIN } from "../test-support/support.js";

const { decodeValue, StoreError } = client;

const update = (socket, change) => tierUpdate(socket, { kind: KIND.STORAGE_UPDATE, ...change });

test("the persisted tier is seeded before activate: get is synchronous, awkward values survive", async () => {
  let seen;
  const { ipc } = await start({
    storage: {
      values: { big: 2n ** 64n - 1n, bytes: new Uint8Array([0, 255]), map: new Map([[1, "one"]]) },
      seq: 3,
      storedVersion: "0.9.0",
    },
    module: { activate: (ipc) => (seen = [ipc.storage.get("big"), ipc.storage.keys(), ipc.storage.storedVersion]) },
  });
  assert.deepEqual(seen, [2n ** 64n - 1n, ["big", "bytes", "map"], "0.9.0"]);
  assert.deepEqual([...ipc.storage.get("bytes")], [0, 255]);
  assert.deepEqual([...ipc.storage.get("map")], [[1, "one"]]);
  assert.equal(ipc.storage.has("absent"), false);
  // The store is another replica.
  assert.equal(ipc.store.get("big"), undefined);
});

test("set sends STORAGE_WRITE and resolves only on its own update; the store's updates do not touch it", async () => {
  const { socket, ipc } = await start({ frame: 4, storage: { seq: 0 } });
  let done = false;
  const written = ipc.storage.set("k", 2n ** 64n - 1n).then(() => (done = true));
  const [, kind, status, target, , channel, payload] = await socket.nextMessage(KIND.STORAGE_WRITE);
  assert.deepEqual([kind, status, target, channel], [KIND.STORAGE_WRITE, 0, PEER_MAIN, ""]);
  const write = decodeValue(payload);
  assert.equal(write.key, "k");
  assert.equal(decodeValue(write.value), 2n ** 64n - 1n);
  // The store's update with the same writer and id is not this write's.
  update(socket, { kind: KIND.STORE_UPDATE, seq: 1, key: "k", value: 1, writer: 4, writeId: write.write_id });
  await Promise.resolve();
  assert.equal(done, false);
  assert.equal(ipc.storage.get("k"), undefined);
  const changes = [];
  ipc.storage.watch("k", (change) => changes.push([change.old, change.new, change.writer]));
  update(socket, { seq: 1, key: "k", value: 2n ** 64n - 1n, writer: 4, writeId: write.write_id });
  await written;
  assert.equal(ipc.storage.get("k"), 2n ** 64n - 1n);
  assert.deepEqual(changes, [[undefined, 2n ** 64n - 1n, { kind: "frame", frame: 4 }]]);
  // Main's writes (and other frames') are applied in order and watched.
  update(socket, { seq: 3, key: "k", old: 5, value: 6, writer: 7 });
  update(socket, { seq: 2, key: "k", old: 2n ** 64n - 1n, value: 5 });
  assert.equal(ipc.storage.get("k"), 6);
  assert.equal(changes.length, 3);
  const deleted = ipc.storage.delete("k");
  const removal = decodeValue((await socket.nextMessage(KIND.STORAGE_WRITE))[6]);
  assert.deepEqual([removal.key, removal.value], ["k", null]);
  update(socket, { seq: 4, key: "k", old: 6, value: undefined, writer: 4, writeId: removal.write_id });
  await deleted;
  assert.equal(ipc.storage.has("k"), false);
  await assert.rejects(ipc.storage.set("k", undefined), TypeError);
});

test("a refused write rejects with the kind Rust's refusal has: too large, full, unavailable, overloaded", async () => {
  const { socket, ipc } = await start({ frame: 4, storage: { valueLimit: 8 } });
  // Over the host's value limit (from the seed): refused before it is sent.
  const local = await ipc.storage.set("big", "x".repeat(20)).catch((error) => error);
  assert.ok(local instanceof StoreError);
  assert.deepEqual([local.reason, local.max], ["TooLarge", 8]);
  assert.equal(socket.messages(KIND.STORAGE_WRITE).length, 0);
  const outcomes = [
    [{ Full: { size: 500, max: 400 } }, "Full", /persisted storage would hold 500 bytes, over its 400-byte limit/],
    [{ Unavailable: { reason: "disk full" } }, "Unavailable", /disk full/],
    ["Overloaded", "Overloaded", /overloaded/],
    [{ TooLarge: { size: 9, max: 8 } }, "TooLarge", /9 bytes, over the 8-byte limit/],
  ];
  for (const [outcome, reason, message] of outcomes) {
    const refused = ipc.storage.set("k", 1);
    const { write_id } = decodeValue((await socket.nextMessage(KIND.STORAGE_WRITE))[6]);
    // A store refusal of the same id is not this write's.
    socket.message({ kind: KIND.STORE_REFUSAL, target: 4, value: { write_id, key: "k", outcome: "Overloaded" } });
    socket.message({ kind: KIND.STORAGE_REFUSAL, target: 4, value: { write_id, key: "k", outcome } });
    const error = await refused.catch((error) => error);
    assert.ok(error instanceof StoreError, String(error));
    assert.equal(error.reason, reason);
    assert.match(error.message, message);
  }
  // Not routed because the frame closes (NO_SUCH_PEER): FrameClosed, as in Rust.
  const refused = ipc.storage.set("k", 1);
  const { write_id } = decodeValue((await socket.nextMessage(KIND.STORAGE_WRITE))[6]);
  socket.message({ kind: KIND.STORAGE_REFUSAL, status: 5, target: 4, value: { write_id, key: "k", outcome: { Unavailable: { reason: "closing" } } } });
  assert.equal((await refused.catch((error) => error)).reason, "FrameClosed");
  // Not routed because the extension stops, or its main half's process is gone (DEACTIVATED):
  // Deactivated, as a Rust renderer's `storage().set` says.
  const stopping = ipc.storage.set("k", 2);
  const second = decodeValue((await socket.nextMessage(KIND.STORAGE_WRITE))[6]).write_id;
  socket.message({ kind: KIND.STORAGE_REFUSAL, status: 3, target: 4, value: { write_id: second, key: "k", outcome: { Unavailable: { reason: "not sent to main" } } } });
  assert.equal((await stopping.catch((error) => error)).reason, "Deactivated");
});

test("a write waiting when the half closes or the connection drops fails with that kind", async () => {
  const { socket, ipc } = await start({ frame: 4, storage: {} });
  const pending = ipc.storage.set("k", 1);
  await socket.nextMessage(KIND.STORAGE_WRITE);
  socket.drop(1006, "gone");
  const error = await pending.catch((error) => error);
  assert.deepEqual([error.reason, error.key], ["ConnectionLost", "k"]);
});

test("an unavailable tier fails every read and write with the host's reason", async () => {
  const { socket, ipc } = await start({ storage: { unavailable: "/data/probe.redb: damaged" } });
  assert.throws(() => ipc.storage.get("k"), (error) => error instanceof StoreError && error.reason === "Unavailable" && /damaged/.test(error.message));
  const error = await ipc.storage.set("k", 1).catch((error) => error);
  assert.equal(error.reason, "Unavailable");
  assert.equal(socket.messages(KIND.STORAGE_WRITE).length, 0);
});

test("a malformed storage seed ends the connection", async () => {
  const socket = new FakeSocket();
  new client.Client(socket, { importModule: async () => ({ activate() {} }) });
  socket.welcome(2, "probe");
  socket.deliver([2, 1, [4, 0, {}, 5, 1, 1, null]]);
  assert.equal(socket.closedWith?.code, 1008);
});
