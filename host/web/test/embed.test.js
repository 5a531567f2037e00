// `embed.js`, an application's own shell, against a fake shell socket and a fake DOM: the
// iframes it makes (the host's shell's attributes), the tokens it hands over (only to an
// iframe's own window on its own origin), and the events a page can show.

import { test } from "node:test";
import assert from "node:assert/strict";
import { embed } from "../embed.js";
import { SANDBOX, shellSocketUrl, parseShellMessage, originProblem } from "../frames.js";

const ORIGIN = "http://webprobe-0a1b2c3d.localhost:4000";
const OTHER = "http://hello-00112233.localhost:4000";

/** An iframe's window: records what is posted to it. */
class FakeContentWindow {
  constructor() {
    this.posted = [];
  }
  postMessage(data, targetOrigin) {
    this.posted.push({ data, targetOrigin });
  }
}

class FakeElement {
  constructor(tag, document) {
    this.tagName = tag.toUpperCase();
    this.ownerDocument = document;
    this.attributes = {};
    this.children = [];
    this.parentNode = null;
    if (this.tagName === "IFRAME") this.contentWindow = new FakeContentWindow();
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
  getAttribute(name) {
    return this.attributes[name] ?? null;
  }
  append(child) {
    child.parentNode = this;
    this.children.push(child);
  }
  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.children;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }
  replaceWith(other) {
    const siblings = this.parentNode.children;
    siblings[siblings.indexOf(this)] = other;
    other.parentNode = this.parentNode;
    this.parentNode = null;
  }
}

class FakeDocument {
  createElement(tag) {
    return new FakeElement(tag, this);
  }
}

/** The page's window: `message` listeners, and its origin. */
class FakeWindow {
  constructor(origin) {
    this.location = { origin };
    this.listeners = new Set();
  }
  addEventListener(type, fn) {
    if (type === "message") this.listeners.add(fn);
  }
  removeEventListener(type, fn) {
    if (type === "message") this.listeners.delete(fn);
  }
  /** A `message` event from `source` on `origin`. */
  dispatch(source, origin, data) {
    for (const fn of [...this.listeners]) fn({ source, origin, data });
  }
}

/** The host's end of the shell socket. */
class FakeShellSocket {
  static last;
  constructor(url) {
    this.url = url;
    this.listeners = { message: [], close: [] };
    this.closedWith = null;
    FakeShellSocket.last = this;
  }
  addEventListener(type, fn) {
    this.listeners[type].push(fn);
  }
  close(code, reason) {
    this.closedWith = { code, reason };
  }
  say(message) {
    for (const fn of this.listeners.message) fn({ data: JSON.stringify(message) });
  }
  end(code = 1000, reason = "the frame is closed") {
    for (const fn of this.listeners.close) fn({ code, reason });
  }
}

function setup() {
  const window = new FakeWindow("http://127.0.0.1:3000");
  const document = new FakeDocument();
  const container = document.createElement("div");
  const events = [];
  const shell = embed({ host: "http://127.0.0.1:4000/", container, window, WebSocket: FakeShellSocket });
  for (const type of ["frame", "added", "status", "removed", "closed"]) {
    shell.addEventListener(type, (event) => events.push([type, event.detail]));
  }
  return { window, container, shell, socket: FakeShellSocket.last, events };
}

test("it connects the host's shell socket, and says which frame the page is", () => {
  const { socket, shell, events } = setup();
  assert.equal(socket.url, "ws://127.0.0.1:4000/shell");
  socket.say({ type: "frame", frame: 7 });
  assert.equal(shell.frame, 7);
  assert.deepEqual(events, [["frame", { frame: 7 }]]);
  assert.equal(shellSocketUrl("https://h.example:9"), "wss://h.example:9/shell");
  assert.throws(() => shellSocketUrl("app://x"), /http: or https:/);
});

test("an added extension gets the host's shell's sandboxed iframe on its origin, without its token in the URL", () => {
  const { socket, container, shell, events } = setup();
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "secret" });
  assert.equal(container.children.length, 1);
  const iframe = container.children[0];
  assert.equal(iframe.tagName, "IFRAME");
  assert.equal(iframe.getAttribute("sandbox"), SANDBOX);
  assert.equal(SANDBOX, "allow-scripts allow-same-origin");
  assert.equal(iframe.getAttribute("referrerpolicy"), "no-referrer");
  assert.equal(iframe.src, `${ORIGIN}/`);
  assert.ok(!iframe.src.includes("secret"));
  assert.deepEqual(events, [["added", { extension: "webprobe", origin: ORIGIN, iframe }]]);
  assert.deepEqual([...shell.extensions.keys()], ["webprobe"]);
});

