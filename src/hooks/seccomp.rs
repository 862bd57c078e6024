//! Kernel-enforced limits for a preloaded program: at load, `PR_SET_NO_NEW_PRIVS` and a
//! seccomp filter on every thread, so what gets around the hooks (raw syscalls, a libc
//! reached through `dlopen`, io_uring, children that lose the preload) still cannot
//! create a socket the policy does not allow:
//!
//! - io_uring_setup/enter/register fail with ENOSYS: programs fall back to the plain
//!   syscalls, which the hooks see.
//! - `socket(2)`: AF_UNIX; AF_NETLINK (a kernel interface that sends nothing off the
//!   host: glibc's getaddrinfo with AI_ADDRCONFIG and if_nameindex ask NETLINK_ROUTE);
//!   AF_INET/AF_INET6 stream with protocol 0, TCP or MPTCP; inet datagram with protocol
//!   0 or UDP (created so programs can probe; the hooks refuse their sends). Raw and
//!   packet sockets (and other datagram protocols: ICMP, UDP-Lite) only with
//!   `intercept.allow_udp`, otherwise EPERM. Any other inet socket (SCTP, DCCP) fails
//!   with EPROTONOSUPPORT, any other family (AF_VSOCK, AF_XDP, AF_BLUETOOTH …) with
//!   EAFNOSUPPORT. This part is compiled from the table the `socket` hook reads
//!   (`engine::preload::FAMILIES`, `INET_TYPES`), so with the filter off
//!   (`intercept.seccomp = false`) the hook answers the same.
//!
//! The filter stays across exec, so it also holds in children the preload does not reach.
//! A 32-bit (i386) or x32 child cannot be preloaded with this library at all, so no hook
//! would see its sockets: for those ABIs the filter allows only AF_UNIX and AF_NETLINK
//! sockets through `socket(2)`, refuses `socketcall(SYS_SOCKET)` (its arguments sit in
//! memory a filter cannot read) and io_uring, and allows every other call. Such a child
//! runs, but it has no network except through unix sockets.
//!
//! Hand-written classic BPF rather than `seccompiler`: the policy needs a different errno
//! per branch (ENOSYS, EPERM, EPROTONOSUPPORT, EAFNOSUPPORT) and a second architecture,
//! neither of which seccompiler's one-action-per-filter, one-arch model expresses, and it
//! is about fifty instructions. [`program`] is pure; its tests run it through a small
//! interpreter over every case, and install it in forked children.

use std::ffi::c_int;

use libc::sock_filter;

use crate::engine::preload::{
    FAMILIES, FamilyRule, INET_TYPES, OTHER_FAMILY, OTHER_INET_TYPE, SocketVerdict, TYPE_FLAGS,
};

/// What the filter allows beyond the fixed policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Raw and packet sockets and non-UDP datagram protocols (`intercept.allow_udp`).
    pub(crate) raw: bool,
}

// ---- the kernel's ABI constants that libc does not carry -------------------------------

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const X86_64_SOCKET: u32 = 41;
const I386_SOCKET: u32 = 359;
const I386_SOCKETCALL: u32 = 102;
/// socketcall's first argument for socket(2) (linux/net.h SYS_SOCKET).
const SOCKETCALL_SOCKET: u32 = 1;
/// io_uring_setup, io_uring_enter, io_uring_register: the same numbers on every ABI.
const IO_URING_FIRST: u32 = 425;
const IO_URING_LAST: u32 = 427;

// struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian: an
// argument's low 32 bits come first). socket(2) takes ints, so the kernel reads only
// those low bits, and so does the filter.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const fn errno(e: c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// `io_uring_register(-1, MARK_OPCODE, …)` answers with [`mark`]'s errno under this
/// filter (EBADF without it): a child that inherited the same filter does not stack a
/// second copy, which every later syscall would also run.
const MARK_OPCODE: u32 = 0x716e_6574; // "qnet"

