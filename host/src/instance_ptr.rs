//! The pointer a library's `instantiate` gives back, made sendable once for both places that
//! hold one: the in-process transport and a child process's table of instances.

use std::ffi::c_void;

/// An instance pointer a library gave back from `instantiate`.
#[derive(Clone, Copy)]
pub(crate) struct InstancePtr(pub(crate) *mut c_void);

// SAFETY: a library's instance is built for use from any thread: `control` and `deliver` only
// queue work for its own runtime thread, behind its own synchronisation, and `destroy` is called
// once, by whoever took the pointer out of where it was kept.
unsafe impl Send for InstancePtr {}
// SAFETY: as for `Send`: every entry point of the instance synchronises internally.
unsafe impl Sync for InstancePtr {}
