// The extension host's JavaScript client: the `ipc` object a web renderer half gets in
// `activate(ipc)`, over the renderer socket of the web transport (spec: host/web/README.md and
// client.d.ts). Served by the host as `/.host/client.js`, beside `/.host/msgpack.js`.
//
// Every WebSocket message is one MessagePack array whose first element is a tag. Values are
// MessagePack too: 64-bit integers beyond 2^53 are BigInt, binary is Uint8Array, a map whose
// keys are not all strings is a Map.

import { Decoder, Encoder } from "./msgpack.js";

// --- Peers, kinds, codes (extension-api/src/abi.rs, message.rs) -----------------------------

const PEER_MAIN = 0;
const PEER_HOST = 2n ** 64n - 2n;
const PEER_ALL = 2n ** 64n - 1n;

const BROADCAST = 1;
const INVOKE = 2;
const REPLY = 3;
const CANCEL = 4;
const STORE_WRITE = 5;
const STORE_UPDATE = 6;
const STORE_REFUSAL = 7;
const STORAGE_WRITE = 8;
const STORAGE_UPDATE = 9;
const STORAGE_REFUSAL = 10;

/** Error kinds by their reply code (`message::error_code`), 100 NoHandler ... 110 TooLarge. */
export const ERROR_KINDS = Object.freeze([
  "NoHandler",
  "Handler",
  "Panicked",
  "Timeout",
  "Deactivated",
  "FrameClosed",
  "ConnectionLost",
  "Serialize",
  "Deserialize",
  "Overloaded",
  "TooLarge",
]);

/** The code an error reply of `kind` carries in its status field. */
export function errorCode(kind) {
  const index = ERROR_KINDS.indexOf(kind);
  if (index < 0) throw new TypeError(`unknown error kind ${String(kind)}`);
  return 100 + index;
}

/** The kind a reply's non-zero status stands for, as the Rust side reads it. */
export function kindOfStatus(status) {
  const code = Number(status);
  if (code >= 100 && code <= 110) return ERROR_KINDS[code - 100];
  // A refusal on the way (`abi::status`, `message::refusal_kind`).
  if (code === 6) return "Overloaded";
  if (code === 5) return "FrameClosed";
  if (code === 7) return "TooLarge";
  if (code >= 1 && code < 100) return "Deactivated";
  // A code no version defines: as `Reply::into_result`.
  return "ConnectionLost";
}

/** Why an invoke did not produce the handler's value. */
export class InvokeError extends Error {
  constructor(kind, message, data = undefined, options = undefined) {
    super(message, options);
    this.name = "InvokeError";
    this.kind = kind;
    this.data = data;
  }
}

/**
 * Why a write of the store or the persisted tier was not made (main or the host refused it, or
 * the half closed first), or why the persisted tier cannot be read.
 */
export class StoreError extends Error {
  constructor(key, reason, message, details = {}) {
    super(message);
    this.name = "StoreError";
    this.key = key;
    this.reason = reason;
    // For TooLarge and Full: the sizes, in bytes.
    if (details.size !== undefined) this.size = details.size;
    if (details.max !== undefined) this.max = details.max;
  }
}

// --- Values ------------------------------------------------------------------------------

const MAX_U64 = 2n ** 64n - 1n;
/** The MESSAGE tags (PAGE.MESSAGE, HOST.MESSAGE). */
const PAGE_MESSAGE = 1;
const HOST_MESSAGE = 1;
const MIN_I64 = -(2n ** 63n);
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);
const SAFE_MIN = BigInt(Number.MIN_SAFE_INTEGER);

/** `text` with each lone surrogate replaced by U+FFFD, as `TextEncoder` (and so WebSocket) does. */
const wellFormed =
  typeof String.prototype.toWellFormed === "function" ? (text) => text.toWellFormed() : (text) => text.replace(/\p{Cs}/gu, "\uFFFD");

/** @msgpack/msgpack with the three awkward values: BigInt, Map, and (as it has) Uint8Array. */
class ValueEncoder extends Encoder {
  clone() {
    return new ValueEncoder();
  }

  // Every string is sent as valid UTF-8: the encoder's own path for short strings wrote a lone
  // surrogate as its CESU-8 bytes, which Rust (and the host's decoder) refuse.
  encodeString(text) {
    super.encodeString(wellFormed(text));
  }

  encodeObject(object, depth) {
    if (typeof object === "bigint") {
      if (object >= SAFE_MIN && object <= SAFE_MAX) {
        this.encodeNumber(Number(object));
      } else if (object > MAX_U64 || object < MIN_I64) {
        throw new TypeError(`the BigInt ${object} does not fit in 64 bits`);
      } else {
        // uint64 when not negative, int64 otherwise.
        this.encodeBigInt64(object);
      }
    } else if (object instanceof Map) {
      this.encodeMapObject(object, depth);
    } else if (object instanceof Set || typeof object === "function" || typeof object === "symbol") {
      throw new TypeError(`a ${Object.prototype.toString.call(object)} is not a MessagePack value`);
    } else {
      super.encodeObject(object, depth);
    }
  }

  encodeMapObject(map, depth) {
    const size = map.size;
    if (size < 16) {
      this.writeU8(0x80 + size);
    } else if (size < 0x10000) {
      this.writeU8(0xde);
      this.writeU16(size);
    } else {
      this.writeU8(0xdf);
      this.writeU32(size);
    }
    for (const [key, value] of map) {
      this.doEncode(key, depth + 1);
      this.doEncode(value, depth + 1);
    }
  }
}

/** Keys of the map being decoded that are not strings, by the symbol standing in for them. */
let foreignKeys = null;
/** What the decoder reads a `__proto__` map key as (@msgpack/msgpack refuses that string). */
const PROTO_KEY = Symbol("__proto__");

class ValueDecoder extends Decoder {
  constructor() {
    super({
      useBigInt64: true,
      mapKeyConverter: (key) => {
        if (typeof key === "string") return key;
        // A stand-in property key; `restore` turns its object into a Map (or, when the only
        // stand-in is for `__proto__`, into an object with it as an own property).
        const symbol = Symbol("key");
        (foreignKeys ??= new Map()).set(symbol, key === PROTO_KEY ? "__proto__" : key);
        return symbol;
      },
    });
  }

  clone() {
    return new ValueDecoder();
  }

  decodeUtf8String(byteLength, headerOffset) {
    const text = super.decodeUtf8String(byteLength, headerOffset);
    // An ordinary key for Rust (a store key, a `HashMap<String, _>`'s): kept, never assigned.
    return text === "__proto__" && this.stateIsMapKey() ? PROTO_KEY : text;
  }

  readU64AsBigInt() {
    const value = super.readU64AsBigInt();
    return value <= SAFE_MAX ? Number(value) : value;
  }

  readI64AsBigInt() {
    const value = super.readI64AsBigInt();
    return value >= SAFE_MIN && value <= SAFE_MAX ? Number(value) : value;
  }
}

