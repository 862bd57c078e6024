//! The server role of the engine: accept, authenticate, exit policy, extends, dial.

pub mod extend;
pub mod metrics;
pub mod policy;
pub mod server;
