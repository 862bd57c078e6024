/*
 * http_get: fetch one page over HTTP/1.0 through the qnet tunnel with the explicit API.
 *
 *     http_get HOST PORT [PATH]        (PATH defaults to "/")
 *
 * The relay, its key and this client's key come from the usual configuration:
 * $QNET_CONFIG, ~/.config/qnet/qnet.toml or /etc/qnet/qnet.toml, then QNET_RELAY,
 * QNET_RELAY_KEY, QNET_KEY from the environment. HOST may be a name: the relay
 * resolves it, so no DNS query leaves this machine.
 *
 * The response body goes to stdout; the exit status is 0 for a 2xx answer, 1 otherwise.
 * On failure the reason qnet gives (qnet_last_error) goes to stderr.
 *
 * Build (see README.md in this directory):
 *     cc -o http_get http_get.c $(pkg-config --cflags --libs qnet)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <qnet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Print what failed, with qnet's own explanation of this thread's last failed call. */
static void report(const char *what, int err)
{
    char msg[512];
    qnet_result code = qnet_last_result();
    qnet_last_error(msg, sizeof msg); /* always NUL-terminated, truncated if longer */
    fprintf(stderr, "http_get: %s failed: %s [%s]", what, msg[0] ? msg : "(no message)",
            qnet_strerror(code));
    if (err)
        fprintf(stderr, " (errno %d: %s)", err, strerror(err));
    fputc('\n', stderr);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s HOST PORT [PATH]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    char *end;
    long port = strtol(argv[2], &end, 10);
    if (*end || port < 1 || port > 65535) {
        fprintf(stderr, "http_get: bad port %s\n", argv[2]);
        return 2;
    }
    const char *path = argc == 4 ? argv[3] : "/";

    qnet_result r = qnet_init(NULL, 0);
    if (r != QNET_OK) {
        report("qnet_init", 0);
        return 1;
    }

    /* A connected stream socket: the relay has reached HOST:PORT when this returns. */
    int fd = qnet_connect(host, (uint16_t)port, 10000);
    if (fd < 0) {
        report("qnet_connect", errno);
        qnet_shutdown();
        return 1;
    }

    char req[2048];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: qnet-http_get\r\n"
                     "Connection: close\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "http_get: request too long\n");
        close(fd);
        qnet_shutdown();
        return 2;
    }
    if (write_all(fd, req, (size_t)n) != 0) {
        fprintf(stderr, "http_get: write: %s\n", strerror(errno));
        close(fd);
        qnet_shutdown();
        return 1;
    }

    /* HTTP/1.0 with Connection: close: the response ends at EOF. */
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "http_get: out of memory\n");
        return 1;
    }
    for (;;) {
        if (len + 1 >= cap) { /* one spare byte for the NUL below */
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                fprintf(stderr, "http_get: out of memory\n");
                return 1;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "http_get: read: %s\n", strerror(errno));
            close(fd);
            qnet_shutdown();
            return 1;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    close(fd);

    /* Status line, then the body after the first empty line. */
    int status = 0;
    if (len < 12 || sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "http_get: not an HTTP response (%zu bytes)\n", len);
        qnet_shutdown();
        return 1;
    }
    size_t body = 0;
    for (size_t i = 0; i + 3 < len; i++) {
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
            body = i + 4;
            break;
        }
    }
    if (body == 0) {
        fprintf(stderr, "http_get: response without a header end\n");
        qnet_shutdown();
        return 1;
    }
    fwrite(buf + body, 1, len - body, stdout);
    fflush(stdout);
    free(buf);
    if (status < 200 || status > 299)
        fprintf(stderr, "http_get: HTTP status %d\n", status);

    qnet_shutdown();
    return status >= 200 && status <= 299 ? 0 : 1;
}