const encoder = new ValueEncoder();
const decoder = new ValueDecoder();

/** Encodes a value as MessagePack; throws TypeError when it cannot be. */
export function encodeValue(value) {
  try {
    return encoder.encode(value);
  } catch (error) {
    if (error instanceof TypeError) throw error;
    throw new TypeError(`the value is not encodable as MessagePack: ${error.message}`, { cause: error });
  }
}

/**
 * As `encodeValue`, but the bytes are a view of the encoder's buffer, good until the next
 * encoding: for a value copied into its message at once (an invoke's), without a buffer of
 * its own.
 */
function encodeValueShared(value) {
  try {
    return encoder.encodeSharedRef(value);
  } catch (error) {
    if (error instanceof TypeError) throw error;
    throw new TypeError(`the value is not encodable as MessagePack: ${error.message}`, { cause: error });
  }
}

// --- MESSAGE frames, both ways, without the generic encoder and decoder ---------------------
//
// Every invoke and its reply is a MESSAGE: `[1, kind, status, peer, (peer,) request id,
// channel, payload]`, integers, a string and binary. They are written into one buffer, reused
// (`WebSocket.send` copies what it is given; a socket that may not, `Client`'s `sendCopies`,
// is sent a copy), and read field by field; anything else (an integer that is not a safe one
// or a BigInt of 64 bits, a channel read not in ASCII, another encoding of a field) takes the
// generic encoder or decoder, as every other frame does.

/** Where MESSAGE frames are written (grown as needed), and a view of it for wide integers. */
let frameBuffer = new Uint8Array(256);
let frameView = new DataView(frameBuffer.buffer);
/** The largest MESSAGE written into `frameBuffer` (larger ones take the generic encoder). */
const FRAME_KEPT = 64 << 10;
/** The UTF-8 of the channels sent lately (well-formed), by name: a page uses a few. */
const channelBytes = new Map();
const CHANNELS_KEPT = 256;

function utf8Channel(channel) {
  let bytes = channelBytes.get(channel);
  if (bytes === undefined) {
    if (channelBytes.size >= CHANNELS_KEPT) channelBytes.clear();
    bytes = utf8.encode(wellFormed(channel));
    channelBytes.set(channel, bytes);
  }
  return bytes;
}

/** Writes unsigned integer `value` (a safe integer or a BigInt of 64 bits) at `at`; the position after, or -1. */
function writeUint(value, at) {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) return -1;
    if (value < 0x80) {
      frameBuffer[at] = value;
      return at + 1;
    }
    if (value < 0x100) {
      frameBuffer[at] = 0xcc;
      frameBuffer[at + 1] = value;
      return at + 2;
    }
    if (value < 0x10000) {
      frameBuffer[at] = 0xcd;
      frameView.setUint16(at + 1, value);
      return at + 3;
    }
    if (value < 0x100000000) {
      frameBuffer[at] = 0xce;
      frameView.setUint32(at + 1, value);
      return at + 5;
    }
    frameBuffer[at] = 0xcf;
    frameView.setUint32(at + 1, Math.floor(value / 0x100000000));
    frameView.setUint32(at + 5, value >>> 0);
    return at + 9;
  }
  if (typeof value !== "bigint" || value < 0n || value > MAX_U64) return -1;
  if (value <= SAFE_MAX) return writeUint(Number(value), at);
  frameBuffer[at] = 0xcf;
  frameView.setBigUint64(at + 1, value);
  return at + 9;
}

/** Writes the header of a str or bin of `length` bytes at `at` (its fix marker `fix` below `fixLimit`, else its 8-, 16- or 32-bit marker); the position after. */
function writeLength(length, at, fix, fixLimit, marker8, marker16, marker32) {
  if (length < fixLimit) {
    frameBuffer[at] = fix + length;
    return at + 1;
  }
  if (length < 0x100) {
    frameBuffer[at] = marker8;
    frameBuffer[at + 1] = length;
    return at + 2;
  }
  if (length < 0x10000) {
    frameBuffer[at] = marker16;
    frameView.setUint16(at + 1, length);
    return at + 3;
  }
  frameBuffer[at] = marker32;
  frameView.setUint32(at + 1, length);
  return at + 5;
}

/**
 * The page's MESSAGE `[1, kind, status, target, requestId, channel, payload]` as MessagePack,
 * a view of `frameBuffer` good until the next one; `null` when a field takes the generic
 * encoder.
 */
function messageFrame(kind, status, target, requestId, channel, payload) {
  if (typeof channel !== "string" || !(payload instanceof Uint8Array)) return null;
  const name = utf8Channel(channel);
  // The array's marker and the tag, four integers of at most 9 bytes, two headers of 5.
  const most = 2 + 4 * 9 + 2 * 5 + name.length + payload.length;
  // A large message is encoded in a buffer of its own, not kept.
  if (most > FRAME_KEPT) return null;
  if (frameBuffer.length < most) {
    frameBuffer = new Uint8Array(Math.max(most, frameBuffer.length * 2));
    frameView = new DataView(frameBuffer.buffer);
  }
  frameBuffer[0] = 0x97;
  frameBuffer[1] = PAGE_MESSAGE;
  let at = writeUint(kind, 2);
  if (at >= 0) at = writeUint(status, at);
  if (at >= 0) at = writeUint(target, at);
  if (at >= 0) at = writeUint(requestId, at);
  if (at < 0) return null;
  // A channel name is a str (fixstr below 32 bytes), a payload a bin.
  at = writeLength(name.length, at, 0xa0, 32, 0xd9, 0xda, 0xdb);
  frameBuffer.set(name, at);
  at = writeLength(payload.length, at + name.length, 0, 0, 0xc4, 0xc5, 0xc6);
  frameBuffer.set(payload, at);
  return frameBuffer.subarray(0, at + payload.length);
}

/** Where the last `readUint` or `readLength` ended (no array per field read). */
let readEnd = 0;

/** The big-endian unsigned integer of `width` bytes at `at` of `bytes` (at most 4). */
function bigEndian(bytes, at, width) {
  let value = 0;
  for (let i = 0; i < width; i++) value = value * 256 + bytes[at + i];
  return value;
}

/**
 * The unsigned integer at `at` of `bytes` (a number when safe, else a BigInt, as the generic
 * decoder reads it), its end in `readEnd`; `undefined` when it is not one.
 */
function readUint(bytes, at) {
  const marker = bytes[at];
  const width = marker < 0x80 ? 0 : marker === 0xcc ? 1 : marker === 0xcd ? 2 : marker === 0xce ? 4 : marker === 0xcf ? 8 : -1;
  if (width < 0 || at + 1 + width > bytes.length) return undefined;
  readEnd = at + 1 + width;
  if (width === 0) return marker;
  if (width < 8) return bigEndian(bytes, at + 1, width);
  const high = bigEndian(bytes, at + 1, 4);
  const low = bigEndian(bytes, at + 5, 4);
  // Below 2^53: a number.
  if (high < 0x200000) return high * 0x100000000 + low;
  return (BigInt(high) << 32n) | BigInt(low);
}

