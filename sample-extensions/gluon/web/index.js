// gluon's web renderer: the three examples of Gluon's IPC reference, in the page, as its
// Rust renderer does them (sample-extensions/gluon/src/lib.rs):
//
// 1. main exposes `log`: the page calls it by name, `ipc.exposed("Logger").log("...")`
//    (the reference's `Gluon.ipc.log('Message!')`);
// 2. main puts `config` in the store: the page reads it synchronously in `activate` (the
//    snapshot is in place before this module runs), as `Gluon.ipc.store.config`;
// 3. main handles the `get config` request, which the page invokes
//    (`Gluon.ipc.send('get config')`).
//
// And what the reference has no word for: main asks each frame for its title (the page
// answers with `handle("title")`), and the page watches `log-lines`, which main updates with
// every line logged, and shows the log.
//
// The page API is described in host/web/client.d.ts.

/** Appends an element with `text` to `parent`, and returns it. */
function add(parent, tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  if (className) element.className = className;
  parent.append(element);
  return element;
}

/** A labelled row whose value the renderer fills in as it learns it. */
function row(table, label, code) {
  const line = add(table, "tr");
  const head = add(line, "th");
  add(head, "span", label);
  add(head, "code", code);
  const cell = add(line, "td", "waiting…", "pending");
  const set = (className) => (text) => {
    cell.textContent = text;
    cell.className = className;
  };
  return { done: set("done"), failed: set("failed") };
}

function failure(error) {
  return `${error.kind ?? "error"}: ${error.message}`;
}

function draw(ipc) {
  const style = document.createElement("link");
  style.rel = "stylesheet";
  style.href = "/style.css";
  document.head.append(style);
  document.title = `${ipc.extension} in frame ${ipc.frame}`;

  const root = add(document.body, "main", undefined, "gluon");
  add(root, "h1", ipc.extension);
  add(root, "p", `web renderer in frame ${ipc.frame}: Gluon's three IPC examples`, "subtitle");
  const table = add(add(root, "table"), "tbody");
  const rows = {
    store: row(table, "1. store, read synchronously", 'ipc.store.get("config")'),
    exposed: row(table, "2. exposed function", 'ipc.exposed("Logger").log(…)'),
    request: row(table, "3. request", 'ipc.invoke("get config")'),
    title: row(table, "main asked our title", 'ipc.handle("title")'),
    watch: row(table, "watching the log", 'ipc.store.watch("log-lines")'),
  };
  rows.title.done("not yet");
  rows.watch.done("no change seen yet");
  add(root, "h2", "The log, as main has it");
  const log = add(root, "ol", undefined, "log");
  return {
    rows,
    showLog(lines) {
      log.replaceChildren(...lines.map((line) => {
        const item = document.createElement("li");
        item.textContent = line;
        return item;
      }));
    },
  };
}

export async function activate(ipc) {
  const ui = draw(ipc);
  const frame = ipc.frame;
  const logger = ipc.exposed("Logger");

  // 1. Already here: the frame got the store's snapshot before `activate`.
  const config = ipc.store.get("config");
  if (config === undefined) {
    ui.rows.store.failed("no config in the store");
    ipc.log.warn(`frame ${frame} sees no config`);
  } else {
    ui.rows.store.done(`env = ${config.env}`);
    ipc.log.info(`frame ${frame} sees config env=${config.env}`);
  }

  ipc.store.watch("log-lines", (change) => {
    const lines = Number(change.new) === 1 ? "1 line" : `${change.new} lines`;
    const writer = change.writer.kind === "main" ? "main" : `frame ${change.writer.frame}`;
    ui.rows.watch.done(`the log grew to ${lines} (written by ${writer})`);
    logger.lines().then((lines) => ui.showLog(lines), (error) => ipc.log.warn(`lines failed: ${error.message}`));
  });

  ipc.handle("title", () => {
    const title = `Window ${frame}`;
    ui.rows.title.done(`answered "${title}"`);
    return title;
  });

  // The rest runs after activate returns, as the Rust renderer's spawned task does.
  (async () => {
    try {
      const logged = await logger.log(`Message from frame ${frame} (web)!`);
      ui.rows.exposed.done(`log returned ${logged}`);
      ipc.log.info(`frame ${frame}: log returned ${logged}`);
    } catch (error) {
      ui.rows.exposed.failed(failure(error));
      ipc.log.warn(`frame ${frame}: log failed: ${error.message}`);
    }
    try {
      const answered = await ipc.invoke("get config");
      ui.rows.request.done(`answered env = ${answered.env}`);
      ipc.log.info(`frame ${frame}: get config answered env=${answered.env}`);
    } catch (error) {
      ui.rows.request.failed(failure(error));
      ipc.log.warn(`frame ${frame}: get config failed: ${error.message}`);
    }
    ui.showLog(await logger.lines().catch(() => []));
    // Main answers this by asking for our title.
    ipc.broadcast("renderer-ready");
  })();
}
