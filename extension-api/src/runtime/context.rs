//! Which half's code is running right now, so `Main::get()` and `Renderer::current()` work
//! from anywhere in that half's code without threading a handle through every function.

use std::future::Future;
use std::sync::{RwLock, Weak};

use crate::abi::PEER_MAIN;
use crate::ipc::HalfHandle;
use crate::runtime::Shared;

tokio::task_local! {
    static CURRENT: HalfHandle;
}

/// The instance running in this process. One library copy hosts at most one instance at a
/// time (the host loads every extension from its own copy), so a static is exact.
static INSTANCE: RwLock<Option<Weak<Shared>>> = RwLock::new(None);

pub(crate) fn set_instance(shared: Option<Weak<Shared>>) {
    if let Ok(mut slot) = INSTANCE.write() {
        *slot = shared;
    }
}

pub(crate) fn instance() -> Option<Weak<Shared>> {
    INSTANCE.read().ok().and_then(|slot| slot.clone())
}

/// The renderer half of the instance in this process, when it can be the only one a task or
/// thread outside any half's context belongs to: the instance runs exactly one renderer half
/// and never ran another (whose plain `tokio::spawn` tasks might still be running). Always so in
/// a renderer process, where an instance serves one frame for its life.
pub(crate) fn only_renderer() -> Option<HalfHandle> {
    let shared = instance()?;
    let strong = shared.upgrade()?;
    let state = strong.state();
    if state.renderers_started != 1 {
        return None;
    }
    let mut renderers = state.halves.iter().filter(|(peer, _)| **peer != PEER_MAIN);
    match (renderers.next(), renderers.next()) {
        (Some((peer, half)), None) => Some(HalfHandle::new(shared.clone(), *peer, half.generation())),
        _ => None,
    }
}

/// The half whose code is running on this task, if any.
pub(crate) fn current() -> Option<HalfHandle> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` as code of `half`.
pub(crate) fn scope<F: Future>(half: HalfHandle, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(half, fut)
}

/// Runs `f` synchronously as code of `half`.
pub(crate) fn sync_scope<R>(half: HalfHandle, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(half, f)
}
