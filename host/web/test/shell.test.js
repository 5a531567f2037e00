// The host's own shell page (`shell.js`) served under a name of `WebConfig::allowed_hosts`:
// behind a proxy that adds TLS its page is `https:`, and a page on `https:` may only open a
// `wss:` socket (a `ws:` one is mixed content, which the browser blocks).

import { test } from "node:test";
import assert from "node:assert/strict";

/** The least of a DOM element `shell.js` touches at load. */
function element() {
  return { dataset: {}, hidden: false, textContent: "", append() {}, replaceWith() {}, remove() {} };
}

test("the host's shell served over https opens its socket over wss, on its own host", async () => {
  const opened = [];
  globalThis.document = { getElementById: () => element(), createElement: () => element(), title: "" };
  globalThis.window = { addEventListener() {} };
  globalThis.location = { protocol: "https:", host: "proxy.test", origin: "https://proxy.test" };
  globalThis.WebSocket = class {
    constructor(url) {
      opened.push(url);
    }
    addEventListener() {}
  };
  await import("../shell.js");
  assert.deepEqual(opened, ["wss://proxy.test/shell"]);
});
