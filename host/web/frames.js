// What every shell does, the host's (`shell.js`) and an application's own (`embed.js`):
// reads the shell socket's messages, makes each extension's sandboxed iframe, and hands each
// iframe its token. Served as `/frames.js` on the shell's origin (with CORS for the
// application's shell origins, like `/embed.js`, which imports it).
//
// The shell socket (`ws://HOST/shell`, JSON text) says `{"type":"frame","frame":F}` first,
// then `{"type":"add","extension","origin","token"}` and `{"type":"remove","extension"}`.
// An iframe posts `{type:"ready"}`; it is answered `{type:"token", token}` only when the
// message came from that iframe's window (`event.source`) on the extension's origin, and the
// answer targets that origin. It also posts `{type:"status", ...}`, which the shell shows.

/** The sandbox of every extension's iframe: scripts, on its own origin; nothing else. */
export const SANDBOX = "allow-scripts allow-same-origin";

/** The states a `status` message may report (anything else reads as `connecting`). */
export const STATES = ["connecting", "connected", "running", "closed", "lost"];

/**
 * The shell socket's URL for the host at `host` (an origin or URL, `http://127.0.0.1:PORT`).
 * @param {string} host
 */
export function shellSocketUrl(host) {
  const url = new URL("/shell", host);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`the host's URL must be http: or https:, not ${url.protocol}`);
  }
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * One message of the shell socket, checked: `null` (and a warning) for anything that is not
 * well-formed.
 * @param {string} text
 */
export function parseShellMessage(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    console.warn("shell: ignoring a message that is not JSON");
    return null;
  }
  switch (message?.type) {
    case "frame":
      if (Number.isSafeInteger(message.frame)) return { type: "frame", frame: message.frame };
      break;
    case "add":
      if (typeof message.extension === "string" && typeof message.origin === "string" && typeof message.token === "string") {
        return { type: "add", extension: message.extension, origin: message.origin, token: message.token };
      }
      break;
    case "remove":
      if (typeof message.extension === "string") return { type: "remove", extension: message.extension };
      break;
    default:
      console.warn(`shell: ignoring a message of type ${String(message?.type)}`);
      return null;
  }
  console.warn(`shell: ignoring a malformed ${message.type} message`);
  return null;
}

/**
 * Why `origin` cannot be an extension's iframe in a shell on `shellOrigin`, or `null` if it
 * can: it must be an exact origin, and not the shell's own (the iframe would share its
 * origin, and reach the shell's page and its tokens).
 * @param {string} origin
 * @param {string} shellOrigin
 */
export function originProblem(origin, shellOrigin) {
  let url;
  try {
    url = new URL(origin);
  } catch {
    return `${origin} is not a valid origin`;
  }
  if (url.origin !== origin || url.origin === shellOrigin) return `${origin} is not an origin of its own`;
  return null;
}

/**
 * A new iframe for `extension`'s web renderer on `origin` (not yet in the document).
 * @param {Document} document
 * @param {string} extension
 * @param {string} origin
 */
export function rendererIframe(document, extension, origin) {
  const iframe = document.createElement("iframe");
  iframe.setAttribute("sandbox", SANDBOX);
  iframe.setAttribute("referrerpolicy", "no-referrer");
  iframe.title = `${extension}: web renderer`;
  iframe.src = `${origin}/`;
  return iframe;
}

/** A `status` message's fields, checked (counts that are not counts read as 0). */
export function readStatus(data) {
  const count = (n) => (Number.isSafeInteger(n) && n >= 0 ? n : 0);
  return {
    state: STATES.includes(data.state) ? data.state : "connecting",
    messagesIn: count(data.messagesIn),
    messagesOut: count(data.messagesOut),
  };
}

/**
 * The iframes of one shell and their tokens, kept in memory only. `add` and `remove` follow
 * the shell socket; `receive` is given every `message` event of the shell's window and
 * answers only an iframe's own `ready`, with its own token, targeted at its origin.
 */
export class TokenDesk {
  constructor() {
    /** @type {Map<string, {extension: string, origin: string, token: string | null, iframe: HTMLIFrameElement}>} */
    this.entries = new Map();
  }

  /** Registers `extension`'s iframe (replacing an earlier one); its entry. */
  add(extension, origin, token, iframe) {
    const entry = { extension, origin, token, iframe };
    this.entries.set(extension, entry);
    return entry;
  }

  /** Forgets `extension`'s token (its iframe goes); its entry, if it had one. */
  remove(extension) {
    const entry = this.entries.get(extension);
    if (entry) entry.token = null;
    return entry;
  }

  /** The entry whose iframe's window sent `event` from its own origin, if any. */
  entryFor(event) {
    for (const entry of this.entries.values()) {
      if (entry.token !== null && event.source === entry.iframe.contentWindow && event.origin === entry.origin) return entry;
    }
    return undefined;
  }

  /**
   * Handles a `message` event: `{entry, type: "ready"}` once the token went to its iframe,
   * `{entry, type: "status", status}` for a status, `undefined` for anything else (ignored:
   * another window, another origin, another shape).
   */
  receive(event) {
    const entry = this.entryFor(event);
    if (!entry) return undefined;
    const data = event.data;
    if (data === null || typeof data !== "object") return undefined;
    if (data.type === "ready") {
      entry.iframe.contentWindow.postMessage({ type: "token", token: entry.token }, entry.origin);
      return { entry, type: "ready" };
    }
    if (data.type === "status") return { entry, type: "status", status: readStatus(data) };
    return undefined;
  }
}
