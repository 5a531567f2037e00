// Values: what survives the round trip to Rust and back (rmp_serde's encodings, byte for byte).

import { test } from "node:test";
import assert from "node:assert/strict";
import { client } from "../test-support/support.js";

const { encodeValue, decodeValue } = client;
const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("64-bit integers beyond 2^53 decode to BigInt, the others to numbers", () => {
  // rmp_serde's u64::MAX, i64::MIN, 2^53 + 1, and 2^40 (uint64 format, but safe).
  assert.equal(decodeValue(Buffer.from("cfffffffffffffffff", "hex")), 2n ** 64n - 1n);
  assert.equal(decodeValue(Buffer.from("d38000000000000000", "hex")), -(2n ** 63n));
  assert.equal(decodeValue(Buffer.from("cf0020000000000001", "hex")), 2n ** 53n + 1n);
  assert.equal(decodeValue(Buffer.from("cf0000010000000000", "hex")), 2 ** 40);
  assert.equal(decodeValue(Buffer.from("d3ffffff0000000000", "hex")), -(2 ** 40));
});

test("BigInt encodes as uint64/int64, as Rust writes them; safe ones and numbers stay compact", () => {
  assert.equal(hex(encodeValue(2n ** 64n - 1n)), "cfffffffffffffffff");
  assert.equal(hex(encodeValue(-(2n ** 63n))), "d38000000000000000");
  assert.equal(hex(encodeValue(5n)), "05");
  // A safe integer beyond 32 bits is an integer, not a float (u64 on the Rust side).
  assert.equal(hex(encodeValue(2 ** 40)), "cf0000010000000000");
  assert.equal(hex(encodeValue(1.5)), "cb3ff8000000000000");
  assert.throws(() => encodeValue(2n ** 64n), TypeError);
  assert.throws(() => encodeValue(-(2n ** 63n) - 1n), TypeError);
});

test("Uint8Array is MessagePack binary, both ways", () => {
  const bytes = new Uint8Array([0, 1, 254, 255]);
  assert.equal(hex(encodeValue(bytes)), "c4040001feff");
  assert.deepEqual(decodeValue(encodeValue(bytes)), bytes);
  assert.ok(decodeValue(encodeValue(bytes)) instanceof Uint8Array);
});

test("maps with non-string keys decode to Map, and a Map encodes with its keys", () => {
  // rmp_serde's BTreeMap<u32, String> {1: "a", 2: "b"}.
  const decoded = decodeValue(Buffer.from("8201a16102a162", "hex"));
  assert.ok(decoded instanceof Map);
  assert.deepEqual([...decoded], [[1, "a"], [2, "b"]]);
  assert.equal(hex(encodeValue(new Map([[1, "a"], [2, "b"]]))), "8201a16102a162");
  // u64::MAX as a key, nested in arrays and objects, and a string key beside integer ones.
  const nested = { outer: [new Map([[2n ** 64n - 1n, new Uint8Array([7])], ["s", 1]])] };
  const back = decodeValue(encodeValue(nested));
  const map = back.outer[0];
  assert.ok(map instanceof Map);
  assert.deepEqual(map.get(2n ** 64n - 1n), new Uint8Array([7]));
  assert.equal(map.get("s"), 1);
  // Only string keys: a plain object, as serde structs and String-keyed maps are.
  assert.deepEqual(decodeValue(encodeValue(new Map([["a", 1]]))), { a: 1 });
  // Boolean, nil and array keys come back as they were.
  const odd = decodeValue(encodeValue(new Map([[true, 1], [null, 2], [[1, 2], 3]])));
  assert.deepEqual([...odd], [[true, 1], [null, 2], [[1, 2], 3]]);
});

test("values that are not MessagePack are a TypeError", () => {
  assert.throws(() => encodeValue(() => 1), TypeError);
  assert.throws(() => encodeValue(Symbol("x")), TypeError);
  assert.throws(() => encodeValue(new Set([1])), TypeError);
});

test("the message kinds' error codes are the Rust ones, and statuses read as Rust reads them", () => {
  assert.equal(client.errorCode("NoHandler"), 100);
  assert.equal(client.errorCode("TooLarge"), 110);
  client.ERROR_KINDS.forEach((kind, index) => assert.equal(client.kindOfStatus(100 + index), kind));
  // Refusals on the way (`message::refusal_kind`), and an unknown code.
  assert.equal(client.kindOfStatus(6), "Overloaded");
  assert.equal(client.kindOfStatus(5), "FrameClosed");
  assert.equal(client.kindOfStatus(7), "TooLarge");
  assert.equal(client.kindOfStatus(3), "Deactivated");
  assert.equal(client.kindOfStatus(999), "ConnectionLost");
});