/**
 * The length of the str (`fix`: fixstr's marker base, below 32) or bin (`fix` -1) at `at` of
 * `bytes` (8-, 16- or 32-bit markers `marker8`...), the data's start in `readEnd`; -1 when it
 * is not one.
 */
function readLength(bytes, at, fix, marker8) {
  const marker = bytes[at];
  if (fix >= 0 && marker >= fix && marker < fix + 32) {
    readEnd = at + 1;
    return marker - fix;
  }
  const width = marker === marker8 ? 1 : marker === marker8 + 1 ? 2 : marker === marker8 + 2 ? 4 : -1;
  if (width < 0 || at + 1 + width > bytes.length) return -1;
  readEnd = at + 1 + width;
  return bigEndian(bytes, at + 1, width);
}

/**
 * The host's MESSAGE `[1, kind, status, origin, target, request id, channel, payload]` read
 * from `bytes` (its payload a view of them), as the generic decoder reads it; `null` when it
 * is not one, or not as the host writes them (the generic decoder then reads it, or says why
 * it cannot).
 */
function readMessage(bytes) {
  if (bytes.length < 10 || bytes[0] !== 0x98 || bytes[1] !== HOST_MESSAGE) return null;
  const kind = readUint(bytes, 2);
  const status = kind === undefined ? undefined : readUint(bytes, readEnd);
  const origin = status === undefined ? undefined : readUint(bytes, readEnd);
  const target = origin === undefined ? undefined : readUint(bytes, readEnd);
  const requestId = target === undefined ? undefined : readUint(bytes, readEnd);
  if (requestId === undefined) return null;
  // The channel: a str, in ASCII here.
  const length = readLength(bytes, readEnd, 0xa0, 0xd9);
  const start = readEnd;
  if (length < 0 || start + length > bytes.length) return null;
  let channel = "";
  for (let i = start; i < start + length; i++) {
    const byte = bytes[i];
    if (byte >= 0x80) return null;
    channel += String.fromCharCode(byte);
  }
  // The payload: a bin, to the end.
  const size = readLength(bytes, start + length, -1, 0xc4);
  if (size < 0 || readEnd + size !== bytes.length) return null;
  return [HOST_MESSAGE, kind, status, origin, target, requestId, channel, bytes.subarray(readEnd)];
}

/** Decodes one MessagePack value (an empty buffer is `undefined`). */
export function decodeValue(bytes) {
  if (bytes === undefined || bytes === null || bytes.length === 0) return undefined;
  const outer = foreignKeys;
  foreignKeys = null;
  try {
    const value = decoder.decode(bytes);
    return foreignKeys === null ? value : restore(value, foreignKeys);
  } finally {
    foreignKeys = outer;
  }
}

/** Turns the objects with stand-in keys into Maps (their string keys kept as strings). */
function restore(value, keys) {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = restore(value[i], keys);
    return value;
  }
  if (value === null || typeof value !== "object" || ArrayBuffer.isView(value)) return value;
  if (Object.getPrototypeOf(value) !== Object.prototype) return value;
  const symbols = Object.getOwnPropertySymbols(value);
  if (symbols.length === 0) {
    for (const key of Object.keys(value)) value[key] = restore(value[key], keys);
    return value;
  }
  if (symbols.every((symbol) => typeof keys.get(symbol) === "string")) {
    // Only string keys, `__proto__` among them: defined, so it is a key and not the prototype.
    const object = {};
    for (const key of Reflect.ownKeys(value)) {
      const name = typeof key === "symbol" ? keys.get(key) : key;
      Object.defineProperty(object, name, { value: restore(value[key], keys), enumerable: true, writable: true, configurable: true });
    }
    return object;
  }
  const map = new Map();
  for (const key of Reflect.ownKeys(value)) {
    map.set(typeof key === "symbol" ? keys.get(key) : key, restore(value[key], keys));
  }
  return map;
}

// --- Frames of the renderer socket (spec §3) ---------------------------------------------

/** Page → host tags. */
export const PAGE = Object.freeze({ HELLO: 0, MESSAGE: 1, COMPLETE: 2, LOG: 3 });
/** Host → page tags. */
export const HOST = Object.freeze({ WELCOME: 0, MESSAGE: 1, CONTROL: 2 });

const LEVELS = { error: 1, warn: 2, info: 3, debug: 4, trace: 5 };

/** The HELLO a page sends first. */
export function helloFrame(token) {
  return encodeValue([PAGE.HELLO, String(token)]);
}

function senderOf(peer) {
  if (peer === PEER_MAIN) return { kind: "main" };
  if (peer === PEER_HOST) return { kind: "host" };
  return { kind: "frame", frame: peer };
}

function describe(value) {
  if (value instanceof Error) return value.stack ?? `${value.name}: ${value.message}`;
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v)) ?? String(value);
  } catch {
    return String(value);
  }
}

function disposer(fn) {
  let done = false;
  const dispose = () => {
    if (done) return;
    done = true;
    fn();
  };
  dispose.dispose = dispose;
  return dispose;
}

