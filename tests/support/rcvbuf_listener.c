/* A listener that locks its receive buffer (SO_RCVBUF) before listen(), as Kafka's
 * socket.receive.buffer.bytes does: the container tests' process. Built static so a
 * root directory holding only this file runs it (podman run --rootfs).
 * Usage: rcvbuf_listener PORT RCVBUF BACKLOG; listens on 0.0.0.0 until killed. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT RCVBUF BACKLOG\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1, rcvbuf = atoi(argv[2]);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0 ||
        bind(fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(fd, atoi(argv[3])) != 0) {
        perror("rcvbuf_listener");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
