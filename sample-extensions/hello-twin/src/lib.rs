//! `hello-twin`: the very same code as `hello`, under another name. Both use the channels
//! `initialize` and `greet`; each sees only its own traffic, because the host keeps every
//! extension in its own namespace. It embeds `hello`'s web renderer too (see `hello`'s
//! `lib.rs`).

#[path = "../../hello/src/lib.rs"]
mod hello;