function sameBytes(a, b) {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function toBytes(value) {
  if (value === undefined || value === null) return null;
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError("expected binary data");
}

function asNumber(value) {
  return typeof value === "bigint" && value >= SAFE_MIN && value <= SAFE_MAX ? Number(value) : value;
}

const DEFAULT_TIMEOUT = 30_000;
/** An invoke's options when it is given none (not an object per invoke). */
const NO_OPTIONS = Object.freeze({});
/**
 * How often a half's invoke timeouts are swept (as the Rust side's 10 ms sweep): one timer for
 * all the requests in flight rather than one each. A timeout passes in whole sweeps, never
 * sooner than asked, at most one sweep later.
 */
const SWEEP_MS = 10;
/** How long a store write waits for main to sequence it (`STORE_WRITE_TIMEOUT` in Rust). */
const STORE_WRITE_TIMEOUT = 30_000;
/** An open's failure when the half was closed before `activate` finished (Rust's words). */
const CLOSED_WHILE_ACTIVATING = "the half was closed while it activated";
/** The largest message a half may send: channel name and value, in bytes (`abi::MAX_MESSAGE`). */
export const MAX_MESSAGE = 16 << 20;
/** The largest store value, encoded (`extension_api::STORE_VALUE_LIMIT`). */
export const STORE_VALUE_LIMIT = 1 << 20;
const utf8 = new TextEncoder();

/** The longest log line sent, in bytes (as Rust's halves: `MAX_LOG_MESSAGE`). */
const MAX_LOG_MESSAGE = 64 << 10;

/** `text` cut to `limit` bytes of UTF-8 at a character's boundary, saying how long it was. */
function cut(text, limit) {
  const bytes = utf8.encode(text);
  if (bytes.length <= limit) return text;
  let end = limit;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return `${new TextDecoder().decode(bytes.subarray(0, end))}… (${bytes.length} bytes in all)`;
}

/** Whether a message with this channel and payload is within MAX_MESSAGE. */
function fits(channel, payload) {
  // A UTF-16 code unit is at most 3 bytes of UTF-8: most messages need no encoding to know.
  if (channel.length * 3 + payload.length <= MAX_MESSAGE) return true;
  return utf8.encode(channel).length + payload.length <= MAX_MESSAGE;
}

function overLimit(channel, payload) {
  return `the message is over the ${MAX_MESSAGE}-byte limit (its value and channel name together: ${utf8.encode(channel).length + payload.length} bytes)`;
}
/** setTimeout's largest delay; longer timeouts wait in steps. */
const MAX_DELAY = 2 ** 31 - 1;

/** A protocol violation by the host: the connection is ended. */
class Violation extends Error {}

/** A WebSocket close reason: at most 123 bytes of UTF-8 (`close` throws otherwise). */
function closeReason(text) {
  let reason = wellFormed(text);
  while (utf8.encode(reason).length > 123) reason = wellFormed(reason.slice(0, -1));
  return reason;
}

/**
 * The page's end of the renderer socket. `socket` is a WebSocket (or anything with `send`,
 * `close`, `addEventListener("message" | "close")`) whose HELLO was sent. `options`:
 * `entry` (the module to import on open, default "/index.js"), `importModule` (how, default
 * dynamic `import`), `onChange` (called after every message in or out, for a status line),
 * `sendCopies` (whether `socket.send` copies what it is given before it returns, so that the
 * client may reuse its buffer for the next message; by default, whether it is a WebSocket).
 */
export class Client {
  constructor(socket, options = {}) {
    this.socket = socket;
    this.entry = options.entry ?? "/index.js";
    this.importModule = options.importModule ?? ((url) => import(url));
    this.onChange = options.onChange ?? (() => {});
    // Whether `socket.send` copies what it is given before it returns, as a browser WebSocket
    // does: then MESSAGE frames are handed over in the one buffer the next one reuses; any
    // other socket (which may keep what it was sent) gets a copy of its own.
    this.sendCopies = options.sendCopies ?? (typeof WebSocket === "function" && socket instanceof WebSocket);
    this.frame = undefined;
    this.extension = undefined;
    this.state = "connecting";
    this.closeReason = undefined;
    this.messagesIn = 0;
    this.messagesOut = 0;
    // The replicas of the store and of the persisted tier.
    this.tiers = { store: new Tier("store"), storage: new Tier("storage") };
    // The running half, or null.
    this.half = null;
    this.module = null;
    this.nextRequest = 1;
    this.nextWrite = 1;
    if ("binaryType" in socket) socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => this.closed(event));
  }

  /** The store's replica (key → MessagePack bytes; null until seeded) and its sequence. */
  get replica() {
    return this.tiers.store.replica;
  }

  get seq() {
    return this.tiers.store.seq;
  }

  // --- Out -----------------------------------------------------------------------------

  sendFrame(array) {
    if (this.state === "lost") return false;
    this.socket.send(encodeValue(array));
    this.messagesOut++;
    this.onChange(this);
    return true;
  }

  sendMessage(kind, status, target, requestId, channel, payload) {
    if (this.state === "lost") return false;
    const frame = messageFrame(kind, status, target, requestId, channel, payload);
    if (frame === null) {
      // The payload may be a view of the encoder's buffer (an invoke's), which this encoding reuses.
      const own = payload instanceof Uint8Array ? payload.slice() : payload;
      return this.sendFrame([PAGE.MESSAGE, kind, status, target, requestId, channel, own]);
    }
    this.socket.send(this.sendCopies ? frame : frame.slice());
    this.messagesOut++;
    this.onChange(this);
    return true;
  }

  log(level, parts) {
    const text = parts.map(describe).join(" ");
    this.sendFrame([PAGE.LOG, LEVELS[level], cut(text, MAX_LOG_MESSAGE)]);
  }

  complete(completion, outcome) {
    this.sendFrame([PAGE.COMPLETE, completion, outcome]);
  }

  // --- In ------------------------------------------------------------------------------

  receive(data) {
    this.messagesIn++;
    try {
      if (typeof data === "string") throw new Violation("a text message on the renderer socket");
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : toBytes(data);
      let frame = readMessage(bytes);
      if (frame !== null) {
        this.message(frame);
        return;
      }
      try {
        frame = decodeValue(bytes);
      } catch (error) {
        throw new Violation(`an undecodable message: ${error.message}`);
      }
      if (!Array.isArray(frame) || frame.length === 0) throw new Violation("a message that is not a tagged array");
      switch (frame[0]) {
        case HOST.WELCOME:
          this.welcome(frame);
          break;
        case HOST.MESSAGE:
          this.message(frame);
          break;
        case HOST.CONTROL:
          this.control(frame);
          break;
        default:
          throw new Violation(`unknown tag ${String(frame[0])}`);
      }
    } catch (caught) {
      // Author code never throws through here (listeners, watchers and handlers are caught
      // where they run): whatever else failed is a part of the message the page cannot read.
      const error = caught instanceof Violation ? caught : new Violation(`an unreadable message: ${caught?.message ?? String(caught)}`);
      console.error(`extension host client: ${error.message}; closing the connection`);
      this.lose(`the host broke the protocol: ${error.message}`);
      this.socket.close(1008, closeReason(error.message));
    } finally {
      this.onChange(this);
    }
  }

  welcome(frame) {
    const info = frame[1];
    if (frame.length !== 2 || info === null || typeof info !== "object" || typeof info.extension !== "string") {
      throw new Violation("a malformed welcome");
    }
    if (this.frame !== undefined) throw new Violation("a second welcome");
    this.frame = asNumber(info.frame);
    this.extension = info.extension;
    this.state = "connected";
  }

  message(frame) {
    if (frame.length !== 8) throw new Violation(`a message of ${frame.length} fields`);
    const [, kind, status, origin, , requestId, channel, rawPayload] = frame;
    const payload = toBytes(rawPayload) ?? new Uint8Array(0);
    if (typeof channel !== "string") throw new Violation("a message whose channel is not a string");
    switch (kind) {
      case BROADCAST:
        this.half?.deliver(channel, payload, origin);
        break;
      case INVOKE:
        this.onInvoke(origin, requestId, channel, payload);
        break;
      case REPLY:
        this.half?.settle(requestId, status, payload);
        break;
      case CANCEL:
        this.half?.cancelRun(origin, requestId);
        break;
      case STORE_UPDATE:
        this.onStoreUpdate(this.tiers.store, payload);
        break;
      case STORE_REFUSAL:
        this.onStoreRefusal(this.tiers.store, status, payload);
        break;
      case STORAGE_UPDATE:
        this.onStoreUpdate(this.tiers.storage, payload);
        break;
      case STORAGE_REFUSAL:
        this.onStoreRefusal(this.tiers.storage, status, payload);
        break;
      default:
        throw new Violation(`a message of kind ${String(kind)}`);
    }
  }

  onInvoke(origin, requestId, channel, payload) {
    if (this.half) return this.half.run(origin, requestId, channel, payload);
    // No half running here: a request is never left unanswered.
    this.replyError(origin, requestId, "NoHandler", `no handler for \`${channel}\`: the renderer half is not running`);
  }

  replyError(target, requestId, kind, message, data = undefined) {
    let payload;
    try {
      payload = encodeValue({ message, data: data === undefined ? null : encodeValue(data) });
    } catch {
      payload = encodeValue({ message, data: null });
    }
    this.sendMessage(REPLY, errorCode(kind), target, requestId, "", payload);
  }

  control(frame) {
    if (frame.length !== 3 || !Array.isArray(frame[2])) throw new Violation("a malformed control");
    const [, completion, command] = frame;
    switch (command[0]) {
      case 0:
        return this.seed(completion, command);
      case 1:
        return this.open(completion);
      case 2:
        return this.close(completion, command[1]);
      case 3:
        return this.complete(completion, [4, this.inspect()]);
      case 4:
        return this.seedStorage(completion, command);
      default:
        return this.complete(completion, [1, `unknown control command ${String(command[0])}`]);
    }
  }

  // --- Store ---------------------------------------------------------------------------

  seed(completion, command) {
    const [, seq, values] = command;
    this.seedTier(this.tiers.store, seq, values);
    this.complete(completion, [0]);
  }

  /** `[4, seq, values, unavailable, value_limit, total_limit, stored_version]`. */
  seedStorage(completion, command) {
    if (command.length !== 7) throw new Violation("a malformed storage seed");
    const [, seq, values, unavailable, valueLimit, totalLimit, storedVersion] = command;
    if (unavailable !== null && typeof unavailable !== "string") throw new Violation("a storage seed's reason is not a string");
    if (storedVersion !== null && typeof storedVersion !== "string") throw new Violation("a storage seed's version is not a string");
    const tier = this.tiers.storage;
    tier.unavailable = unavailable;
    tier.valueLimit = Number(valueLimit) || STORE_VALUE_LIMIT;
    tier.totalLimit = Number(totalLimit);
    tier.storedVersion = storedVersion ?? undefined;
    this.seedTier(tier, seq, values);
    this.complete(completion, [0]);
  }

  seedTier(tier, seq, values) {
    if (values === null || typeof values !== "object") throw new Violation(`a ${tier.name} seed without values`);
    const entries = values instanceof Map ? [...values] : Object.entries(values);
    tier.replica = new Map();
    for (const [key, value] of entries) tier.replica.set(String(key), toBytes(value));
    tier.seq = Number(seq);
    this.drain(tier);
  }

  onStoreUpdate(tier, payload) {
    const update = decodeValue(payload);
    if (update === null || typeof update !== "object" || typeof update.key !== "string") {
      throw new Violation(`a malformed ${tier.name} update`);
    }
    tier.stash.set(Number(update.seq), update);
    this.drain(tier);
  }

  /** Applies every stashed update that follows the replica without a gap, in order. */
  drain(tier) {
    if (tier.replica === null) return;
    for (;;) {
      for (const seq of tier.stash.keys()) if (seq <= tier.seq) tier.stash.delete(seq);
      const update = tier.stash.get(tier.seq + 1);
      if (update === undefined) return;
      tier.stash.delete(tier.seq + 1);
      tier.seq += 1;
      const old = toBytes(update.old);
      const value = toBytes(update.new);
      if (value === null) tier.replica.delete(update.key);
      else tier.replica.set(update.key, value);
      this.half?.applied(tier, update, old, value);
    }
  }

  onStoreRefusal(tier, status, payload) {
    const refusal = decodeValue(payload);
    if (refusal === null || typeof refusal !== "object") throw new Violation(`a malformed ${tier.name} refusal`);
    this.half?.refused(tier, refusal, Number(status));
  }

  // --- Lifecycle -----------------------------------------------------------------------

  async open(completion) {
    if (this.half) return this.complete(completion, [1, "the renderer half is already open"]);
    const half = new Half(this);
    this.half = half;
    try {
      this.module ??= await this.importModule(this.entry);
    } catch (error) {
      this.module = null;
      half.shut("Deactivated");
      if (this.half === half) this.half = null;
      return this.complete(completion, [1, `cannot import ${this.entry}: ${describe(error)}`]);
    }
    // Closed while the module was imported: as Rust's runtime, a half closed while it
    // activated keeps nothing, so `activate` does not run at all.
    if (!half.open) return this.complete(completion, [1, CLOSED_WHILE_ACTIVATING]);
    if (typeof this.module.activate !== "function") {
      half.shut("Deactivated");
      if (this.half === half) this.half = null;
      return this.complete(completion, [1, `${this.entry} exports no activate function`]);
    }
    try {
      await this.module.activate(half.ipc);
    } catch (error) {
      if (!half.open) return this.complete(completion, [1, CLOSED_WHILE_ACTIVATING]);
      half.shut("Deactivated");
      if (this.half === half) this.half = null;
      return this.complete(completion, [2, describe(error)]);
    }
    if (!half.open) return this.complete(completion, [1, CLOSED_WHILE_ACTIVATING]);
    half.activated = true;
    this.state = "running";
    this.complete(completion, [0]);
  }

  async close(completion, timeoutMs) {
    const half = this.half;
    if (!half) return this.complete(completion, [0]);
    let outcome = [0];
    // As Rust's deactivation: what the half waits on and serves ends now, before `deactivate`
    // (the host failed those requests already, and routes nothing to a closing frame).
    half.endRequests("FrameClosed", "the frame closed before the reply");
    // Only an activated half has something to undo (Rust: no deactivator before `activate`
    // returned); one closed while `activate` runs is shut without it.
    const deactivate = half.activated ? this.module?.deactivate : undefined;
    if (typeof deactivate === "function") {
      const limit = Number(timeoutMs);
      let timer;
      const expired = new Promise((resolve) => {
        // u64::MAX is the host's "no limit"; a longer wait than setTimeout's is armed in steps.
        if (!Number.isFinite(limit) || limit >= 2 ** 64 - 1) return;
        const arm = (left) => {
          timer = setTimeout(() => (left > MAX_DELAY ? arm(left - MAX_DELAY) : resolve("timeout")), Math.min(left, MAX_DELAY));
        };
        arm(limit);
      });
      try {
        const done = Promise.resolve()
          .then(() => deactivate())
          .then(() => "done");
        if ((await Promise.race([done, expired])) === "timeout") outcome = [3, timeoutMs];
      } catch (error) {
        outcome = [2, describe(error)];
      } finally {
        clearTimeout(timer);
      }
    }
    // What still waits fails as a closing frame's requests do on the Rust side.
    half.shut("FrameClosed");
    if (this.half === half) this.half = null;
    // Lost meanwhile: it stays so (and nothing more is sent).
    if (this.state !== "lost") this.state = "closed";
    this.complete(completion, outcome);
  }

  inspect() {
    const half = this.half;
    // A Map (it encodes as a map of its keys), so that no channel name is an object's property.
    const listeners = new Map();
    for (const [channel, set] of half?.listeners ?? []) if (set.size > 0) listeners.set(channel, set.size);
    let watchers = 0;
    for (const map of [half?.watchers, half?.storageWatchers]) for (const set of map?.values() ?? []) watchers += set.size;
    return {
      listeners,
      handlers: [...(half?.handlers.keys() ?? [])].sort(),
      pending_requests: half?.pending.size ?? 0,
      running_handlers: half?.running.size ?? 0,
      store_keys: this.replica?.size ?? 0,
      store_seq: this.seq,
      watchers,
      storage_keys: this.tiers.storage.replica?.size ?? 0,
      storage_seq: this.tiers.storage.seq,
    };
  }

  closed(event) {
    this.lose(`the connection to the host closed (${event?.code ?? "no code"}${event?.reason ? `: ${event.reason}` : ""})`);
  }

  lose(reason) {
    if (this.state === "lost") return;
    this.state = "lost";
    this.closeReason = reason;
    const half = this.half;
    this.half = null;
    half?.shut("ConnectionLost", reason);
    this.onChange(this);
  }
}

