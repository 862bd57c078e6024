/* Built as a shared library and preloaded next to libqnet.so: its constructor fetches
 * http://10.78.0.1/token.txt, possibly before libqnet.so's own constructor has run.
 * Prints "ctor body <last line>" or "ctor error <what>" on stdout. */
#include "mx.h"

__attribute__((constructor)) static void early_connect(void) {
    socklen_t len;
    struct sockaddr_storage sa = mx_sa("10.78.0.1", 80, &len);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, len) != 0) {
        printf("ctor error connect: %s\n", strerror(errno));
        fflush(stdout);
        return;
    }
    const char *req = "GET /token.txt HTTP/1.0\r\nHost: 10.78.0.1\r\n\r\n";
    mx_write_all(fd, req, strlen(req));
    char buf[4096];
    size_t n = mx_read_full(fd, buf, sizeof buf - 1, 10000);
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    char *last = strrchr(buf, '\n');
    printf("ctor body %s\n", last ? last + 1 : buf);
    fflush(stdout);
    close(fd);
}
