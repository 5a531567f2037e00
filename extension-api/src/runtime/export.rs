//! The `extern "C"` functions a descriptor points at. Every one of them catches panics: no
//! unwind ever crosses the library boundary.

use std::panic::{AssertUnwindSafe, catch_unwind};

use futures_util::future::BoxFuture;

use crate::abi::{
    self, ABI_VERSION, Descriptor, HostVTable, InstancePtr, RawLease, RawMessage, RawSlice, WebAsset, static_str,
};
use crate::error::BoxError;
use crate::extension::{MainExtension, RendererExtension};
use crate::ipc::{Main, Renderer};
use crate::message::Message;
use crate::runtime::instance::Instance;
use crate::runtime::lifecycle::Factory;
use crate::runtime::logging;
use crate::runtime::payload::{Lent, Payload, Queued};
use crate::runtime::state::Deactivator;
use crate::runtime::vtable::HostCalls;
use crate::wire::{Control, InstanceConfig};

/// The descriptor for an extension with main half `M` and renderer half `R`.
/// Used by [`crate::export_extension!`]; not meant to be called directly.
pub const fn descriptor<M: MainExtension, R: RendererExtension>(
    name: &'static str,
    version: &'static str,
) -> Descriptor {
    Descriptor {
        abi_version: ABI_VERSION,
        debug_build: cfg!(debug_assertions) as u32,
        name: static_str(name),
        version: static_str(version),
        api_version: static_str(env!("CARGO_PKG_VERSION")),
        instantiate: instantiate::<M, R>,
        control,
        deliver,
        deliver_leased,
        destroy,
        web_assets: std::ptr::null(),
        web_asset_count: 0,
    }
}

/// `descriptor` with the web renderer `assets` (from the `web_assets!` macro).
/// Used by [`crate::export_extension!`]; not meant to be called directly.
pub const fn with_web_assets(descriptor: Descriptor, assets: &'static [WebAsset]) -> Descriptor {
    Descriptor { web_assets: assets.as_ptr(), web_asset_count: assets.len(), ..descriptor }
}

fn activate_main<M: MainExtension>(ipc: Main) -> BoxFuture<'static, Result<Deactivator, BoxError>> {
    Box::pin(async move {
        let main = M::activate(ipc).await?;
        // `deactivate()` is called inside the future, so a panic in its synchronous part is
        // caught with the rest of it.
        let deactivator: Deactivator = Box::new(move || Box::pin(async move { main.deactivate().await }));
        Ok(deactivator)
    })
}

fn activate_renderer<R: RendererExtension>(ipc: Renderer) -> BoxFuture<'static, Result<Deactivator, BoxError>> {
    Box::pin(async move {
        let renderer = R::activate(ipc).await?;
        let deactivator: Deactivator = Box::new(move || Box::pin(async move { renderer.deactivate().await }));
        Ok(deactivator)
    })
}

unsafe extern "C" fn instantiate<M: MainExtension, R: RendererExtension>(
    host: *const HostVTable,
    key: u64,
    config: RawSlice,
) -> InstancePtr {
    let started = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes a pointer to its vtable, which lives as long as the host
        // process; null is refused by `as_ref`.
        let host = *unsafe { host.as_ref() }?;
        if host.abi_version != ABI_VERSION {
            return None;
        }
        // SAFETY: the host keeps `config` valid for this call.
        let config = unsafe { config.as_bytes() }?;
        let config: InstanceConfig = crate::wire::decode(config).ok()?;
        logging::install(host, key, config.max_log_level);
        let factory = Factory { activate_main: activate_main::<M>, activate_renderer: activate_renderer::<R> };
        // SAFETY: `host` is the host's vtable, and its ABI version was checked above.
        let calls = unsafe { HostCalls::new(host, key) };
        let instance = Instance::start(calls, config, factory).ok()?;
        Some(Box::into_raw(Box::new(instance)).cast())
    }));
    started.ok().flatten().unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn control(instance: InstancePtr, command: RawSlice) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host only passes pointers it got from `instantiate` and has not destroyed.
        let Some(instance) = (unsafe { instance.cast::<Instance>().as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: the host keeps `command` valid for this call.
        let Some(bytes) = (unsafe { command.as_bytes() }) else {
            return abi::status::INVALID;
        };
        match crate::wire::decode::<Control>(bytes) {
            Ok(command) => {
                instance.control(command);
                abi::status::OK
            }
            Err(_) => abi::status::INVALID,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn deliver(instance: InstancePtr, message: *const RawMessage) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host only passes pointers it got from `instantiate` and has not destroyed.
        let Some(instance) = (unsafe { instance.cast::<Instance>().as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: null is refused by `as_ref`; the host keeps `message` valid for this call.
        let Some(message) = (unsafe { message.as_ref() }) else {
            return abi::status::INVALID;
        };
        // Validated once, here at the edge; the instance queues its own copy. Its route comes
        // from where it arrived (the host), never from the message.
        // SAFETY: the host keeps the message's buffers valid for this call.
        match unsafe { Message::from_raw(message) } {
            Ok(message) => instance.deliver(message.to_owned()),
            Err(status) => status,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn deliver_leased(instance: InstancePtr, message: *const RawMessage, lease: RawLease) -> u32 {
    // The lease is this library's from here on: held over no bytes yet, it is released on
    // every way out (refused, invalid, a panic) when the guard drops.
    // SAFETY: the host made `release` callable once, from any thread (the ABI's contract).
    let lease = unsafe { Lent::new(lease) };
    catch_unwind(AssertUnwindSafe(move || {
        // SAFETY: the host only passes pointers it got from `instantiate` and has not destroyed.
        let Some(instance) = (unsafe { instance.cast::<Instance>().as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: null is refused by `as_ref`; the host keeps `message` valid for this call.
        let Some(message) = (unsafe { message.as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: the host keeps the message's buffers valid for this call.
        match unsafe { Message::from_raw(message) } {
            Ok(message) => {
                // Queued as lent (the channel copied, the payload read in place until the
                // message is dropped), validated as `deliver` validates it.
                // SAFETY: `deliver_leased`'s contract: the payload's bytes stay valid and
                // unchanged until the lease is released.
                let payload = Payload::Lent(unsafe { lease.reading(message.payload) });
                instance.deliver(Queued::new(&message, payload))
            }
            Err(status) => status,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn destroy(instance: InstancePtr) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        if instance.is_null() {
            return abi::status::INVALID;
        }
        // SAFETY: the pointer came from `Box::into_raw` in `instantiate`, and the host calls
        // `destroy` once, after its last `control` or `deliver` on it.
        let instance = unsafe { Box::from_raw(instance.cast::<Instance>()) };
        if instance.destroy() { abi::status::OK } else { abi::status::BUSY }
    }))
    .unwrap_or(abi::status::PANICKED)
}
