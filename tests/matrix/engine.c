/* Engine and hook robustness (issue 11), one subcommand each, run preloaded in the client
 * namespace by tests/matrix/run. The echo server is on ECHO4 port 7, reachable only through
 * the relay.
 * usage: engine stale-mark | high-fds | signal-connect PORT
 *   stale-mark      a UDP socket closed past every hook (the raw instruction) leaves its
 *                   number marked; the TCP socket, accepted socket and socketpair that get
 *                   the number next must work as what they are
 *   high-fds        the engine's fds (relay link, socketpair ends, pipes) sit far above the
 *                   app's numbers: stray writes to 3..63 reach none of them; dup2 onto any
 *                   of them gives the app the number (the engine moves off it first) and
 *                   leaves the tunnel working; mio's epoll fd alone answers EBUSY
 *   signal-connect  a SIGALRM handler that runs while the main thread waits in a blocking
 *                   tunneled connect (PORT: a listener in the relay namespace whose backlog
 *                   is full, so the relay's dial hangs) connects itself: through the tunnel */
#include "mx.h"
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define ECHO4 "10.78.0.1"
#define PORT 7

static char why[512];

/* close(2) by the instruction itself: no hook sees it (a static binary, Go, a JIT). */
static long raw_close(int fd) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"((long)SYS_close), "D"((long)fd) : "rcx", "r11", "memory");
    return r;
}

/* A UDP socket (which the hooks mark: its sends are refused), closed past the hooks. */
static int stale_udp_number(void) {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0)
        mx_fail("UDP socket: %s", strerror(errno));
    else
        raw_close(u);
    return u;
}

static void t_stale_mark(void) {
    /* a TCP socket on the number: connect is a tunneled connect, not a refused datagram */
    int u = stale_udp_number();
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s == u, "the TCP socket got the closed UDP socket's number %d (got %d)", u, s);
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ECHO4, PORT, &len);
    if (connect(s, (struct sockaddr *)&ss, len) < 0)
        mx_fail("connect on fd %d (was UDP): %s", s, strerror(errno));
    else {
        int e = mx_echo(s, "stale", why, sizeof why);
        CHECK(e == 0, "tunneled echo on fd %d, once a UDP socket's number%s%s", s, e ? ": " : "", e ? why : "");
    }
    close(s);

    /* an accepted socket on the number: sends are not refused as UDP */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) < 0) {
        mx_fail("loopback listener: %s", strerror(errno));
        return;
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) {
        mx_fail("loopback connect: %s", strerror(errno));
        return;
    }
    u = stale_udp_number();
    int acc = accept(l, NULL, NULL);
    CHECK(acc == u, "accept got the closed UDP socket's number %d (got %d)", u, acc);
    ssize_t n = sendto(acc, "x", 1, 0, NULL, 0);
    CHECK(n == 1, "sendto on the accepted fd %d -> %s", acc, n == 1 ? "1" : strerror(errno));
    close(acc);
    close(c);
    close(l);

    /* a socketpair on the number */
    u = stale_udp_number();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        mx_fail("socketpair: %s", strerror(errno));
        return;
    }
    CHECK(sv[0] == u, "socketpair got the closed UDP socket's number %d (got %d)", u, sv[0]);
    n = sendto(sv[0], "x", 1, 0, NULL, 0);
    CHECK(n == 1, "sendto on the socketpair's fd %d -> %s", sv[0], n == 1 ? "1" : strerror(errno));
    close(sv[0]);
    close(sv[1]);
}

/* Every open fd of this process, ascending, into fds[] (at most max). */
/* What /proc/self/fd/FD points at ("socket:[N]", "anon_inode:[eventpoll]" …), or "?". */
static void fd_target(int fd, char *target, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t tl = readlink(path, target, size - 1);
    if (tl < 0)
        tl = snprintf(target, size, "?");
    target[tl] = 0;
}

static int open_fds(int *fds, int max) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd != dirfd(d))
            fds[n++] = fd;
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
    return n;
}

static int nonblocking_to(const char *ip, int port) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ip, port, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t el = sizeof err;
    if (poll(&p, 1, 10000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, 0);
    return fd;
}

