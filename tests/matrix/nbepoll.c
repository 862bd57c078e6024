/* Non-blocking connect the way event loops do it (nginx, libuv, tokio):
 *   socket(SOCK_NONBLOCK) -> connect = EINPROGRESS -> edge-triggered epoll for EPOLLOUT
 *   -> getsockopt(SO_ERROR) -> echo through edge-triggered EPOLLIN.
 * Then the same under poll(2), and a refused destination whose error must arrive via SO_ERROR.
 * With ROUNDS: only that many connects, each asking getpeername the moment it is writable.
 * usage: nbepoll HOST PORT REFUSED_PORT [ROUNDS] */
#include "mx.h"
#include <sys/epoll.h>

static int resolve(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int e = getaddrinfo(host, port, &hints, &res);
    if (e != 0) {
        mx_fail("getaddrinfo %s: %s", host, gai_strerror(e));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Start a non-blocking connect; returns the fd (connect in progress or done) or -1. */
static int start(const struct sockaddr_storage *ss, socklen_t len, const char *what) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mx_fail("%s socket: %s", what, strerror(errno));
        return -1;
    }
    int r = connect(fd, (const struct sockaddr *)ss, len);
    if (r == 0) {
        mx_ok("%s connect returned 0 at once (allowed)", what);
    } else if (errno != EINPROGRESS) {
        mx_fail("%s non-blocking connect: %s (want EINPROGRESS)", what, strerror(errno));
        close(fd);
        return -1;
    } else {
        mx_ok("%s connect -> EINPROGRESS", what);
        /* A second connect while in progress must say EALREADY (or EINPROGRESS on some
         * kernels' paths), never succeed with a direct connection. */
    }
    return fd;
}

static int so_error(int fd) {
    int err = -1;
    socklen_t l = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        return -errno;
    return err;
}

static void with_epoll(const struct sockaddr_storage *ss, socklen_t len) {
    int fd = start(ss, len, "epoll");
    if (fd < 0)
        return;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLET | EPOLLRDHUP, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    struct epoll_event got;
    int n = epoll_wait(ep, &got, 1, 10000);
    if (n != 1 || !(got.events & EPOLLOUT)) {
        mx_fail("epoll: no EPOLLOUT within 10 s (n=%d events=%#x)", n, n == 1 ? got.events : 0);
        close(fd);
        close(ep);
        return;
    }
    int e = so_error(fd);
    CHECK(e == 0, "epoll SO_ERROR after writable = %d (%s)", e, e > 0 ? strerror(e) : "ok");
    if (e != 0) {
        close(fd);
        close(ep);
        return;
    }
    /* Echo: write, then wait for edge-triggered EPOLLIN and drain until EAGAIN. */
    char msg[256], back[512];
    mx_message(msg, sizeof msg, "nbepoll");
    size_t n_msg = strlen(msg), have = 0;
    if (mx_write_all(fd, msg, n_msg) < 0) {
        mx_fail("epoll write: %s", strerror(errno));
        close(fd);
        close(ep);
        return;
    }
    while (have < n_msg) {
        int k = epoll_wait(ep, &got, 1, 10000);
        if (k != 1)
            break;
        if (!(got.events & EPOLLIN))
            continue;
        for (;;) { /* edge-triggered: drain */
            ssize_t r = read(fd, back + have, sizeof back - have);
            if (r > 0) {
                have += (size_t)r;
                continue;
            }
            break;
        }
    }
    CHECK(have == n_msg && memcmp(back, msg, n_msg) == 0,
          "epoll edge-triggered echo (%zu of %zu bytes back)", have, n_msg);
    close(fd);
    close(ep);
}

static void with_poll(const struct sockaddr_storage *ss, socklen_t len) {
    int fd = start(ss, len, "poll");
    if (fd < 0)
        return;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, 10000);
    if (n != 1 || !(p.revents & POLLOUT)) {
        mx_fail("poll: not writable within 10 s (n=%d revents=%#x)", n, p.revents);
        close(fd);
        return;
    }
    int e = so_error(fd);
    CHECK(e == 0, "poll SO_ERROR after writable = %d", e);
    char why[256];
    if (e == 0) {
        int r = mx_echo(fd, "nbpoll", why, sizeof why);
        CHECK(r == 0, "poll echo%s%s", r ? ": " : "", r ? why : "");
    }
    close(fd);
}

static void refused(const struct sockaddr_storage *ss0, socklen_t len, int port) {
    struct sockaddr_storage ss = *ss0;
    if (ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
    int fd = start(&ss, len, "refused");
    if (fd < 0)
        return;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, 10000);
    int e = so_error(fd);
    CHECK(n == 1 && e == ECONNREFUSED,
          "non-blocking connect to closed port %d: poll=%d revents=%#x SO_ERROR=%d (%s), want ECONNREFUSED",
          port, n, p.revents, e, e > 0 ? strerror(e) : "none");
    /* SO_ERROR is read-and-clear. */
    int e2 = so_error(fd);
    CHECK(e2 == 0, "SO_ERROR cleared after reading (second read %d)", e2);
    close(fd);
}

/* Event loops ask getpeername as soon as the socket is writable (Python's ssl module does,
 * and takes ENOTCONN to mean "not connected"). Repeat to catch a race. */
static void peer_when_writable(const struct sockaddr_storage *ss, socklen_t len, int rounds) {
    int bad = 0, done = 0;
    char first[160] = "";
    for (int i = 0; i < rounds; i++) {
        int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (connect(fd, (const struct sockaddr *)ss, len) < 0 && errno != EINPROGRESS) {
            snprintf(first, sizeof first, "connect: %s", strerror(errno));
            bad++;
            close(fd);
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 10000) != 1 || so_error(fd) != 0) {
            if (!bad)
                snprintf(first, sizeof first, "round %d: not writable or SO_ERROR set", i);
            bad++;
            close(fd);
            continue;
        }
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        if (getpeername(fd, (struct sockaddr *)&peer, &pl) < 0) {
            if (!bad)
                snprintf(first, sizeof first, "round %d: getpeername right after writable+SO_ERROR=0: %s", i, strerror(errno));
            bad++;
        }
        done++;
        close(fd);
    }
    CHECK(bad == 0, "getpeername succeeds as soon as a non-blocking connect is writable: %d of %d rounds failed%s%s",
          bad, rounds, bad ? "; first: " : "", first);
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s HOST PORT REFUSED_PORT [ROUNDS]\n", argv[0]);
        return 2;
    }
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve(argv[1], argv[2], &ss, &len) < 0)
        return 1;
    mx_ok("resolved %s to %s", argv[1], mx_addr((struct sockaddr *)&ss));
    if (argc == 5) {
        peer_when_writable(&ss, len, atoi(argv[4]));
        return mx_failed;
    }
    with_epoll(&ss, len);
    with_poll(&ss, len);
    refused(&ss, len, atoi(argv[3]));
    return mx_failed;
}
