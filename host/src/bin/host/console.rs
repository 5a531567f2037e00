//! The dev console of `host run --console`: one command per stdin line, answers on stdout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use extension_host::{ChannelKind, FrameId, FrameKind, HostSnapshot};
use extension_host::{Host, OneLine, WebConfig, WebServer};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};

use crate::notation;

const HELP: &str = "\
commands:
  list                              extensions and their state
  frames                            open frames
  load PATH                         load a library
  activate NAME | deactivate NAME | uninstall NAME [--purge]
                                    (`--purge`: delete its persisted data too; kept otherwise)
  open [child] | close FRAME | reload FRAME     frames (`open child`: in a renderer process)
  open web                          the URL of the web frames' shell (serving it on loopback
                                    if the host is not serving yet): each page open there is a frame
  isolate NAME on|off               run NAME's main half in its own process from its next activation
  broadcast NAME CHANNEL JSON       broadcast into NAME's namespace, as the host
  invoke NAME CHANNEL JSON          invoke NAME's main handler, as the host
  inspect [NAME]                    the inspect snapshot, as JSON
  top [N]                           which extension uses what, redrawn every second; ends
                                    after N refreshes, or on any input line
  watch on|off                      print every broadcast the host routes
  quit
values (in and out) are JSON, plus what JSON cannot say:
  {\"$bin\": [0, 1, 255]}             binary data
  {\"$map\": [[1, \"one\"], [2, \"two\"]]}  a map with keys of any type, as [key, value] pairs
  {\"$ext\": [TYPE, [BYTES]]}          a MessagePack extension value";

/// Reads commands until `quit` or end of input. `web` is the web server, if the host serves
/// one (`open web` starts one otherwise); it is given back.
pub async fn run(host: &Host, mut web: Option<WebServer>) -> Option<WebServer> {
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
        if line == "top" || line.starts_with("top ") {
            let refreshes = match line["top".len()..].trim() {
                "" => None,
                count => match count.parse::<u64>() {
                    Ok(count) if count > 0 => Some(count),
                    _ => {
                        println!("error: `{}` is not a number of refreshes (1 or more)", OneLine(count));
                        continue;
                    }
                },
            };
            if !top(host, &mut lines, refreshes).await {
                break;
            }
            continue;
        }
        if line == "open web" {
            if web.is_none() {
                match host.serve_web(WebConfig::default()) {
                    Ok(server) => web = Some(server),
                    Err(error) => println!("error: {}", OneLine(&error.to_string())),
                }
            }
            if let Some(server) = &web {
                println!("web frames: {}", server.url());
            }
            continue;
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
    web
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
            let frames: Vec<String> = host
                .inspect()
                .await
                .frames
                .iter()
                .map(|frame| match (&frame.kind, &frame.url) {
                    (FrameKind::Web, Some(url)) => format!("{}(web {url})", frame.id),
                    _ => frame.id.to_string(),
                })
                .collect();
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

/// How often `top` redraws.
const TOP_REFRESH: Duration = Duration::from_secs(1);

/// What `top` compares between two refreshes, per extension: CPU time and requests handled.
type Sample = BTreeMap<String, (u64, u64)>;

fn sample(snapshot: &HostSnapshot) -> Sample {
    snapshot
        .extensions
        .iter()
        .map(|extension| {
            let instance = extension.instance.as_ref();
            let cpu = extension
                .process
                .and_then(|process| process.cpu_ns)
                .or_else(|| instance.and_then(|instance| instance.cpu_ns))
                .unwrap_or(0);
            let requests = instance.map_or(0, |instance| {
                instance.channels.iter().filter(|c| c.kind == ChannelKind::Request).map(|c| c.count).sum()
            });
            (extension.info.name.clone(), (cpu, requests))
        })
        .collect()
}

/// Redraws the usage table in place every [`TOP_REFRESH`] until `refreshes` were shown or a
/// line arrives on stdin. False if stdin ended.
async fn top<R: AsyncBufRead + Unpin>(host: &Host, lines: &mut Lines<R>, refreshes: Option<u64>) -> bool {
    let mut previous = (Instant::now(), sample(&host.inspect().await));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TOP_REFRESH, TOP_REFRESH);
    let (mut shown, mut drawn) = (0u64, 0usize);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let snapshot = host.inspect().await;
                let now = Instant::now();
                let current = sample(&snapshot);
                let table = top_table(&snapshot, &previous.1, &current, now.duration_since(previous.0));
                // Up over the last table, and clear to the end of the screen.
                if drawn > 0 {
                    print!("\x1b[{drawn}A\x1b[J");
                }
                println!("{table}");
                drawn = table.lines().count();
                previous = (now, current);
                shown += 1;
                if refreshes.is_some_and(|refreshes| shown >= refreshes) {
                    println!("top done");
                    return true;
                }
            }
            line = lines.next_line() => {
                return match line {
                    Ok(Some(_)) => {
                        println!("top done");
                        true
                    }
                    _ => false,
                };
            }
        }
    }
}

/// The last column of `top`: what the watchdog reports, or, before it does, that an instance
/// did not answer this refresh's inspect (its figures are then missing, not zero).
fn flag(unresponsive: bool, unanswered: usize) -> String {
    match (unresponsive, unanswered) {
        (true, _) => "UNRESPONSIVE".into(),
        (false, 0) => String::new(),
        (false, 1) => "NO ANSWER".into(),
        (false, count) => format!("NO ANSWER ({count} instances)"),
    }
}

fn top_table(snapshot: &HostSnapshot, before: &Sample, now: &Sample, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut rows = vec![
        ["EXTENSION", "STATE", "CPU%", "CPU TIME", "RSS", "HELD", "REQ/S", "P99", "SLOWEST", "MAILBOX", ""]
            .map(str::to_owned),
    ];
    let mut extensions: Vec<_> = snapshot.extensions.iter().collect();
    // The heaviest first.
    let cpu_delta = |name: &str| {
        let (cpu, _) = now.get(name).copied().unwrap_or_default();
        let (cpu_before, _) = before.get(name).copied().unwrap_or_default();
        cpu.saturating_sub(cpu_before)
    };
    // Busiest first: by CPU% as shown (tenths of a percent), then by CPU time.
    let tenths = |name: &str| (cpu_delta(name) as f64 / 1e8 / seconds).round() as u64;
    extensions.sort_by_key(|extension| {
        let name = &extension.info.name;
        std::cmp::Reverse((tenths(name), now.get(name).map_or(0, |(cpu, _)| *cpu)))
    });
    for extension in extensions {
        let name = &extension.info.name;
        let (cpu, requests) = now.get(name).copied().unwrap_or_default();
        let (_, requests_before) = before.get(name).copied().unwrap_or_default();
        let instance = extension.instance.as_ref();
        let requests_channels = || {
            instance
                .into_iter()
                .flat_map(|instance| instance.channels.iter())
                .filter(|c| c.kind == ChannelKind::Request)
        };
        let p99 = requests_channels().map(|c| c.p99_ns).max();
        let slowest = instance
            .into_iter()
            .flat_map(|instance| instance.channels.iter())
            .max_by_key(|c| c.max_ns)
            .map(|c| format!("{} {} ({})", c.kind, OneLine(&c.channel), nanos(c.max_ns)));
        let running = instance.is_some();
        rows.push([
            OneLine(name).to_string(),
            extension.state.to_string().split(':').next().unwrap_or_default().to_owned(),
            if running { format!("{:.1}", cpu_delta(name) as f64 / 1e9 / seconds * 100.0) } else { "-".into() },
            if running { nanos(cpu) } else { "-".into() },
            extension.process.and_then(|process| process.rss_bytes).map_or_else(|| "-".into(), bytes),
            instance.map_or_else(|| "-".into(), |i| bytes(i.store_bytes + i.queued_bytes + i.binary_bytes)),
            if running {
                format!("{:.0}", requests.saturating_sub(requests_before) as f64 / seconds)
            } else {
                "-".into()
            },
            p99.map_or_else(|| "-".into(), nanos),
            slowest.unwrap_or_else(|| "-".into()),
            instance.map_or_else(|| "-".into(), |i| (i.queued_messages + i.batch_messages).to_string()),
            flag(extension.unresponsive, extension.unanswered),
        ]);
    }
    let mut widths = [0usize; 11];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn nanos(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.1}KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1}MiB", bytes as f64 / 1_048_576.0),
    }
}

/// A MessagePack value as console JSON (`notation`: binary as `$bin`, other maps as `$map`).
fn msgpack_to_json(bytes: &[u8]) -> String {
    match extension_api::wire::decode::<rmpv::Value>(bytes) {
        Ok(value) => notation::to_json(&value).to_string(),
        Err(error) => format!("<undecodable MessagePack: {error}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::flag;

    #[test]
    fn top_flags_an_instance_that_did_not_answer_until_the_watchdog_reports_it() {
        assert_eq!(flag(false, 0), "");
        assert_eq!(flag(false, 1), "NO ANSWER");
        assert_eq!(flag(false, 2), "NO ANSWER (2 instances)");
        assert_eq!(flag(true, 1), "UNRESPONSIVE");
    }
}
