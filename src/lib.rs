//! qnet: an unmodified program's TCP traffic through an encrypted, traffic-shaped tunnel.
//!
//! Module dependency rules live in `docs/ARCHITECTURE.md`: `proto`, `keys`, `config`
//! are leaves; `engine` drives them; `relay` is the server role of the engine.
#![deny(unsafe_code)]

pub mod check;
pub mod config;
pub(crate) mod dns;
pub mod elf;
pub mod engine;
pub mod entropy;
pub mod ffi;
pub mod fileperm;
mod hooks;
pub mod jail;
pub mod keys;
pub mod net;
pub mod os;
pub mod proto;
pub mod relay;
pub mod sched;
mod sockaddr;
pub mod socks;
pub mod tor;
