/*
 * The qnet_* C API's error paths: every function with NULL pointers, too-small buffers,
 * closed and non-qnet fds, before qnet_init, with bad configurations, and after
 * qnet_shutdown. Each call must return its documented error and nothing may crash
 * (tests/capi/run also runs this under valgrind).
 *
 *     api_errors GOOD_CONFIG [HOST PORT [FORBIDDEN_IP UNREACHABLE_IP]]
 *
 * With HOST and PORT (an HTTP server reachable through the relay in GOOD_CONFIG) it also
 * opens a real stream, so flow statistics, profiles and fd reuse are checked on a
 * tunneled fd. FORBIDDEN_IP is refused by the relay's exit policy, UNREACHABLE_IP is
 * allowed but has no route behind the relay.
 *
 * Output: "ok ..." per passing check, "FAIL ..." per failing one, then
 * "api_errors: N checks, M failed". Exit status 1 if any check failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <qnet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;

static void check(int ok, int line, const char *fmt, ...)
{
    va_list ap;
    checks++;
    if (!ok)
        failures++;
    printf("%s line %d: ", ok ? "ok" : "FAIL", line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}
#define CHECK(cond, ...) check(!!(cond), __LINE__, __VA_ARGS__)

static const char *name_of(qnet_result r)
{
    switch ((int)r) {
    case QNET_OK: return "QNET_OK";
    case QNET_ERR_NULL: return "QNET_ERR_NULL";
    case QNET_ERR_INVALID: return "QNET_ERR_INVALID";
    case QNET_ERR_CONFIG: return "QNET_ERR_CONFIG";
    case QNET_ERR_NOT_INITIALIZED: return "QNET_ERR_NOT_INITIALIZED";
    case QNET_ERR_SHUT_DOWN: return "QNET_ERR_SHUT_DOWN";
    case QNET_ERR_RELAY: return "QNET_ERR_RELAY";
    case QNET_ERR_REFUSED: return "QNET_ERR_REFUSED";
    case QNET_ERR_TIMED_OUT: return "QNET_ERR_TIMED_OUT";
    case QNET_ERR_UNREACHABLE: return "QNET_ERR_UNREACHABLE";
    case QNET_ERR_NAME: return "QNET_ERR_NAME";
    case QNET_ERR_FORBIDDEN: return "QNET_ERR_FORBIDDEN";
    case QNET_ERR_NOT_TUNNELED: return "QNET_ERR_NOT_TUNNELED";
    case QNET_ERR_BUFFER_TOO_SMALL: return "QNET_ERR_BUFFER_TOO_SMALL";
    case QNET_ERR_UNSUPPORTED: return "QNET_ERR_UNSUPPORTED";
    case QNET_ERR_PANIC: return "QNET_ERR_PANIC";
    case QNET_ERR_IO: return "QNET_ERR_IO";
    default: return "(unknown code)";
    }
}

static const char *last_msg(void)
{
    static char buf[512];
    qnet_last_error(buf, sizeof buf);
    return buf;
}

/* A qnet_result-returning call must give `want`, and a failure must also be what
 * qnet_last_result() reports afterwards, with a message. */
static void expect_r(int line, const char *call, qnet_result got, qnet_result want)
{
    qnet_result last = qnet_last_result();
    if (got != want) {
        check(0, line, "%s = %s, want %s (last error: %s)", call, name_of(got), name_of(want),
              last_msg());
        return;
    }
    if (want != QNET_OK) {
        if (last != want) {
            check(0, line, "%s = %s, but qnet_last_result() = %s", call, name_of(got),
                  name_of(last));
            return;
        }
        if (qnet_last_error(NULL, 0) < 2) {
            check(0, line, "%s = %s, but qnet_last_error is empty", call, name_of(got));
            return;
        }
    }
    check(1, line, "%s = %s%s%s", call, name_of(got), want != QNET_OK ? ": " : "",
          want != QNET_OK ? last_msg() : "");
}
#define EXPECT(call, want) expect_r(__LINE__, #call, (call), (want))

