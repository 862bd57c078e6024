/* Small measuring tools for scripts/bench. Loopback only.
 *
 *   qbench echo-server            listen on 127.0.0.1:0, print "port N", echo every byte back
 *                                 (epoll, any number of connections; idle ones are just held)
 *   qbench conn HOST PORT N WARM  WARM untimed then N timed sequential connections:
 *                                 connect + 100-byte echo + close; prints
 *                                 "median_us P p10_us P p90_us P mean_us P connect_median_us P"
 *   qbench socksconn HOST PORT DPORT N WARM
 *                                 the same through the SOCKS5 proxy at HOST:PORT (no auth)
 *                                 to 127.0.0.1:DPORT: greeting, CONNECT, its reply, then the
 *                                 100-byte echo; "connect" ends at the proxy's reply
 *   qbench pair N MODE            N send/recv pairs of 64 bytes on an AF_UNIX socketpair;
 *                                 MODE send|sendto|sendmsg|write; prints
 *                                 "wall_ns_per_pair X cpu_ns_per_pair Y" (cpu: this thread's
 *                                 CPU time, which time spent preempted by other loads is not in)
 *   qbench paircmp MODE TOTAL CHUNKS VAR=VAL... [-- VAR=VAL...]...
 *                                 the same, TOTAL pairs per variant in CHUNKS chunks, by child
 *                                 processes in turn (ABBA: forward, then backward): one plain,
 *                                 one per VAR=VAL group (e.g. LD_PRELOAD of two builds); prints
 *                                 one line per group: the plain and the group's median chunk
 *                                 and the median of the per-round group/plain ratios
 *   qbench start N ARGV -- ARGV ...  spawn each command line (leading VAR=VAL words go to its
 *                                 environment) once per round, N rounds, order rotating; prints
 *                                 "cmd K median_ms X p10_ms Y p90_ms Z" per command
 *   qbench timer N                N timerfd sleeps, each to a deadline 20-500 us ahead (random,
 *                                 timer slack 1 us as in qnet's engines); prints how late the
 *                                 wakeups came: "p50_us X p99_us Y p999_us Z max_us W within100 P"
 *                                 (P: % within 100 us), the machine's own floor for shaped
 *                                 departures
 *   qbench hold HOST PORT N       open N connections, each with a 1-byte echo, then hold them;
 *                                 prints "rss0 KB", "rss1 KB", "rssN KB" (VmRSS before any,
 *                                 after the first, after all) and "ready", then waits for
 *                                 SIGTERM/SIGINT or EOF on stdin.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <sys/resource.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "qbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

extern char **environ;

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) { kb = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return kb;
}

static int read_full(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const char *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, buf + put, n - put);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        put += (size_t)r;
    }
    return 0;
}

static int dial(const char *host, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { errno = EINVAL; return -1; }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { int e = errno; close(s); errno = e; return -1; }
    return s;
}

/* ---- echo server ---- */
__attribute__((noreturn)) static void echo_server(void) {
    raise_nofile();
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    if (listen(ls, 4096) != 0) die("listen");
    socklen_t al = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &al);
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, 0);
                    if (c < 0) break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                /* Small echoes never fill a loopback send buffer; block if one ever does. */
                if (write_full(fd, buf, (size_t)r) != 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
    }
}

/* ---- sequential connection setup ---- */
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nonzero: one_conn goes through the SOCKS5 proxy it dials, to 127.0.0.1:socks_dport. */
static int socks_dport;

/* A SOCKS5 client's side, as curl does it (greeting, then CONNECT): 0 when connected. */
static int socks5_connect(int s) {
    unsigned char hello[3] = {5, 1, 0}, choice[2], req[10] = {5, 1, 0, 1, 127, 0, 0, 1, 0, 0}, rep[10];
    req[8] = (unsigned char)(socks_dport >> 8);
    req[9] = (unsigned char)socks_dport;
    if (write_full(s, (char *)hello, 3) != 0 || read_full(s, (char *)choice, 2) != 0 || choice[1] != 0) return -1;
    /* An IPv4 bound address in the reply: 10 bytes (both proxies answer so for 127.0.0.1). */
    if (write_full(s, (char *)req, 10) != 0 || read_full(s, (char *)rep, 10) != 0 || rep[1] != 0 || rep[3] != 1)
        return -1;
    return 0;
}

