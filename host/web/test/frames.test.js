// MESSAGE frames: the client writes and reads them field by field, without the generic encoder
// and decoder; what goes over the socket is what the generic encoder writes, byte for byte,
// and what it reads is what the generic decoder reads, for every kind of field.

import { test } from "node:test";
import assert from "node:assert/strict";
import { client, start } from "../test-support/support.js";

const { encodeValue, decodeValue } = client;
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const PEER_HOST = 2n ** 64n - 2n;
const PEER_ALL = 2n ** 64n - 1n;

/** A socket that keeps a copy of the bytes of each message the page sends. */
class RawSocket {
  constructor() {
    this.sent = [];
  }
  addEventListener() {}
  send(bytes) {
    this.sent.push(bytes.slice());
  }
}

test("a MESSAGE goes out as the generic encoder writes it, for every size of field", () => {
  const socket = new RawSocket();
  // It copies what it is sent: the client hands it its reused buffer, as it does a WebSocket.
  const connection = new client.Client(socket, { sendCopies: true });
  const sizes = [0, 1, 31, 32, 255, 256, 65535, 65536 - 100];
  const cases = [];
  for (const id of [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2n ** 60n, 2n ** 64n - 1n]) {
    cases.push([2, 0, 0, id, "echo", new Uint8Array(3).fill(id === 0 ? 1 : 2)]);
  }
  for (const target of [0, 5, 2 ** 40, PEER_HOST, PEER_ALL]) cases.push([3, 104, target, 9, "", new Uint8Array([1])]);
  for (const length of sizes) {
    cases.push([1, 0, PEER_ALL, 0, "c".repeat(Math.min(length, 300)), new Uint8Array(length).fill(7)]);
  }
  // Not in ASCII, and with a lone surrogate (sent as U+FFFD, as the generic encoder does).
  cases.push([2, 0, 0, 7, "émoji 🎉", new Uint8Array([1, 2])]);
  cases.push([2, 0, 0, 8, "lone \ud800", new Uint8Array([3])]);
  // A payload larger than the kept buffer, and one that is not a Uint8Array view of its own.
  cases.push([2, 0, 0, 9, "big", new Uint8Array(70_000).fill(5)]);
  const backing = new Uint8Array([9, 9, 1, 2, 3, 9]);
  cases.push([2, 0, 0, 10, "view", backing.subarray(2, 5)]);
  for (const fields of cases) {
    connection.sendMessage(...fields);
    const sent = socket.sent.at(-1);
    assert.equal(hex(sent), hex(encodeValue([1, ...fields])), `MESSAGE ${fields.slice(0, 5).join(", ")}`);
  }
  assert.equal(socket.sent.length, cases.length);
});

test("an invoke's value is copied into its message: the next one does not change it", async () => {
  const { socket, ipc } = await start();
  const first = ipc.invoke("a", { n: 1 });
  const second = ipc.invoke("b", { n: 2, more: "x".repeat(40) });
  const [one, two] = [await socket.nextMessage(2), await socket.nextMessage(2)];
  assert.deepEqual(decodeValue(one[6]), { n: 1 });
  assert.deepEqual(decodeValue(two[6]), { n: 2, more: "x".repeat(40) });
  socket.message({ kind: 3, requestId: one[4], target: 3, value: "one" });
  socket.message({ kind: 3, requestId: two[4], target: 3, value: "two" });
  assert.equal(await first, "one");
  assert.equal(await second, "two");
});

test("a MESSAGE comes in as the generic decoder reads it: peers, ids and channels of every size", async () => {
  const { socket, ipc, connection } = await start();
  // Replies to request ids of each integer width, a BigInt among them.
  for (const id of [127, 200, 65535, 2 ** 32 + 5, 2 ** 53 - 1, 2n ** 60n]) {
    connection.nextRequest = id;
    const reply = ipc.invoke("echo", 1);
    const sent = await socket.nextMessage(2);
    assert.equal(sent[4], id);
    socket.message({ kind: 3, requestId: id, target: 3, value: { id: String(id) } });
    assert.deepEqual(await reply, { id: String(id) });
  }
  // Broadcasts from the host and from frames of each width, on channels of each kind: short,
  // 32 bytes and over (str8), not in ASCII, and payloads of each bin width.
  const heard = [];
  const channels = ["b", "c".repeat(40), "é-🎉", "d".repeat(300)];
  for (const channel of channels) ipc.listen(channel, (value, sender) => heard.push([channel, value, sender]));
  const origins = [0, 7, 2 ** 40, PEER_HOST];
  const values = [null, "x".repeat(300), new Uint8Array(70_000).fill(3)];
  for (const channel of channels) {
    for (const origin of origins) {
      for (const value of values) socket.message({ kind: 1, origin, target: PEER_ALL, channel, value });
    }
  }
  assert.equal(heard.length, channels.length * origins.length * values.length);
  let at = 0;
  for (const channel of channels) {
    for (const origin of origins) {
      for (const value of values) {
        const [heardOn, got, sender] = heard[at++];
        assert.equal(heardOn, channel);
        assert.deepEqual(got, value);
        const expected = origin === 0 ? { kind: "main" } : origin === PEER_HOST ? { kind: "host" } : { kind: "frame", frame: origin };
        assert.deepEqual(sender, expected);
      }
    }
  }
});

test("a MESSAGE the field reader does not take is read by the generic decoder, or refused saying why", async () => {
  const { socket, ipc, connection } = await start();
  // Signed integers where the host writes unsigned ones: the generic decoder reads them.
  const reply = ipc.invoke("echo", 1);
  const sent = await socket.nextMessage(2);
  const id = sent[4];
  // [1, REPLY, status 0, origin 0 as int8, target 3, id, "", payload]: 0xd0 0x00 is int8 0.
  const payload = encodeValue("signed");
  const head = encodeValue([1, 3, 0]);
  const tail = encodeValue([3, id, "", payload]);
  const bytes = new Uint8Array([0x98, ...head.subarray(1), 0xd0, 0x00, ...tail.subarray(1)]);
  socket.deliver(bytes);
  assert.equal(await reply, "signed");
  // A MESSAGE with a field too many: refused, the connection closed with 1008.
  socket.deliver(encodeValue([1, 1, 0, 0, 3, 0, "b", new Uint8Array(0), 9]));
  assert.equal(connection.state, "lost");
  assert.equal(socket.closedWith.code, 1008);
  assert.match(connection.closeReason, /a message of 9 fields/);
});
