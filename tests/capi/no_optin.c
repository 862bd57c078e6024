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
 *
 * Last, res_query and res_search ask a DNS responder this program runs on 127.0.0.1:
 * without the flag they must reach it (the real functions run; qnet once refused them
 * whenever it was linked in), with the flag they must be refused (h_errno NO_RECOVERY,
 * errno ECONNREFUSED). A failure exits 1 with the reason on stderr.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <qnet.h>
#include <resolv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dns_fd = -1;

/* Answer every query on dns_fd with its question and one A record, 127.0.0.1, until
 * nothing arrives for 10 s. */
static void *dns_serve(void *arg)
{
    (void)arg;
    static const unsigned char answer[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1};
    for (;;) {
        struct pollfd p = {.fd = dns_fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            return NULL;
        unsigned char q[512], r[512 + sizeof answer];
        struct sockaddr_in from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(dns_fd, q, sizeof q, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 12)
            continue;
        /* The question: the name's labels up to the zero label, then QTYPE and QCLASS. */
        size_t end = 12;
        while (end < (size_t)n && q[end] != 0)
            end += q[end] + 1u;
        end += 5;
        if (end > (size_t)n)
            continue;
        memcpy(r, q, end);
        r[2] = (unsigned char)(0x80 | (q[2] & 0x01)); /* a response; RD as asked */
        r[3] = 0x80;                                  /* RA, NOERROR */
        r[4] = 0, r[5] = 1;                           /* one question */
        r[6] = 0, r[7] = 1;                           /* one answer */
        memset(r + 8, 0, 4);                          /* no authority, no additional */
        memcpy(r + end, answer, sizeof answer);
        sendto(dns_fd, r, end + sizeof answer, 0, (struct sockaddr *)&from, fromlen);
    }
}

/* res_query and res_search against the responder: they must run (want_refused 0) or be
 * refused by qnet (want_refused 1). Returns 0 when they did what they must. */
static int check_res(int want_refused)
{
    dns_fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (dns_fd < 0 || bind(dns_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(dns_fd, (struct sockaddr *)&a, &alen) != 0) {
        fprintf(stderr, "no_optin: DNS responder: %s\n", strerror(errno));
        return 1;
    }
    pthread_t th;
    if (pthread_create(&th, NULL, dns_serve, NULL) != 0) {
        fprintf(stderr, "no_optin: pthread_create failed\n");
        return 1;
    }
    pthread_detach(th);
    res_init();
    _res.nscount = 1;
    _res.nsaddr_list[0] = a;
    _res.retrans = 2;
    _res.retry = 1;
    static const char *const which[] = {"res_query", "res_search"};
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        unsigned char ans[512];
        errno = 0;
        h_errno = 0;
        int n = i == 0 ? res_query("qnet-capi.test", C_IN, T_A, ans, sizeof ans)
                       : res_search("qnet-capi.test", C_IN, T_A, ans, sizeof ans);
        int e = errno, h = h_errno;
        int refused = n < 0 && h == NO_RECOVERY && e == ECONNREFUSED;
        fprintf(stderr, "no_optin: %s = %d (h_errno %d, errno %s)%s\n", which[i], n, h, strerror(e),
                refused ? ": refused" : "");
        if (want_refused ? !refused : n <= 0) {
            fprintf(stderr, "no_optin: %s should have %s\n", which[i],
                    want_refused ? "been refused" : "reached the local DNS responder");
            bad = 1;
        }
    }
    return bad;
}

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
    fflush(stdout);
    int bad = check_res(strcmp(mode, "intercept") == 0);
    if (strcmp(mode, "none") != 0)
        qnet_shutdown();
    return bad;
}
