// The shell page (served as /shell.js on the shell's origin): one web frame of the host.
//
// It connects `ws://HOST/shell` (`wss:` when the page is `https:`); the host sends `{"type":"frame","frame":F}` first, then for
// every extension with a web renderer `{"type":"add","extension","origin","token"}` and
// `{"type":"remove","extension"}`. Each extension gets a card with its iframe
// (`sandbox="allow-scripts allow-same-origin"` on its own origin). An iframe posts
// `{type:"ready"}`; the shell answers `{type:"token", token}` only to that iframe's window, only
// when the message came from it on the extension's origin, and targets that origin. The
// iframe also posts `{type:"status", ...}` so its card shows what it is doing. The socket's
// messages, the iframes and the hand-over of tokens are `frames.js`'s, shared with `embed.js`
// (an application's own shell).

import { TokenDesk, originProblem, parseShellMessage, rendererIframe, shellSocketUrl } from "./frames.js";

const desk = new TokenDesk();
const cards = new Map(); // extension name → { origin, card, iframe, badge, activity, state } (tokens: `desk`)
const main = document.getElementById("extensions");
const empty = document.getElementById("empty");
const connection = document.getElementById("connection");
const frameLabel = document.getElementById("frame");
const summary = document.getElementById("summary");
let frame;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setBadge(badge, state, text = state) {
  badge.dataset.state = state;
  badge.textContent = text;
}

function refreshSummary() {
  const running = [...cards.values()].filter((entry) => entry.state !== "gone");
  empty.hidden = running.length > 0;
  const names = running.map((entry) => entry.extension).join(", ");
  summary.textContent =
    frame === undefined
      ? ""
      : `frame ${frame}: ${running.length} extension${running.length === 1 ? "" : "s"} with a web renderer${names ? ` (${names})` : ""}, each isolated on its own origin`;
}

function setState(entry, state, detail) {
  entry.state = state;
  entry.card.dataset.state = state;
  setBadge(entry.badge, state);
  if (detail !== undefined) entry.activity.textContent = detail;
  refreshSummary();
}

function add({ extension, origin, token }) {
  const problem = originProblem(origin, location.origin);
  if (problem) return console.warn(`shell: ignoring extension ${extension}: ${problem}`);
  // Re-added (the frame reloaded: new tokens): the new card takes the old one's place.
  const previous = cards.get(extension);
  const card = element("article", "card");
  card.dataset.extension = extension;
  const header = element("header");
  const badge = element("span", "badge");
  header.append(element("h2", "", extension), badge);
  const iframe = rendererIframe(document, extension, origin);
  const activity = element("div", "activity", "loading its page");
  card.append(header, element("div", "origin", `renderer half · isolated on ${origin}`), iframe, activity);
  if (previous) {
    previous.iframe.remove();
    previous.card.replaceWith(card);
  } else {
    main.append(card);
  }
  desk.add(extension, origin, token, iframe);
  const entry = { extension, origin, card, iframe, badge, activity, state: "loading" };
  cards.set(extension, entry);
  setState(entry, "loading");
}

function remove(extension) {
  const entry = cards.get(extension);
  if (!entry) return;
  // The iframe goes (its connection closes with it); the card stays, greyed, saying so.
  entry.iframe.remove();
  desk.remove(extension);
  setState(entry, "gone", "its renderer half left this frame");
}

window.addEventListener("message", (event) => {
  // Only an extension's own iframe, on its own origin, is answered; anything else is ignored.
  const received = desk.receive(event);
  if (!received) return;
  const entry = cards.get(received.entry.extension);
  if (received.type === "ready") {
    setState(entry, "connecting", "connecting to the host");
  } else {
    const { state, messagesIn, messagesOut } = received.status;
    const words = { connecting: "connecting", connected: "connected", running: "running", closed: "closed", lost: "disconnected" };
    setState(entry, state);
    setBadge(entry.badge, state, words[state]);
    entry.activity.textContent = `${words[state]} · messages in ${messagesIn}, out ${messagesOut}`;
  }
});

function connect() {
  // `wss:` on an `https:` page (an allowed host behind a proxy that adds TLS): `ws:` there is
  // mixed content, which the browser blocks.
  const socket = new WebSocket(shellSocketUrl(location.origin));
  socket.addEventListener("open", () => setBadge(connection, "connected", "connected to the host"));
  socket.addEventListener("message", (event) => {
    const message = parseShellMessage(event.data);
    switch (message?.type) {
      case "frame":
        frame = message.frame;
        frameLabel.textContent = `web frame ${frame}`;
        document.title = `Extension host: web frame ${frame}`;
        refreshSummary();
        break;
      case "add":
        add(message);
        break;
      case "remove":
        remove(message.extension);
        break;
    }
  });
  socket.addEventListener("close", (event) => {
    setBadge(connection, "disconnected", `disconnected from the host${event.reason ? `: ${event.reason}` : ""}`);
    for (const extension of cards.keys()) remove(extension);
  });
}

connect();
