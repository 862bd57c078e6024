//! qnet-relay: the tunnel's server end.
fn main() {}
