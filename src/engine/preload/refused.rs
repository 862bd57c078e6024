//! How many calls were refused because their traffic would bypass the tunnel, by kind:
//! process-wide counters the hooks' refusals (`leaks`, `connect`) add to and the engine
//! thread reads into this process's status file. Relaxed atomics: a count, not a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// A kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A UDP send (or connect) on a datagram socket.
    Udp,
    /// A raw or packet socket.
    Raw,
    /// A socket qnet cannot tunnel (another family or protocol).
    Socket,
    /// An exec of a setuid/setgid or file-capability program.
    Setuid,
    /// An exec of a program the hooks cannot reach (static, Go).
    Exec,
    /// A listener on an address other than loopback.
    Inbound,
    /// A connection received from another process that bypasses the tunnel.
    ReceivedFd,
    /// A connect to a bypassed resolver's DNS port.
    Dns,
}

/// Every kind, with its name in the status file.
const ALL: [(Refusal, &str); 8] = [
    (Refusal::Udp, "udp"),
    (Refusal::Raw, "raw"),
    (Refusal::Socket, "socket"),
    (Refusal::Setuid, "setuid"),
    (Refusal::Exec, "exec"),
    (Refusal::Inbound, "inbound"),
    (Refusal::ReceivedFd, "received_fd"),
    (Refusal::Dns, "dns"),
];

static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

/// Count one refusal of kind `r`.
pub(super) fn count(r: Refusal) {
    COUNTS[r as usize].fetch_add(1, Ordering::Relaxed);
}

/// Every kind's name and count.
pub(super) fn counts() -> Vec<(&'static str, u64)> {
    ALL.iter()
        .map(|&(r, name)| (name, COUNTS[r as usize].load(Ordering::Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_counter_in_table_order() {
        for (i, (r, _)) in ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let before = counts();
        count(Refusal::Dns);
        let after = counts();
        let dns = |c: &[(&str, u64)]| c.iter().find(|(n, _)| *n == "dns").unwrap().1;
        assert!(dns(&after) > dns(&before));
    }
}
