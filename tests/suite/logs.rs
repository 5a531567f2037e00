//! Extension logs with the host's default configuration.

use extension_host::{Host, HostConfig, LevelFilter};

use crate::support::*;

/// An embedder that installs no tracing subscriber (this test binary installs none) still
/// gets the extensions' log records from `host.logs()`, at the documented default level.
#[tokio::test]
async fn the_default_config_forwards_extension_logs_at_info_without_a_subscriber() {
    assert_eq!(HostConfig::default().max_log_level, LevelFilter::INFO);
    let host = Host::new(HostConfig { child_program: host_binary(), ..HostConfig::default() });
    let mut logs = host.logs();
    host.load(library("probe")).unwrap();
    host.activate("probe").await.unwrap();
    let frame = host.open_frame().await;
    let record =
        wait_log(&mut logs, "probe", |message| message.starts_with(&format!("frame:{} activated", frame.0))).await;
    assert_eq!(record.level, "INFO");
    host.shutdown().await;
}
