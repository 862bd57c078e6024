/* Shared helpers for the matrix's C test programs (tests/matrix/run compiles them).
 * Every check prints "ok <what>" or "FAIL <what>: <why>" on stdout; a program exits 1
 * after any failure. */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wunused-function"
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int mx_failed;

static void mx_ok(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("ok ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static void mx_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    mx_failed = 1;
}

#define CHECK(cond, ...)                 \
    do {                                 \
        if (cond)                        \
            mx_ok(__VA_ARGS__);          \
        else                             \
            mx_fail(__VA_ARGS__);        \
    } while (0)

/* Text form of an inet sockaddr, for messages. */
static const char *mx_addr(const struct sockaddr *sa) {
    static __thread char buf[INET6_ADDRSTRLEN + 16];
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        snprintf(buf, sizeof buf, "%s:%u", ip, ntohs(s->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        snprintf(buf, sizeof buf, "[%s]:%u", ip, ntohs(s->sin6_port));
    } else {
        snprintf(buf, sizeof buf, "family %d", sa->sa_family);
    }
    return buf;
}

static struct sockaddr_storage mx_sa(const char *ip, int port, socklen_t *len) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *len = sizeof *s4;
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *len = sizeof *s6;
    } else {
        fprintf(stderr, "bad address %s\n", ip);
        exit(2);
    }
    return ss;
}

/* A blocking TCP connection to ip:port (the hooks tunnel it), or -1 with errno. */
static int mx_tcp_to(const char *ip, int port) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ip, port, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Whether an address is a qnet fake address (240.0.0.0/4 or 100::/64). */
static int mx_is_fake(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        return (a >> 28) == 0xf;
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char pre[8] = {0x01, 0x00, 0, 0, 0, 0, 0, 0};
        return memcmp(b, pre, 8) == 0;
    }
    return 0;
}

/* Read exactly n bytes within timeout_ms; returns bytes read (short on EOF/timeout/error). */
static size_t mx_read_full(int fd, char *buf, size_t n, int timeout_ms) {
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0)
            break;
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return got;
}

static int mx_write_all(int fd, const char *buf, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(fd, buf + off, n - off);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 1000);
            continue;
        }
        if (k <= 0)
            return -1;
        off += (size_t)k;
    }
    return 0;
}

/* A unique message; the echo server must send exactly these bytes back. */
static void mx_message(char *buf, size_t n, const char *tag) {
    static __thread unsigned seq;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(buf, n, "qnet-matrix %s pid=%d seq=%u t=%ld.%09ld\n", tag, (int)getpid(), seq++,
             (long)ts.tv_sec, ts.tv_nsec);
}

/* Send a unique message on a connected fd and require the same bytes back. Returns 0 on success
 * and writes a reason into why otherwise. Skips `presend` bytes already sent (TFO). */
static int mx_echo_rest(int fd, const char *msg, size_t presend, char *why, size_t whylen) {
    size_t n = strlen(msg);
    if (presend < n && mx_write_all(fd, msg + presend, n - presend) < 0) {
        snprintf(why, whylen, "write: %s", strerror(errno));
        return -1;
    }
    char back[512];
    size_t got = mx_read_full(fd, back, n, 10000);
    if (got != n) {
        snprintf(why, whylen, "echo returned %zu of %zu bytes (errno %s)", got, n, strerror(errno));
        return -1;
    }
    if (memcmp(back, msg, n) != 0) {
        snprintf(why, whylen, "echo returned different bytes");
        return -1;
    }
    return 0;
}

static int mx_echo(int fd, const char *tag, char *why, size_t whylen) {
    char msg[256];
    mx_message(msg, sizeof msg, tag);
    return mx_echo_rest(fd, msg, 0, why, whylen);
}

/* Blocking connect to ip:port, echo, close. 0 on success. */
static int mx_connect_echo(const char *ip, int port, const char *tag, char *why, size_t whylen) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ip, port, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        snprintf(why, whylen, "connect %s: %s", mx_addr((struct sockaddr *)&ss), strerror(errno));
        close(fd);
        return -1;
    }
    int r = mx_echo(fd, tag, why, whylen);
    close(fd);
    return r;
}