static int contains(const int *v, int n, int x) {
    for (int i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

static void t_high_fds(void) {
    /* what the process had before any connect (inherited from the runner) is not the engine's */
    static int before[4096];
    int nbefore = open_fds(before, 4096);
    int a = mx_tcp_to(ECHO4, PORT);
    int b = nonblocking_to(ECHO4, PORT);
    if (a < 0 || b < 0) {
        mx_fail("connect: %s", strerror(errno));
        return;
    }
    int e = mx_echo(a, "blocking", why, sizeof why);
    CHECK(e == 0, "blocking connect echo%s%s", e ? ": " : "", e ? why : "");
    e = mx_echo(b, "nonblocking", why, sizeof why);
    CHECK(e == 0, "non-blocking connect echo%s%s", e ? ": " : "", e ? why : "");

    int fds[4096];
    int n = open_fds(fds, 4096), engine = 0, lowest = -1;
    for (int i = 0; i < n; i++) {
        int fd = fds[i];
        if (fd == a || fd == b || contains(before, nbefore, fd))
            continue;
        char target[256];
        fd_target(fd, target, sizeof target);
        if (fd < 64 && strcmp(target, "anon_inode:[eventpoll]") == 0)
            mx_ok("fd %d is the engine's epoll fd (mio's, cannot move; read/write on it fail with EINVAL)", fd);
        else if (fd < 64)
            mx_fail("engine fd %d (%s) at a low number, where a stray write of the app lands", fd, target);
        else {
            if (lowest < 0)
                lowest = fd;
            engine++;
        }
    }
    CHECK(engine >= 3, "%d engine fds, from %d up", engine, lowest);

    /* a program writing to numbers it does not own (a stale fd variable, a bad loop) */
    for (int fd = 3; fd < 64; fd++)
        if (fd != a && fd != b && !contains(before, nbefore, fd))
            (void)!write(fd, "stray bytes of the app\n", 23);
    e = mx_echo(a, "after-stray", why, sizeof why);
    CHECK(e == 0, "echo after stray writes to 3..63%s%s", e ? ": " : "", e ? why : "");
    e = mx_connect_echo(ECHO4, PORT, "new-after-stray", why, sizeof why);
    CHECK(e == 0, "a new connection after stray writes%s%s", e ? ": " : "", e ? why : "");

    /* dup2 onto every engine fd: the engine moves off each number first, the app gets it,
     * and the tunnel keeps working; only mio's epoll fd cannot move (EBUSY) */
    int engine_fds[4096], ne = 0, epfd = -1;
    n = open_fds(fds, 4096);
    for (int i = 0; i < n; i++) {
        int fd = fds[i];
        if (fd == a || fd == b || contains(before, nbefore, fd))
            continue;
        char target[256];
        fd_target(fd, target, sizeof target);
        if (strcmp(target, "anon_inode:[eventpoll]") == 0)
            epfd = fd;
        else
            engine_fds[ne++] = fd;
    }
    int devnull = open("/dev/null", O_RDONLY);
    for (int i = 0; i < ne; i++) {
        int fd = engine_fds[i];
        int r = i % 2 ? dup3(devnull, fd, O_CLOEXEC) : dup2(devnull, fd);
        CHECK(r == fd, "%s(/dev/null, engine fd %d) -> %s", i % 2 ? "dup3" : "dup2", fd, r == fd ? "the number" : strerror(errno));
        struct stat st_null, st_fd;
        fstat(devnull, &st_null);
        CHECK(fstat(fd, &st_fd) == 0 && st_fd.st_ino == st_null.st_ino, "fd %d is now /dev/null", fd);
    }
    if (epfd >= 0) {
        int r = dup2(devnull, epfd);
        CHECK(r < 0 && errno == EBUSY, "dup2 onto the engine's epoll fd %d -> %s (want EBUSY)", epfd, r < 0 ? strerror(errno) : "replaced it");
    }
    e = mx_echo(a, "after-dup2-a", why, sizeof why);
    CHECK(e == 0, "blocking flow's echo after dup2 onto every engine fd%s%s", e ? ": " : "", e ? why : "");
    e = mx_echo(b, "after-dup2-b", why, sizeof why);
    CHECK(e == 0, "non-blocking flow's echo after dup2 onto every engine fd%s%s", e ? ": " : "", e ? why : "");
    e = mx_connect_echo(ECHO4, PORT, "new-after-dup2", why, sizeof why);
    CHECK(e == 0, "a new connection after dup2 onto every engine fd%s%s", e ? ": " : "", e ? why : "");
    for (int i = 0; i < ne; i++)
        close(engine_fds[i]);
    close(devnull);
    close(a);
    close(b);
}

static volatile sig_atomic_t handler_result = -2;
static char handler_why[512];

static void on_alarm(int sig) {
    (void)sig;
    /* Not async-signal-safe in general; here the interrupted thread is known to be waiting
     * in connect, and the point is what this connect reaches. */
    handler_result = mx_connect_echo(ECHO4, PORT, "handler", handler_why, sizeof handler_why);
}

static void t_signal_connect(int port) {
    struct sigaction sa = {.sa_handler = on_alarm};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval t = {.it_value = {.tv_usec = 400000}};
    setitimer(ITIMER_REAL, &t, NULL);
    int s = mx_tcp_to(ECHO4, port);
    int e = errno;
    mx_ok("the blocking connect to a full backlog returned %s", s >= 0 ? "a socket" : strerror(e));
    CHECK(handler_result != -2, "the handler ran while the connect waited");
    CHECK(handler_result == 0, "the handler's own connect went through the tunnel%s%s", handler_result ? ": " : "",
          handler_result ? handler_why : "");
    if (s >= 0)
        close(s);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CASE [PORT]\n", argv[0]);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "stale-mark"))
        t_stale_mark();
    else if (!strcmp(c, "high-fds"))
        t_high_fds();
    else if (!strcmp(c, "signal-connect") && argc == 3)
        t_signal_connect(atoi(argv[2]));
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return mx_failed;
}
