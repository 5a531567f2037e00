//! Every `InvokeError` kind as the page sees it: `kind`, `message` and `data` of the real
//! client's `InvokeError`, for requests the page makes to main.

use extension_host::{HostConfig, MailboxLimit, WebConfig};
use serde_json::{Value, json};

use super::web::{FOREVER, WebHost};
use crate::support::{self, FAILSAFE, wait_log};

/// How `ipc.invoke(ARGS)` ended, evaluated in the page: `{ok}` or `{error, kind, message, data}`.
async fn invoke(page: &super::Session, args: &str) -> Value {
    page.eval(&format!("webprobe.outcome(webprobe.ipc.invoke({args}))")).await
}

fn assert_kind(outcome: &Value, kind: &str, message: &str) {
    assert_eq!(outcome["error"], "InvokeError", "{outcome}");
    assert_eq!(outcome["kind"], kind, "{outcome}");
    let text = outcome["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "`{message}` not in the message: {outcome}");
}

#[tokio::test]
async fn a_page_sees_each_error_kind_of_its_requests_with_message_and_data() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let page = &shell.page;
    let mut logs = web.host.logs();

    // Answered.
    assert_eq!(invoke(page, r#""typed", 7"#).await, json!({ "ok": 7 }));
    // NoHandler: nothing handles the channel; an exposed function that is not exposed.
    assert_kind(&invoke(page, r#""nobody-handles-this", 1"#).await, "NoHandler", "nobody-handles-this");
    let exposed = page.eval("webprobe.outcome(webprobe.ipc.exposed('Nothing').here(1, 2))").await;
    assert_kind(&exposed, "NoHandler", "Nothing");
    // Handler: main's handler returned an error, with data.
    let failed = invoke(page, r#""fail""#).await;
    assert_kind(&failed, "Handler", "asked to fail");
    assert_eq!(failed["data"], json!({ "code": 7, "detail": "asked to fail" }), "{failed}");
    // Panicked.
    assert_kind(&invoke(page, r#""panic""#).await, "Panicked", "");
    // Timeout: no reply in time; main's handler is cancelled (dropped), not left running.
    let timed_out = invoke(page, r#""hang", null, { timeout: 100 }"#).await;
    assert_kind(&timed_out, "Timeout", "hang");
    wait_log(&mut logs, "webprobe", |m| m == "main's hang handler dropped").await;
    // Cancelled by an AbortSignal: rejected, and main's handler dropped too.
    // It aborts once main's handler runs (its log says so), so the cancel reaches main.
    page.eval(
        "(() => { globalThis.abortHang = new AbortController(); \
         globalThis.askedHang = webprobe.outcome(webprobe.ipc.invoke('hang', null, { signal: abortHang.signal })); \
         return true; })()",
    )
    .await;
    wait_log(&mut logs, "webprobe", |m| m.starts_with("main's hang handler started")).await;
    let aborted = page.eval("(() => { abortHang.abort(); return askedHang; })()").await;
    assert_eq!(aborted["error"], "InvokeError", "{aborted}");
    wait_log(&mut logs, "webprobe", |m| m == "main's hang handler dropped").await;
    // Serialize: a value MessagePack cannot carry; nothing is sent.
    assert_kind(&invoke(page, r#""echo", () => 1"#).await, "Serialize", "echo");
    assert_kind(&invoke(page, r#""echo", Symbol("no")"#).await, "Serialize", "echo");
    let thrown = page.eval(
        "(() => { try { webprobe.ipc.broadcast('seq', () => 1); return 'sent'; } catch (e) { return e.name; } })()",
    );
    assert_eq!(thrown.await, "TypeError", "broadcast of an unencodable value throws TypeError");
    // Deserialize: main's handler takes a u32.
    assert_kind(&invoke(page, r#""typed", "seven""#).await, "Deserialize", "typed");
    // TooLarge: a request over the message limit is refused in the page, at once; a reply
    // over it is refused on main's side (its handler ran).
    let over = extension_api::MAX_MESSAGE + 1;
    assert_kind(&invoke(page, &format!(r#""echo", new Uint8Array({over})"#)).await, "TooLarge", "echo");
    assert_kind(&invoke(page, r#""big-reply""#).await, "TooLarge", "big-reply");
    // The connection survived all of it.
    assert_eq!(invoke(page, r#""typed", 8"#).await, json!({ "ok": 8 }));
    web.stop().await;
}

/// Room for this many messages in each mailbox.
const LIMIT: u64 = 4;

#[tokio::test]
async fn a_page_invoking_an_overloaded_main_is_told_overloaded_at_once() {
    let config = HostConfig { mailbox: MailboxLimit { messages: LIMIT, bytes: 1 << 20 }, ..support::config() };
    let web = WebHost::with_config(config, &["webprobe"]).await;
    let shell = web.open_shell().await;
    let mut logs = web.host.logs();
    // Main's thread blocked, its mailbox filled with requests only main receives.
    let release = crate::loading::tempdir().join("release.sock").to_string_lossy().into_owned();
    let blocked = web.host.invoke::<_, String>("webprobe", "block", &release, FAILSAFE);
    wait_log(&mut logs, "webprobe", |m| m.starts_with("blocking the thread")).await;
    let queued: Vec<_> =
        (0..LIMIT as u32).map(|n| web.host.invoke::<_, u32>("webprobe", "typed", &n, FAILSAFE)).collect();

    let refused = invoke(&shell.page, r#""typed", 99"#).await;
    assert_kind(&refused, "Overloaded", "");

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    for (n, answer) in queued.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap(), n as u32);
    }
    // With room again, the same request is answered.
    assert_eq!(invoke(&shell.page, r#""typed", 99"#).await, json!({ "ok": 99 }));
    web.stop().await;
}

#[tokio::test]
async fn requests_in_flight_or_made_while_the_extension_deactivates_end_deactivated() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let mut logs = web.host.logs();
    // Read from the page's console, not from its message to the shell: the host removes the
    // iframe once its half has closed, and a message the page posted to its parent just
    // before that can be dropped with the iframe (it was, about one run in eight).
    let mut console = web.browser.console();
    shell.page.eval("webprobe.start('hang', 'hang')").await;
    wait_log(&mut logs, "webprobe", |m| m.starts_with("main's hang handler started")).await;

    web.host.deactivate("webprobe").await.unwrap();
    let [settled, deactivating] = console.wait_all(["webprobe settled hang ", "webprobe deactivating "]).await;
    // In flight: ended as the extension deactivated.
    assert_kind(&settled, "Deactivated", "");
    // Asked while the half closes (in its `deactivate`): refused at once, not left to hang.
    assert_kind(&deactivating, "Deactivated", "");
    web.stop().await;
}

#[tokio::test]
async fn requests_in_flight_when_the_host_closes_the_frame_end_frame_closed() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let mut console = web.browser.console();
    let mut logs = web.host.logs();
    shell.page.eval("webprobe.start('hang', 'hang', null, { timeout: 3600000 })").await;
    wait_log(&mut logs, "webprobe", |m| m.starts_with("main's hang handler started")).await;
    // And main's request to the page, in flight too.
    let to_page = web.host.invoke_frame::<_, ()>("webprobe", shell.frame, "hang", &(), FOREVER);
    console.wait("webprobe hanging").await;

    web.host.close_frame(shell.frame).await.unwrap();
    assert_kind(&shell.report("settled hang").await, "FrameClosed", "");
    let error = to_page.await.unwrap_err();
    assert_eq!(error.kind, extension_host::InvokeErrorKind::FrameClosed, "{error}");
    wait_log(&mut logs, "webprobe", |m| m == "main's hang handler dropped").await;
    assert!(!web.frames().contains(&shell.frame));
    web.stop().await;
}

#[tokio::test]
async fn requests_in_flight_when_the_connection_is_lost_end_connection_lost_and_later_calls_are_refused() {
    // Messages over 64 KiB end a page's connection (1009), and only that connection.
    let web_config = WebConfig { max_message: 64 << 10, ..WebConfig::default() };
    let web = WebHost::with_configs(support::config(), web_config, &["webprobe"]).await;
    let shell = web.open_shell().await;
    let mut logs = web.host.logs();
    shell.page.eval("webprobe.start('hang', 'hang', null, { timeout: 3600000 })").await;
    wait_log(&mut logs, "webprobe", |m| m.starts_with("main's hang handler started")).await;

    shell.page.eval("webprobe.start('big', 'echo', new Uint8Array(100000))").await;
    let page = &shell.page;
    assert_kind(&page.eval("webprobe.settled('hang')").await, "ConnectionLost", "");
    assert_kind(&page.eval("webprobe.settled('big')").await, "ConnectionLost", "");
    // The page's request no longer runs in main.
    wait_log(&mut logs, "webprobe", |m| m == "main's hang handler dropped").await;
    // The half has closed: a request is refused at once, a broadcast throws.
    assert_kind(&page.eval("webprobe.outcome(webprobe.ipc.invoke('echo', 1))").await, "Deactivated", "closed");
    let thrown = page.eval("webprobe.tryBroadcast('seq', 0)").await;
    assert!(thrown.as_str().unwrap_or_default().starts_with("Error: "), "{thrown}");
    web.stop().await;
}
