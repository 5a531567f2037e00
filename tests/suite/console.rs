//! The dev console of `host run --console`, driven through the real binary.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support::{FAILSAFE, spawn_console};

pub(crate) struct Console {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The last command sent and the output seen since, for failure messages.
    last: String,
    seen: Vec<String>,
    transcript: Vec<String>,
}

impl Console {
    pub(crate) async fn start(crates: &[&str]) -> Console {
        Console::start_with(&["--frames", "1"], crates).await
    }

    /// `host run --console ARGS` with the libraries of `crates`.
    pub(crate) async fn start_with(args: &[&str], crates: &[&str]) -> Console {
        let mut child = spawn_console(args, crates);
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut console =
            Console { child, stdin, stdout, last: String::new(), seen: Vec::new(), transcript: Vec::new() };
        console.expect(|line| line.starts_with("console ready")).await;
        console
    }

    /// Sends a command and returns the first output line matching `matches`.
    pub(crate) async fn ask(&mut self, command: &str, matches: impl Fn(&str) -> bool) -> String {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        self.transcript.push(format!("> {command}"));
        self.last = command.to_owned();
        self.expect(matches).await
    }

    async fn expect(&mut self, matches: impl Fn(&str) -> bool) -> String {
        self.seen.clear();
        let (stdout, seen, transcript) = (&mut self.stdout, &mut self.seen, &mut self.transcript);
        let found = tokio::time::timeout(FAILSAFE, async {
            loop {
                let line = stdout.next_line().await.unwrap();
                if let Some(line) = &line {
                    transcript.push(line.clone());
                }
                match line {
                    Some(line) if matches(&line) => return line,
                    Some(line) => seen.push(line),
                    None => panic!("the host exited"),
                }
            }
        });
        match found.await {
            Ok(line) => line,
            Err(_) => panic!("no expected answer to `{}`; transcript: {:#?}", self.last, self.transcript),
        }
    }
}

#[tokio::test]
async fn the_console_drives_the_lifecycle_frames_and_ipc() {
    let mut console = Console::start(&["hello", "probe"]).await;

    let list = console.ask("list", |l| l.starts_with("probe ")).await;
    assert_eq!(list, "probe 0.1.0 active");
    assert_eq!(console.ask("frames", |l| l.starts_with("frames:")).await, "frames: 1");

    // Acting as a renderer: invoke with JSON, see replies and typed errors.
    let reply =
        console.ask(r#"invoke hello greet "console""#, |l| l.starts_with("reply") || l.starts_with("error")).await;
    assert_eq!(reply, r#"reply: "Hello, console! (from hello's main)""#);
    let error = console.ask("invoke probe fail 3", |l| l.starts_with("error")).await;
    assert_eq!(error, "error: Handler: probe error 3: asked to fail");
    let error = console.ask("invoke probe nothing-here null", |l| l.starts_with("error")).await;
    assert!(error.starts_with("error: NoHandler: no handler for channel `nothing-here`"), "{error}");
    let error = console.ask("invoke probe echo {not json", |l| l.starts_with("error")).await;
    assert!(error.starts_with("error: the value is not JSON"), "{error}");

    // Broadcast as a renderer and watch the extension answer, from main and the frame.
    console.ask("watch on", |l| l == "ok").await;
    // The answer and the events print concurrently: gather all three, in any order.
    console.ask(r#"broadcast probe ping {"tag":"from-console"}"#, |l| l == "ok").await;
    let mut lines = std::mem::take(&mut console.seen);
    let has = |lines: &[String], prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    while !has(&lines, "event probe pong from main") || !has(&lines, "event probe pong from frame 1") {
        lines.push(console.expect(|l| l.starts_with("event probe pong")).await);
    }
    let pong = lines.iter().find(|l| l.starts_with("event probe pong from main")).unwrap();
    assert!(pong.contains(r#""tag":"from-console""#) && pong.contains(r#""sender":"host""#), "{pong}");
    console.ask("watch off", |l| l == "ok").await;

    // Frames.
    assert_eq!(console.ask("open", |l| l.starts_with("opened")).await, "opened frame 2");
    assert_eq!(console.ask("frames", |l| l.starts_with("frames:")).await, "frames: 1 2");
    assert_eq!(
        console.ask("reload 2", |l| l.starts_with("reloaded") || l.starts_with("error")).await,
        "reloaded frame 2"
    );
    assert_eq!(console.ask("close 2", |l| l.starts_with("closed") || l.starts_with("error")).await, "closed frame 2");
    let error = console.ask("close 2", |l| l.starts_with("error")).await;
    assert_eq!(error, "error: no frame 2 is open");

    // Inspect, deactivate, activate, uninstall.
    let inspect = console.ask("inspect probe", |l| l.starts_with('{')).await;
    let snapshot: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(snapshot["state"]["state"], "active");
    assert_eq!(snapshot["instance"]["halves"][0]["listeners"]["ping"], 1);
    assert_eq!(console.ask("deactivate probe", |l| l.contains("probe")).await, "deactivated probe");
    let inspect = console.ask("inspect probe", |l| l.starts_with('{')).await;
    let snapshot: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(snapshot["state"]["state"], "inactive");
    assert!(snapshot["instance"].is_null());
    let error = console.ask("invoke probe echo null", |l| l.starts_with("error")).await;
    assert!(error.starts_with("error: Deactivated"), "{error}");
    assert_eq!(console.ask("activate probe", |l| l.contains("probe")).await, "activated probe");
    assert_eq!(console.ask("uninstall hello", |l| l.contains("hello")).await, "uninstalled hello");
    assert_eq!(console.ask("list", |l| l.contains("active") || l == "no extensions").await, "probe 0.1.0 active");
    let error = console.ask("frobnicate", |l| l.starts_with("error")).await;
    assert_eq!(error, "error: unknown command `frobnicate` (type `help`)");

    console.ask("quit", |l| l == "console closed").await;
    let status = tokio::time::timeout(FAILSAFE, console.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}
