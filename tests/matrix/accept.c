/* INTERCEPTION.md's outside acceptance cases, one subcommand each, run preloaded in the
 * client namespace by tests/matrix/run. The echo server is on ECHO4/ECHO6 port 7, reachable
 * only through the relay; NAME4/NAME6 exist only in the relay namespace's /etc/hosts.
 * usage: accept resolver|reverse|res|udp|syscall|tfo|peer|sockname|fds|closeall|fork|scm|errors */
#include "mx.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <resolv.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#define ECHO4 "10.78.0.1"
#define ECHO6 "fd78::1"
#define NAME4 "web.qnet.test"
#define NAME6 "web6.qnet.test"
#define PORT 7

static char why[512];

/* getaddrinfo(name, "7", hints) -> first address; prints a failure and returns -1 otherwise. */
static int lookup(const char *name, const struct addrinfo *hints, struct sockaddr_storage *ss,
                  socklen_t *len, const char *what) {
    struct addrinfo *res = NULL;
    int e = getaddrinfo(name, "7", hints, &res);
    if (e != 0 || res == NULL) {
        mx_fail("%s: getaddrinfo(%s): %s", what, name, e ? gai_strerror(e) : "no result");
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Connect to a sockaddr and echo; reports under `what`. Returns 0 on success. */
static int sa_echo(const struct sockaddr_storage *ss, socklen_t len, const char *what) {
    int fd = socket(ss->ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        mx_fail("%s: socket: %s", what, strerror(errno));
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)ss, len) < 0) {
        mx_fail("%s: connect %s: %s", what, mx_addr((const struct sockaddr *)ss), strerror(errno));
        close(fd);
        return -1;
    }
    int r = mx_echo(fd, what, why, sizeof why);
    close(fd);
    if (r == 0)
        mx_ok("%s: echo through %s", what, mx_addr((const struct sockaddr *)ss));
    else
        mx_fail("%s: %s", what, why);
    return r;
}

/* ---- resolver entry points ---------------------------------------------------------- */