/// The errno the mark probe gets under the filter for `p` (4000..4095, which no kernel
/// call returns; MAX_ERRNO is 4095). It names the filter's version and policy.
fn mark(p: Policy) -> c_int {
    const VERSION: c_int = 1;
    4000 + VERSION * 2 + c_int::from(p.raw)
}

// ---- a two-pass assembler with labels -----------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum L {
    X86_64,
    Uring,
    Register,
    Mark,
    Socket,
    Inet,
    /// The protocol check of `INET_TYPES[i]`.
    InetType(usize),
    /// `Ret(k)`, emitted once at the end for each return value jumped to.
    Ret(u32),
    X32,
    X32Uring,
    I386,
    I386Uring,
    Socketcall,
    LocalOnly,
    NoFamily,
    Allow,
}

enum Ins {
    Label(L),
    Load(u32),
    And(u32),
    /// if A == k goto t else fall through
    Jeq(u32, L),
    /// if A >= k goto t else fall through
    Jge(u32, L),
    /// if A > k goto t else fall through
    Jgt(u32, L),
    Ret(u32),
}

fn assemble(src: &[Ins]) -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_K, BPF_LD};
    use libc::{BPF_RET, BPF_W};
    let mut at = Vec::new();
    let mut n = 0usize;
    for i in src {
        match i {
            Ins::Label(l) => at.push((*l, n)),
            _ => n += 1,
        }
    }
    let target = |l: L, pc: usize| {
        let to = at.iter().find(|(m, _)| *m == l).expect("label defined").1;
        // Classic BPF jumps only forward, at most 255 instructions.
        u8::try_from(to - pc - 1).expect("jump in range")
    };
    let mut out = Vec::with_capacity(n);
    for i in src {
        let pc = out.len();
        let (code, k, jt) = match *i {
            Ins::Label(_) => continue,
            Ins::Load(off) => (BPF_LD | BPF_W | BPF_ABS, off, 0),
            Ins::And(k) => (BPF_ALU | BPF_AND | BPF_K, k, 0),
            Ins::Jeq(k, l) => (BPF_JMP | BPF_JEQ | BPF_K, k, target(l, pc)),
            Ins::Jge(k, l) => (BPF_JMP | BPF_JGE | BPF_K, k, target(l, pc)),
            Ins::Jgt(k, l) => (BPF_JMP | BPF_JGT | BPF_K, k, target(l, pc)),
            Ins::Ret(k) => (BPF_RET | BPF_K, k, 0),
        };
        out.push(sock_filter {
            code: code as u16,
            jt,
            jf: 0,
            k,
        });
    }
    out
}

