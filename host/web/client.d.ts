// Types of the extension host's JavaScript client (`/.host/client.js`), for authors of web
// renderer halves. A web renderer's `index.js` is an ES module:
//
//   /** @param {import("./client").Ipc} ipc */
//   export async function activate(ipc) { ... }
//   export async function deactivate() { ... }   // optional
//
// The host serves the module, the client and its MessagePack library from the extension's own
// origin; the page's bootstrap connects, seeds the store and the persisted tier, then imports
// `/index.js` once and calls `activate(ipc)`.

/**
 * Undoes a registration. Calling it (or its `dispose`) twice is a no-op. Everything
 * registered through `ipc` is also undone when the half closes, after `deactivate`.
 */
export type Disposer = (() => void) & { dispose(): void };

/**
 * Who sent a broadcast, a request or a store write: main, another frame's renderer half, or
 * the host itself acting as main (an embedding application's `Host::invoke_frame`, say).
 */
export type Sender = { kind: "main" } | { kind: "frame"; frame: number } | { kind: "host" };

/**
 * A value that crosses as MessagePack (`@msgpack/msgpack`, extended):
 * - integers: `number` when safe, `bigint` beyond 2^53 (a `bigint` encodes as int64/uint64;
 *   one in the safe range encodes as the smallest integer); other numbers are float64;
 * - `Uint8Array` (any typed array when sending) is MessagePack binary (`Vec<u8>` with
 *   `serde_bytes`, `ByteBuf`);
 * - a string is sent as UTF-8, a lone surrogate as U+FFFD (as `TextEncoder` does: Rust's
 *   strings are UTF-8);
 * - a map whose keys are all strings is a plain object (a Rust struct or `HashMap<String, _>`;
 *   a `"__proto__"` key is an own property of it, never its prototype);
 *   one with any other key decodes to a `Map`, and a `Map` encodes with its keys as they are
 *   (integer keys stay integers); in a mixed map, keys that look like integers come first;
 * - `null` and `undefined` are nil (a Rust `None` or `()`);
 * - a `Date` is the MessagePack timestamp extension, which no Rust type of this project reads:
 *   send a number (milliseconds) instead.
 * Functions, symbols and `Set`s are not values: sending one throws a `TypeError`.
 */
export type Value = unknown;

/** What `invoke` takes besides the channel and the value. */
export interface InvokeOptions {
  /**
   * Milliseconds to wait for the reply; 30000 by default; `Infinity` waits for ever. When it
   * passes, the request is cancelled on the handling side and the promise rejects with an
   * `InvokeError` of kind `Timeout`. Timeouts are checked every 10 ms (one timer for all the
   * half's requests, as in Rust): a request times out between its timeout and 10 ms later.
   */
  timeout?: number;
  /**
   * Aborting it cancels the request on the handling side (its handler's own signal fires) and
   * rejects with an `InvokeError` of kind `Timeout` whose `cause` is `signal.reason`: as in
   * Rust, where an invoker gives up on a request only when its timeout passes (or by dropping
   * it). An already aborted signal rejects at once and sends nothing.
   */
  signal?: AbortSignal;
}

/** A store change, as a watcher sees it (after the replica applied it). */
export interface StoreChange {
  key: string;
  /** The value before; `undefined` when the key was absent. */
  old: Value;
  /** The value after; `undefined` when the write deleted the key. */
  new: Value;
  /** The half that made the write. */
  writer: Sender;
  /** Main's sequence number of the write. */
  seq: number;
}

/**
 * The extension's store as this frame's replica holds it: seeded before `activate` runs, then
 * kept in main's order. `ipc.storage`, the persisted tier, has the same shape: see `Storage`.
 */
export interface Store {
  /** The value of `key` (decoded afresh at each call), or `undefined`. Synchronous. */
  get(key: string): Value;
  /** Whether `key` has a value. */
  has(key: string): boolean;
  /** The keys, sorted. */
  keys(): string[];
  /**
   * Writes `key` through main, which sequences every write. Resolves once main has sequenced
   * it and this replica applied it (so `get` returns it, and every watcher has seen it).
   * Rejects with a `StoreError` when main refuses it (too large, store full), when the value is
   * over `STORE_VALUE_LIMIT` (refused here, before sending), when the half closes first, at
   * once when the host cannot take it to main (the frame closing: a `set` in `deactivate`
   * rejects `FrameClosed`; the extension deactivating; main overloaded), when main has not
   * sequenced it within 30 s (`TimedOut`, as in Rust), or when the connection is lost;
   * rejects with a `TypeError` for a value that is not encodable or `undefined` (use `delete`).
   */
  set(key: string, value: Value): Promise<void>;
  /** Deletes `key` through main; resolves as `set` does. */
  delete(key: string): Promise<void>;
  /**
   * Calls `fn` for each change of `key` (not for a write of the same value); each watcher gets
   * its own `StoreChange`.
   */
  watch(key: string, fn: (change: StoreChange) => void): Disposer;
}