static void hostent_check(const struct hostent *h, int af, const char *what, struct sockaddr_storage *out) {
    if (!h) {
        mx_fail("%s: NULL (h_errno %d)", what, h_errno);
        return;
    }
    int len = af == AF_INET ? 4 : 16;
    if (h->h_addrtype != af || h->h_length != len || !h->h_addr_list || !h->h_addr_list[0]) {
        mx_fail("%s: h_addrtype %d h_length %d", what, h->h_addrtype, h->h_length);
        return;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (af == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(PORT);
        memcpy(&s->sin_addr, h->h_addr_list[0], 4);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(PORT);
        memcpy(&s->sin6_addr, h->h_addr_list[0], 16);
    }
    CHECK(mx_is_fake((struct sockaddr *)&ss), "%s: %s (h_name %s) is a fake address", what,
          mx_addr((struct sockaddr *)&ss), h->h_name ? h->h_name : "(null)");
    if (out)
        *out = ss;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static void t_resolver(void) {
    struct sockaddr_storage ss, ss2;
    socklen_t len, len2;

    /* hints == NULL (torsocks leaked UDP :53 here) */
    if (lookup(NAME4, NULL, &ss, &len, "hints=NULL") == 0) {
        CHECK(mx_is_fake((struct sockaddr *)&ss), "hints=NULL: %s -> %s is fake", NAME4, mx_addr((struct sockaddr *)&ss));
        sa_echo(&ss, len, "hints=NULL connect");
        if (lookup(NAME4, NULL, &ss2, &len2, "hints=NULL again") == 0)
            CHECK(same_addr(&ss, &ss2), "the same name gets the same address (%s)", mx_addr((struct sockaddr *)&ss2));
    }
    struct addrinfo h4 = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    if (lookup(NAME4, &h4, &ss, &len, "AF_INET") == 0) {
        CHECK(ss.ss_family == AF_INET && mx_is_fake((struct sockaddr *)&ss), "AF_INET: %s -> %s", NAME4, mx_addr((struct sockaddr *)&ss));
        sa_echo(&ss, len, "AF_INET connect");
    }
    struct addrinfo h6 = {.ai_family = AF_INET6, .ai_socktype = SOCK_STREAM};
    if (lookup(NAME6, &h6, &ss, &len, "AF_INET6") == 0) {
        CHECK(ss.ss_family == AF_INET6 && mx_is_fake((struct sockaddr *)&ss), "AF_INET6: %s -> %s", NAME6, mx_addr((struct sockaddr *)&ss));
        sa_echo(&ss, len, "AF_INET6 connect (relay resolves to fd78::1)");
    }
    /* AI_NUMERICHOST: numeric answered locally, names refused without any lookup. */
    struct addrinfo hn = {.ai_flags = AI_NUMERICHOST, .ai_socktype = SOCK_STREAM};
    if (lookup(ECHO4, &hn, &ss, &len, "AI_NUMERICHOST numeric") == 0) {
        CHECK(strcmp(mx_addr((struct sockaddr *)&ss), ECHO4 ":7") == 0, "AI_NUMERICHOST %s -> %s", ECHO4, mx_addr((struct sockaddr *)&ss));
        sa_echo(&ss, len, "AI_NUMERICHOST connect");
    }
    struct addrinfo *res = NULL;
    int e = getaddrinfo(NAME4, "7", &hn, &res);
    CHECK(e == EAI_NONAME, "AI_NUMERICHOST with a name -> %s (want EAI_NONAME)", e ? gai_strerror(e) : "success");
    if (res)
        freeaddrinfo(res);
    /* A numeric host without the flag is not faked. */
    if (lookup(ECHO6, NULL, &ss, &len, "numeric v6") == 0)
        CHECK(!mx_is_fake((struct sockaddr *)&ss), "numeric %s -> %s (not faked)", ECHO6, mx_addr((struct sockaddr *)&ss));
    /* /etc/hosts answered locally */
    if (lookup("localhost", &h4, &ss, &len, "localhost") == 0)
        CHECK(strcmp(mx_addr((struct sockaddr *)&ss), "127.0.0.1:7") == 0, "localhost from /etc/hosts -> %s", mx_addr((struct sockaddr *)&ss));
    /* AI_PASSIVE with no node: the wildcard, as always */
    struct addrinfo hp = {.ai_flags = AI_PASSIVE, .ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    if (lookup(NULL, &hp, &ss, &len, "AI_PASSIVE") == 0)
        CHECK(strcmp(mx_addr((struct sockaddr *)&ss), "0.0.0.0:7") == 0, "AI_PASSIVE NULL node -> %s", mx_addr((struct sockaddr *)&ss));

    /* gethostbyname family */
    struct sockaddr_storage a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    hostent_check(gethostbyname(NAME4), AF_INET, "gethostbyname", &a);
    if (a.ss_family)
        sa_echo(&a, sizeof(struct sockaddr_in), "gethostbyname connect");
    hostent_check(gethostbyname2(NAME6, AF_INET6), AF_INET6, "gethostbyname2(AF_INET6)", &b);
    if (b.ss_family)
        sa_echo(&b, sizeof(struct sockaddr_in6), "gethostbyname2 connect");

    struct hostent he, *hp2 = NULL;
    char buf[2048];
    int herr = 0;
    int r = gethostbyname_r(NAME4, &he, buf, sizeof buf, &hp2, &herr);
    struct sockaddr_storage c;
    memset(&c, 0, sizeof c);
    if (r != 0 || !hp2)
        mx_fail("gethostbyname_r: r=%d h_errno=%d", r, herr);
    else {
        hostent_check(hp2, AF_INET, "gethostbyname_r", &c);
        CHECK(same_addr(&a, &c), "gethostbyname_r agrees with gethostbyname");
        sa_echo(&c, sizeof(struct sockaddr_in), "gethostbyname_r connect");
    }
    r = gethostbyname2_r(NAME6, AF_INET6, &he, buf, sizeof buf, &hp2, &herr);
    if (r != 0 || !hp2)
        mx_fail("gethostbyname2_r(AF_INET6): r=%d h_errno=%d", r, herr);
    else {
        hostent_check(hp2, AF_INET6, "gethostbyname2_r(AF_INET6)", &c);
        CHECK(same_addr(&b, &c), "gethostbyname2_r agrees with gethostbyname2");
    }
    /* ERANGE contract: a buffer too small says so instead of overflowing. */
    char tiny[8];
    r = gethostbyname_r(NAME4, &he, tiny, sizeof tiny, &hp2, &herr);
    CHECK(r == ERANGE, "gethostbyname_r with an 8-byte buffer -> %d (want ERANGE)", r);
}

/* ---- reverse lookups ----------------------------------------------------------------- */

static void t_reverse(void) {
    struct addrinfo h4 = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo h6 = {.ai_family = AF_INET6, .ai_socktype = SOCK_STREAM};
    struct sockaddr_storage ss;
    socklen_t len;
    char host[256], serv[64];

    if (lookup(NAME4, &h4, &ss, &len, "reverse v4") == 0) {
        int e = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, NULL, 0, NI_NAMEREQD);
        CHECK(e == 0 && strcmp(host, NAME4) == 0, "getnameinfo(%s) -> %s", mx_addr((struct sockaddr *)&ss), e ? gai_strerror(e) : host);
        e = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV);
        char want[64];
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, want, sizeof want);
        CHECK(e == 0 && strcmp(host, want) == 0 && strcmp(serv, "7") == 0, "getnameinfo NI_NUMERICHOST -> %s %s", e ? gai_strerror(e) : host, e ? "" : serv);
        struct hostent *h = gethostbyaddr(&((struct sockaddr_in *)&ss)->sin_addr, 4, AF_INET);
        CHECK(h && h->h_name && strcmp(h->h_name, NAME4) == 0, "gethostbyaddr(fake) -> %s", h ? h->h_name : "NULL");
        e = getnameinfo((struct sockaddr *)&ss, len, host, 4, NULL, 0, NI_NAMEREQD);
        CHECK(e == EAI_OVERFLOW, "getnameinfo into a 4-byte buffer -> %d (want EAI_OVERFLOW = %d)", e, EAI_OVERFLOW);
        e = getnameinfo((struct sockaddr *)&ss, 3, host, sizeof host, NULL, 0, 0);
        CHECK(e == EAI_FAMILY, "getnameinfo with salen 3 -> %s (want EAI_FAMILY)", e ? gai_strerror(e) : "success");
    }
    if (lookup(NAME6, &h6, &ss, &len, "reverse v6") == 0) {
        int e = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, NULL, 0, NI_NAMEREQD);
        CHECK(e == 0 && strcmp(host, NAME6) == 0, "getnameinfo(%s) -> %s", mx_addr((struct sockaddr *)&ss), e ? gai_strerror(e) : host);
    }
    /* A fake address never handed out: no name, and no PTR query may leave. */
    ss = mx_sa("254.254.254.253", 7, &len);
    int e = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, NULL, 0, NI_NAMEREQD);
    CHECK(e != 0, "getnameinfo(unassigned fake address, NI_NAMEREQD) fails -> %s", e ? gai_strerror(e) : host);
    /* A real address without a local name: no PTR query may leave (the leak counter checks). */
    ss = mx_sa(ECHO4, 7, &len);
    e = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, NULL, 0, 0);
    CHECK(e == 0 && strcmp(host, ECHO4) == 0, "getnameinfo(%s) without NI_NAMEREQD -> %s (numeric)", ECHO4, e ? gai_strerror(e) : host);
    struct in_addr ia;
    inet_pton(AF_INET, ECHO4, &ia);
    struct hostent *h = gethostbyaddr(&ia, 4, AF_INET);
    mx_ok("gethostbyaddr(%s) -> %s (no PTR query left: see the leak counter)", ECHO4, h ? h->h_name : "NULL");
}

/* ---- res_* -------------------------------------------------------------------------- */