/// The filter for `p`. Every syscall other than socket, socketcall and io_uring is
/// decided from the architecture and number alone, so the kernel's per-syscall cache
/// (Linux 5.11+) allows those without running the filter at all.
pub(crate) fn program(p: Policy) -> Vec<sock_filter> {
    use Ins::*;
    let mut src = vec![
        Load(OFF_ARCH),
        Jeq(AUDIT_ARCH_X86_64, L::X86_64),
        Jeq(AUDIT_ARCH_I386, L::I386),
        // No other architecture can call into an x86-64 kernel.
        Ret(errno(libc::ENOSYS)),
        // -- x86-64 --
        Label(L::X86_64),
        Load(OFF_NR),
        Jge(X32_SYSCALL_BIT, L::X32),
        Jeq(X86_64_SOCKET, L::Socket),
        Jge(IO_URING_FIRST, L::Uring),
        Ret(ALLOW),
        Label(L::Uring),
        Jgt(IO_URING_LAST, L::Allow),
        Jeq(IO_URING_LAST, L::Register),
        Ret(errno(libc::ENOSYS)),
        Label(L::Register),
        Load(off_arg(1)),
        Jeq(MARK_OPCODE, L::Mark),
        Ret(errno(libc::ENOSYS)),
        Label(L::Mark),
        Ret(errno(mark(p))),
    ];
    socket_rules(p, &mut src);
    src.extend([
        // -- x32: the x86-64 numbers with X32_SYSCALL_BIT set --
        Label(L::X32),
        Jeq(X32_SYSCALL_BIT | X86_64_SOCKET, L::LocalOnly),
        Jge(X32_SYSCALL_BIT | IO_URING_FIRST, L::X32Uring),
        Ret(ALLOW),
        Label(L::X32Uring),
        Jgt(X32_SYSCALL_BIT | IO_URING_LAST, L::Allow),
        Ret(errno(libc::ENOSYS)),
        // -- i386 --
        Label(L::I386),
        Load(OFF_NR),
        Jeq(I386_SOCKET, L::LocalOnly),
        Jeq(I386_SOCKETCALL, L::Socketcall),
        Jge(IO_URING_FIRST, L::I386Uring),
        Ret(ALLOW),
        Label(L::I386Uring),
        Jgt(IO_URING_LAST, L::Allow),
        Ret(errno(libc::ENOSYS)),
        // socketcall(call, args): the family sits in memory a filter cannot read.
        Label(L::Socketcall),
        Load(off_arg(0)),
        Jeq(SOCKETCALL_SOCKET, L::NoFamily),
        Ret(ALLOW),
        // socket(2) in an ABI the library cannot be preloaded into: the families the
        // policy allows outright (local ones) only.
        Label(L::LocalOnly),
        Load(off_arg(0)),
    ]);
    for &(family, rule) in FAMILIES {
        if rule == FamilyRule::Is(SocketVerdict::Allow) {
            src.push(Jeq(family as u32, L::Allow));
        }
    }
    src.extend([
        Label(L::NoFamily),
        Ret(errno(libc::EAFNOSUPPORT)),
        Label(L::Allow),
        Ret(ALLOW),
    ]);
    // The shared returns the socket rules jump to, each once.
    let mut rets: Vec<u32> = src
        .iter()
        .filter_map(|i| match i {
            Jeq(_, L::Ret(k)) => Some(*k),
            _ => None,
        })
        .collect();
    rets.sort_unstable();
    rets.dedup();
    for k in rets {
        src.extend([Label(L::Ret(k)), Ret(k)]);
    }
    assemble(&src)
}

/// `socket(family, type, protocol)` on x86-64, compiled from the policy table the
/// `socket` hook reads (`engine::preload::FAMILIES` and `INET_TYPES`).
fn socket_rules(p: Policy, src: &mut Vec<Ins>) {
    use Ins::*;
    let ret = |v: SocketVerdict| match v {
        // UDP sockets are created; the hooks refuse their sends.
        SocketVerdict::Allow | SocketVerdict::Udp => ALLOW,
        SocketVerdict::Raw if p.raw => ALLOW,
        SocketVerdict::Raw => errno(libc::EPERM),
        SocketVerdict::Errno(e) => errno(e),
    };
    let to = |v: SocketVerdict| match ret(v) {
        ALLOW => L::Allow,
        k => L::Ret(k),
    };
    src.extend([Label(L::Socket), Load(off_arg(0))]);
    for &(family, rule) in FAMILIES {
        let target = match rule {
            FamilyRule::Is(v) => to(v),
            FamilyRule::Inet => L::Inet,
        };
        src.push(Jeq(family as u32, target));
    }
    src.extend([
        Ret(ret(OTHER_FAMILY)),
        Label(L::Inet),
        Load(off_arg(1)),
        // A type with flags the kernel does not know stays unequal to all of these.
        And(!(TYPE_FLAGS as u32)),
    ]);
    for (i, &(ty, protos, other)) in INET_TYPES.iter().enumerate() {
        src.push(if protos.is_empty() {
            Jeq(ty as u32, to(other))
        } else {
            Jeq(ty as u32, L::InetType(i))
        });
    }
    src.push(Ret(ret(OTHER_INET_TYPE)));
    for (i, &(_, protos, other)) in INET_TYPES.iter().enumerate() {
        if protos.is_empty() {
            continue;
        }
        src.extend([Label(L::InetType(i)), Load(off_arg(2))]);
        for &(proto, v) in protos {
            src.push(Jeq(proto as u32, to(v)));
        }
        src.push(Ret(ret(other)));
    }
}

