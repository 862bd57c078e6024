/* Connects made past every hook, for the jail's cases in tests/matrix/run. Each tries a
 * non-blocking connect to an address the client namespace can reach without the tunnel
 * (the relay's veth, 10.77.0.1, port 7: the firewall counts and drops the SYN) and says
 * whether it went out (EINPROGRESS or connected) or failed at once (no route).
 * usage: jail MODE WANT
 *   MODE  libc    libc's connect() (built static too: no hook is there to see it)
 *         dlopen  connect() and socket() from dlopen("libc.so.6"), as Python's ctypes or
 *                 JNA reach them: past the preloaded library's hooks
 *         uring   IORING_OP_CONNECT on a ring of the program's own (needs the seccomp
 *                 filter off: it makes io_uring ENOSYS)
 *   WANT  blocked  the connect must fail at once (in the jail: no route but its loopback)
 *         leaks    it must go out (plain LD_PRELOAD's known limits: only a jail stops it) */
#include "mx.h"
#include "ring.h"
#include <dlfcn.h>
#include <fcntl.h>

#define DIRECT4 "10.77.0.1"
#define PORT 7

typedef int (*socket_fn)(int, int, int);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

/* 0: the connect went out (or is on its way); else the errno that stopped it at once. */
static int try_connect(socket_fn sock, connect_fn conn) {
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(DIRECT4, PORT, &len);
    int fd = sock(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return errno;
    int r = conn(fd, (struct sockaddr *)&ss, len), e = errno;
    usleep(100000); /* let the SYN reach the counter */
    close(fd);
    return r == 0 || e == EINPROGRESS ? 0 : e;
}

static int try_uring(void) {
    struct ring r;
    if (ring_setup(&r) < 0)
        return errno;
    socklen_t len;
    struct sockaddr_storage ss = mx_sa(DIRECT4, PORT, &len);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    /* Then wait for the completion: in a jail it comes at once with -ENETUNREACH; a SYN
     * that left gets no answer (the firewall drops it), so the wait times out. */
    ring_connect(&r, fd, &ss, len);
    int res = 0;
    for (int i = 0; i < 50; i++) {
        unsigned head = *r.cq_head;
        if (head != __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE)) {
            res = r.cqes[head & *r.cq_mask].res;
            break;
        }
        usleep(10000);
    }
    close(fd);
    return res < 0 && res != -EINPROGRESS ? -res : 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "", *want = argc > 2 ? argv[2] : "";
    int e;
    if (!strcmp(mode, "libc")) {
        e = try_connect(socket, connect);
    } else if (!strcmp(mode, "dlopen")) {
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_LOCAL);
        if (!libc) {
            mx_fail("dlopen(libc.so.6): %s", dlerror());
            return 1;
        }
        e = try_connect((socket_fn)dlsym(libc, "socket"), (connect_fn)dlsym(libc, "connect"));
    } else if (!strcmp(mode, "uring")) {
        e = try_uring();
    } else {
        fprintf(stderr, "usage: jail libc|dlopen|uring blocked|leaks\n");
        return 2;
    }
    if (!strcmp(want, "blocked"))
        CHECK(e != 0, "%s connect to %s reaches nothing (%s)", mode, DIRECT4, e ? strerror(e) : "it went out");
    else
        CHECK(e == 0, "%s connect to %s goes out directly (a known limit without the jail)%s%s", mode, DIRECT4,
              e ? ": " : "", e ? strerror(e) : "");
    return mx_failed;
}