static void t_res(void) {
    unsigned char ans[512];
    int r = res_query(NAME4, 1 /* C_IN */, 1 /* T_A */, ans, sizeof ans);
    CHECK(r < 0, "res_query refused (r=%d)", r);
    r = res_search(NAME4, 1, 1, ans, sizeof ans);
    CHECK(r < 0, "res_search refused (r=%d)", r);
    /* The names older headers bind to, and the calls that look up and connect inside
     * libc: each found by the dynamic linker (our hook, when preloaded) and refused with
     * ECONNREFUSED. Passed through, each would send DNS to the nameserver (a leak). */
    struct __res_state st;
    memset(&st, 0, sizeof st);
    res_ninit(&st);
    typedef int (*nq_fn)(res_state, const char *, int, int, unsigned char *, int);
    typedef int (*nqd_fn)(res_state, const char *, const char *, int, int, unsigned char *, int);
    typedef int (*ns_fn)(res_state, const unsigned char *, int, unsigned char *, int);
    const char *nq[] = {"__res_nquery", "__res_nsearch"};
    for (size_t i = 0; i < 2; i++) {
        nq_fn f = (nq_fn)dlsym(RTLD_DEFAULT, nq[i]);
        errno = 0;
        r = f ? f(&st, NAME4, 1, 1, ans, sizeof ans) : 0;
        CHECK(f && r < 0 && errno == ECONNREFUSED, "%s refused (r=%d, %s)", nq[i], r, strerror(errno));
    }
    nqd_fn qd = (nqd_fn)dlsym(RTLD_DEFAULT, "__res_nquerydomain");
    errno = 0;
    r = qd ? qd(&st, "web", "qnet.test", 1, 1, ans, sizeof ans) : 0;
    CHECK(qd && r < 0 && errno == ECONNREFUSED, "__res_nquerydomain refused (r=%d, %s)", r, strerror(errno));
    int qlen = res_nmkquery(&st, 0 /* QUERY */, NAME4, 1, 1, NULL, 0, NULL, ans, sizeof ans);
    ns_fn send = (ns_fn)dlsym(RTLD_DEFAULT, "__res_nsend");
    unsigned char reply[512];
    errno = 0;
    r = send && qlen > 0 ? send(&st, ans, qlen, reply, sizeof reply) : 0;
    CHECK(send && r < 0 && errno == ECONNREFUSED, "__res_nsend refused (r=%d, %s)", r, strerror(errno));
    char *host = NAME4;
    int fd2 = -1;
    errno = 0;
    r = rcmd(&host, htons(514), "root", "root", "true", &fd2);
    CHECK(r < 0 && errno == ECONNREFUSED, "rcmd refused (r=%d, %s)", r, strerror(errno));
    errno = 0;
    r = rcmd_af(&host, htons(514), "root", "root", "true", &fd2, AF_INET);
    CHECK(r < 0 && errno == ECONNREFUSED, "rcmd_af refused (r=%d, %s)", r, strerror(errno));
    errno = 0;
    r = rexec(&host, htons(512), "root", "pw", "true", &fd2);
    CHECK(r < 0 && errno == ECONNREFUSED, "rexec refused (r=%d, %s)", r, strerror(errno));
    errno = 0;
    r = rexec_af(&host, htons(512), "root", "pw", "true", &fd2, AF_INET);
    CHECK(r < 0 && errno == ECONNREFUSED, "rexec_af refused (r=%d, %s)", r, strerror(errno));
    errno = 0;
    r = ruserok(NAME4, 0, "root", "root");
    CHECK(r < 0 && errno == ECONNREFUSED, "ruserok refused (r=%d, %s)", r, strerror(errno));
    errno = 0;
    struct netent *n = getnetbyname("qnet-test-net");
    CHECK(!n && errno == ECONNREFUSED && h_errno == NO_RECOVERY, "getnetbyname refused (%s, h_errno %d)", strerror(errno), h_errno);
    errno = 0;
    n = getnetbyaddr(0x0a4e0000, AF_INET);
    CHECK(!n && errno == ECONNREFUSED, "getnetbyaddr refused (%s)", strerror(errno));
    struct netent ne, *res = &ne;
    char buf[1024];
    int herr = 0;
    r = getnetbyname_r("qnet-test-net", &ne, buf, sizeof buf, &res, &herr);
    CHECK(r == ECONNREFUSED && !res && herr == NO_RECOVERY, "getnetbyname_r refused (r=%d, h_errno %d)", r, herr);
    res_nclose(&st);
}

/* ---- socket policy ------------------------------------------------------------------ */

static void refused_socket(int dom, int type, int proto, const char *what) {
    errno = 0;
    int fd = socket(dom, type, proto);
    CHECK(fd < 0 && errno == EPERM, "%s -> %s (want EPERM)", what, fd < 0 ? strerror(errno) : "a socket");
    if (fd >= 0)
        close(fd);
}

/* A UDP socket may be created (curl probes IPv6 support with one) but nothing can be
 * sent on it: connect, sendto, sendmsg, sendmmsg and the raw syscalls all fail with EPERM. */
static void refused_udp(int dom, int type, const char *ip, const char *what) {
    errno = 0;
    int fd = socket(dom, type, 0);
    CHECK(fd >= 0, "%s can be created (%s)", what, fd < 0 ? strerror(errno) : "ok");
    if (fd < 0)
        return;
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ip, 53, &len);
    errno = 0;
    ssize_t n = sendto(fd, "q", 1, 0, (struct sockaddr *)&ss, len);
    CHECK(n < 0 && errno == EPERM, "%s: sendto -> %s (want EPERM)", what, n < 0 ? strerror(errno) : "sent");
    struct iovec io = {.iov_base = "q", .iov_len = 1};
    struct msghdr m = {.msg_name = &ss, .msg_namelen = len, .msg_iov = &io, .msg_iovlen = 1};
    errno = 0;
    n = sendmsg(fd, &m, 0);
    CHECK(n < 0 && errno == EPERM, "%s: sendmsg -> %s (want EPERM)", what, n < 0 ? strerror(errno) : "sent");
    struct mmsghdr mm = {.msg_hdr = m};
    errno = 0;
    int k = sendmmsg(fd, &mm, 1, 0);
    CHECK(k < 0 && errno == EPERM, "%s: sendmmsg -> %s (want EPERM)", what, k < 0 ? strerror(errno) : "sent");
    errno = 0;
    long r = syscall(SYS_sendto, fd, "q", 1, 0, (struct sockaddr *)&ss, len);
    CHECK(r < 0 && errno == EPERM, "%s: syscall(SYS_sendto) -> %s (want EPERM)", what, r < 0 ? strerror(errno) : "sent");
    errno = 0;
    int c = connect(fd, (struct sockaddr *)&ss, len);
    CHECK(c < 0 && errno == EPERM, "%s: connect -> %s (want EPERM)", what, c < 0 ? strerror(errno) : "connected");
    int d = dup(fd);
    errno = 0;
    n = d < 0 ? 0 : sendto(d, "q", 1, 0, (struct sockaddr *)&ss, len);
    CHECK(d >= 0 && n < 0 && errno == EPERM, "%s: sendto on a dup -> %s (want EPERM)", what, n < 0 ? strerror(errno) : "sent");
    if (d >= 0)
        close(d);
    close(fd);
}

