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
// 4. When the connection drops without a close frame (1006: the network went, or the host
//    found it dead, its pings unanswered; not the host closing the half, the server going, a
//    violation, a refused token or another connection with this token taking its place
//    (4000), which stop it here, saying why), it connects again with the same token, backed
//    off (RETRY_DELAYS); the host takes the page back (if it still holds the old connection,
//    half-open, this one takes its place) and starts its half again, and the client runs the
//    extension's `activate` with a fresh `ipc` (the module is not evaluated again). After
//    RETRY_DELAYS.length attempts in a row that do not bring the half back to running, it
//    stops and says why.
// It also draws a one-line status at the top of the body: connected or not, the frame, the
// messages in and out. The extension's own UI goes in the rest of the body.

import { Client, helloFrame } from "./client.js";

const STATUS_ID = "extension-host-status";
/** The waits (ms) before each attempt to connect again after a lost connection. */
const RETRY_DELAYS = [250, 500, 1000, 2000, 4000, 8000];

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
      return `${who}: disconnected${frame} (${client.closeReason ?? "the connection closed"})${counts}${comingBack}`;
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
/** What the page does about a lost connection, after the status line's reason. */
let comingBack = "";

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

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/.host/connect`;
}

/**
 * Connects with `token`; `failed`: the attempts in a row, after a lost connection, that did
 * not bring the half back to running.
 */
/** How often the status line and the shell's card show new message counts, at most. */
const COUNTS_EVERY_MS = 1000;

function connect(line, token, failed = 0) {
  const socket = new WebSocket(socketUrl());
  let ran = false;
  // A new state shows at the next frame; new counts alone at most every COUNTS_EVERY_MS.
  // Redrawn every frame while messages flow, the line and the shell's card (a post, and its
  // redraw) cost Chromium more CPU than the messages themselves: 60 to 115 µs per sequential
  // invoke in `ipc-bench --web`.
  let drawn; // the state the line and the card last showed
  let frameAsked = false;
  let countsTimer = null;
  const draw = () => {
    frameAsked = false;
    clearTimeout(countsTimer);
    countsTimer = null;
    drawn = client.state;
    show(line, client.state, describe(client));
    report(client);
  };
  const drawSoon = () => {
    if (frameAsked) return;
    frameAsked = true;
    requestAnimationFrame(draw);
  };
  const client = new Client(socket, {
    onChange: (client) => {
      if (client.state === "running") ran = true;
      if (client.state !== drawn) drawSoon();
      else if (countsTimer === null && !frameAsked) countsTimer = setTimeout(drawSoon, COUNTS_EVERY_MS);
    },
  });
  comingBack = "";
  socket.addEventListener("close", (event) => {
    // Only a connection the network dropped (1006: no close frame) is tried again: the host
    // closing the half (1000), the server going (1001), a violation (1008, 1009; the host then
    // refuses the token too), a refused token or another connection taking this one's place
    // (4000) stop here, with the reason shown.
    if (event.code !== 1006) return;
    const attempt = ran ? 0 : failed;
    if (attempt === RETRY_DELAYS.length) {
      comingBack = `; not reconnecting: ${attempt} attempts in a row did not bring the half back (reload the page to try again)`;
    } else {
      const delay = RETRY_DELAYS[attempt];
      comingBack = `; reconnecting in ${delay / 1000} s (attempt ${attempt + 1} of ${RETRY_DELAYS.length})`;
      setTimeout(() => connect(line, token, attempt + 1), delay);
    }
    show(line, "lost", describe(client));
    report(client);
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