// ---- installing it -------------------------------------------------------------------

/// Which step failed, with the kernel's errno.
#[derive(Debug)]
enum Failed {
    NoNewPrivs(std::io::Error),
    Filter(std::io::Error),
    /// TSYNC could not bring this thread in line (it runs another filter).
    Thread(libc::c_long),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NoNewPrivs(e) => write!(f, "prctl(PR_SET_NO_NEW_PRIVS): {e}"),
            Failed::Filter(e) => write!(f, "seccomp(SET_MODE_FILTER): {e}"),
            Failed::Thread(t) => write!(f, "seccomp: thread {t} runs another filter"),
        }
    }
}

/// `PR_SET_NO_NEW_PRIVS` (required for an unprivileged filter), then `prog` on every
/// thread of the process (TSYNC: another library's constructor may have started one).
/// No allocation: the unit tests call it in a forked child of a threaded process.
fn install(prog: &[sock_filter]) -> Result<(), Failed> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Failed::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).expect("a short program"),
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &raw const fprog,
        )
    };
    match r {
        0 => Ok(()),
        t if t > 0 => Err(Failed::Thread(t)),
        _ => Err(Failed::Filter(std::io::Error::last_os_error())),
    }
}

/// Whether this process already runs the filter for `p` (inherited from a parent).
fn installed(p: Policy) -> bool {
    // SAFETY: io_uring_register on fd -1 with no argument: EBADF without the filter.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            libc::c_long::from(u32::MAX),
            libc::c_long::from(MARK_OPCODE),
            0,
            0,
        )
    };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(mark(p))
}

