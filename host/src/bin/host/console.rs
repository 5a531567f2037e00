//! The dev console of `host run --console`: one command per stdin line, answers on stdout.

use std::time::Duration;

use extension_host::FrameId;
use extension_host::{Host, OneLine};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::notation;

const HELP: &str = "\
commands:
  list                              extensions and their state
  frames                            open frames
  load PATH                         load a library
  activate NAME | deactivate NAME | uninstall NAME [--purge]
                                    (`--purge`: delete its persisted data too; kept otherwise)
  open [child] | close FRAME | reload FRAME     frames (`open child`: in a renderer process)
  isolate NAME on|off               run NAME's main half in its own process from its next activation
  broadcast NAME CHANNEL JSON       broadcast into NAME's namespace, as the host
  invoke NAME CHANNEL JSON          invoke NAME's main handler, as the host
  inspect [NAME]                    the inspect snapshot, as JSON
  watch on|off                      print every broadcast the host routes
  quit
values (in and out) are JSON, plus what JSON cannot say:
  {\"$bin\": [0, 1, 255]}             binary data
  {\"$map\": [[1, \"one\"], [2, \"two\"]]}  a map with keys of any type, as [key, value] pairs
  {\"$ext\": [TYPE, [BYTES]]}          a MessagePack extension value";

/// Reads commands until `quit` or end of input.
pub async fn run(host: &Host) {
    println!("console ready (type `help`)");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                println!("error: cannot read stdin: {error}");
                break;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" || line == "exit" {
            break;
        }
        if let Some(mode) = line.strip_prefix("watch ") {
            if let Some(task) = watcher.take() {
                task.abort();
            }
            if mode.trim() == "on" {
                watcher = Some(tokio::spawn(watch(host.broadcasts())));
            }
            println!("ok");
            continue;
        }
        match execute(host, line).await {
            Ok(output) => println!("{output}"),
            Err(error) => println!("error: {}", OneLine(&error)),
        }
    }
    if let Some(task) = watcher {
        task.abort();
    }
    println!("console closed");
}

async fn watch(mut broadcasts: tokio::sync::broadcast::Receiver<extension_host::ObservedBroadcast>) {
    loop {
        match broadcasts.recv().await {
            Ok(event) => {
                let value = msgpack_to_json(&event.payload);
                let channel = OneLine(&event.channel);
                println!("event {} {channel} from {}: {value}", event.extension, event.sender());
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                println!("event (missed {missed} broadcasts: the console is slower than the traffic)");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Splits `NAME CHANNEL JSON` (the JSON may contain spaces).
fn name_channel_json(rest: &str) -> Result<(&str, &str, Vec<u8>), String> {
    let mut parts = rest.splitn(3, ' ');
    let (Some(name), Some(channel)) = (parts.next(), parts.next()) else {
        return Err("expected NAME CHANNEL JSON".into());
    };
    let json = parts.next().unwrap_or("null");
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("the value is not JSON: {error}"))?;
    let value = notation::from_json(&value).map_err(|error| format!("the value is not valid: {error}"))?;
    let mut payload = Vec::new();
    rmpv::encode::write_value(&mut payload, &value).map_err(|error| format!("cannot encode the value: {error}"))?;
    Ok((name, channel, payload))
}

fn frame_arg(rest: &str) -> Result<FrameId, String> {
    rest.trim().parse().map(FrameId).map_err(|_| format!("`{rest}` is not a frame number"))
}

async fn execute(host: &Host, line: &str) -> Result<String, String> {
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let text = |error: &dyn std::fmt::Display| error.to_string();
    match command {
        "help" => Ok(HELP.to_owned()),
        "list" => {
            let snapshot = host.inspect().await;
            let lines: Vec<String> = snapshot
                .extensions
                .iter()
                .map(|e| format!("{} {} {}", e.info.name, e.info.version, OneLine(&e.state.to_string())))
                .collect();
            Ok(if lines.is_empty() { "no extensions".into() } else { lines.join("\n") })
        }
        "frames" => {
            let frames: Vec<String> = host.frames().iter().map(|frame| frame.0.to_string()).collect();
            Ok(format!("frames: {}", frames.join(" ")))
        }
        "load" => host.load(rest).map(|info| format!("loaded {} {}", info.name, info.version)).map_err(|e| text(&e)),
        "activate" => host.activate(rest).await.map(|()| format!("activated {rest}")).map_err(|e| text(&e)),
        "deactivate" => host
            .deactivate(rest)
            .await
            .map(|report| {
                if report.problems.is_empty() {
                    format!("deactivated {rest}")
                } else {
                    format!("deactivated {rest} (problems: {})", OneLine(&report.problems.join("; ")))
                }
            })
            .map_err(|e| text(&e)),
        "uninstall" => match rest.strip_suffix("--purge").map(str::trim) {
            Some(name) => host
                .uninstall_purge(name)
                .await
                .map(|()| format!("uninstalled {name}, data purged"))
                .map_err(|e| text(&e)),
            None => host.uninstall(rest).await.map(|()| format!("uninstalled {rest}")).map_err(|e| text(&e)),
        },
        "open" if rest == "child" => host
            .open_child_frame()
            .await
            .map(|frame| format!("opened frame {} in a renderer process", frame.0))
            .map_err(|e| text(&e)),
        "open" => Ok(format!("opened frame {}", host.open_frame().await.0)),
        "isolate" => {
            let (name, mode) = rest.split_once(' ').ok_or("expected NAME on|off")?;
            let isolated = match mode.trim() {
                "on" => true,
                "off" => false,
                other => return Err(format!("expected on or off, not `{other}`")),
            };
            host.set_isolated(name, isolated).map(|()| format!("{name} isolated: {isolated}")).map_err(|e| text(&e))
        }
        "close" => {
            let frame = frame_arg(rest)?;
            host.close_frame(frame).await.map(|()| format!("closed frame {}", frame.0)).map_err(|e| text(&e))
        }
        "reload" => {
            let frame = frame_arg(rest)?;
            host.reload_frame(frame).await.map(|()| format!("reloaded frame {}", frame.0)).map_err(|e| text(&e))
        }
        "broadcast" => {
            let (name, channel, payload) = name_channel_json(rest)?;
            host.broadcast_raw(name, channel, &payload).map(|()| "ok".to_owned()).map_err(|e| text(&e))
        }
        "invoke" => {
            let (name, channel, payload) = name_channel_json(rest)?;
            match host.invoke_raw(name, channel, &payload, Duration::from_secs(10)).await {
                Ok(reply) => Ok(format!("reply: {}", msgpack_to_json(&reply))),
                Err(error) => Err(format!("{:?}: {}", error.kind, error.message)),
            }
        }
        "inspect" => {
            let snapshot = host.inspect().await;
            let json = if rest.is_empty() {
                serde_json::to_string(&snapshot)
            } else {
                let extension =
                    snapshot.extension(rest).ok_or_else(|| format!("no extension named `{rest}` is loaded"))?;
                serde_json::to_string(extension)
            };
            json.map_err(|e| text(&e))
        }
        other => Err(format!("unknown command `{other}` (type `help`)")),
    }
}

/// A MessagePack value as console JSON (`notation`: binary as `$bin`, other maps as `$map`).
fn msgpack_to_json(bytes: &[u8]) -> String {
    match extension_api::wire::decode::<rmpv::Value>(bytes) {
        Ok(value) => notation::to_json(&value).to_string(),
        Err(error) => format!("<undecodable MessagePack: {error}>"),
    }
}