static void t_udp(void) {
    refused_udp(AF_INET, SOCK_DGRAM, "10.77.0.1", "socket(AF_INET, SOCK_DGRAM)");
    refused_udp(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, "10.77.0.1", "socket(AF_INET, SOCK_DGRAM|CLOEXEC|NONBLOCK)");
    refused_udp(AF_INET6, SOCK_DGRAM, "fd77::1", "socket(AF_INET6, SOCK_DGRAM)");
    refused_socket(AF_INET, SOCK_RAW, IPPROTO_ICMP, "socket(AF_INET, SOCK_RAW)");
    refused_socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6, "socket(AF_INET6, SOCK_RAW)");
    refused_socket(AF_PACKET, SOCK_RAW, htons(0x0003), "socket(AF_PACKET)");
    int sv[2];
    int r = socketpair(AF_INET, SOCK_STREAM, 0, sv);
    CHECK(r < 0, "socketpair(AF_INET) fails (%s)", r < 0 ? strerror(errno) : "succeeded");
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(fd >= 0, "socket(AF_UNIX, SOCK_DGRAM) still allowed (%s)", fd < 0 ? strerror(errno) : "ok");
    if (fd >= 0)
        close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket(AF_INET, SOCK_STREAM) allowed");
    if (fd >= 0)
        close(fd);
}

/* ---- raw syscalls, TFO, sendmsg ------------------------------------------------------ */

typedef long (*sendfn)(int fd, const char *msg, size_t n, const struct sockaddr *sa, socklen_t len);

static long via_sendto(int fd, const char *m, size_t n, const struct sockaddr *sa, socklen_t l) {
    return sendto(fd, m, n, MSG_FASTOPEN, sa, l);
}
static long via_sys_sendto(int fd, const char *m, size_t n, const struct sockaddr *sa, socklen_t l) {
    return syscall(SYS_sendto, fd, m, n, MSG_FASTOPEN, sa, l);
}
static struct msghdr mkmsg(const char *m, size_t n, const struct sockaddr *sa, socklen_t l, struct iovec *iov) {
    iov->iov_base = (void *)m;
    iov->iov_len = n;
    struct msghdr h = {.msg_name = (void *)sa, .msg_namelen = l, .msg_iov = iov, .msg_iovlen = 1};
    return h;
}
static long via_sendmsg(int fd, const char *m, size_t n, const struct sockaddr *sa, socklen_t l) {
    struct iovec iov;
    struct msghdr h = mkmsg(m, n, sa, l, &iov);
    return sendmsg(fd, &h, MSG_FASTOPEN);
}
static long via_sys_sendmsg(int fd, const char *m, size_t n, const struct sockaddr *sa, socklen_t l) {
    struct iovec iov;
    struct msghdr h = mkmsg(m, n, sa, l, &iov);
    return syscall(SYS_sendmsg, fd, &h, MSG_FASTOPEN);
}
static long via_sendmmsg(int fd, const char *m, size_t n, const struct sockaddr *sa, socklen_t l) {
    struct iovec iov;
    struct mmsghdr mm = {.msg_hdr = mkmsg(m, n, sa, l, &iov)};
    int r = sendmmsg(fd, &mm, 1, MSG_FASTOPEN);
    return r == 1 ? (long)mm.msg_len : -1;
}

/* A first send that also connects; then the rest of the echo. */
static void send_connect(sendfn f, const char *ip, const char *what) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ip, PORT, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    char msg[256];
    mx_message(msg, sizeof msg, what);
    long r = f(fd, msg, strlen(msg), (struct sockaddr *)&ss, len);
    if (r < 0) {
        mx_fail("%s to %s: %s", what, mx_addr((struct sockaddr *)&ss), strerror(errno));
        close(fd);
        return;
    }
    int e = mx_echo_rest(fd, msg, (size_t)r, why, sizeof why);
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    int pr = getpeername(fd, (struct sockaddr *)&peer, &pl);
    if (e == 0)
        mx_ok("%s to %s: sent %ld bytes with the connect, echo ok, peer %s", what, mx_addr((struct sockaddr *)&ss), r,
              pr == 0 ? mx_addr((struct sockaddr *)&peer) : strerror(errno));
    else
        mx_fail("%s to %s: %s", what, mx_addr((struct sockaddr *)&ss), why);
    close(fd);
}

static void t_syscall(void) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(ECHO4, PORT, &len);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    long r = syscall(SYS_connect, fd, &ss, len);
    if (r != 0)
        mx_fail("syscall(SYS_connect, %s): %s", mx_addr((struct sockaddr *)&ss), strerror(errno));
    else {
        int e = mx_echo(fd, "SYS_connect", why, sizeof why);
        CHECK(e == 0, "syscall(SYS_connect) echo%s%s", e ? ": " : "", e ? why : "");
    }
    close(fd);
    ss = mx_sa(ECHO6, PORT, &len);
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    r = syscall(SYS_connect, fd, &ss, len);
    if (r != 0)
        mx_fail("syscall(SYS_connect, %s): %s", mx_addr((struct sockaddr *)&ss), strerror(errno));
    else {
        int e = mx_echo(fd, "SYS_connect6", why, sizeof why);
        CHECK(e == 0, "syscall(SYS_connect) v6 echo%s%s", e ? ": " : "", e ? why : "");
    }
    close(fd);
    send_connect(via_sys_sendto, ECHO4, "syscall(SYS_sendto, MSG_FASTOPEN)");
    send_connect(via_sys_sendmsg, ECHO4, "syscall(SYS_sendmsg, msg_name, MSG_FASTOPEN)");
    /* Non-socket syscalls pass straight through. */
    r = syscall(SYS_getpid);
    CHECK(r == getpid(), "syscall(SYS_getpid) passes through");
}

