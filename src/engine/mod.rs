//! The I/O shell: the only place that owns sockets and reads the clock.