/* One of two results is documented-acceptable (e.g. an order of checks the docs leave open). */
static void expect_r2(int line, const char *call, qnet_result got, qnet_result a, qnet_result b)
{
    if (got == a)
        expect_r(line, call, got, a);
    else
        expect_r(line, call, got, b);
}
#define EXPECT2(call, a, b) expect_r2(__LINE__, #call, (call), (a), (b))

/* An fd-returning call must fail with -1, errno set, and qnet_last_result() == want. */
static void expect_fd(int line, const char *call, int fd, int err, qnet_result want, int want_errno)
{
    qnet_result last = qnet_last_result();
    if (fd >= 0) {
        check(0, line, "%s = fd %d, want -1 with %s", call, fd, name_of(want));
        close(fd);
        return;
    }
    if (fd != -1 || err == 0 || last != want || (want_errno && err != want_errno)) {
        check(0, line, "%s = %d, errno %d (%s), last result %s; want -1, %s%s%s (last error: %s)",
              call, fd, err, strerror(err), name_of(last), name_of(want),
              want_errno ? ", errno " : "", want_errno ? strerror(want_errno) : "", last_msg());
        return;
    }
    check(1, line, "%s = -1, errno %s, %s: %s", call, strerror(err), name_of(last), last_msg());
}
#define EXPECT_FD(call, want, want_errno)                                                  \
    do {                                                                                   \
        errno = 0;                                                                         \
        int fd_ = (call);                                                                  \
        int e_ = errno;                                                                    \
        expect_fd(__LINE__, #call, fd_, e_, (want), (want_errno));                         \
    } while (0)

static int all_bytes(const void *p, size_t n, unsigned char v)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != v)
            return 0;
    return 1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static struct sockaddr_in sin_of(const char *ip, int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

/* ---- thread-local state and concurrent use --------------------------------------------- */

struct tl_result {
    qnet_result before, own, after_main;
    char msg[256];
};

static void *tl_thread(void *arg)
{
    struct tl_result *t = arg;
    t->before = qnet_last_result();
    t->own = qnet_stats(NULL); /* this thread's own failure */
    t->after_main = qnet_last_result();
    qnet_last_error(t->msg, sizeof t->msg);
    return NULL;
}

static int hammer_fd;
static void *hammer(void *arg)
{
    (void)arg;
    long bad = 0;
    for (int i = 0; i < 300; i++) {
        struct qnet_stats s;
        memset(&s, 0, sizeof s);
        s.size = sizeof s;
        unsigned char e[32];
        struct qnet_flow_stats f;
        memset(&f, 0, sizeof f);
        f.size = sizeof f;
        if (qnet_stats(&s) != QNET_OK)
            bad++;
        if (qnet_entropy(e, sizeof e) != QNET_OK)
            bad++;
        if (qnet_flow_stats(hammer_fd, &f) != QNET_ERR_NOT_TUNNELED)
            bad++;
        if (qnet_flow_stats(hammer_fd, NULL) != QNET_ERR_NULL)
            bad++;
        if (qnet_last_result() != QNET_ERR_NULL)
            bad++;
    }
    return (void *)bad;
}

/* ---- phases ----------------------------------------------------------------------------- */

static void static_strings(void)
{
    const char *v = qnet_version();
    CHECK(v && v[0], "qnet_version() = \"%s\"", v ? v : "(null)");
    const char *seen[17];
    for (int c = 0; c <= 16; c++) {
        const char *s = qnet_strerror((qnet_result)c);
        seen[c] = s;
        int distinct = 1;
        for (int d = 0; d < c && s; d++)
            if (seen[d] && strcmp(seen[d], s) == 0)
                distinct = 0;
        CHECK(s && s[0] && distinct, "qnet_strerror(%s) = \"%s\"%s", name_of((qnet_result)c),
              s ? s : "(null)", distinct ? "" : " (same text as another code)");
    }
    const char *u = qnet_strerror((qnet_result)9999);
    CHECK(u && u[0], "qnet_strerror(9999) = \"%s\" (never NULL)", u ? u : "(null)");
    u = qnet_strerror((qnet_result)-1);
    CHECK(u && u[0], "qnet_strerror(-1) = \"%s\" (never NULL)", u ? u : "(null)");
}

static void before_init(int pipefd)
{
    CHECK(qnet_last_result() == QNET_OK, "qnet_last_result() before any call = %s",
          name_of(qnet_last_result()));
    size_t need = qnet_last_error(NULL, 0);
    CHECK(need >= 1, "qnet_last_error(NULL, 0) before any error = %zu (>= 1 for the NUL)", need);

    struct sockaddr_in a = sin_of("10.80.0.1", 80);
    EXPECT_FD(qnet_connect("10.80.0.1", 80, 1000), QNET_ERR_NOT_INITIALIZED, 0);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, sizeof a, 1000), QNET_ERR_NOT_INITIALIZED, 0);
    EXPECT(qnet_set_profile(pipefd, "default"), QNET_ERR_NOT_INITIALIZED);
    struct qnet_flow_stats fs;
    memset(&fs, 0, sizeof fs);
    fs.size = sizeof fs;
    EXPECT(qnet_flow_stats(pipefd, &fs), QNET_ERR_NOT_INITIALIZED);
    struct qnet_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    EXPECT(qnet_stats(&st), QNET_ERR_NOT_INITIALIZED);
    /* Documented to work before qnet_init (the OS generator). */
    unsigned char e[16];
    EXPECT(qnet_entropy(e, sizeof e), QNET_OK);
    EXPECT(qnet_shutdown(), QNET_ERR_NOT_INITIALIZED);
}