static void t_tfo(void) {
    send_connect(via_sendto, ECHO4, "sendto(MSG_FASTOPEN)");
    send_connect(via_sendto, ECHO6, "sendto(MSG_FASTOPEN) v6");
    send_connect(via_sendmsg, ECHO4, "sendmsg(msg_name, MSG_FASTOPEN)");
    send_connect(via_sendmsg, ECHO6, "sendmsg(msg_name, MSG_FASTOPEN) v6");
    send_connect(via_sendmmsg, ECHO4, "sendmmsg(msg_name, MSG_FASTOPEN)");
    /* to a fake address from the resolver */
    struct addrinfo h4 = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct sockaddr_storage ss;
    socklen_t len;
    if (lookup(NAME4, &h4, &ss, &len, "tfo lookup") == 0) {
        char ip[64];
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
        send_connect(via_sendto, ip, "sendto(MSG_FASTOPEN) to a fake address");
    }
}

/* ---- getpeername & friends ------------------------------------------------------------ */

static void peer_is(int fd, const char *want, const char *what) {
    struct sockaddr_storage p;
    socklen_t pl = sizeof p;
    int r = getpeername(fd, (struct sockaddr *)&p, &pl);
    CHECK(r == 0 && strcmp(mx_addr((struct sockaddr *)&p), want) == 0, "%s: getpeername -> %s (want %s)", what,
          r == 0 ? mx_addr((struct sockaddr *)&p) : strerror(errno), want);
}

static int getint(int fd, int lvl, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, lvl, opt, &v, &l) < 0)
        return -1000 - errno;
    return v;
}

static void t_peer(void) {
    int fd = mx_tcp_to(ECHO4, PORT);
    if (fd < 0) {
        mx_fail("connect %s: %s", ECHO4, strerror(errno));
        return;
    }
    peer_is(fd, ECHO4 ":7", "by IP");
    struct sockaddr_in sin;
    socklen_t sl = 4;
    int r = getpeername(fd, (struct sockaddr *)&sin, &sl);
    CHECK(r == 0 && sl == sizeof(struct sockaddr_in) && sin.sin_family == AF_INET, "short addrlen (4): trimmed, full length %u reported", sl);
    r = getpeername(fd, NULL, &sl);
    CHECK(r < 0 && errno == EFAULT, "getpeername(NULL addr) -> %s (want EFAULT)", r < 0 ? strerror(errno) : "success");
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    r = getsockname(fd, (struct sockaddr *)&me, &ml);
    CHECK(r == 0 && me.ss_family == AF_INET, "getsockname -> %s", r == 0 ? mx_addr((struct sockaddr *)&me) : strerror(errno));
    CHECK(getint(fd, SOL_SOCKET, SO_TYPE) == SOCK_STREAM, "SO_TYPE = SOCK_STREAM (%d)", getint(fd, SOL_SOCKET, SO_TYPE));
    CHECK(getint(fd, SOL_SOCKET, SO_DOMAIN) == AF_INET, "SO_DOMAIN = AF_INET (%d)", getint(fd, SOL_SOCKET, SO_DOMAIN));
    CHECK(getint(fd, SOL_SOCKET, SO_PROTOCOL) == IPPROTO_TCP, "SO_PROTOCOL = IPPROTO_TCP (%d)", getint(fd, SOL_SOCKET, SO_PROTOCOL));
    CHECK(getint(fd, SOL_SOCKET, SO_ERROR) == 0, "SO_ERROR = 0 (%d)", getint(fd, SOL_SOCKET, SO_ERROR));
    int one = 1;
    r = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    CHECK(r == 0, "setsockopt(TCP_NODELAY) -> %s", r ? strerror(errno) : "0");
    CHECK(getint(fd, IPPROTO_TCP, TCP_NODELAY) == 1, "getsockopt(TCP_NODELAY) reads back 1 (%d)", getint(fd, IPPROTO_TCP, TCP_NODELAY));
    r = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    CHECK(r == 0, "setsockopt(SO_KEEPALIVE) -> %s", r ? strerror(errno) : "0");
    CHECK(getint(fd, SOL_SOCKET, SO_KEEPALIVE) == 1, "getsockopt(SO_KEEPALIVE) reads back 1 (%d)", getint(fd, SOL_SOCKET, SO_KEEPALIVE));
    int e = mx_echo(fd, "peer", why, sizeof why);
    CHECK(e == 0, "echo after the socket options%s%s", e ? ": " : "", e ? why : "");
    close(fd);

    /* fake address: the original (fake) destination, not the relay */
    struct addrinfo h4 = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct sockaddr_storage ss;
    socklen_t len;
    if (lookup(NAME4, &h4, &ss, &len, "peer lookup") == 0) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&ss, len) == 0) {
            char want[80];
            snprintf(want, sizeof want, "%s", mx_addr((struct sockaddr *)&ss));
            peer_is(fd, want, "by name (fake address)");
        } else
            mx_fail("connect %s: %s", mx_addr((struct sockaddr *)&ss), strerror(errno));
        close(fd);
    }
    /* IPv6 and v4-mapped */
    fd = mx_tcp_to(ECHO6, PORT);
    if (fd < 0)
        mx_fail("connect [%s]: %s", ECHO6, strerror(errno));
    else {
        peer_is(fd, "[" ECHO6 "]:7", "IPv6");
        e = mx_echo(fd, "peer6", why, sizeof why);
        CHECK(e == 0, "IPv6 echo%s%s", e ? ": " : "", e ? why : "");
        close(fd);
    }
    fd = mx_tcp_to("::ffff:" ECHO4, PORT);
    if (fd < 0)
        mx_fail("connect [::ffff:%s] (v4-mapped): %s", ECHO4, strerror(errno));
    else {
        peer_is(fd, "[::ffff:" ECHO4 "]:7", "v4-mapped");
        e = mx_echo(fd, "mapped", why, sizeof why);
        CHECK(e == 0, "v4-mapped echo%s%s", e ? ": " : "", e ? why : "");
        close(fd);
    }
    /* errors */
    int p[2];
    if (pipe(p) == 0) {
        sl = sizeof ss;
        r = getpeername(p[0], (struct sockaddr *)&ss, &sl);
        CHECK(r < 0 && errno == ENOTSOCK, "getpeername(pipe) -> %s (want ENOTSOCK)", r < 0 ? strerror(errno) : "success");
        close(p[0]);
        close(p[1]);
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sl = sizeof ss;
    r = getpeername(fd, (struct sockaddr *)&ss, &sl);
    CHECK(r < 0 && errno == ENOTCONN, "getpeername(unconnected) -> %s (want ENOTCONN)", r < 0 ? strerror(errno) : "success");
    close(fd);
}

