//! Starting and stopping an extension's instances: each is an endpoint, registered with the
//! inbound side that routes for it (this process's key registry, or a child connection's
//! reader) and placed in its link. The one module that joins the layers, so that none of
//! them knows the others: inbound and routing above, endpoints and transports below.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use extension_api::abi::Descriptor;
use extension_api::wire::InstanceConfig;

use crate::child_process::{ChildProcess, LoadFailed};
use crate::endpoint::Endpoint;
use crate::inbound;
use crate::keys::next_key;
use crate::library_instance::Refused;
use crate::link::Link;
use crate::transport::{InProcess, Transport};

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    InProcess(#[from] Refused),
    #[error(transparent)]
    InChild(#[from] LoadFailed),
}

/// Starts an instance of the library in this process, for `link`.
pub(crate) fn start_in_process(
    link: &Arc<Link>,
    descriptor: &'static Descriptor,
    config: &InstanceConfig,
) -> Result<Arc<Endpoint>, StartError> {
    // Routing here is a synchronous call: requests between its halves may skip it.
    let config = InstanceConfig { route_within: true, ..config.clone() };
    let instance = InProcess::new(descriptor);
    let endpoint = Endpoint::new(next_key(), Transport::InProcess(instance));
    // Registered first: the instance may log while it starts.
    inbound::register(link, &endpoint);
    let started = match endpoint.transport() {
        Transport::InProcess(instance) => instance.instantiate(&inbound::HOST_VTABLE, endpoint.key, &config),
        _ => Err(Refused),
    };
    if let Err(refused) = started {
        inbound::forget(endpoint.key);
        return Err(refused.into());
    }
    Ok(endpoint)
}

/// Starts an instance of the library at `path` in the child process `process`, for `link`.
pub(crate) async fn start_in_child(
    link: &Arc<Link>,
    process: &ChildProcess,
    path: &Path,
    config: InstanceConfig,
    timeout: Duration,
) -> Result<Arc<Endpoint>, StartError> {
    Ok(process.start_instance(link, path, config, timeout).await?)
}

/// Stops an instance for good and takes it out of its link; false if it did not stop cleanly
/// in time (it is abandoned: nothing is routed to or from it any more).
pub(crate) async fn destroy(link: &Link, endpoint: &Endpoint) -> bool {
    let stopped = endpoint.destroy().await;
    // Forgotten last, so what the extension logs while its tasks are dropped still arrives.
    inbound::forget(endpoint.key);
    link.remove_endpoint(endpoint.key);
    stopped
}