static void bad_configs(const char *good, const char *dir)
{
    char path[4096];
    EXPECT(qnet_init("/nonexistent-qnet-dir/qnet.toml", 0), QNET_ERR_CONFIG);

    snprintf(path, sizeof path, "%s/malformed.toml", dir);
    write_file(path, "relay = \"10.79.0.1:7000\nrelay_key = [\n");
    EXPECT(qnet_init(path, 0), QNET_ERR_CONFIG);

    snprintf(path, sizeof path, "%s/unknown-key.toml", dir);
    write_file(path, "relya_port = 7000\n");
    EXPECT(qnet_init(path, 0), QNET_ERR_CONFIG);
    CHECK(strstr(last_msg(), "relya_port") != NULL, "the config error names the field: %s",
          last_msg());

    snprintf(path, sizeof path, "%s/no-relay.toml", dir);
    write_file(path, "log = \"warn\"\n");
    EXPECT(qnet_init(path, 0), QNET_ERR_CONFIG);

    /* QNET_CONFIG is what qnet_init(NULL, ...) reads first. */
    setenv("QNET_CONFIG", "/nonexistent-qnet-dir/env.toml", 1);
    EXPECT(qnet_init(NULL, 0), QNET_ERR_CONFIG);
    unsetenv("QNET_CONFIG");

    /* Flags this version does not know. */
    EXPECT(qnet_init(good, 0x80000000u), QNET_ERR_INVALID);

    /* None of those initialised anything... */
    struct qnet_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    EXPECT(qnet_stats(&st), QNET_ERR_NOT_INITIALIZED);

    /* ...and a good configuration still works after them (a typo in a path is not fatal
     * for the rest of the process). */
    EXPECT(qnet_init(good, 0), QNET_OK);
    EXPECT(qnet_stats(&st), QNET_OK);
}

/* The bad configurations run in a child process, so that whatever state they leave
 * behind cannot hide the checks after them; the child reports its counts via a pipe. */
static void bad_configs_in_child(const char *good, const char *dir)
{
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(p[0]);
        checks = failures = 0;
        bad_configs(good, dir);
        int counts[2] = {checks, failures};
        if (write(p[1], counts, sizeof counts) != (ssize_t)sizeof counts)
            _exit(3);
        fflush(stdout);
        _exit(0);
    }
    close(p[1]);
    int counts[2] = {0, 0}, status = 0;
    ssize_t n = read(p[0], counts, sizeof counts);
    close(p[0]);
    waitpid(pid, &status, 0);
    if (n != (ssize_t)sizeof counts || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        CHECK(0, "the bad-configuration child died (status %#x)", status);
        return;
    }
    checks += counts[0];
    failures += counts[1];
}