/**
 * One activation of the renderer half: what `ipc` registers, its requests in flight. Shut
 * when the half closes (or the connection is lost): everything registered is dropped.
 */
class Half {
  constructor(client) {
    this.client = client;
    this.open = true;
    // `activate` returned: `deactivate` runs when it closes.
    this.activated = false;
    this.listeners = new Map();
    this.handlers = new Map();
    this.watchers = new Map();
    this.storageWatchers = new Map();
    this.pending = new Map();
    // The timeout sweep: its timer while a timed request is in flight, the sweeps so far (a
    // request's `expires` counts in them), and the timed requests in flight.
    this.sweep = undefined;
    this.sweeps = 0;
    this.timed = 0;
    this.running = new Map();
    this.writes = new Map();
    this.ipc = makeIpc(this);
  }

  checkOpen(what) {
    if (!this.open) throw new Error(`ipc.${what}: the renderer half of ${this.client.extension} has closed`);
  }

  // --- Broadcasts ----------------------------------------------------------------------

  deliver(channel, payload, origin) {
    const listeners = this.listeners.get(channel);
    if (!listeners || listeners.size === 0) return;
    let value;
    try {
      value = decodeValue(payload);
    } catch (error) {
      return this.client.log("warn", [`a broadcast on \`${channel}\` did not decode: ${error.message}`]);
    }
    const sender = senderOf(origin);
    for (const [index, fn] of [...listeners].entries()) {
      try {
        // Each listener its own value (as each Rust listener decodes its own): one may change it.
        fn(index === 0 ? value : decodeValue(payload), { ...sender });
      } catch (error) {
        this.client.log("error", [`a listener of \`${channel}\` threw:`, error]);
      }
    }
  }

