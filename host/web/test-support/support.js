// What the tests share: the client loaded as the host serves it, and a fake renderer socket
// that plays the host's end of spec §3 (MessagePack arrays), recording what the page sends.

import { register } from "node:module";

register("./hooks.js", import.meta.url);

export const client = await import("../client.js");
const { encodeValue, decodeValue } = client;

export const PEER_MAIN = 0;
export const PEER_HOST = 2n ** 64n - 2n;
export const PEER_ALL = 2n ** 64n - 1n;
export const KIND = { BROADCAST: 1, INVOKE: 2, REPLY: 3, CANCEL: 4, STORE_WRITE: 5, STORE_UPDATE: 6, STORE_REFUSAL: 7, STORAGE_WRITE: 8, STORAGE_UPDATE: 9, STORAGE_REFUSAL: 10 };

/** The host's end of a renderer socket: `deliver` frames to the page, read what it `sent`. */
export class FakeSocket {
  constructor() {
    this.binaryType = "blob";
    this.sent = [];
    this.closedWith = null;
    this.listeners = { message: [], close: [] };
    this.waiters = [];
  }

  addEventListener(type, fn) {
    this.listeners[type].push(fn);
  }

  send(bytes) {
    if (!(bytes instanceof Uint8Array)) throw new TypeError("the client sends binary messages");
    // As a WebSocket, a copy: the client reuses its buffer for the next message.
    const frame = decodeValue(bytes.slice());
    this.sent.push(frame);
    for (const waiter of [...this.waiters]) {
      if (waiter.match(frame)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve(frame);
      }
    }
  }

  close(code, reason) {
    this.closedWith = { code, reason };
  }

  /** Delivers one host → page frame (an array, encoded here). */
  deliver(frame) {
    const bytes = frame instanceof Uint8Array ? frame : encodeValue(frame);
    const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    for (const fn of this.listeners.message) fn({ data });
  }

  deliverText(text) {
    for (const fn of this.listeners.message) fn({ data: text });
  }

  /** The connection drops. */
  drop(code = 1006, reason = "") {
    for (const fn of this.listeners.close) fn({ code, reason });
  }

  /** Resolves with the first frame the page sends (already sent or to come) that matches. */
  next(match) {
    const found = this.sent.find(match);
    if (found) {
      this.sent.splice(this.sent.indexOf(found), 1);
      return Promise.resolve(found);
    }
    return new Promise((resolve) => {
      this.waiters.push({
        match,
        resolve: (frame) => {
          this.sent.splice(this.sent.indexOf(frame), 1);
          resolve(frame);
        },
      });
    });
  }

  /** The next MESSAGE of `kind` the page sends. */
  nextMessage(kind) {
    return this.next((frame) => frame[0] === 1 && frame[1] === kind);
  }

  /** The COMPLETE answering `completion`. */
  completion(completion) {
    return this.next((frame) => frame[0] === 2 && frame[1] === completion);
  }

  /** Every MESSAGE of `kind` sent and not yet taken. */
  messages(kind) {
    return this.sent.filter((frame) => frame[0] === 1 && frame[1] === kind);
  }

  // --- Host → page frames ---

  welcome(frame, extension) {
    this.deliver([0, { frame, extension }]);
  }

  message({ kind, status = 0, origin = PEER_MAIN, target = 1, requestId = 0, channel = "", value, payload }) {
    const bytes = payload ?? (value === undefined ? new Uint8Array(0) : encodeValue(value));
    this.deliver([1, kind, status, origin, target, requestId, channel, bytes]);
  }

  control(completion, command) {
    this.deliver([2, completion, command]);
    return this.completion(completion);
  }
}

let completions = 100;

/**
 * A connected client whose half runs `activate` (the module's, given as an object): welcome,
 * seed (`store`: key → value, `seq`), the persisted tier's seed when `storage` is given (its
 * `values`, `seq`, `unavailable`, `valueLimit`, `totalLimit`, `storedVersion`), open. Resolves
 * `{ socket, connection, ipc }` once the open completed.
 */
export async function start({ frame = 3, extension = "probe", module = {}, store = {}, seq = 0, storage } = {}) {
  const socket = new FakeSocket();
  let ipc;
  const entry = {
    ...module,
    activate: async (given) => {
      ipc = given;
      await module.activate?.(given);
    },
  };
  const connection = new client.Client(socket, { importModule: async () => entry });
  socket.welcome(frame, extension);
  const values = Object.fromEntries(Object.entries(store).map(([key, value]) => [key, encodeValue(value)]));
  const seeded = await socket.control(completions++, [0, seq, values]);
  if (seeded[2][0] !== 0) throw new Error(`seed failed: ${JSON.stringify(seeded)}`);
  if (storage !== undefined) {
    const { values = {}, seq = 0, unavailable = null, valueLimit = 1 << 20, totalLimit = 8 << 20, storedVersion = null } = storage;
    const encoded = Object.fromEntries(Object.entries(values).map(([key, value]) => [key, encodeValue(value)]));
    const command = [4, seq, encoded, unavailable, valueLimit, totalLimit, storedVersion];
    const storageSeeded = await socket.control(completions++, command);
    if (storageSeeded[2][0] !== 0) throw new Error(`storage seed failed: ${JSON.stringify(storageSeeded)}`);
  }
  const opened = await socket.control(completions++, [1, frame]);
  return { socket, connection, ipc, opened, nextCompletion: () => completions++ };
}

/** The error reply payload main's side sends (`wire::ErrorPayload`, a named map). */
/** Main's update of a tier (`kind`: STORE_UPDATE, or STORAGE_UPDATE) arriving on `socket`. */
export function tierUpdate(socket, { seq, key, old, value, writer = PEER_MAIN, writeId = 0, kind = KIND.STORE_UPDATE }) {
  socket.message({
    kind,
    origin: PEER_MAIN,
    target: PEER_ALL,
    value: {
      seq,
      key,
      old: old === undefined ? null : client.encodeValue(old),
      new: value === undefined ? null : client.encodeValue(value),
      writer,
      write_id: writeId,
    },
  });
}

export function errorPayload(message, data) {
  return encodeValue({ message, data: data === undefined ? null : encodeValue(data) });
}

/** Resolves after every queued microtask and one macrotask turn. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