static void last_error_buffers(void)
{
    /* The last failure on this thread is the one just made. */
    EXPECT(qnet_stats(NULL), QNET_ERR_NULL);
    size_t need = qnet_last_error(NULL, 0);
    CHECK(need >= 2, "qnet_last_error(NULL, 0) = %zu after a failure", need);
    if (need < 2 || need > 4096)
        return;
    char *full = malloc(need + 16);
    memset(full, 'X', need + 16);
    size_t r = qnet_last_error(full, need);
    CHECK(r == need && strlen(full) == need - 1 && full[need] == 'X',
          "qnet_last_error(buf, %zu) = %zu, strlen %zu, no byte past len written", need, r,
          strlen(full));

    char one[4] = {'X', 'X', 'X', 'X'};
    r = qnet_last_error(one, 0);
    CHECK(r == need && one[0] == 'X', "qnet_last_error(buf, 0) = %zu and writes nothing", r);
    r = qnet_last_error(one, 1);
    CHECK(r == need && one[0] == '\0' && one[1] == 'X',
          "qnet_last_error(buf, 1) = %zu, writes just the NUL", r);
    char *cut = malloc(need + 16);
    memset(cut, 'X', need + 16);
    r = qnet_last_error(cut, need - 1);
    CHECK(r == need && strlen(cut) == need - 2 && cut[need - 1] == 'X' &&
              strncmp(cut, full, need - 2) == 0,
          "qnet_last_error(buf, %zu) = %zu: truncated to \"%s\"", need - 1, r, cut);
    r = qnet_last_error(NULL, 64);
    CHECK(r == need, "qnet_last_error(NULL, 64) = %zu, no crash", r);
    free(full);
    free(cut);

    /* Thread-local: another thread starts clean and its failures do not touch ours. */
    struct tl_result t;
    memset(&t, 0, sizeof t);
    pthread_t th;
    pthread_create(&th, NULL, tl_thread, &t);
    pthread_join(th, NULL);
    CHECK(t.before == QNET_OK, "a new thread's qnet_last_result() = %s", name_of(t.before));
    CHECK(t.own == QNET_ERR_NULL && t.after_main == QNET_ERR_NULL && t.msg[0],
          "the thread's own failure: %s, last %s, \"%s\"", name_of(t.own), name_of(t.after_main),
          t.msg);
    CHECK(qnet_last_result() == QNET_ERR_NULL, "this thread's last result is still %s",
          name_of(qnet_last_result()));
}

