//! Shared by the fuzz targets and the seed corpus generator: the stack decoding runs on, the
//! author types values are decoded into, and the decoders `boundary_values` picks from.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

/// The stack every input is decoded on. Decoding happens on threads with Rust's default 2 MiB
/// stack (the host's reader threads, tokio's workers, an extension's thread), in builds that
/// are often unoptimized (the dev profile); this harness is optimized, and its decoding frames
/// are 6 to 20 times smaller (measured: nested `rmpv::Value`s about 8 times, skipped unknown
/// fields about 20 times). A sixteenth of the default keeps a stack overflow an unoptimized
/// build would hit visible here.
pub const STACK: usize = 128 << 10;

/// Runs `check(input)` on a long-lived thread with a [`STACK`]-byte stack (one thread for the
/// whole run: starting one per input costs more than most inputs take to decode). A panic or a
/// stack overflow there aborts the process, which libFuzzer reports as a crash.
pub fn on_decoding_stack(input: &[u8], check: fn(&[u8])) {
    type Job = (Vec<u8>, fn(&[u8]));
    static WORKER: OnceLock<Mutex<(SyncSender<Job>, Receiver<()>)>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, next) = sync_channel::<Job>(0);
        let (done, finished) = sync_channel(0);
        std::thread::Builder::new()
            .name("decoding".to_owned())
            .stack_size(STACK)
            .spawn(move || {
                report_overflows_here();
                while let Ok((input, check)) = next.recv() {
                    check(&input);
                    if done.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("cannot start the decoding thread");
        Mutex::new((jobs, finished))
    });
    let worker = worker.lock().unwrap_or_else(PoisonError::into_inner);
    worker.0.send((input.to_vec(), check)).expect("the decoding thread ended");
    worker.1.recv().expect("the decoding thread ended");
}

/// Lets a stack overflow on the calling thread reach libFuzzer's crash handler (which saves the
/// input). A `no_main` binary never runs Rust's own overflow handler, and libFuzzer's runs on
/// the faulting thread's stack, which an overflow has used up: the process would just die. So:
/// an alternate signal stack for this thread, and libFuzzer's handler told to use it.
fn report_overflows_here() {
    const ALT_STACK: usize = 1 << 20;
    // Kept in a static for the rest of the process (so LeakSanitizer sees it is still used).
    static STACK: OnceLock<usize> = OnceLock::new();
    let stack = *STACK.get_or_init(|| Box::leak(vec![0u8; ALT_STACK].into_boxed_slice()).as_mut_ptr() as usize);
    let alt = libc::stack_t { ss_sp: stack as *mut libc::c_void, ss_flags: 0, ss_size: ALT_STACK };
    // SAFETY: the alternate stack is never freed: valid for the rest of the process.
    unsafe { libc::sigaltstack(&alt, std::ptr::null_mut()) };
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: reads the installed action and reinstalls the same handler with SA_ONSTACK.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0 && action.sa_sigaction != libc::SIG_DFL {
                action.sa_flags |= libc::SA_ONSTACK;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    }
}

/// An author's struct with named fields (how `extension-api` encodes values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub name: String,
    pub count: u32,
    pub ratio: f64,
    pub tags: Vec<String>,
    pub limits: BTreeMap<String, i64>,
    pub parent: Option<Box<Settings>>,
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
}

/// An author's struct holding binary data as `Binary` (a view of the message it came in, when
/// large).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub data: extension_api::Binary,
    pub parts: Vec<extension_api::Binary>,
}

/// An author's enum, recursive as syntax trees and commands often are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    Empty,
    Circle(f64),
    Rect { width: u32, height: u32 },
    Group(Vec<Shape>),
    Moved(Box<Shape>),
}

/// What `boundary_values` decodes its input as: the first byte picks (modulo the count), the
/// rest is the encoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Control,
    Completion,
    InstanceConfig,
    ErrorPayload,
    StoreWrite,
    StoreUpdate,
    StoreSnapshot,
    /// A [`extension_api::wire::OwnedMessage`] copied from a `RawMessage` whose buffers are
    /// slices of the input (not MessagePack).
    RawMessage,
    /// An error reply's payload, then its data as a [`Shape`] (what `InvokeError::data` does).
    ErrorData,
    Settings,
    Shape,
    Strings,
    Json,
    Rmpv,
    /// `Binary` values (`Vec<Binary>` and a struct holding one), decoded as a small value is
    /// and as a large one is (views of the input: `wire::decode_sharing`), which must agree.
    Binaries,
}

impl Decoder {
    pub const ALL: [Decoder; 15] = [
        Decoder::Control,
        Decoder::Completion,
        Decoder::InstanceConfig,
        Decoder::ErrorPayload,
        Decoder::StoreWrite,
        Decoder::StoreUpdate,
        Decoder::StoreSnapshot,
        Decoder::RawMessage,
        Decoder::ErrorData,
        Decoder::Settings,
        Decoder::Shape,
        Decoder::Strings,
        Decoder::Json,
        Decoder::Rmpv,
        Decoder::Binaries,
    ];

    /// The decoder a selector byte picks.
    pub fn pick(selector: u8) -> Decoder {
        Decoder::ALL[usize::from(selector) % Decoder::ALL.len()]
    }

    /// The selector byte that picks this decoder.
    pub fn selector(self) -> u8 {
        Decoder::ALL.iter().position(|decoder| *decoder == self).unwrap_or(0) as u8
    }
}
