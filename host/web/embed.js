// What an application's own page needs to be a shell (a web frame of the host): served by the
// host as `/embed.js` on its shell origin, with CORS for `WebConfig::shell_origins` only.
//
//   import { embed } from "http://127.0.0.1:PORT/embed.js";
//   const shell = embed({ host: "http://127.0.0.1:PORT", container: document.querySelector("#extensions") });
//   shell.addEventListener("added", (event) => console.log(event.detail.extension));
//
// It connects the shell socket (the page's origin must be one of the host's
// `WebConfig::shell_origins`), puts each extension's sandboxed iframe in `container` and hands
// it its token exactly as the host's shell does (`frames.js`, shared with it). Events
// (`CustomEvent`s, their `detail`): `frame` {frame}, `added` {extension, origin, iframe},
// `status` {extension, state, messagesIn, messagesOut}, `removed` {extension}, `closed`
// {code, reason}. See `embed.d.ts`.

import { TokenDesk, originProblem, parseShellMessage, rendererIframe, shellSocketUrl } from "./frames.js";

/** One application shell: a web frame while its socket is open. */
export class EmbeddedShell extends EventTarget {
  #desk = new TokenDesk();
  #socket;
  #window;
  #container;
  #onMessage;

  constructor(options) {
    super();
    const { host, container } = options ?? {};
    if (typeof host !== "string") throw new TypeError("embed: `host` must be the host's URL, such as http://127.0.0.1:PORT");
    if (!container || typeof container.append !== "function") throw new TypeError("embed: `container` must be an element");
    const win = options.window ?? globalThis.window;
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    this.#window = win;
    this.#container = container;
    /** The frame this page is, once the host has said. @type {number | undefined} */
    this.frame = undefined;
    /** Whether the socket has closed (the frame is gone). */
    this.closed = false;
    this.#onMessage = (event) => this.#received(event);
    win.addEventListener("message", this.#onMessage);
    const socket = new Socket(shellSocketUrl(host));
    this.#socket = socket;
    socket.addEventListener("message", (event) => this.#shellMessage(event.data));
    socket.addEventListener("close", (event) => this.#ended(event.code, event.reason));
  }

  /** The extensions whose iframe is in the page: name → { origin, iframe }. */
  get extensions() {
    const live = new Map();
    for (const entry of this.#desk.entries.values()) {
      if (entry.token !== null) live.set(entry.extension, { origin: entry.origin, iframe: entry.iframe });
    }
    return live;
  }

  /** Closes the shell socket: the host closes the frame, and the iframes go. */
  close() {
    this.#socket.close(1000);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #shellMessage(data) {
    if (typeof data !== "string") return console.warn("embed: ignoring a shell message that is not text");
    const message = parseShellMessage(data);
    switch (message?.type) {
      case "frame":
        this.frame = message.frame;
        this.#emit("frame", { frame: message.frame });
        break;
      case "add":
        this.#add(message);
        break;
      case "remove":
        this.#remove(message.extension);
        break;
    }
  }

  #add({ extension, origin, token }) {
    const problem = originProblem(origin, this.#window.location?.origin);
    if (problem) return console.warn(`embed: ignoring extension ${extension}: ${problem}`);
    // Re-added (the frame reloaded: new tokens): the new iframe takes the old one's place.
    const previous = this.#desk.entries.get(extension);
    const iframe = rendererIframe(this.#container.ownerDocument ?? this.#window.document, extension, origin);
    if (previous?.iframe.parentNode) previous.iframe.replaceWith(iframe);
    else this.#container.append(iframe);
    this.#desk.add(extension, origin, token, iframe);
    this.#emit("added", { extension, origin, iframe });
  }

  #remove(extension) {
    const entry = this.#desk.remove(extension);
    if (!entry || !entry.iframe.parentNode) return;
    entry.iframe.remove();
    this.#emit("removed", { extension });
  }

  #received(event) {
    const received = this.#desk.receive(event);
    if (received?.type === "status") this.#emit("status", { extension: received.entry.extension, ...received.status });
  }

  #ended(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const extension of [...this.#desk.entries.keys()]) this.#remove(extension);
    this.#window.removeEventListener("message", this.#onMessage);
    this.#emit("closed", { code, reason });
  }
}

/** Makes the page a shell of the host at `options.host`, its iframes in `options.container`. */
export function embed(options) {
  return new EmbeddedShell(options);
}