/// At load of the preloaded library: the filter the config asks for (`intercept.seccomp`,
/// `QNET_SECCOMP`; raw sockets per `intercept.allow_udp`). A config that does not load
/// gets the default, the strict filter (the hooks then fail every tunneled call closed).
/// Where the kernel refuses, one stderr line, and the hooks alone guard the process.
pub(super) fn at_load() {
    let (on, p) = match crate::engine::preload::config() {
        Ok(c) => (
            c.intercept.seccomp,
            Policy {
                raw: c.intercept.allow_udp,
            },
        ),
        Err(_) => (true, Policy { raw: false }),
    };
    if !on || installed(p) {
        return;
    }
    if let Err(e) = install(&program(p)) {
        crate::engine::log::write_line(format_args!(
            "qnet: no seccomp filter ({e}); only the hooks guard this process (intercept.seccomp = false silences this)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classic BPF as the kernel runs a seccomp filter, for the instructions [`assemble`]
    /// emits; `data` is struct seccomp_data.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        use libc::{BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_K};
        use libc::{BPF_LD, BPF_RET, BPF_W};
        let word = |off: u32| -> u32 {
            match off {
                OFF_NR => nr,
                OFF_ARCH => arch,
                o if o >= 16 && (o - 16) % 4 == 0 && o < 64 => {
                    let a = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            if code == BPF_LD | BPF_W | BPF_ABS {
                acc = word(i.k);
            } else if code == BPF_ALU | BPF_AND | BPF_K {
                acc &= i.k;
            } else if code == BPF_RET | BPF_K {
                return i.k;
            } else {
                let hit = match code {
                    c if c == BPF_JMP | BPF_JEQ | BPF_K => acc == i.k,
                    c if c == BPF_JMP | BPF_JGE | BPF_K => acc >= i.k,
                    c if c == BPF_JMP | BPF_JGT | BPF_K => acc > i.k,
                    c => panic!("opcode {c:#x}"),
                };
                pc += usize::from(if hit { i.jt } else { i.jf });
            }
        }
    }

    const STRICT: Policy = Policy { raw: false };
    const LOOSE: Policy = Policy { raw: true };

    fn sock(p: Policy, arch: u32, nr: u32, dom: c_int, ty: c_int, proto: c_int) -> u32 {
        let a = |v: c_int| u64::from(v as u32);
        run(&program(p), nr, arch, [a(dom), a(ty), a(proto), 0, 0, 0])
    }
    fn x64(p: Policy, dom: c_int, ty: c_int, proto: c_int) -> u32 {
        sock(p, AUDIT_ARCH_X86_64, X86_64_SOCKET, dom, ty, proto)
    }

    #[test]
    fn socket_policy_on_x86_64() {
        use libc::*;
        let flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
        for p in [STRICT, LOOSE] {
            for (dom, ty, proto) in [
                (AF_UNIX, SOCK_STREAM, 0),
                (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0),
                (AF_NETLINK, SOCK_RAW | flags, NETLINK_ROUTE),
                (AF_INET, SOCK_STREAM, 0),
                (AF_INET, SOCK_STREAM | flags, IPPROTO_TCP),
                (AF_INET6, SOCK_STREAM, IPPROTO_MPTCP),
                (AF_INET, SOCK_DGRAM, 0),
                (AF_INET6, SOCK_DGRAM | flags, IPPROTO_UDP),
            ] {
                assert_eq!(x64(p, dom, ty, proto), ALLOW, "{p:?} {dom} {ty} {proto}");
            }
            for (dom, ty, proto, e) in [
                (AF_INET, SOCK_STREAM, IPPROTO_SCTP, EPROTONOSUPPORT),
                (AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP, EPROTONOSUPPORT),
                (AF_INET, SOCK_SEQPACKET, 0, EPROTONOSUPPORT),
                (AF_INET, 6 /* SOCK_DCCP */, 33, EPROTONOSUPPORT),
                (AF_INET, SOCK_STREAM | 0x100, 0, EPROTONOSUPPORT),
                (AF_VSOCK, SOCK_STREAM, 0, EAFNOSUPPORT),
                (AF_XDP, SOCK_RAW, 0, EAFNOSUPPORT),
                (AF_BLUETOOTH, SOCK_STREAM, 0, EAFNOSUPPORT),
                (AF_TIPC, SOCK_RDM, 0, EAFNOSUPPORT),
                (AF_UNSPEC, SOCK_STREAM, 0, EAFNOSUPPORT),
            ] {
                assert_eq!(x64(p, dom, ty, proto), errno(e), "{p:?} {dom} {ty} {proto}");
            }
        }
        for (dom, ty, proto) in [
            (AF_PACKET, SOCK_RAW, 0x0300),
            (AF_PACKET, SOCK_DGRAM | flags, 0),
            (AF_INET, SOCK_RAW, IPPROTO_ICMP),
            (AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW),
            (AF_INET, 10 /* SOCK_PACKET */, 0),
            (AF_INET, SOCK_DGRAM, IPPROTO_ICMP),
            (AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE),
        ] {
            assert_eq!(
                x64(STRICT, dom, ty, proto),
                errno(EPERM),
                "{dom} {ty} {proto}"
            );
            assert_eq!(x64(LOOSE, dom, ty, proto), ALLOW, "{dom} {ty} {proto}");
        }
        // The kernel reads ints: bits above 32 are not looked at, by it or by the filter.
        let high = run(
            &program(STRICT),
            41,
            AUDIT_ARCH_X86_64,
            [1 << 32 | 17, 3, 0, 0, 0, 0],
        );
        assert_eq!(high, errno(EPERM));
    }

    #[test]
    fn filter_and_socket_hook_decide_from_one_table() {
        // Every family, type and a spread of protocols: the filter's answer is the
        // table's verdict as the hook applies it (UDP created, raw per the switch).
        use crate::engine::preload::socket_verdict;
        let flags = [0, libc::SOCK_NONBLOCK, libc::SOCK_CLOEXEC, 0x100];
        let protos = [0, 1, 6, 17, 33, 132, 136, 255, 262, 0x0300];
        for p in [STRICT, LOOSE] {
            for dom in 0..50 {
                for ty in 0..12 {
                    for f in flags {
                        for proto in protos {
                            let want = match socket_verdict(dom, ty | f, proto) {
                                SocketVerdict::Allow | SocketVerdict::Udp => ALLOW,
                                SocketVerdict::Raw if p.raw => ALLOW,
                                SocketVerdict::Raw => errno(libc::EPERM),
                                SocketVerdict::Errno(e) => errno(e),
                            };
                            assert_eq!(x64(p, dom, ty | f, proto), want, "{dom} {ty}|{f} {proto}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn io_uring_and_everything_else_on_x86_64() {
        let prog = program(STRICT);
        let call = |nr: u32| run(&prog, nr, AUDIT_ARCH_X86_64, [0; 6]);
        for nr in IO_URING_FIRST..=IO_URING_LAST {
            assert_eq!(call(nr), errno(libc::ENOSYS), "{nr}");
        }
        for nr in [
            0,
            1,
            42,
            53,
            56,
            59,
            322,
            424,
            428,
            435,
            1000,
            u32::MAX >> 2,
        ] {
            assert_eq!(call(nr), ALLOW, "{nr}");
        }
        // The mark names the policy, and only for the marked call.
        for p in [STRICT, LOOSE] {
            let m = run(
                &program(p),
                427,
                AUDIT_ARCH_X86_64,
                [u64::from(u32::MAX), u64::from(MARK_OPCODE), 0, 0, 0, 0],
            );
            assert_eq!(m, errno(mark(p)));
        }
        assert_ne!(mark(STRICT), mark(LOOSE));
        assert!((4000..4096).contains(&mark(LOOSE)));
        // No other architecture reaches an x86-64 kernel; if one did, it gets nothing.
        assert_eq!(run(&prog, 0, 0xc000_00b7, [0; 6]), errno(libc::ENOSYS));
        assert!(prog.len() < 100, "{} instructions", prog.len());
    }

    #[test]
    fn foreign_abis_get_local_sockets_only() {
        use libc::*;
        let x32 = |nr: u32| X32_SYSCALL_BIT | nr;
        for p in [STRICT, LOOSE] {
            for (arch, nr) in [(AUDIT_ARCH_I386, I386_SOCKET), (AUDIT_ARCH_X86_64, x32(41))] {
                assert_eq!(sock(p, arch, nr, AF_UNIX, SOCK_STREAM, 0), ALLOW);
                assert_eq!(sock(p, arch, nr, AF_NETLINK, SOCK_RAW, 0), ALLOW);
                for dom in [AF_INET, AF_INET6, AF_PACKET, AF_VSOCK] {
                    assert_eq!(sock(p, arch, nr, dom, SOCK_STREAM, 0), errno(EAFNOSUPPORT));
                }
            }
            let i386 =
                |nr: u32, a0: u64| run(&program(p), nr, AUDIT_ARCH_I386, [a0, 0, 0, 0, 0, 0]);
            assert_eq!(
                i386(I386_SOCKETCALL, 1),
                errno(EAFNOSUPPORT),
                "socketcall(SYS_SOCKET)"
            );
            for call in [2, 3, 8, 9, 11] {
                assert_eq!(i386(I386_SOCKETCALL, call), ALLOW, "socketcall({call})");
            }
            for nr in 425..=427 {
                assert_eq!(i386(nr, 0), errno(ENOSYS));
                assert_eq!(
                    run(&program(p), x32(nr), AUDIT_ARCH_X86_64, [0; 6]),
                    errno(ENOSYS)
                );
            }
            // 41 is dup on i386 and socket on x32; 359 is socket on i386 only.
            for nr in [0, 1, 3, 4, 11, 41, 120, 362, 424, 428, 451] {
                assert_eq!(i386(nr, 2), ALLOW, "i386 {nr}");
            }
            for nr in [0, 1, 3, 4, 11, 42, 53, 359, 424, 428, 451] {
                let r = run(&program(p), x32(nr), AUDIT_ARCH_X86_64, [2, 1, 0, 0, 0, 0]);
                assert_eq!(r, ALLOW, "x32 {nr}");
            }
        }
    }

    fn errno_now() -> c_int {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    /// Run the filter for `p` in a forked child: `checks` returns the number of the first
    /// check that failed (0: all held), which becomes the child's exit status.
    fn in_filtered_child(p: Policy, checks: impl FnOnce() -> i32) -> i32 {
        let prog = program(p);
        // Resolve the `syscall` hook's next function now: the child must not call dlsym.
        // SAFETY: getpid has no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
        // SAFETY: the child only makes syscalls (no allocation, no lock) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = match install(&prog) {
                Ok(()) => checks(),
                Err(_) => 100,
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(libc::WIFEXITED(st), "child status {st:#x}");
        libc::WEXITSTATUS(st)
    }

    /// `socket(…)` through the raw syscall: -1 with errno, or an fd (closed here).
    fn raw_socket(dom: c_int, ty: c_int, proto: c_int) -> Result<(), c_int> {
        // SAFETY: integer arguments only.
        let fd = unsafe { libc::syscall(libc::SYS_socket, dom, ty, proto) };
        if fd < 0 {
            return Err(errno_now());
        }
        // SAFETY: the fd just created.
        unsafe { libc::close(fd as c_int) };
        Ok(())
    }

    fn kernel_checks(p: Policy) -> i32 {
        use libc::*;
        // SAFETY: io_uring_setup(1, NULL): EFAULT without the filter, never a ring.
        let r = unsafe { syscall(SYS_io_uring_setup, 1, 0) };
        let checks = [
            r == -1 && errno_now() == ENOSYS,
            installed(p),
            !installed(Policy { raw: !p.raw }),
            raw_socket(AF_PACKET, SOCK_RAW, 0) == Err(EPERM) || p.raw,
            raw_socket(AF_INET, SOCK_STREAM, 0).is_ok(),
            raw_socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP).is_ok(),
            raw_socket(AF_INET, SOCK_DGRAM, 0).is_ok(),
            raw_socket(AF_UNIX, SOCK_STREAM, 0).is_ok(),
            raw_socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) == Err(EPROTONOSUPPORT),
            raw_socket(AF_VSOCK, SOCK_STREAM, 0) == Err(EAFNOSUPPORT),
            raw_socket(AF_XDP, SOCK_RAW, 0) == Err(EAFNOSUPPORT),
            // SAFETY: getppid has no arguments; other calls pass.
            unsafe { getppid() } > 0,
        ];
        checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
    }

    #[test]
    fn installed_filter_holds_in_a_child() {
        assert!(!installed(STRICT), "the test process itself runs no filter");
        assert_eq!(
            in_filtered_child(STRICT, || kernel_checks(STRICT)),
            0,
            "check number"
        );
    }

    #[test]
    fn a_second_install_on_top_keeps_the_stricter_answer() {
        let loose = program(LOOSE);
        let twice = move || {
            // The loose filter on top of the strict one: ERRNO beats ALLOW across filters.
            if install(&loose).is_err() {
                return 50;
            }
            let raw = raw_socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if raw != Err(libc::EPERM) {
                return 51;
            }
            // The newest filter answers the mark probe.
            if !installed(LOOSE) {
                return 52;
            }
            0
        };
        assert_eq!(in_filtered_child(STRICT, twice), 0);
    }
}
