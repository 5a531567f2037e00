// The buffer the client reuses for its MESSAGE frames is handed only to a socket that copies
// what it is sent (a browser WebSocket, or one that says so): any other socket (an
// application's own, a test double) may keep what it was given, and it stays as sent.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start } from "../test-support/support.js";

const { decodeValue } = client;

/** Records the bytes each `send` was given, as given (not copied), besides what `socket` does. */
function keepSent(socket) {
  const kept = [];
  const send = socket.send.bind(socket);
  socket.send = (bytes) => {
    kept.push(bytes);
    send(bytes);
  };
  return kept;
}

test("a socket that keeps what it is sent keeps each message as it was sent", async () => {
  const { socket, ipc } = await start();
  const kept = keepSent(socket);
  const replies = [ipc.invoke("first", { n: 1 }), ipc.invoke("second", { n: 2, more: "x".repeat(40) })];
  ipc.broadcast("third", [3]);
  assert.equal(kept.length, 3);
  const [first, second, third] = kept.map((bytes) => decodeValue(bytes));
  assert.equal(first[5], "first");
  assert.deepEqual(decodeValue(first[6]), { n: 1 });
  assert.equal(second[5], "second");
  assert.deepEqual(decodeValue(second[6]), { n: 2, more: "x".repeat(40) });
  assert.equal(third[5], "third");
  assert.deepEqual(decodeValue(third[6]), [3]);
  for (const [at, reply] of replies.entries()) {
    socket.message({ kind: 3, requestId: [first, second][at][4], target: 3, value: at });
    assert.equal(await reply, at);
  }
});

test("an invoke's value too large for the kept buffer goes out whole", async () => {
  const { socket, ipc } = await start();
  const kept = keepSent(socket);
  const value = { big: new Uint8Array(100_000).map((_, at) => at % 251), tail: "end" };
  const reply = ipc.invoke("large", value);
  const sent = decodeValue(kept[0]);
  assert.equal(sent[5], "large");
  assert.deepEqual(decodeValue(sent[6]), value);
  socket.message({ kind: 3, requestId: sent[4], target: 3, value: "ok" });
  assert.equal(await reply, "ok");
});