/**
 * The persisted tier (Rust's `Renderer::storage()`): kept by the host in the extension's data
 * directory across activations and host restarts, replicated like the store (seeded before
 * `activate` runs, so `get` is synchronous from the first line; every write from main and from
 * every frame, Rust or web, applied in main's order). The differences from `Store`:
 *
 * - `set` / `delete` resolve only once the host has committed and synced the write (in a group
 *   commit with the extension's other writers) and this replica applied it; the replicas hold
 *   durable writes only. They reject with a `StoreError` as `Store`'s do, with the host's
 *   refusals: `TooLarge` (over the host's value limit, 1 MiB by default, checked here first),
 *   `Full` (over the extension's total, 8 MiB by default), `Unavailable` (the database could
 *   not be opened or a commit failed: `message` says why, naming the file), `Overloaded`.
 * - When the tier is unavailable this activation (a damaged or locked file), `get` and `has`
 *   throw that `StoreError` (`Unavailable`) and `set` / `delete` reject with it, sending
 *   nothing: as Rust's `get` and `set` fail.
 */
export interface Storage extends Store {
  /** The extension's version that last ran with this data (`undefined` for new data). */
  readonly storedVersion: string | undefined;
}

/**
 * Lines for the host's log, attributed to the extension. Parts are joined with spaces; a line
 * over 64 KiB (UTF-8) is cut, saying how long it was, as a Rust half's.
 */
export interface Log {
  error(...parts: unknown[]): void;
  warn(...parts: unknown[]): void;
  info(...parts: unknown[]): void;
  debug(...parts: unknown[]): void;
  trace(...parts: unknown[]): void;
}

/** An exposed trait's functions: `ipc.exposed("Logger").log("x")`. */
export type Exposed = { readonly [fn: string]: (...args: Value[]) => Promise<Value> };

/** What a web renderer half gets in `activate(ipc)`: its end of the extension's namespace. */
export interface Ipc {
  /** This frame's id (as `Main::frames()` lists it). */
  readonly frame: number;
  /** The extension's name. */
  readonly extension: string;
  /**
   * Calls `fn` with each broadcast on `channel` (from main, another frame, or this one) and its
   * sender (each listener gets its own decoded value). A listener that throws is logged; the
   * others still run.
   */
  listen(channel: string, fn: (value: Value, sender: Sender) => void): Disposer;
  /**
   * Sends `value` to every listener of `channel` in every half, this one included, in the
   * order broadcasts are made. Throws `TypeError` if the value is not encodable, `RangeError`
   * if it is over `MAX_MESSAGE` with the channel name; throws `Error` after the half closed.
   */
  broadcast(channel: string, value?: Value): void;
  /**
   * Asks main's handler of `channel`. Resolves with its value; rejects with an `InvokeError`
   * (its `kind` says why: `NoHandler` when main has no handler, `Handler` with the handler's
   * error as `message` and `data`, `Timeout`, `Deactivated` after the half closed,
   * `FrameClosed` when it closes first, `ConnectionLost`, `TooLarge` over `MAX_MESSAGE`
   * (refused before it is sent), `Serialize` for a value that is not encodable, ...).
   */
  invoke(channel: string, value?: Value, options?: InvokeOptions): Promise<Value>;
  /**
   * Answers main's requests on `channel` (`Main::invoke_frame`) with what `fn` returns or
   * resolves to. A throw answers `Handler` with the error's `message` (and its `data`
   * property, if any, as the error's data); a channel without a handler is answered
   * `NoHandler`. `signal` fires when main cancels the request, or when the half starts closing
   * (before `deactivate` runs); its answer is then dropped.
   * A second handler on a channel throws `Error` until the first is disposed.
   */
  handle(
    channel: string,
    fn: (value: Value, sender: Sender, signal: AbortSignal) => Value | Promise<Value>,
  ): Disposer;
  /**
   * Main's exposed functions of trait `name` (Rust `#[exposed]`): `exposed("Logger").log("x")`
   * invokes `expose:Logger.log` with the arguments as the trait method's tuple. A function
   * that is not exposed rejects with `NoHandler`; it never resolves to a default.
   */
  exposed(name: string): Exposed;
  readonly store: Store;
  /** The persisted tier: the store's shape, written durably by the host. */
  readonly storage: Storage;
  readonly log: Log;
}