/* getsockname on connected sockets: ARCHITECTURE.md wants it answered "as a TCP socket
 * would", and a connected TCP socket always has a local address and port (apps log it,
 * FTP/SIP clients put it in the protocol). */
static void t_sockname(void) {
    const char *dst[] = {ECHO4, ECHO6};
    for (int i = 0; i < 2; i++) {
        int fd = mx_tcp_to(dst[i], PORT);
        if (fd < 0) {
            mx_fail("connect %s: %s", dst[i], strerror(errno));
            continue;
        }
        struct sockaddr_storage me;
        socklen_t ml = sizeof me;
        int r = getsockname(fd, (struct sockaddr *)&me, &ml);
        int fam = strchr(dst[i], ':') ? AF_INET6 : AF_INET;
        int port = r != 0 ? 0 : fam == AF_INET ? ((struct sockaddr_in *)&me)->sin_port : ((struct sockaddr_in6 *)&me)->sin6_port;
        CHECK(r == 0 && me.ss_family == fam && port != 0,
              "getsockname on a socket connected to %s -> %s (want a local address with a port)", dst[i],
              r == 0 ? mx_addr((struct sockaddr *)&me) : strerror(errno));
        close(fd);
    }
}

/* ---- fd registry --------------------------------------------------------------------- */

/* A loopback listener (bypassed: connects directly) to prove a reused fd number is not tunneled. */
static int lo_listener(int *port) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
        mx_fail("loopback listener: %s", strerror(errno));
        return -1;
    }
    socklen_t al = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    return l;
}

/* The fd number `want` must be reusable by a direct loopback connection. */
static void reuse_direct(int want, int lst, int port, const char *what) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd != want) {
        /* Not the same number (something else took it): move it there. */
        if (dup2(fd, want) < 0) {
            mx_fail("%s: dup2 to %d: %s", what, want, strerror(errno));
            return;
        }
        close(fd);
        fd = want;
    }
    char ip[32];
    snprintf(ip, sizeof ip, "127.0.0.1:%d", port);
    socklen_t len;
    struct sockaddr_storage ss = mx_sa("127.0.0.1", port, &len);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        mx_fail("%s: reused fd %d connect to %s: %s", what, fd, ip, strerror(errno));
        close(fd);
        return;
    }
    int c = accept(lst, NULL, NULL);
    const char m[] = "direct";
    char back[8] = {0};
    write(fd, m, 6);
    size_t got = c >= 0 ? mx_read_full(c, back, 6, 5000) : 0;
    struct sockaddr_storage p;
    socklen_t pl = sizeof p;
    int r = getpeername(fd, (struct sockaddr *)&p, &pl);
    CHECK(got == 6 && memcmp(back, m, 6) == 0 && r == 0 && strcmp(mx_addr((struct sockaddr *)&p), ip) == 0,
          "%s: fd %d reused for a direct loopback connection (peer %s)", what, fd, r == 0 ? mx_addr((struct sockaddr *)&p) : strerror(errno));
    if (c >= 0)
        close(c);
    close(fd);
}

static void t_fds(void) {
    int port, lst = lo_listener(&port);
    if (lst < 0)
        return;
    int e;
    /* close, then the number is reused by a pipe */
    int a = mx_tcp_to(ECHO4, PORT);
    if (a < 0) {
        mx_fail("connect: %s", strerror(errno));
        return;
    }
    e = mx_echo(a, "fds", why, sizeof why);
    CHECK(e == 0, "tunneled fd %d echo%s%s", a, e ? ": " : "", e ? why : "");
    close(a);
    int p[2];
    pipe(p);
    int pipefd = p[0] == a ? p[0] : (p[1] == a ? p[1] : -1);
    if (pipefd >= 0) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int r = getpeername(pipefd, (struct sockaddr *)&ss, &sl);
        CHECK(r < 0 && errno == ENOTSOCK, "close: fd %d reused by a pipe is a pipe (getpeername %s)", a, r < 0 ? strerror(errno) : "succeeded");
        write(p[1], "x", 1);
        char c;
        CHECK(read(p[0], &c, 1) == 1 && c == 'x', "pipe on the reused number works");
    } else
        mx_ok("close: fd %d not reused by the pipe (%d,%d); skipped that check", a, p[0], p[1]);
    close(p[0]);
    close(p[1]);
    reuse_direct(a, lst, port, "close");

    /* dup2 to a high number, close the original: the copy is still the connection */
    a = mx_tcp_to(ECHO4, PORT);
    int hi = 200;
    if (a < 0 || dup2(a, hi) != hi) {
        mx_fail("dup2: %s", strerror(errno));
    } else {
        close(a);
        e = mx_echo(hi, "dup2", why, sizeof why);
        CHECK(e == 0, "dup2(%d, %d) then close(%d): echo on %d%s%s", a, hi, a, hi, e ? ": " : "", e ? why : "");
        peer_is(hi, ECHO4 ":7", "dup2 copy");
        reuse_direct(a, lst, port, "after dup2+close");
        /* dup2 over a tunneled fd replaces it */
        int n = socket(AF_INET, SOCK_STREAM, 0);
        dup2(n, hi);
        close(n);
        reuse_direct(hi, lst, port, "dup2 over a tunneled fd");
    }
    /* dup3 */
    a = mx_tcp_to(ECHO6, PORT);
    if (a < 0 || dup3(a, hi, O_CLOEXEC) != hi) {
        mx_fail("dup3: %s", strerror(errno));
    } else {
        close(a);
        e = mx_echo(hi, "dup3", why, sizeof why);
        CHECK(e == 0, "dup3 copy echo%s%s", e ? ": " : "", e ? why : "");
        close(hi);
    }
    /* close_range over one tunneled fd */
    a = mx_tcp_to(ECHO4, PORT);
    if (a < 0)
        mx_fail("connect: %s", strerror(errno));
    else {
        int r = close_range(a, a, 0);
        CHECK(r == 0, "close_range(%d, %d) -> %s", a, a, r ? strerror(errno) : "0");
        reuse_direct(a, lst, port, "close_range");
    }
    /* close_range(CLOSE_RANGE_CLOEXEC) closes nothing */
    a = mx_tcp_to(ECHO4, PORT);
    if (a < 0)
        mx_fail("connect: %s", strerror(errno));
    else {
        close_range(a, a, CLOSE_RANGE_CLOEXEC);
        e = mx_echo(a, "cloexec", why, sizeof why);
        CHECK(e == 0, "close_range(CLOSE_RANGE_CLOEXEC) keeps the connection%s%s", e ? ": " : "", e ? why : "");
        close(a);
    }
    /* fclose of an fdopen'ed tunneled socket */
    a = mx_tcp_to(ECHO4, PORT);
    if (a < 0)
        mx_fail("connect: %s", strerror(errno));
    else {
        FILE *f = fdopen(a, "r+");
        char msg[128], line[256];
        mx_message(msg, sizeof msg, "stdio");
        fputs(msg, f);
        fflush(f);
        CHECK(fgets(line, sizeof line, f) && strcmp(line, msg) == 0, "stdio (fdopen) echo on a tunneled fd");
        fclose(f);
        reuse_direct(a, lst, port, "fclose");
    }
    close(lst);
}

