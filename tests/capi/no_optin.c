/*
 * Linking qnet changes nothing by itself: a program linked against libqnet.a (or with
 * -lqnet against libqnet.so, not preloaded) that does not pass QNET_INIT_INTERCEPT
 * connects directly with plain connect().
 *
 *     no_optin MODE IP PORT
 *
 * MODE: "none"      never calls qnet_init (it only asks qnet_version, so the archive's
 *                   objects, hooks included, are linked in);
 *       "init0"     calls qnet_init(NULL, 0): the explicit API, no interception;
 *       "intercept" calls qnet_init(NULL, QNET_INIT_INTERCEPT): the control, which must
 *                   go through the tunnel.
 * Then it fetches /token.txt from IP:PORT with socket + connect + write + read and
 * prints the HTTP body. tests/capi/run serves different tokens on the same IP:PORT on
 * each side of the relay (and configures an empty intercept.bypass), so the body says
 * which way the connection went.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <qnet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s none|init0|intercept IP PORT\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "none") == 0) {
        fprintf(stderr, "no_optin: linked with qnet %s, qnet_init not called\n", qnet_version());
    } else if (strcmp(mode, "init0") == 0 || strcmp(mode, "intercept") == 0) {
        uint32_t flags = strcmp(mode, "intercept") == 0 ? QNET_INIT_INTERCEPT : 0;
        if (qnet_init(NULL, flags) != QNET_OK) {
            char msg[512];
            qnet_last_error(msg, sizeof msg);
            fprintf(stderr, "no_optin: qnet_init(NULL, %u) failed: %s\n", flags, msg);
            return 1;
        }
    } else {
        fprintf(stderr, "no_optin: unknown mode %s\n", mode);
        return 2;
    }

    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) {
        fprintf(stderr, "no_optin: bad IP %s\n", argv[2]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "no_optin: connect %s:%s: %s\n", argv[2], argv[3], strerror(errno));
        return 1;
    }
    const char req[] = "GET /token.txt HTTP/1.0\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        fprintf(stderr, "no_optin: write: %s\n", strerror(errno));
        return 1;
    }
    char buf[65536];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    char *body = strstr(buf, "\r\n\r\n");
    if (!body) {
        fprintf(stderr, "no_optin: no HTTP response (%zu bytes)\n", len);
        return 1;
    }
    fputs(body + 4, stdout);
    if (strcmp(mode, "none") != 0)
        qnet_shutdown();
    return 0;
}
