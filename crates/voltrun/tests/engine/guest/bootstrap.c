/* A `provided` runtime with nothing but libc, built static so that it runs in the provided root
 * image (which holds no interpreter): it speaks the Lambda Runtime API over plain HTTP/1.1, one
 * connection per request, and answers each event with the event itself and its handler setting. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char reply[1 << 20];

/* Sends one request to the Runtime API and reads the whole answer into `reply`. */
static char *call(const char *method, const char *path, const char *body) {
    const char *api = getenv("AWS_LAMBDA_RUNTIME_API");
    char host[64];
    int port;
    if (!api || sscanf(api, "%63[^:]:%d", host, &port) != 2) exit(2);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) exit(3);
    dprintf(fd, "%s %s HTTP/1.1\r\nHost: runtime\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
            method, path, strlen(body), body);
    size_t got = 0;
    ssize_t n;
    while (got < sizeof reply - 1 && (n = read(fd, reply + got, sizeof reply - 1 - got)) > 0) got += n;
    reply[got] = 0;
    close(fd);
    return reply;
}

int main(void) {
    static char event[1 << 19], path[256], answer[(1 << 19) + 256];
    for (;;) {
        char *next = call("GET", "/2018-06-01/runtime/invocation/next", "");
        char *id = strcasestr(next, "Lambda-Runtime-Aws-Request-Id:");
        char *body = strstr(next, "\r\n\r\n");
        if (!id || !body) return 4;
        id += strlen("Lambda-Runtime-Aws-Request-Id:");
        while (*id == ' ') id++;
        size_t id_len = strcspn(id, "\r\n");
        snprintf(path, sizeof path, "/2018-06-01/runtime/invocation/%.*s/response", (int)id_len, id);
        snprintf(event, sizeof event, "%s", body + 4);
        printf("provided runtime got %s\n", event);
        fflush(stdout);
        snprintf(answer, sizeof answer, "{\"echo\":%s,\"handler\":\"%s\"}", event, getenv("_HANDLER"));
        call("POST", path, answer);
    }
}