static void t_closeall(void) {
    int e = mx_connect_echo(ECHO4, PORT, "before", why, sizeof why);
    CHECK(e == 0, "echo before closing every fd%s%s", e ? ": " : "", e ? why : "");
    int r = close_range(3, ~0U, 0);
    CHECK(r == 0, "close_range(3, ~0U) -> %s", r ? strerror(errno) : "0");
    e = mx_connect_echo(ECHO4, PORT, "after", why, sizeof why);
    CHECK(e == 0, "echo after close_range(3, ~0U)%s%s", e ? ": " : "", e ? why : "");
    e = mx_connect_echo(ECHO6, PORT, "after6", why, sizeof why);
    CHECK(e == 0, "IPv6 echo after close_range(3, ~0U)%s%s", e ? ": " : "", e ? why : "");
    /* daemons then fill the low numbers (stdio redirection, dup2 over them) */
    closefrom(3);
    for (int i = 3; i < 24; i++)
        dup2(0, i);
    e = mx_connect_echo(ECHO4, PORT, "filled", why, sizeof why);
    CHECK(e == 0, "echo after closefrom(3) and dup2(0, 3..23)%s%s", e ? ": " : "", e ? why : "");
    struct addrinfo h = {.ai_socktype = SOCK_STREAM};
    struct sockaddr_storage ss;
    socklen_t len;
    if (lookup(NAME4, &h, &ss, &len, "lookup after closing every fd") == 0)
        sa_echo(&ss, len, "by name after closing every fd");
}

/* ---- processes ----------------------------------------------------------------------- */

static int child_echo(const char *ip, const char *what) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        mx_failed = 0;
        int e = mx_connect_echo(ip, PORT, what, why, sizeof why);
        CHECK(e == 0, "%s: child %d echo%s%s", what, (int)getpid(), e ? ": " : "", e ? why : "");
        /* and a name resolved in the child */
        struct addrinfo h = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        struct sockaddr_storage ss;
        socklen_t len;
        if (lookup(NAME4, &h, &ss, &len, what) == 0)
            sa_echo(&ss, len, "child by name");
        fflush(stdout);
        _exit(mx_failed);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void t_fork(void) {
    /* fork before the parent ever tunneled anything */
    int r = child_echo(ECHO4, "fork before any connect");
    CHECK(r == 0, "child before any connect exited %d", r);
    /* parent tunnels, keeps a connection open, then forks */
    int fd = mx_tcp_to(ECHO4, PORT);
    if (fd < 0) {
        mx_fail("parent connect: %s", strerror(errno));
        return;
    }
    int e = mx_echo(fd, "parent", why, sizeof why);
    CHECK(e == 0, "parent echo%s%s", e ? ": " : "", e ? why : "");
    r = child_echo(ECHO4, "fork after the parent's engine started");
    CHECK(r == 0, "child after the parent connected exited %d", r);
    r = child_echo(ECHO6, "second child, IPv6");
    CHECK(r == 0, "second child exited %d", r);
    e = mx_echo(fd, "parent-after", why, sizeof why);
    CHECK(e == 0, "parent's open connection still works after the children%s%s", e ? ": " : "", e ? why : "");
    close(fd);
    e = mx_connect_echo(ECHO4, PORT, "parent-new", why, sizeof why);
    CHECK(e == 0, "parent connects again%s%s", e ? ": " : "", e ? why : "");
    /* a grandchild */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        r = child_echo(ECHO4, "grandchild");
        _exit(r);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "grandchild status %d", st);
}

/* ---- SCM_RIGHTS ---------------------------------------------------------------------- */

static int send_fd(int s, int fd) {
    char c = 'f';
    struct iovec iov = {&c, 1};
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return sendmsg(s, &m, 0) == 1 ? 0 : -1;
}

