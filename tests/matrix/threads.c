/* N threads released at once by a barrier; each resolves HOST with getaddrinfo, connects,
 * sends a message unique to it and requires it echoed back.
 * usage: threads N HOST PORT */
#include "mx.h"
#include <pthread.h>

static pthread_barrier_t go;
static const char *host, *port;

struct result {
    int ok;
    char why[256];
};

static void *worker(void *arg) {
    struct result *res = arg;
    pthread_barrier_wait(&go);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int e = getaddrinfo(host, port, &hints, &ai);
    if (e != 0) {
        snprintf(res->why, sizeof res->why, "getaddrinfo: %s", gai_strerror(e));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        snprintf(res->why, sizeof res->why, "connect %s: %s", mx_addr(ai->ai_addr), strerror(errno));
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    freeaddrinfo(ai);
    if (mx_echo(fd, "thread", res->why, sizeof res->why) == 0)
        res->ok = 1;
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s N HOST PORT\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    host = argv[2];
    port = argv[3];
    pthread_t *t = calloc(n, sizeof *t);
    struct result *r = calloc(n, sizeof *r);
    pthread_barrier_init(&go, NULL, n);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&t[i], NULL, worker, &r[i]) != 0) {
            mx_fail("pthread_create %d", i);
            return 1;
        }
    }
    int good = 0, printed = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        if (r[i].ok)
            good++;
        else if (printed++ < 5) /* the first few reasons only */
            printf("thread %d: %s\n", i, r[i].why);
    }
    CHECK(good == n, "%d of %d threads resolved, connected and got their echo", good, n);
    return mx_failed;
}