static void pointer_and_size_checks(int pipefd)
{
    EXPECT_FD(qnet_connect(NULL, 80, 1000), QNET_ERR_NULL, 0);
    EXPECT_FD(qnet_connect_addr(NULL, sizeof(struct sockaddr_in), 1000), QNET_ERR_NULL, 0);
    struct sockaddr_in a = sin_of("10.80.0.1", 80);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, 0, 1000), QNET_ERR_INVALID, 0);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, 3, 1000), QNET_ERR_INVALID, 0);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, sizeof a - 1, 1000), QNET_ERR_INVALID, 0);
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons(80);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a6, sizeof(struct sockaddr_in), 1000),
              QNET_ERR_INVALID, 0);
    /* RFC 2133's 24-byte sockaddr_in6 (no scope id) is an address: only its port 0 is wrong. */
    a6.sin6_port = 0;
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a6, 24, 1000), QNET_ERR_INVALID, 0);
    CHECK(strstr(last_msg(), "port 0") != NULL, "qnet_connect_addr(24-byte IPv6, port 0): %s",
          last_msg());
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    strcpy(un.sun_path, "/tmp/nothing");
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&un, sizeof un, 1000), QNET_ERR_INVALID, 0);

    EXPECT(qnet_set_profile(pipefd, NULL), QNET_ERR_NULL);
    EXPECT(qnet_set_profile(pipefd, "default"), QNET_ERR_NOT_TUNNELED);
    EXPECT(qnet_set_profile(-1, "default"), QNET_ERR_NOT_TUNNELED);
    EXPECT(qnet_set_profile(987, "default"), QNET_ERR_NOT_TUNNELED); /* not open */

    EXPECT(qnet_flow_stats(pipefd, NULL), QNET_ERR_NULL);
    EXPECT(qnet_stats(NULL), QNET_ERR_NULL);

    /* A struct whose size says it is smaller than the v1 layout: refused, and nothing is
     * written past the bytes the caller declared. */
    uint32_t sizes[] = {0, 4, 8, 16};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char raw[sizeof(struct qnet_stats) + 64];
        memset(raw, 0xA5, sizeof raw);
        memcpy(raw, &sizes[i], 4);
        qnet_result r = qnet_stats((struct qnet_stats *)(void *)raw);
        size_t keep = sizes[i] < 4 ? 4 : sizes[i];
        CHECK(r == QNET_ERR_BUFFER_TOO_SMALL && all_bytes(raw + keep, sizeof raw - keep, 0xA5),
              "qnet_stats(size = %u) = %s%s", sizes[i], name_of(r),
              all_bytes(raw + keep, sizeof raw - keep, 0xA5) ? "" : ", and it wrote past size");
    }
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char raw[sizeof(struct qnet_flow_stats) + 64];
        memset(raw, 0xA5, sizeof raw);
        memcpy(raw, &sizes[i], 4);
        /* The size check comes before the fd lookup or after it; a pipe fd is NOT_TUNNELED. */
        qnet_result r = qnet_flow_stats(pipefd, (struct qnet_flow_stats *)(void *)raw);
        size_t keep = sizes[i] < 4 ? 4 : sizes[i];
        CHECK((r == QNET_ERR_BUFFER_TOO_SMALL || r == QNET_ERR_NOT_TUNNELED) &&
                  all_bytes(raw + keep, sizeof raw - keep, 0xA5),
              "qnet_flow_stats(pipe, size = %u) = %s%s", sizes[i], name_of(r),
              all_bytes(raw + keep, sizeof raw - keep, 0xA5) ? "" : ", and it wrote past size");
    }

    /* The full size and a bigger (future) one work; bytes past the declared size stay. */
    unsigned char raw[sizeof(struct qnet_stats) + 64];
    memset(raw, 0xA5, sizeof raw);
    uint32_t sz = sizeof(struct qnet_stats);
    memcpy(raw, &sz, 4);
    qnet_result r = qnet_stats((struct qnet_stats *)(void *)raw);
    struct qnet_stats st;
    memcpy(&st, raw, sizeof st);
    CHECK(r == QNET_OK && st.version >= 1 && all_bytes(raw + sz, 64, 0xA5),
          "qnet_stats(size = sizeof) = %s, version %u", name_of(r), st.version);
    unsigned char big[sizeof(struct qnet_stats) + 64];
    memset(big, 0, sizeof big);
    sz = sizeof big;
    memcpy(big, &sz, 4);
    r = qnet_stats((struct qnet_stats *)(void *)big);
    CHECK(r == QNET_OK, "qnet_stats(size = sizeof + 64) = %s (a newer caller's struct)",
          name_of(r));

    EXPECT(qnet_entropy(NULL, 16), QNET_ERR_NULL);
    unsigned char e1[64], e2[64];
    EXPECT(qnet_entropy(e1, 0), QNET_OK);
    memset(e1, 0, sizeof e1);
    memset(e2, 0, sizeof e2);
    EXPECT(qnet_entropy(e1, sizeof e1), QNET_OK);
    EXPECT(qnet_entropy(e2, sizeof e2), QNET_OK);
    CHECK(!all_bytes(e1, sizeof e1, 0) && memcmp(e1, e2, sizeof e1) != 0,
          "qnet_entropy gives non-zero bytes that differ between calls");
    size_t bigsz = 1 << 20;
    unsigned char *mb = malloc(bigsz);
    EXPECT(qnet_entropy(mb, bigsz), QNET_OK);
    free(mb);
}

