/*
 * intercept: an ordinary sockets program (getaddrinfo, socket, connect, write, read)
 * whose connections go through the qnet tunnel because it asks for interception once,
 * at the start, with qnet_init(NULL, QNET_INIT_INTERCEPT).
 *
 *     intercept HOST PORT [PATH]       (PATH defaults to "/")
 *
 * Linked against qnet (libqnet.a or -lqnet), a program is unchanged unless it passes
 * QNET_INIT_INTERCEPT: linking alone intercepts nothing. With the flag, every TCP connect() to a destination
 * outside intercept.bypass (default: loopback) becomes a stream to the relay, and
 * getaddrinfo answers names the relay will resolve with placeholder addresses, so no
 * DNS query leaves the machine. (libqnet.so preloaded with LD_PRELOAD or `qnet run`
 * intercepts from load; the flag changes nothing there.)
 *
 * The response body goes to stdout; the exit status is 0 for a 2xx answer, 1 otherwise.
 *
 * Build (see README.md in this directory):
 *     cc -o intercept intercept.c $(pkg-config --cflags --libs qnet)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <netdb.h>
#include <qnet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s HOST PORT [PATH]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *port = argv[2];
    const char *path = argc == 4 ? argv[3] : "/";

    if (qnet_init(NULL, QNET_INIT_INTERCEPT) != QNET_OK) {
        char msg[512];
        qnet_last_error(msg, sizeof msg);
        fprintf(stderr, "intercept: qnet_init failed: %s [%s]\n", msg,
                qnet_strerror(qnet_last_result()));
        return 1;
    }

    /* From here on this is plain POSIX code: nothing below knows about qnet. */
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "intercept: getaddrinfo %s: %s\n", host, gai_strerror(rc));
        return 1;
    }
    int fd = -1, err = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "intercept: connect %s port %s: %s\n", host, port, strerror(err));
        return 1;
    }

    char req[2048];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: qnet-intercept\r\n"
                     "Connection: close\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "intercept: request too long\n");
        return 2;
    }
    for (int off = 0; off < n;) {
        ssize_t w = write(fd, req + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fprintf(stderr, "intercept: write: %s\n", strerror(errno));
            return 1;
        }
        off += (int)w;
    }

    /* Read the whole response (HTTP/1.0: it ends at EOF), then split off the headers. */
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return 1;
    for (;;) {
        if (len + 1 >= cap) { /* one spare byte for the NUL below */
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                return 1;
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            fprintf(stderr, "intercept: read: %s\n", strerror(errno));
            return 1;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    close(fd);

    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "intercept: not an HTTP response (%zu bytes)\n", len);
        return 1;
    }
    const char *body = NULL;
    for (size_t i = 0; i + 3 < len; i++) {
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
            body = buf + i + 4;
            break;
        }
    }
    if (!body) {
        fprintf(stderr, "intercept: response without a header end\n");
        return 1;
    }
    fwrite(body, 1, len - (size_t)(body - buf), stdout);
    fflush(stdout);
    free(buf);
    if (status < 200 || status > 299)
        fprintf(stderr, "intercept: HTTP status %d\n", status);
    qnet_shutdown();
    return status >= 200 && status <= 299 ? 0 : 1;
}