static int one_conn(const char *host, int port, double *us, double *connect_us) {
    char msg[100], got[100];
    for (int i = 0; i < 100; i++) msg[i] = (char)('a' + i % 26);
    double t0 = now_ns();
    int s = dial(host, port);
    if (s < 0) return -1;
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (socks_dport && socks5_connect(s) != 0) {
        close(s);
        errno = EPROTO;
        return -1;
    }
    *connect_us = (now_ns() - t0) / 1e3;
    if (write_full(s, msg, 100) != 0 || read_full(s, got, 100) != 0 || memcmp(msg, got, 100) != 0) {
        close(s);
        errno = EPROTO;
        return -1;
    }
    close(s);
    *us = (now_ns() - t0) / 1e3;
    return 0;
}

static int conn_bench(const char *host, int port, int n, int warm) {
    double *t = calloc((size_t)n, sizeof *t), *c = calloc((size_t)n, sizeof *c), d, e;
    for (int i = 0; i < warm; i++)
        if (one_conn(host, port, &d, &e) != 0) die("warm-up connection");
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (one_conn(host, port, &t[i], &c[i]) != 0) die("connection");
        sum += t[i];
    }
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    qsort(c, (size_t)n, sizeof *c, cmp_d);
    printf("median_us %.1f p10_us %.1f p90_us %.1f mean_us %.1f connect_median_us %.1f\n", t[n / 2], t[n / 10],
           t[n * 9 / 10], sum / n, c[n / 2]);
    return 0;
}

/* ---- hook overhead on a socketpair ---- */
struct pairs { int sv[2]; int mode; char buf[64]; struct iovec iov; struct msghdr mh; };

static void pairs_init(struct pairs *p, const char *mode) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, p->sv) != 0) die("socketpair");
    memset(p->buf, 'x', sizeof p->buf);
    p->mode = strcmp(mode, "send") == 0 ? 0 : strcmp(mode, "sendto") == 0 ? 1 : strcmp(mode, "sendmsg") == 0 ? 2 : 3;
    p->iov.iov_base = p->buf;
    p->iov.iov_len = sizeof p->buf;
    memset(&p->mh, 0, sizeof p->mh);
    p->mh.msg_iov = &p->iov;
    p->mh.msg_iovlen = 1;
}

/* n pairs; returns wall ns and this thread's CPU ns through the pointers */
static void pairs_run(struct pairs *p, long n, double *wall, double *cpu) {
    double w0 = now_ns(), c0 = cpu_ns();
    for (long i = 0; i < n; i++) {
        ssize_t w;
        switch (p->mode) {
        case 0: w = send(p->sv[0], p->buf, sizeof p->buf, 0); break;
        case 1: w = sendto(p->sv[0], p->buf, sizeof p->buf, 0, NULL, 0); break;
        case 2: w = sendmsg(p->sv[0], &p->mh, 0); break;
        default: w = write(p->sv[0], p->buf, sizeof p->buf); break;
        }
        if (w != (ssize_t)sizeof p->buf) die("send");
        ssize_t r = p->mode == 3 ? read(p->sv[1], p->buf, sizeof p->buf) : recv(p->sv[1], p->buf, sizeof p->buf, 0);
        if (r != (ssize_t)sizeof p->buf) die("recv");
    }
    *cpu = cpu_ns() - c0;
    *wall = now_ns() - w0;
}

static int pair_bench(long n, const char *mode) {
    struct pairs p;
    double w, c;
    pairs_init(&p, mode);
    pairs_run(&p, n / 20 + 1, &w, &c);
    pairs_run(&p, n, &w, &c);
    printf("wall_ns_per_pair %.2f cpu_ns_per_pair %.2f\n", w / (double)n, c / (double)n);
    return 0;
}

/* child of paircmp: one chunk per byte read on stdin, "wall cpu" (ns/pair) back on stdout */
static int pair_server(const char *mode, long chunk) {
    struct pairs p;
    double w, c;
    char b;
    pairs_init(&p, mode);
    pairs_run(&p, chunk / 4 + 1, &w, &c);
    while (read(0, &b, 1) == 1) {
        pairs_run(&p, chunk, &w, &c);
        printf("%.3f %.3f\n", w / (double)chunk, c / (double)chunk);
        fflush(stdout);
    }
    return 0;
}

struct child { pid_t pid; int to; FILE *from; };

static void child_start(struct child *ch, char **argv, char **envp) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) die("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    if (posix_spawn(&ch->pid, "/proc/self/exe", &fa, NULL, argv, envp) != 0) die("posix_spawn");
    close(in[0]);
    close(out[1]);
    ch->to = in[1];
    ch->from = fdopen(out[0], "r");
}