static int read_response(int fd, size_t *total)
{
    const char req[] = "GET /token.txt HTTP/1.0\r\nHost: api-errors\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1))
        return -1;
    char buf[4096];
    ssize_t n;
    *total = 0;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        *total += (size_t)n;
    return n < 0 ? -1 : 0;
}

static void live(const char *host, int port, const char *forbidden, const char *unreachable,
                 int pipefd)
{
    errno = 0;
    int fd = qnet_connect(host, (uint16_t)port, 10000);
    CHECK(fd >= 0, "qnet_connect(%s, %d) = %d (%s)", host, port, fd,
          fd >= 0 ? "connected" : last_msg());
    if (fd < 0)
        return;
    size_t got = 0;
    int rr = read_response(fd, &got);
    CHECK(rr == 0 && got > 0, "HTTP exchange on the qnet fd: %zu bytes", got);

    struct qnet_flow_stats fs;
    memset(&fs, 0, sizeof fs);
    fs.size = sizeof fs;
    qnet_result r = qnet_flow_stats(fd, &fs);
    CHECK(r == QNET_OK && fs.version >= 1 && fs.bytes_sent > 0 && fs.bytes_received >= got &&
              fs.state == 2,
          "qnet_flow_stats(qnet fd) = %s: version %u, sent %llu, received %llu (read %zu), "
          "frames %llu/%llu, state %u, stream %u",
          name_of(r), fs.version, (unsigned long long)fs.bytes_sent,
          (unsigned long long)fs.bytes_received, got, (unsigned long long)fs.frames_sent,
          (unsigned long long)fs.frames_received, fs.state, fs.stream_id);
    memset(&fs, 0, sizeof fs);
    fs.size = 8;
    EXPECT(qnet_flow_stats(fd, &fs), QNET_ERR_BUFFER_TOO_SMALL);
    EXPECT(qnet_flow_stats(fd, NULL), QNET_ERR_NULL);

    /* Profiles: accepted on a qnet fd; other names and NULL refused. */
    EXPECT(qnet_set_profile(fd, "default"), QNET_OK);
    EXPECT(qnet_set_profile(fd, "performance"), QNET_OK);
    EXPECT(qnet_set_profile(fd, "high-security"), QNET_OK);
    EXPECT(qnet_set_profile(fd, "no-such-profile"), QNET_ERR_INVALID);
    EXPECT(qnet_set_profile(fd, ""), QNET_ERR_INVALID);
    EXPECT(qnet_set_profile(fd, NULL), QNET_ERR_NULL);

    /* A connection switched to each shaping profile before its request still gets the
       whole response (the request leaves under the new schedule). */
    const char *shaped[] = {"high-security", "default"};
    for (size_t i = 0; i < 2; i++) {
        int sfd = qnet_connect(host, (uint16_t)port, 10000);
        CHECK(sfd >= 0, "qnet_connect for %s = %d", shaped[i], sfd);
        if (sfd < 0)
            continue;
        EXPECT(qnet_set_profile(sfd, shaped[i]), QNET_OK);
        size_t sgot = 0;
        int srr = read_response(sfd, &sgot);
        CHECK(srr == 0 && sgot == got, "HTTP exchange under %s: %zu bytes (want %zu)", shaped[i],
              sgot, got);
        if (i == 0) {
            /* Constant cells: the request left padded to the cell size, and later cells
               (every 40 ms) are served by the engine's timer. */
            usleep(200 * 1000);
            struct qnet_flow_stats sfs;
            memset(&sfs, 0, sizeof sfs);
            sfs.size = sizeof sfs;
            r = qnet_flow_stats(sfd, &sfs);
            CHECK(r == QNET_OK && sfs.padding_bytes > 0,
                  "qnet_flow_stats under high-security = %s: padding %llu bytes", name_of(r),
                  (unsigned long long)sfs.padding_bytes);
            struct qnet_stats sst;
            memset(&sst, 0, sizeof sst);
            sst.size = sizeof sst;
            r = qnet_stats(&sst);
            CHECK(r == QNET_OK && sst.version >= 2 && sst.departures_timed > 0 &&
                      sst.shaping_failures == 0,
                  "qnet_stats under high-security = %s: version %u, %llu timed departures "
                  "(%llu over 1 ms late, max %llu us), %llu failed",
                  name_of(r), sst.version, (unsigned long long)sst.departures_timed,
                  (unsigned long long)sst.departures_late_1ms,
                  (unsigned long long)sst.lateness_max_us,
                  (unsigned long long)sst.shaping_failures);
        }
        close(sfd);
    }

    struct qnet_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    r = qnet_stats(&st);
    CHECK(r == QNET_OK && st.sessions_established >= 1 && st.streams_opened >= 1 &&
              st.bytes_sent > 0 && st.bytes_received > 0,
          "qnet_stats = %s: state %u, sessions %llu, streams %llu (open %u, failed %llu), "
          "bytes %llu/%llu, records %llu/%llu, rtt %llu us",
          name_of(r), st.session_state, (unsigned long long)st.sessions_established,
          (unsigned long long)st.streams_opened, st.streams_open,
          (unsigned long long)st.streams_failed, (unsigned long long)st.bytes_sent,
          (unsigned long long)st.bytes_received, (unsigned long long)st.records_sent,
          (unsigned long long)st.records_received, (unsigned long long)st.rtt_us);

    /* A closed qnet fd is no longer tunneled, and neither is a new fd with its number. */
    close(fd);
    memset(&fs, 0, sizeof fs);
    fs.size = sizeof fs;
    EXPECT(qnet_flow_stats(fd, &fs), QNET_ERR_NOT_TUNNELED);
    EXPECT(qnet_set_profile(fd, "default"), QNET_ERR_NOT_TUNNELED);
    if (dup2(pipefd, fd) == fd) {
        memset(&fs, 0, sizeof fs);
        fs.size = sizeof fs;
        EXPECT(qnet_flow_stats(fd, &fs), QNET_ERR_NOT_TUNNELED);
        close(fd);
    }
    int plain = socket(AF_INET, SOCK_STREAM, 0);
    memset(&fs, 0, sizeof fs);
    fs.size = sizeof fs;
    EXPECT(qnet_flow_stats(plain, &fs), QNET_ERR_NOT_TUNNELED);
    close(plain);

    /* Destination errors come back as their own codes and errnos. */
    EXPECT_FD(qnet_connect(host, 81, 10000), QNET_ERR_REFUSED, ECONNREFUSED);
    EXPECT_FD(qnet_connect("no-such-host.invalid", 80, 10000), QNET_ERR_NAME, 0);
    EXPECT_FD(qnet_connect("", 80, 10000), QNET_ERR_INVALID, 0);
    EXPECT_FD(qnet_connect(host, 0, 10000), QNET_ERR_INVALID, 0);
    if (forbidden) {
        EXPECT_FD(qnet_connect(forbidden, 80, 10000), QNET_ERR_FORBIDDEN, EACCES);
        struct sockaddr_in a = sin_of(forbidden, 80);
        EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, sizeof a, 10000), QNET_ERR_FORBIDDEN,
                  EACCES);
    }
    if (unreachable) {
        errno = 0;
        int u = qnet_connect(unreachable, 80, 10000);
        int e = errno;
        qnet_result lr = qnet_last_result();
        CHECK(u == -1 && (lr == QNET_ERR_UNREACHABLE || lr == QNET_ERR_TIMED_OUT) && e != 0,
              "qnet_connect(%s, 80) (no route behind the relay) = %d, %s, errno %s", unreachable,
              u, name_of(lr), strerror(e));
        if (u >= 0)
            close(u);
    }
    /* And a connection by address works too. */
    struct sockaddr_in a = sin_of(host, port);
    errno = 0;
    int fd2 = qnet_connect_addr((struct sockaddr *)&a, sizeof a, 10000);
    CHECK(fd2 >= 0, "qnet_connect_addr(%s:%d) = %d (%s)", host, port, fd2,
          fd2 >= 0 ? "connected" : last_msg());
    if (fd2 >= 0) {
        got = 0;
        CHECK(read_response(fd2, &got) == 0 && got > 0, "HTTP exchange on it: %zu bytes", got);
        close(fd2);
    }
}

