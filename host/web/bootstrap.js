// The renderer document's module (served as `/.host/bootstrap.js` on an extension's origin).
//
// 1. Reads the origins a shell may be served from, space-separated, from
//    `<meta name="extension-host-shell" content="ORIGIN ORIGIN...">` (the host's shell, both
//    names, and the application's `WebConfig::shell_origins`): never from the URL.
// 2. Posts `{type: "ready"}` to `parent`, targeted at the parent's origin when the browser names
//    it (`location.ancestorOrigins`: Chromium, WebKit) and it is one of them; else (Firefox)
//    once per origin, each targeted at it (the browser drops, and may log, the ones whose origin
//    is not the parent's: only the real parent hears it). Then waits for `{type: "token",
//    token}` coming from `parent` on one of them (nothing else is taken). That origin is the
//    shell it reports its status to.
// 3. Connects `ws(s)://HOST/.host/connect` on its own origin, sends HELLO with the token and
//    hands the socket to the client, which seeds the store, imports `/index.js` and calls
//    `activate(ipc)` when the host says so.
// It also draws a one-line status at the top of the body: connected or not, the frame, the
// messages in and out. The extension's own UI goes in the rest of the body.

import { Client, helloFrame } from "./client.js";

const STATUS_ID = "extension-host-status";

function statusLine() {
  let line = document.getElementById(STATUS_ID);
  if (!line) {
    line = document.createElement("div");
    line.id = STATUS_ID;
    document.body.prepend(line);
  }
  line.setAttribute("role", "status");
  // CSSOM, not a style attribute: allowed under the extension origins' CSP either way.
  Object.assign(line.style, {
    font: "12px/1.6 ui-monospace, SFMono-Regular, Menlo, monospace",
    color: "#555",
    background: "#f3f4f6",
    borderBottom: "1px solid #e5e7eb",
    padding: "2px 8px",
    margin: "0 0 8px 0",
    whiteSpace: "nowrap",
    overflow: "hidden",
    textOverflow: "ellipsis",
  });
  return line;
}

function show(line, state, text) {
  line.dataset.state = state;
  const colours = { waiting: "#9ca3af", connecting: "#f59e0b", connected: "#10b981", running: "#10b981", closed: "#6b7280", lost: "#ef4444" };
  line.textContent = "";
  const dot = document.createElement("span");
  dot.textContent = "● ";
  dot.style.color = colours[state] ?? "#9ca3af";
  line.append(dot, text);
}

function describe(client) {
  const who = client.extension ?? "extension";
  const frame = client.frame === undefined ? "" : ` · frame ${client.frame}`;
  const counts = ` · in ${client.messagesIn} / out ${client.messagesOut}`;
  switch (client.state) {
    case "connecting":
      return `connecting to the host${counts}`;
    case "connected":
      return `${who}: connected${frame}${counts}`;
    case "running":
      return `${who}: running${frame}${counts}`;
    case "closed":
      return `${who}: renderer half closed${frame}${counts}`;
    default:
      return `${who}: disconnected${frame} (${client.closeReason ?? "the connection closed"})${counts}`;
  }
}

function start() {
  const line = statusLine();
  const shells = (document.querySelector('meta[name="extension-host-shell"]')?.getAttribute("content") ?? "")
    .split(/\s+/)
    .filter(Boolean);
  if (shells.length === 0) {
    show(line, "lost", "this page has no extension-host-shell meta: it is served by the extension host only");
    return;
  }
  if (window.parent === window) {
    show(line, "lost", `open this page through the extension host's shell (${shells[0]}), not on its own`);
    return;
  }
  show(line, "waiting", "waiting for the shell");
  const onMessage = (event) => {
    // Only the shell, in the parent window, on one of the shells' origins, hands the token out.
    if (event.source !== window.parent || !shells.includes(event.origin)) return;
    const data = event.data;
    if (data === null || typeof data !== "object" || data.type !== "token" || typeof data.token !== "string") return;
    window.removeEventListener("message", onMessage);
    shellOrigin = event.origin;
    connect(line, data.token);
  };
  window.addEventListener("message", onMessage);
  for (const origin of readyTargets(shells, location.ancestorOrigins)) {
    try {
      window.parent.postMessage({ type: "ready" }, origin);
    } catch {
      // An origin this browser cannot target (a scheme it does not know): not our parent.
    }
  }
}

let shellOrigin;

/**
 * The origins to post `ready` to: the parent's alone when `ancestors` (the browser's
 * `location.ancestorOrigins`, if it has one) names it among `shells`, else every one of
 * `shells` (the browser delivers only the one that is the parent's).
 * @param {string[]} shells
 * @param {ArrayLike<string> | undefined} ancestors
 */
function readyTargets(shells, ancestors) {
  const parent = ancestors?.[0];
  return parent !== undefined && shells.includes(parent) ? [parent] : shells;
}

/** Tells the shell what this half is doing, for its card (the shell shows it as text). */
function report(client) {
  window.parent.postMessage(
    { type: "status", state: client.state, frame: client.frame, messagesIn: client.messagesIn, messagesOut: client.messagesOut },
    shellOrigin,
  );
}

function connect(line, token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/.host/connect`);
  let scheduled = false;
  const client = new Client(socket, {
    onChange: (client) => {
      // One redraw per frame, however many messages arrive.
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        show(line, client.state, describe(client));
        report(client);
      });
    },
  });
  socket.addEventListener("open", () => {
    socket.send(helloFrame(token));
    client.messagesOut++;
    show(line, client.state, describe(client));
    report(client);
  });
  show(line, "connecting", describe(client));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start, { once: true });
else start();