  // --- Requests this half made ---------------------------------------------------------

  invoke(channel, value, options) {
    options ??= NO_OPTIONS;
    if (!this.open) {
      return Promise.reject(new InvokeError("Deactivated", `invoke on \`${channel}\`: the renderer half has closed`));
    }
    if (typeof channel !== "string") return Promise.reject(new TypeError("the channel must be a string"));
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    if (typeof timeout !== "number" || Number.isNaN(timeout) || timeout < 0) {
      return Promise.reject(new TypeError(`the timeout must be a number of milliseconds, not ${String(timeout)}`));
    }
    const signal = options.signal ?? undefined;
    if (signal !== undefined && typeof signal?.addEventListener !== "function") {
      return Promise.reject(new TypeError("the signal must be an AbortSignal"));
    }
    if (signal?.aborted) {
      return Promise.reject(
        new InvokeError("Timeout", `invoke on \`${channel}\` was cancelled before it was sent`, undefined, {
          cause: signal.reason,
        }),
      );
    }
    // Copied into its message below, before anything else is encoded.
    let payload;
    try {
      payload = encodeValueShared(value);
    } catch (error) {
      return Promise.reject(new InvokeError("Serialize", `invoke on \`${channel}\`: ${error.message}`));
    }
    if (!fits(channel, payload)) {
      return Promise.reject(new InvokeError("TooLarge", `invoke on \`${channel}\`: ${overLimit(channel, payload)}`));
    }
    const id = this.client.nextRequest++;
    return new Promise((resolve, reject) => {
      const request = { channel, resolve, reject, timeout, expires: Infinity, signal, onAbort: undefined };
      if (Number.isFinite(timeout)) {
        // Whole sweeps from now: one more when the sweep runs already (the next one comes
        // sooner than a whole sweep from now).
        request.expires = this.sweeps + Math.ceil(timeout / SWEEP_MS) + (this.sweep === undefined ? 0 : 1);
        this.timed++;
        if (this.sweep === undefined) this.armSweep();
      }
      this.pending.set(id, request);
      if (signal) {
        request.onAbort = () =>
          this.giveUp(id, new InvokeError("Timeout", `invoke on \`${channel}\` was cancelled by its AbortSignal`, undefined, {
            cause: signal.reason,
          }));
        signal.addEventListener("abort", request.onAbort, { once: true });
      }
      if (!this.client.sendMessage(INVOKE, 0, PEER_MAIN, id, channel, payload)) {
        this.forget(id);
        reject(new InvokeError("ConnectionLost", `invoke on \`${channel}\`: ${this.client.closeReason}`));
      }
    });
  }

  /** Request `id` is given up on: its handler's run stops, as a Rust invoker's does. */
  giveUp(id, error) {
    const request = this.forget(id);
    if (!request) return;
    this.client.sendMessage(CANCEL, 0, PEER_MAIN, id, "", new Uint8Array(0));
    request.reject(error);
  }

  armSweep() {
    this.sweep = setTimeout(() => this.sweepTimeouts(), SWEEP_MS);
  }

  /** Fails the requests whose timeout passed (in the order they were made); again in a sweep while any is timed. */
  sweepTimeouts() {
    this.sweep = undefined;
    this.sweeps++;
    for (const [id, request] of this.pending) {
      if (request.expires <= this.sweeps) {
        this.giveUp(id, new InvokeError("Timeout", `invoke on \`${request.channel}\`: no reply within ${request.timeout} ms`));
      }
    }
    if (this.timed > 0) this.armSweep();
  }

