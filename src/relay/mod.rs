//! The server role of the engine: accept, authenticate, exit policy, dial.

pub mod policy;
pub mod server;