static void child_chunk(struct child *ch, double *wall, double *cpu) {
    if (write(ch->to, "g", 1) != 1 || fscanf(ch->from, "%lf %lf", wall, cpu) != 2) {
        fprintf(stderr, "qbench: paircmp child failed\n");
        exit(1);
    }
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static char **env_plus(char **extra, int nextra) {
    int n = 0;
    while (environ[n]) n++;
    char **e = calloc((size_t)(n + nextra + 1), sizeof *e);
    int k = 0;
    for (int i = 0; i < n; i++) {
        int replaced = 0;
        for (int j = 0; j < nextra; j++) {
            size_t l = (size_t)(strchr(extra[j], '=') - extra[j]);
            if (strncmp(environ[i], extra[j], l + 1) == 0) replaced = 1;
        }
        if (!replaced) e[k++] = environ[i];
    }
    for (int j = 0; j < nextra; j++) e[k++] = extra[j];
    e[k] = NULL;
    return e;
}

#define MAX_VARIANTS 8

static int pair_compare(const char *mode, long total, int chunks, char **extra, int nextra) {
    char chunkstr[32];
    snprintf(chunkstr, sizeof chunkstr, "%ld", total / chunks);
    char *argv[] = {"qbench", "pairsrv", (char *)mode, chunkstr, NULL};
    /* variant 0 is plain; each "--"-separated group of VAR=VAL words is one more */
    char **envs[MAX_VARIANTS];
    int nv = 0;
    envs[nv++] = environ;
    for (int i = 0; i < nextra && nv < MAX_VARIANTS;) {
        int j = i;
        while (j < nextra && strcmp(extra[j], "--") != 0) j++;
        envs[nv++] = env_plus(&extra[i], j - i);
        i = j + 1;
    }
    struct child ch[MAX_VARIANTS];
    double *w[MAX_VARIANTS], *c[MAX_VARIANTS], *rw[MAX_VARIANTS], *rc[MAX_VARIANTS];
    for (int v = 0; v < nv; v++) {
        child_start(&ch[v], argv, envs[v]);
        w[v] = calloc((size_t)chunks, sizeof(double));
        c[v] = calloc((size_t)chunks, sizeof(double));
        rw[v] = calloc((size_t)chunks, sizeof(double));
        rc[v] = calloc((size_t)chunks, sizeof(double));
    }
    for (int i = 0; i < chunks; i++) {
        /* even chunks in order, odd ones backwards: each variant runs as often early as late */
        for (int q = 0; q < nv; q++) {
            int v = i % 2 == 0 ? q : nv - 1 - q;
            child_chunk(&ch[v], &w[v][i], &c[v][i]);
        }
        for (int v = 1; v < nv; v++) {
            rw[v][i] = w[v][i] / w[0][i];
            rc[v][i] = c[v][i] / c[0][i];
        }
    }
    /* Close every stdin before waiting: a later child inherited the earlier ones' pipes. */
    for (int v = 0; v < nv; v++) close(ch[v].to);
    for (int v = 0; v < nv; v++) waitpid(ch[v].pid, NULL, 0);
    for (int v = 1; v < nv; v++)
        printf("plain_cpu %.2f pre_cpu %.2f cpu_ratio %.5f plain_wall %.2f pre_wall %.2f wall_ratio %.5f\n",
               median(c[0], chunks), median(c[v], chunks), median(rc[v], chunks), median(w[0], chunks),
               median(w[v], chunks), median(rw[v], chunks));
    return 0;
}

/* ---- process start ---- */
static int start_bench(int n, int argc, char **argv) {
    /* split argv at "--" into commands; each command's leading VAR=VAL words are its environment */
    char **cmd[16], **env[16];
    int nc = 0;
    for (int i = 0; i < argc && nc < 16;) {
        int j = i;
        while (j < argc && strcmp(argv[j], "--") != 0) j++;
        int k = i;
        while (k < j && strchr(argv[k], '=') && argv[k][0] != '/') k++;
        env[nc] = env_plus(&argv[i], k - i);
        cmd[nc] = calloc((size_t)(j - k + 1), sizeof(char *));
        for (int m = k; m < j; m++) cmd[nc][m - k] = argv[m];
        nc++;
        i = j + 1;
    }
    double *t = calloc((size_t)(n * nc), sizeof(double));
    int warm = n / 20 + 2;
    for (int r = -warm; r < n; r++) {
        for (int q = 0; q < nc; q++) {
            int c = (q + (r < 0 ? 0 : r)) % nc;
            pid_t pid;
            double t0 = now_ns();
            if (posix_spawnp(&pid, cmd[c][0], NULL, NULL, cmd[c], env[c]) != 0) die("posix_spawnp");
            int st;
            waitpid(pid, &st, 0);
            double dt = (now_ns() - t0) / 1e6;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "qbench: command %d failed (status %d)\n", c, st);
                return 1;
            }
            if (r >= 0) t[c * n + r] = dt;
        }
    }
    for (int c = 0; c < nc; c++) {
        double *v = &t[c * n];
        qsort(v, (size_t)n, sizeof *v, cmp_d);
        printf("cmd %d median_ms %.4f p10_ms %.4f p90_ms %.4f\n", c, v[n / 2], v[n / 10], v[n * 9 / 10]);
    }
    return 0;
}