  forget(id) {
    const request = this.pending.get(id);
    if (!request) return undefined;
    this.pending.delete(id);
    if (request.expires !== Infinity) this.timed--;
    if (request.onAbort) request.signal.removeEventListener("abort", request.onAbort);
    return request;
  }

  settle(requestId, status, payload) {
    const request = this.forget(asNumber(requestId));
    if (!request) return;
    const { channel } = request;
    if (Number(status) === 0) {
      try {
        request.resolve(decodeValue(payload));
      } catch (error) {
        request.reject(new InvokeError("Deserialize", `the reply on \`${channel}\` did not decode: ${error.message}`));
      }
      return;
    }
    const kind = kindOfStatus(status);
    let error;
    try {
      const body = decodeValue(payload);
      const message = typeof body?.message === "string" ? body.message : "(no message)";
      const raw = toBytes(body?.data);
      error = new InvokeError(kind, message, raw === null ? undefined : decodeValue(raw));
    } catch (cause) {
      error = new InvokeError(kind, `(undecodable error payload: ${cause.message})`);
    }
    error.channel = channel;
    request.reject(error);
  }

  // --- Requests main made to this half -------------------------------------------------

  async run(origin, requestId, channel, payload) {
    const client = this.client;
    const fn = this.handlers.get(channel);
    if (!fn) {
      return client.replyError(origin, requestId, "NoHandler", `no handler for \`${channel}\` in frame ${client.frame}`);
    }
    let value;
    try {
      value = decodeValue(payload);
    } catch (error) {
      return client.replyError(origin, requestId, "Deserialize", `the request on \`${channel}\` did not decode: ${error.message}`);
    }
    const key = `${origin}:${requestId}`;
    const controller = new AbortController();
    this.running.set(key, controller);
    let status = 0;
    let reply;
    try {
      const result = await fn(value, senderOf(origin), controller.signal);
      try {
        reply = encodeValue(result);
      } catch (error) {
        status = errorCode("Serialize");
        reply = encodeValue({ message: `the reply on \`${channel}\` is not encodable: ${error.message}`, data: null });
      }
    } catch (error) {
      status = errorCode("Handler");
      const message = error instanceof Error ? error.message : describe(error);
      let data = null;
      if (error !== null && typeof error === "object" && error.data !== undefined) {
        try {
          data = encodeValue(error.data);
        } catch {
          data = null;
        }
      }
      reply = encodeValue({ message, data });
    }
    if (status === 0 && !fits("", reply)) {
      client.log("warn", [`the reply of the handler of \`${channel}\` was not sent: ${overLimit("", reply)}`]);
      status = errorCode("TooLarge");
      reply = encodeValue({ message: `the handler's reply on \`${channel}\`: ${overLimit("", reply)}`, data: null });
    }
    // Cancelled (or the half shut) meanwhile: nobody waits for the answer.
    if (this.running.get(key) !== controller) return;
    this.running.delete(key);
    client.sendMessage(REPLY, status, origin, requestId, "", reply);
  }

  cancelRun(origin, requestId) {
    const key = `${origin}:${requestId}`;
    const controller = this.running.get(key);
    if (!controller) return;
    this.running.delete(key);
    controller.abort(new Error("the invoker cancelled the request"));
  }

  // --- Store ---------------------------------------------------------------------------

  watchersOf(tier) {
    return tier.name === "store" ? this.watchers : this.storageWatchers;
  }

  write(tier, key, value) {
    const name = tier.name;
    this.checkOpen(`${name}.set`);
    if (typeof key !== "string") throw new TypeError(`a ${name} key must be a string`);
    if (tier.unavailable) {
      return Promise.reject(unavailable(key, tier.unavailable));
    }
    const bytes = value === undefined ? null : encodeValue(value);
    const limit = tier.valueLimit;
    if (bytes !== null && bytes.length > limit) {
      return Promise.reject(
        new StoreError(key, "TooLarge", `${name} write of \`${key}\` refused: the value is ${bytes.length} bytes, over the ${limit}-byte limit`, {
          size: bytes.length,
          max: limit,
        }),
      );
    }
    const writeId = this.client.nextWrite++;
    return new Promise((resolve, reject) => {
      // Settling it (applied, refused, shut) stops its timer.
      const write = {
        tier,
        key,
        timer: undefined,
        resolve: () => (clearTimeout(write.timer), resolve()),
        reject: (error) => (clearTimeout(write.timer), reject(error)),
      };
      this.writes.set(writeId, write);
      // As a Rust half's `set`: a write main never sequences (lost with main, say) times out.
      write.timer = setTimeout(() => {
        if (this.writes.get(writeId) !== write) return;
        this.writes.delete(writeId);
        reject(new StoreError(key, "TimedOut", `${name} write of \`${key}\`: main did not sequence it within ${STORE_WRITE_TIMEOUT} ms`));
      }, STORE_WRITE_TIMEOUT);
      const payload = encodeValue({ write_id: writeId, key, value: bytes });
      const kind = name === "store" ? STORE_WRITE : STORAGE_WRITE;
      if (!this.client.sendMessage(kind, 0, PEER_MAIN, 0, "", payload)) {
        this.writes.delete(writeId);
        write.reject(new StoreError(key, "ConnectionLost", `${name} write of \`${key}\`: ${this.client.closeReason}`));
      }
    });
  }

  applied(tier, update, old, value) {
    if (asNumber(update.writer) === this.client.frame) {
      const write = this.writes.get(asNumber(update.write_id));
      if (write?.tier === tier) {
        this.writes.delete(asNumber(update.write_id));
        write.resolve();
      }
    }
    if (sameBytes(old, value)) return;
    const fns = [...(this.watchersOf(tier).get(update.key) ?? [])];
    if (fns.length === 0) return;
    // Each watcher its own change: one may change it.
    const change = () => ({
      key: update.key,
      old: old === null ? undefined : decodeValue(old),
      new: value === null ? undefined : decodeValue(value),
      writer: senderOf(asNumber(update.writer)),
      seq: asNumber(update.seq),
    });
    for (const fn of fns) {
      try {
        fn(change());
      } catch (error) {
        this.client.log("error", [`a watcher of ${tier.name} key \`${update.key}\` threw:`, error]);
      }
    }
  }

