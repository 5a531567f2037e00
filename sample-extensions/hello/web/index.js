// hello's web renderer: what its Rust renderer does (sample-extensions/hello/src/lib.rs), in
// a web frame, drawn into this extension's iframe.
//
// - Once activated, it broadcasts `initialize` with an id; main listens and logs it.
// - It then invokes main's `greet` handler with that id and shows the answer.
// - It listens to `initialize` too, and shows every announcement it hears (from main, or
//   from the extension's renderer halves in other frames, web or not).
//
// The host imports this module once per page load and calls `activate(ipc)`; the page API is
// described in host/web/client.d.ts.

/** Appends an element with `text` to `parent`, and returns it. */
function add(parent, tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  if (className) element.className = className;
  parent.append(element);
  return element;
}

/** Who sent a message, in words. */
function who(sender, ipc) {
  if (sender.kind === "main") return "main";
  return sender.frame === ipc.frame ? `frame ${sender.frame} (this one)` : `frame ${sender.frame}`;
}

function draw(ipc) {
  const style = document.createElement("link");
  style.rel = "stylesheet";
  style.href = "/style.css";
  document.head.append(style);
  document.title = `${ipc.extension} in frame ${ipc.frame}`;

  const root = add(document.body, "main", undefined, "hello");
  add(root, "h1", `${ipc.extension}`);
  add(root, "p", `web renderer in frame ${ipc.frame}`, "subtitle");

  const steps = add(root, "section");
  add(steps, "h2", "What this renderer did");
  const list = add(steps, "ol");
  const step = (text) => {
    const item = add(list, "li", text, "pending");
    return {
      done(result) {
        item.textContent = result;
        item.className = "done";
      },
      failed(result) {
        item.textContent = result;
        item.className = "failed";
      },
    };
  };

  const heard = add(root, "section");
  add(heard, "h2", "Announcements heard on initialize");
  const heardList = add(heard, "ul", undefined, "heard");
  const none = add(heardList, "li", "nothing yet", "empty");
  return {
    step,
    heard(text) {
      none.remove();
      add(heardList, "li", text);
    },
  };
}

export async function activate(ipc) {
  const ui = draw(ipc);
  const id = `renderer-${ipc.frame}`;

  ipc.listen("initialize", (value, sender) => {
    ui.heard(`${who(sender, ipc)}: ${JSON.stringify(value)}`);
  });

  const announce = ui.step(`broadcasting \`initialize\` "${id}"…`);
  ipc.broadcast("initialize", id);
  announce.done(`broadcast \`initialize\` "${id}"`);

  // Not awaited: activate returns at once, as the Rust renderer's spawned task does.
  const greet = ui.step(`invoking \`greet\` "${id}"…`);
  ipc.invoke("greet", id).then(
    (greeting) => {
      greet.done(`\`greet\` answered: ${greeting}`);
      ipc.log.info(`frame ${ipc.frame} got: ${greeting}`);
    },
    (error) => {
      greet.failed(`\`greet\` failed (${error.kind ?? "error"}): ${error.message}`);
      ipc.log.warn(`greet failed: ${error.message}`);
    },
  );
}
