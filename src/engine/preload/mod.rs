//! The preload runtime: what libqnet.so does inside the app's process, below the hooks.
//!
//! It runs in-process. The hooks decode raw arguments and call the safe operations here,
//! which answer with a [`Decision`]: call the real function, return a value, or fail with
//! an errno. Nothing here touches raw pointers. One engine thread per process (the
//! generic client loop of `engine::client`) carries every tunneled socket; it starts
//! lazily on the first tunneled connect, so a preloaded program that makes no connection
//! pays nothing. It fails closed: a missing config, an engine that cannot start or a
//! shut-down runtime makes tunneled calls fail, and never sends anything directly.
//!
//! - `runtime`: activation, the config singleton, the engine thread, the fork handlers.
//! - `connect`: a `connect` (or `qnet_connect`) becoming a tunneled flow.
//! - `tunneled`: what a tunneled fd answers (names, socket options, close).
//! - `leaks`: the calls refused because their traffic would bypass the tunnel.
//! - `published`: what the engine thread reports back (counters, local address).
//! - `refused`: the refusals' counts, by kind, for the status file.
//!
//! The thread-local bypass flag lives in `engine::bypass` and the one-time stderr line
//! in `engine::log`, below this module, since the resolver needs them too; both are
//! re-exported here for the hooks.

mod carried;
mod connect;
mod leaks;
mod published;
mod refused;
mod runtime;
mod tunneled;

pub(crate) use super::bypass::{BypassGuard, bypassed};
pub(crate) use super::log::tell_once;
pub(crate) use connect::{connect, connect_stream, route};
#[cfg(test)]
pub(crate) use leaks::socket_verdict;
pub(crate) use leaks::{
    FAMILIES, FamilyRule, INET_TYPES, NewSocket, OTHER_FAMILY, OTHER_INET_TYPE, SocketVerdict,
    TYPE_FLAGS, datagram_send, disarm_inherited, exec, listen, preload_value, received_fd, socket,
    unknown_datagram,
};
pub(crate) use published::STATS;
pub(crate) use runtime::{active, config, enable, free_engine_fd, init, preloaded, shutdown};
pub(crate) use tunneled::{close, local_of, peer_of, send_broken, sockopt_get, sockopt_set};

/// What a hook must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision<T> {
    /// Call the real function with the original arguments.
    Bypass,
    /// Return this value (success).
    Done(T),
    /// Fail with this errno.
    Refuse(i32),
}