/** Every way an invoke can fail (the Rust `InvokeErrorKind`s). */
export type InvokeErrorKind =
  | "NoHandler"
  | "Handler"
  | "Panicked"
  | "Timeout"
  | "Deactivated"
  | "FrameClosed"
  | "ConnectionLost"
  | "Serialize"
  | "Deserialize"
  | "Overloaded"
  | "TooLarge";

/** Why an `invoke` did not produce the handler's value. */
export class InvokeError extends Error {
  readonly name: "InvokeError";
  readonly kind: InvokeErrorKind;
  /** For `Handler`: the handler's error value, decoded; `undefined` when none. */
  readonly data: Value;
  /** The channel invoked (set on errors that came back in a reply). */
  channel?: string;
  constructor(kind: InvokeErrorKind, message: string, data?: Value, options?: { cause?: unknown });
}

/** Why a write of the store or the persisted tier was not made, or (`Unavailable`) read. */
export class StoreError extends Error {
  readonly name: "StoreError";
  /** The key written. */
  readonly key: string;
  /**
   * Main's or the host's refusal (`TooLarge`, `Full`, `Overloaded`, `Unavailable`), or why it was never
   * sequenced here (`FrameClosed`: the half or its frame closed first; `Deactivated`: the
   * extension is deactivating; `ConnectionLost`), or `TimedOut`: main did not sequence it
   * within 30 s (it may still be applied later, as in Rust).
   */
  readonly reason: string;
  /** For `TooLarge` and `Full`: the size and the limit, in bytes. */
  readonly size?: number;
  readonly max?: number;
}

/** The largest message a half may send, channel name and encoded value together (16 MiB). */
export const MAX_MESSAGE: number;
/** The largest encoded store value (1 MiB); a larger `set` rejects `TooLarge` before sending. */
export const STORE_VALUE_LIMIT: number;

/** Encodes a value as the client does; throws `TypeError` when it cannot. */
export function encodeValue(value: Value): Uint8Array;
/** Decodes a value as the client does (an empty buffer is `undefined`). */
export function decodeValue(bytes: Uint8Array): Value;

/** The error kinds in the order of their reply codes (100 + index). */
export const ERROR_KINDS: readonly InvokeErrorKind[];
/** The status an error reply of `kind` carries. */
export function errorCode(kind: InvokeErrorKind): number;
/** The kind a reply's non-zero status stands for. */
export function kindOfStatus(status: number): InvokeErrorKind;

/** The renderer socket's first message: `[0, token]`. */
export function helloFrame(token: string): Uint8Array;

/** What a renderer socket needs (a browser `WebSocket` has it). */
export interface SocketLike {
  binaryType?: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "message", fn: (event: { data: ArrayBuffer | Uint8Array | string }) => void): void;
  addEventListener(type: "close", fn: (event: { code?: number; reason?: string }) => void): void;
}

/**
 * The page's end of the renderer socket, as the bootstrap builds it (an application serving its
 * own renderer document can too): give it a socket whose HELLO was sent, and it does the rest.
 */
export class Client {
  constructor(
    socket: SocketLike,
    options?: {
      /** The module `open` imports once; "/index.js" by default. */
      entry?: string;
      /** How it is imported; dynamic `import()` by default. */
      importModule?: (url: string) => Promise<{ activate?: (ipc: Ipc) => unknown; deactivate?: () => unknown }>;
      /** Called after each message in or out (for a status line). */
      onChange?: (client: Client) => void;
      /**
       * Whether `socket.send` copies what it is given before it returns, as a browser
       * `WebSocket` does (then the client reuses one buffer for its messages); by default,
       * whether `socket` is a `WebSocket`. Any other socket is given bytes of their own.
       */
      sendCopies?: boolean;
    },
  );
  readonly frame: number | undefined;
  readonly extension: string | undefined;
  /** connecting → connected (welcomed) → running (activated) → closed (half closed); lost. */
  readonly state: "connecting" | "connected" | "running" | "closed" | "lost";
  readonly closeReason: string | undefined;
  readonly messagesIn: number;
  readonly messagesOut: number;
}
