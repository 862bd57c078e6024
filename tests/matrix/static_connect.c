/* Built with gcc -static: a program no preload library can see, which connects to the
 * web server directly. Under LD_PRELOAD its exec must be refused; if it ever runs, its
 * SYN is counted as a leak. */
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "10.78.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    printf("static program ran: connect %s\n", r == 0 ? "succeeded" : "failed");
    return 0;
}