test("the token goes only to the iframe's own window, on its own origin, targeted at that origin", () => {
  const { socket, container, window } = setup();
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "probe-token" });
  socket.say({ type: "add", extension: "hello", origin: OTHER, token: "hello-token" });
  const [probe, hello] = container.children;
  // Another window, or the right window on another origin, or another shape: nothing.
  window.dispatch(hello.contentWindow, ORIGIN, { type: "ready" });
  window.dispatch(probe.contentWindow, OTHER, { type: "ready" });
  window.dispatch({}, ORIGIN, { type: "ready" });
  window.dispatch(probe.contentWindow, ORIGIN, "ready");
  window.dispatch(probe.contentWindow, ORIGIN, null);
  assert.deepEqual(probe.contentWindow.posted, []);
  assert.deepEqual(hello.contentWindow.posted, []);
  // Its own `ready`: its own token, to its origin only.
  window.dispatch(probe.contentWindow, ORIGIN, { type: "ready" });
  assert.deepEqual(probe.contentWindow.posted, [{ data: { type: "token", token: "probe-token" }, targetOrigin: ORIGIN }]);
  assert.deepEqual(hello.contentWindow.posted, []);
});

test("statuses are events; a removed extension's iframe goes and its token is never handed out again", () => {
  const { socket, container, window, shell, events } = setup();
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "t" });
  const iframe = container.children[0];
  window.dispatch(iframe.contentWindow, ORIGIN, { type: "status", state: "running", messagesIn: 3, messagesOut: -1 });
  window.dispatch(iframe.contentWindow, ORIGIN, { type: "status", state: "hacked" });
  socket.say({ type: "remove", extension: "webprobe" });
  assert.equal(container.children.length, 0);
  assert.equal(shell.extensions.size, 0);
  window.dispatch(iframe.contentWindow, ORIGIN, { type: "ready" });
  assert.deepEqual(iframe.contentWindow.posted, []);
  assert.deepEqual(
    events.map(([type, detail]) => [type, type === "added" ? detail.extension : detail]),
    [
      ["added", "webprobe"],
      ["status", { extension: "webprobe", state: "running", messagesIn: 3, messagesOut: 0 }],
      ["status", { extension: "webprobe", state: "connecting", messagesIn: 0, messagesOut: 0 }],
      ["removed", { extension: "webprobe" }],
    ],
  );
});

test("an extension added again (a reload: a new token) takes its old iframe's place", () => {
  const { socket, container, window } = setup();
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "old" });
  const old = container.children[0];
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "new" });
  assert.equal(container.children.length, 1);
  const fresh = container.children[0];
  assert.notEqual(fresh, old);
  window.dispatch(old.contentWindow, ORIGIN, { type: "ready" });
  window.dispatch(fresh.contentWindow, ORIGIN, { type: "ready" });
  assert.deepEqual(old.contentWindow.posted, []);
  assert.deepEqual(fresh.contentWindow.posted.map((posted) => posted.data.token), ["new"]);
});

test("an origin that is not one of its own is refused, as the host's shell refuses it", () => {
  const { socket, container, events } = setup();
  const warn = console.warn;
  const warnings = [];
  console.warn = (text) => warnings.push(text);
  try {
    socket.say({ type: "add", extension: "a", origin: "http://127.0.0.1:3000", token: "t" });
    socket.say({ type: "add", extension: "b", origin: `${ORIGIN}/path`, token: "t" });
    socket.say({ type: "add", extension: "c", origin: "not a url", token: "t" });
    socket.say({ type: "add", extension: "d", origin: ORIGIN });
    socket.say({ type: "what" });
  } finally {
    console.warn = warn;
  }
  assert.equal(container.children.length, 0);
  assert.deepEqual(events, []);
  assert.equal(warnings.length, 5, warnings.join("\n"));
  assert.match(warnings[0], /a: http:\/\/127.0.0.1:3000 is not an origin of its own/);
  assert.equal(originProblem(ORIGIN, "http://127.0.0.1:3000"), null);
  assert.equal(parseShellMessage("{"), null);
});

test("the socket closing removes every iframe and says so once; close() closes the socket", () => {
  const { socket, container, window, shell, events } = setup();
  socket.say({ type: "add", extension: "webprobe", origin: ORIGIN, token: "t1" });
  socket.say({ type: "add", extension: "hello", origin: OTHER, token: "t2" });
  shell.close();
  assert.deepEqual(socket.closedWith, { code: 1000, reason: undefined });
  socket.end(1000, "the frame is closed");
  socket.end(1006, "");
  assert.equal(container.children.length, 0);
  assert.equal(window.listeners.size, 0, "it stops listening to the window");
  assert.ok(shell.closed);
  assert.deepEqual(
    events.filter(([type]) => type !== "added"),
    [
      ["removed", { extension: "webprobe" }],
      ["removed", { extension: "hello" }],
      ["closed", { code: 1000, reason: "the frame is closed" }],
    ],
  );
});

test("bad options are refused, saying what is expected", () => {
  assert.throws(() => embed({ container: {} }), /`host` must be the host's URL/);
  assert.throws(() => embed({ host: "http://127.0.0.1:1" }), /`container` must be an element/);
});