/* ---- idle flows held open ---- */
static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

static int cmp_u64(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

static unsigned long long mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static int timer_floor(int n) {
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int fd = timerfd_create(CLOCK_MONOTONIC, 0);
    unsigned long long *late = calloc((size_t)n, sizeof *late);
    if (fd < 0 || !late || n < 1) { perror("qbench timer"); return 1; }
    srand(1);
    int within = 0;
    for (int i = 0; i < n; i++) {
        unsigned long long d = mono_ns() + 20000 + (unsigned long long)(rand() % 480000);
        struct itimerspec it = {0};
        it.it_value.tv_sec = (time_t)(d / 1000000000ull);
        it.it_value.tv_nsec = (long)(d % 1000000000ull);
        unsigned long long x;
        if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &it, NULL) != 0 || read(fd, &x, sizeof x) != sizeof x) {
            perror("qbench timer");
            return 1;
        }
        late[i] = mono_ns() - d;
        within += late[i] <= 100000;
    }
    qsort(late, (size_t)n, sizeof *late, cmp_u64);
    printf("p50_us %.1f p99_us %.1f p999_us %.1f max_us %.1f within100 %.2f\n", late[n / 2] / 1e3,
           late[(long)n * 99 / 100] / 1e3, late[(long)n * 999 / 1000] / 1e3, late[n - 1] / 1e3, 100.0 * within / n);
    return 0;
}

static int hold(const char *host, int port, int n) {
    raise_nofile();
    printf("rss0 %ld\n", rss_kb());
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = dial(host, port);
        if (fds[i] < 0) { fprintf(stderr, "qbench: connection %d: %s\n", i, strerror(errno)); return 1; }
        char c = 'h';
        if (write_full(fds[i], &c, 1) != 0 || read_full(fds[i], &c, 1) != 0) {
            fprintf(stderr, "qbench: echo on connection %d failed\n", i);
            return 1;
        }
        if (i == 0) {
            usleep(100 * 1000);
            printf("rss1 %ld\n", rss_kb());
            fflush(stdout);
        }
    }
    usleep(300 * 1000);
    printf("rssN %ld\nready\n", rss_kb());
    fflush(stdout);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char c;
    while (!stop && read(0, &c, 1) > 0) {}
    while (!stop) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "echo-server") == 0) echo_server();
    if (argc == 7 && strcmp(argv[1], "socksconn") == 0) {
        socks_dport = atoi(argv[4]);
        return conn_bench(argv[2], atoi(argv[3]), atoi(argv[5]), atoi(argv[6]));
    }
    if (argc == 6 && strcmp(argv[1], "conn") == 0) return conn_bench(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && strcmp(argv[1], "pair") == 0) return pair_bench(atol(argv[2]), argv[3]);
    if (argc == 4 && strcmp(argv[1], "pairsrv") == 0) return pair_server(argv[2], atol(argv[3]));
    if (argc >= 5 && strcmp(argv[1], "paircmp") == 0)
        return pair_compare(argv[2], atol(argv[3]), atoi(argv[4]), &argv[5], argc - 5);
    if (argc >= 4 && strcmp(argv[1], "start") == 0) return start_bench(atoi(argv[2]), argc - 3, &argv[3]);
    if (argc == 3 && strcmp(argv[1], "timer") == 0) return timer_floor(atoi(argv[2]));
    if (argc == 5 && strcmp(argv[1], "hold") == 0) return hold(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: qbench echo-server | conn HOST PORT N WARM | socksconn HOST PORT DPORT N WARM | pair N MODE | paircmp MODE TOTAL CHUNKS VAR=VAL... |\n"
                    "              start N ARGV [-- ARGV]... | timer N | hold HOST PORT N\n");
    return 2;
}
