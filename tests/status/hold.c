/*
 * hold: a C API program for tests/status/run. Opens one stream through the tunnel with
 * qnet_connect to 127.0.0.1:PORT, sends SEND bytes, reads the sink's 3000-byte reply,
 * prints "ready" and holds the connection for a minute (killed by the suite before).
 *
 *     hold PORT SEND
 */
#define _POSIX_C_SOURCE 200809L
#include <qnet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REPLY 3000

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    if (qnet_init(NULL, 0) != QNET_OK) {
        fprintf(stderr, "hold: qnet_init failed\n");
        return 1;
    }
    int fd = qnet_connect("127.0.0.1", (uint16_t)atoi(argv[1]), 10000);
    if (fd < 0) {
        fprintf(stderr, "hold: qnet_connect failed\n");
        return 1;
    }
    size_t left = (size_t)atol(argv[2]);
    char buf[4096];
    memset(buf, 's', sizeof buf);
    while (left > 0) {
        ssize_t w = write(fd, buf, left < sizeof buf ? left : sizeof buf);
        if (w <= 0)
            return 1;
        left -= (size_t)w;
    }
    size_t got = 0;
    while (got < REPLY) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0)
            return 1;
        got += (size_t)r;
    }
    printf("ready\n");
    fflush(stdout);
    sleep(60);
    close(fd);
    return 0;
}
