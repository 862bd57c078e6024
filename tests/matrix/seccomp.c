/* The ways around libqnet's hooks that its seccomp filter closes, run preloaded in the
 * client namespace by tests/matrix/run (the escape section). No liburing: the ring is set
 * up with raw syscalls, as a program with its own io_uring code would.
 * usage: seccomp uring    an io_uring ring, then IORING_OP_CONNECT to an address reachable
 *                         without the tunnel; under the filter io_uring_setup fails with
 *                         ENOSYS and the probe falls back to connect/write to the echo
 *                         server, which the hooks tunnel
 *        seccomp uring-on io_uring_setup must succeed (the filter is off); nothing is sent
 *        seccomp families socket() of families and protocols nothing tunnels, by syscall(3)
 *                         and by a raw `syscall` instruction (past every hook): refused */
#include "mx.h"
#include "ring.h"
#include <sys/syscall.h>

#define ECHO4 "10.78.0.1"
#define DIRECT4 "10.77.0.1" /* the relay's veth: reachable without the tunnel */
#define PORT 7

/* A syscall made by the instruction itself: what Go or a static binary does. */
static long raw3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

static void t_uring(void) {
    char why[256];
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ECHO4, PORT, &len);
    struct ring r;
    CHECK(seccomp_mode() == 2, "the process runs a seccomp filter (Seccomp: %d)", seccomp_mode());
    if (ring_setup(&r) < 0) {
        int e = errno;
        CHECK(e == ENOSYS, "io_uring_setup -> %s (want ENOSYS)", strerror(e));
        /* What liburing users and runtimes do on ENOSYS: plain syscalls. */
        if (mx_connect_echo(ECHO4, PORT, "uring-fallback", why, sizeof why) == 0)
            mx_ok("fallback connect+echo through the hooks");
        else
            mx_fail("fallback: %s", why);
        return;
    }
    /* The filter did not stop io_uring: connect through the ring, past the hooks, to the relay
     * host's veth address (routed, so the SYN leaves and the counter sees it). */
    mx_fail("io_uring_setup succeeded under LD_PRELOAD: an IORING_OP_CONNECT through it follows");
    ss = mx_sa(DIRECT4, PORT, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    long n = ring_connect(&r, fd, &ss, len);
    printf("io_uring CONNECT %s submitted (%ld); the SYN leaves without the tunnel\n", DIRECT4, n);
    usleep(300000);
    close(fd);
}

static void t_uring_on(void) {
    struct ring r;
    CHECK(seccomp_mode() == 0, "no seccomp filter (Seccomp: %d)", seccomp_mode());
    int ok = ring_setup(&r) == 0;
    CHECK(ok, "io_uring_setup succeeds with the filter off%s%s", ok ? "" : ": ", ok ? "" : strerror(errno));
}

/* syscall(3) reaches libqnet's socket hook first, which may refuse on its own (EPERM for
 * every inet type but stream and datagram); the raw instruction meets only the filter. */
static void expect_refused(int dom, int ty, int proto, int want, const char *what) {
    long fd = syscall(SYS_socket, dom, ty, proto);
    int e = errno;
    CHECK(fd < 0 && (e == want || e == EPERM), "syscall(SYS_socket, %s) -> %s (want %s)", what,
          fd < 0 ? strerror(e) : "a socket", strerror(want));
    if (fd >= 0)
        close((int)fd);
    fd = raw3(SYS_socket, dom, ty, proto);
    e = errno;
    CHECK(fd < 0 && e == want, "raw socket instruction, %s -> %s (want %s)", what, fd < 0 ? strerror(e) : "a socket",
          strerror(want));
    if (fd >= 0)
        close((int)fd);
}

static void t_families(void) {
    expect_refused(AF_PACKET, SOCK_RAW, htons(3) /* ETH_P_ALL */, EPERM, "AF_PACKET, SOCK_RAW");
    expect_refused(AF_INET, SOCK_RAW, IPPROTO_UDP, EPERM, "AF_INET, SOCK_RAW");
    expect_refused(AF_VSOCK, SOCK_STREAM, 0, EAFNOSUPPORT, "AF_VSOCK");
    expect_refused(AF_XDP, SOCK_RAW, 0, EAFNOSUPPORT, "AF_XDP");
    expect_refused(AF_BLUETOOTH, SOCK_STREAM, 0, EAFNOSUPPORT, "AF_BLUETOOTH");
    expect_refused(AF_INET, SOCK_STREAM, IPPROTO_SCTP, EPROTONOSUPPORT, "AF_INET, SOCK_STREAM, IPPROTO_SCTP");
    expect_refused(AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP, EPROTONOSUPPORT, "AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP");
    /* What the policy allows still works, past the hooks too (a connect on it is the hooks'). */
    long fd = raw3(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    CHECK(fd >= 0, "raw socket instruction, AF_INET, SOCK_STREAM, IPPROTO_TCP -> a socket");
    if (fd >= 0)
        close((int)fd);
    fd = raw3(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0, "raw socket instruction, AF_UNIX -> a socket");
    if (fd >= 0)
        close((int)fd);
}

int main(int argc, char **argv) {
    const char *c = argc > 1 ? argv[1] : "";
    if (!strcmp(c, "uring"))
        t_uring();
    else if (!strcmp(c, "uring-on"))
        t_uring_on();
    else if (!strcmp(c, "families"))
        t_families();
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return mx_failed;
}