static void concurrent(int pipefd)
{
    hammer_fd = pipefd;
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, NULL);
    long bad = 0;
    for (int i = 0; i < 4; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        bad += (long)ret;
    }
    CHECK(bad == 0, "4 threads x 300 rounds of stats/entropy/flow_stats: %ld unexpected results",
          bad);
}

static void after_shutdown(const char *good, int pipefd)
{
    EXPECT(qnet_shutdown(), QNET_OK);
    struct sockaddr_in a = sin_of("10.80.0.1", 80);
    EXPECT_FD(qnet_connect("10.80.0.1", 80, 1000), QNET_ERR_SHUT_DOWN, 0);
    EXPECT_FD(qnet_connect_addr((struct sockaddr *)&a, sizeof a, 1000), QNET_ERR_SHUT_DOWN, 0);
    EXPECT(qnet_set_profile(pipefd, "default"), QNET_ERR_SHUT_DOWN);
    struct qnet_flow_stats fs;
    memset(&fs, 0, sizeof fs);
    fs.size = sizeof fs;
    EXPECT(qnet_flow_stats(pipefd, &fs), QNET_ERR_SHUT_DOWN);
    struct qnet_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    EXPECT(qnet_stats(&st), QNET_ERR_SHUT_DOWN);
    /* The header says entropy works before qnet_init and that every call after
     * qnet_shutdown returns QNET_ERR_SHUT_DOWN; either answer is accepted here. */
    unsigned char e[16];
    EXPECT2(qnet_entropy(e, sizeof e), QNET_ERR_SHUT_DOWN, QNET_OK);
    EXPECT(qnet_init(good, 0), QNET_ERR_SHUT_DOWN);
    EXPECT(qnet_init(NULL, 0), QNET_ERR_SHUT_DOWN);
    EXPECT(qnet_shutdown(), QNET_ERR_SHUT_DOWN);
    const char *v = qnet_version(), *s = qnet_strerror(QNET_ERR_SHUT_DOWN);
    CHECK(v && v[0] && s && s[0], "qnet_version and qnet_strerror still answer: \"%s\", \"%s\"",
          v ? v : "(null)", s ? s : "(null)");
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s GOOD_CONFIG [HOST PORT [FORBIDDEN_IP UNREACHABLE_IP]]\n",
                argv[0]);
        return 2;
    }
    const char *good = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsetenv("QNET_CONFIG");

    char dir[] = "/tmp/qnet-api-errors.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    int pfd[2];
    if (pipe(pfd) != 0) {
        perror("pipe");
        return 2;
    }

    static_strings();
    before_init(pfd[0]);
    bad_configs_in_child(good, dir);

    EXPECT(qnet_init(good, 0), QNET_OK);
    /* A second init with the same arguments: accepted as a no-op. */
    EXPECT(qnet_init(good, 0), QNET_OK);

    last_error_buffers();
    pointer_and_size_checks(pfd[0]);
    if (argc >= 4)
        live(argv[2], atoi(argv[3]), argc == 6 ? argv[4] : NULL, argc == 6 ? argv[5] : NULL,
             pfd[0]);
    concurrent(pfd[0]);
    after_shutdown(good, pfd[0]);

    char path[4096];
    const char *names[] = {"malformed.toml", "unknown-key.toml", "no-relay.toml"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
    close(pfd[0]);
    close(pfd[1]);

    printf("api_errors: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