/* Returns the received fd, -1 if none arrived (errno set, or 0 if refused by truncation). */
static int recv_fd(int s) {
    char c;
    struct iovec iov = {&c, 1};
    char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    errno = 0;
    if (recvmsg(s, &m, 0) != 1)
        return -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (!cm || cm->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

/* recv_fd through recvmmsg (one message of a two-message vector). */
static int recv_fd_mmsg(int s) {
    char c[2];
    struct iovec iov[2] = {{&c[0], 1}, {&c[1], 1}};
    char ctl[2][CMSG_SPACE(sizeof(int))];
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 2; i++) {
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        mm[i].msg_hdr.msg_control = ctl[i];
        mm[i].msg_hdr.msg_controllen = sizeof ctl[i];
    }
    errno = 0;
    if (recvmmsg(s, mm, 2, MSG_WAITFORONE, NULL) < 1)
        return -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mm[0].msg_hdr);
    if (!cm || cm->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

static void t_scm(void) {
    /* (a) an unconnected inet socket arrives, then the receiver connects it */
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        send_fd(sv[1], fd);
        _exit(0);
    }
    int fd = recv_fd(sv[0]);
    waitpid(pid, NULL, 0);
    if (fd < 0)
        mx_ok("unconnected inet fd via SCM_RIGHTS refused (%s)", strerror(errno));
    else {
        socklen_t len;
        struct sockaddr_storage ss = mx_sa(ECHO4, PORT, &len);
        if (connect(fd, (struct sockaddr *)&ss, len) < 0)
            mx_fail("received unconnected inet fd: connect %s: %s", ECHO4, strerror(errno));
        else {
            int e = mx_echo(fd, "scm-a", why, sizeof why);
            CHECK(e == 0, "received unconnected inet fd, connected through the tunnel%s%s", e ? ": " : "", e ? why : "");
        }
        close(fd);
    }
    close(sv[0]);
    close(sv[1]);

    /* (b) a tunneled connection arrives from a process that stays alive */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        int c = mx_tcp_to(ECHO4, PORT);
        if (c < 0)
            _exit(3);
        send_fd(sv[1], c);
        char x;
        read(sv[1], &x, 1); /* wait until the receiver is done */
        _exit(0);
    }
    close(sv[1]);
    fd = recv_fd(sv[0]);
    if (fd < 0)
        mx_ok("tunneled fd via SCM_RIGHTS refused (%s)", strerror(errno));
    else {
        int e = mx_echo(fd, "scm-b", why, sizeof why);
        CHECK(e == 0, "received tunneled fd carries bytes through the sender's tunnel%s%s", e ? ": " : "", e ? why : "");
        close(fd);
    }
    write(sv[0], "x", 1);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sender exited %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    close(sv[0]);

    /* (c) a direct connection arrives, received with recvmsg and with recvmmsg (which was
     * once not hooked): refused (EPERM). The sender connects with dlopen'd libc's own
     * connect, past every hook, to the relay's port (the only address it can reach, and
     * counted as relay traffic, not as a leak). */
    for (int mm = 0; mm < 2; mm++) {
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            close(sv[0]);
            int (*libc_connect)(int, const struct sockaddr *, socklen_t) =
                (int (*)(int, const struct sockaddr *, socklen_t))dlsym(dlopen("libc.so.6", RTLD_NOW), "connect");
            socklen_t len;
            struct sockaddr_storage ss = mx_sa("10.77.0.1", 7000, &len);
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (!libc_connect || libc_connect(c, (struct sockaddr *)&ss, len) < 0)
                _exit(3);
            send_fd(sv[1], c);
            char x;
            read(sv[1], &x, 1);
            _exit(0);
        }
        close(sv[1]);
        fd = mm ? recv_fd_mmsg(sv[0]) : recv_fd(sv[0]);
        int e = errno;
        CHECK(fd < 0 && e == EPERM, "direct connection via SCM_RIGHTS, %s: refused -> %s", mm ? "recvmmsg" : "recvmsg",
              fd < 0 ? strerror(e) : "received");
        if (fd >= 0)
            close(fd);
        write(sv[0], "x", 1);
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "direct sender exited %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        close(sv[0]);
    }

    /* (d) recvmmsg still delivers an unconnected inet socket, whose connect is tunneled */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        send_fd(sv[1], socket(AF_INET, SOCK_STREAM, 0));
        _exit(0);
    }
    fd = recv_fd_mmsg(sv[0]);
    waitpid(pid, NULL, 0);
    if (fd < 0)
        mx_fail("unconnected inet fd via recvmmsg: %s", strerror(errno));
    else {
        socklen_t len;
        struct sockaddr_storage ss = mx_sa(ECHO4, PORT, &len);
        int e = connect(fd, (struct sockaddr *)&ss, len) < 0 ? -1 : mx_echo(fd, "scm-d", why, sizeof why);
        CHECK(e == 0, "unconnected inet fd via recvmmsg, connected through the tunnel%s%s", e ? ": " : "", e ? why : "");
        close(fd);
    }
    close(sv[0]);
    close(sv[1]);
}

/* ---- connect errors -------------------------------------------------------------------- */

static void t_errors(void) {
    int fd = mx_tcp_to(ECHO4, 1);
    CHECK(fd < 0 && errno == ECONNREFUSED, "blocking connect to a closed port -> %s (want ECONNREFUSED)", fd < 0 ? strerror(errno) : "connected");
    if (fd >= 0)
        close(fd);
    /* The relay's exit policy allows only 10.78.0.0/16 and fd78::/64. */
    fd = mx_tcp_to("10.77.0.1", 22);
    CHECK(fd < 0 && errno == EACCES, "connect outside the exit policy -> %s (want EACCES)", fd < 0 ? strerror(errno) : "connected");
    if (fd >= 0)
        close(fd);
    /* A name that does not exist anywhere: the error shows at getaddrinfo or at connect. */
    struct addrinfo h = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int e = getaddrinfo("nosuchhost.qnet.test", "7", &h, &res);
    if (e != 0)
        mx_ok("nonexistent name: getaddrinfo -> %s", gai_strerror(e));
    else {
        fd = socket(res->ai_family, SOCK_STREAM, 0);
        int r = connect(fd, res->ai_addr, res->ai_addrlen);
        CHECK(r < 0, "nonexistent name: getaddrinfo gave %s, connect -> %s", mx_addr(res->ai_addr), r < 0 ? strerror(errno) : "connected");
        close(fd);
        freeaddrinfo(res);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "resolver"))
        t_resolver();
    else if (!strcmp(c, "reverse"))
        t_reverse();
    else if (!strcmp(c, "res"))
        t_res();
    else if (!strcmp(c, "udp"))
        t_udp();
    else if (!strcmp(c, "syscall"))
        t_syscall();
    else if (!strcmp(c, "tfo"))
        t_tfo();
    else if (!strcmp(c, "peer"))
        t_peer();
    else if (!strcmp(c, "sockname"))
        t_sockname();
    else if (!strcmp(c, "fds"))
        t_fds();
    else if (!strcmp(c, "closeall"))
        t_closeall();
    else if (!strcmp(c, "fork"))
        t_fork();
    else if (!strcmp(c, "scm"))
        t_scm();
    else if (!strcmp(c, "errors"))
        t_errors();
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return mx_failed;
}