  /** Main refused the write (status 0), or the host did not route it (the route's status). */
  refused(tier, refusal, status = 0) {
    const id = asNumber(refusal.write_id);
    const write = this.writes.get(id);
    if (write?.tier !== tier) return;
    this.writes.delete(id);
    const outcome = refusal.outcome;
    // `wire::StorageOutcome`: a unit variant is its name, the others a map of one entry.
    const [reason, details] =
      typeof outcome === "string" ? [outcome, {}] : Object.entries(outcome ?? { Refused: {} })[0] ?? ["Refused", {}];
    const what = {
      TooLarge: `the value is ${details.size} bytes, over the ${details.max}-byte limit`,
      Full: `the ${tier.name === "store" ? "store" : "persisted storage"} would hold ${details.size} bytes, over its ${details.max}-byte limit`,
      Overloaded: "main is overloaded",
      Unavailable: details.reason,
    }[reason];
    const detail = details && typeof details === "object" ? details : {};
    // Not sent to main: the frame closing (NO_SUCH_PEER) or the extension (any other status
    // but BUSY and TOO_LARGE, which the outcome names), as a Rust half's `set` says.
    const why = status === 5 ? "FrameClosed" : status !== 0 && status !== 6 && status !== 7 ? "Deactivated" : reason;
    write.reject(new StoreError(write.key, why, `${tier.name} write of \`${write.key}\` refused: ${what ?? reason}`, detail));
  }

  // --- Shutting ------------------------------------------------------------------------

  /** Fails the invokes this half waits on with `kind`, and stops the handlers it runs. */
  endRequests(kind, why) {
    for (const id of [...this.pending.keys()]) {
      const request = this.forget(id);
      request.reject(new InvokeError(kind, `invoke on \`${request.channel}\`: ${why}`));
    }
    clearTimeout(this.sweep);
    this.sweep = undefined;
    for (const [, controller] of this.running) controller.abort(new Error(why));
    this.running.clear();
  }

  /** Drops everything registered and fails what waits: `kind` for invokes. */
  shut(kind, reason = undefined) {
    if (!this.open) return;
    this.open = false;
    const why = reason ?? "the renderer half closed";
    this.endRequests(kind, why);
    for (const [, write] of this.writes) {
      write.reject(new StoreError(write.key, kind, `${write.tier.name} write of \`${write.key}\`: ${why}`));
    }
    this.writes.clear();
    this.listeners.clear();
    this.handlers.clear();
    this.watchers.clear();
    this.storageWatchers.clear();
  }
}

function register(map, key, fn) {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  // The same function twice is two registrations, each with its disposer.
  const entry = (...args) => fn(...args);
  set.add(entry);
  return () => {
    set.delete(entry);
    if (set.size === 0 && map.get(key) === set) map.delete(key);
  };
}

/** The author's `ipc` for one activation (client.d.ts documents it). */
function makeIpc(half) {
  const client = half.client;
  const store = tierApi(half, client.tiers.store);
  const storage = tierApi(half, client.tiers.storage);
  const log = Object.freeze(
    Object.fromEntries(["error", "warn", "info", "debug", "trace"].map((level) => [level, (...parts) => client.log(level, parts)])),
  );
  return Object.freeze({
    get frame() {
      return client.frame;
    },
    get extension() {
      return client.extension;
    },
    listen(channel, fn) {
      half.checkOpen("listen");
      if (typeof channel !== "string") throw new TypeError("the channel must be a string");
      if (typeof fn !== "function") throw new TypeError("listen needs a function");
      return disposer(register(half.listeners, channel, fn));
    },
    broadcast(channel, value) {
      half.checkOpen("broadcast");
      if (typeof channel !== "string") throw new TypeError("the channel must be a string");
      const payload = encodeValue(value);
      if (!fits(channel, payload)) throw new RangeError(`broadcast on \`${channel}\`: ${overLimit(channel, payload)}`);
      client.sendMessage(BROADCAST, 0, PEER_ALL, 0, channel, payload);
    },
    invoke(channel, value, options) {
      return half.invoke(channel, value, options);
    },
    handle(channel, fn) {
      half.checkOpen("handle");
      if (typeof channel !== "string") throw new TypeError("the channel must be a string");
      if (typeof fn !== "function") throw new TypeError("handle needs a function");
      if (half.handlers.has(channel)) {
        throw new Error(`channel \`${channel}\` already has a handler; dispose it before registering another`);
      }
      half.handlers.set(channel, fn);
      return disposer(() => {
        if (half.handlers.get(channel) === fn) half.handlers.delete(channel);
      });
    },
    exposed(name) {
      if (typeof name !== "string" || name.length === 0) throw new TypeError("exposed needs the trait's name");
      return new Proxy(Object.freeze({}), {
        get(_, method) {
          if (typeof method !== "string" || method === "then") return undefined;
          // Arguments travel as the Rust side's tuple: none is `()` (nil), else an array.
          return (...args) => half.invoke(`expose:${name}.${method}`, args.length === 0 ? null : args);
        },
      });
    },
    store,
    storage,
    log,
  });
}

/** The `ipc.store` or `ipc.storage` of one activation: the same shape for both tiers. */
function tierApi(half, tier) {
  const name = tier.name;
  const replica = (key) => {
    // As Rust's `get`: the persisted tier this activation could not open fails every read.
    if (tier.unavailable) throw unavailable(key, tier.unavailable);
    return tier.replica;
  };
  const api = {
    get(key) {
      const bytes = replica(key)?.get(key);
      return bytes === undefined || bytes === null ? undefined : decodeValue(bytes);
    },
    has(key) {
      return replica(key)?.has(key) ?? false;
    },
    keys() {
      return [...(tier.replica?.keys() ?? [])].sort();
    },
    set(key, value) {
      try {
        if (value === undefined) throw new TypeError(`${name}.set needs a value: use ${name}.delete to remove a key`);
        return half.write(tier, key, value);
      } catch (error) {
        return Promise.reject(error);
      }
    },
    delete(key) {
      try {
        return half.write(tier, key, undefined);
      } catch (error) {
        return Promise.reject(error);
      }
    },
    watch(key, fn) {
      half.checkOpen(`${name}.watch`);
      if (typeof fn !== "function") throw new TypeError(`${name}.watch needs a function`);
      return disposer(register(half.watchersOf(tier), key, fn));
    },
  };
  if (name === "storage") {
    Object.defineProperty(api, "storedVersion", {
      // The extension's version that last ran with this data (undefined for new data).
      get: () => tier.storedVersion,
      enumerable: true,
    });
  }
  return Object.freeze(api);
}

/** The persisted tier cannot be used in this activation (Rust's `StoreError::Unavailable`). */
function unavailable(key, reason) {
  return new StoreError(key, "Unavailable", `the persisted storage is unavailable (\`${key}\`): ${reason}`);
}

/** One replica the page holds: the store's or the persisted tier's. */
class Tier {
  constructor(name) {
    this.name = name;
    // key → MessagePack bytes; null until seeded.
    this.replica = null;
    this.seq = 0;
    // Updates that came before the ones they follow.
    this.stash = new Map();
    // The persisted tier's: why it cannot be used this activation, its limits, the version.
    this.unavailable = null;
    this.valueLimit = STORE_VALUE_LIMIT;
    this.totalLimit = undefined;
    this.storedVersion = undefined;
  }
}
