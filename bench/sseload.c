/*
 * sseload: a closed-loop load generator for streamed (server-sent events) HTTP responses, for
 * `make bench`. C with epoll on one thread, so the client costs a small fraction of what the
 * proxy it measures does; the asyncio client it replaces saturated its core first.
 *
 *   sseload HOST PORT PATH CONCURRENCY DURATION_S TIMEOUT_S
 *
 * Environment: BENCH_BODY (the JSON request body), BENCH_HEADERS (extra header lines, each ending
 * in CRLF). Every connection sends a request, reads the whole response (chunked, Content-Length
 * or until close), and sends the next on the same connection until DURATION_S has passed.
 * One line per request on stdout: "R <status> <ttft_us> <total_us>" where ttft is the time from
 * sending to the first event carrying non-empty "content" (-1 if none) and status is 0 for a
 * failed, timed-out or unfinished stream (no "data: [DONE]"); then "END <elapsed_us>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, HEAD, BODY_CHUNK_SIZE, BODY_CHUNK_DATA, BODY_CHUNK_CRLF, BODY_TRAILER, BODY_LENGTH, BODY_CLOSE };

struct conn {
    int fd;
    enum phase phase;
    long long sent_us, ttft_us;
    int status, close_after;
    long long remaining; /* chunk or content-length bytes left */
    char *head; size_t head_len, head_cap;
    char *body; size_t body_len, body_cap, scanned;
    char line[64]; size_t line_len;
};

static struct sockaddr_storage addr;
static socklen_t addr_len;
static char *request; static size_t request_len;
static int epfd;
static long long timeout_us;

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void die(const char *what) { perror(what); exit(2); }

static void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t want = *cap ? *cap : 4096;
        while (want < *len + n + 1) want *= 2;
        *buf = realloc(*buf, want);
        if (!*buf) die("realloc");
        *cap = want;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void scan_first_token(struct conn *c) {
    static const char key[] = "\"content\":";
    if (c->ttft_us >= 0) return;
    size_t from = c->scanned > 16 ? c->scanned - 16 : 0;
    char *p = c->body + from;
    while ((p = memmem(p, c->body + c->body_len - p, key, sizeof key - 1)) != NULL) {
        char *v = p + sizeof key - 1;
        while (v < c->body + c->body_len && *v == ' ') v++;
        if (v + 1 < c->body + c->body_len && v[0] == '"' && v[1] != '"') {
            c->ttft_us = now_us() - c->sent_us;
            break;
        }
        if (v + 1 >= c->body + c->body_len) break; /* value not complete yet: look again next time */
        p = v;
    }
    c->scanned = c->body_len;
}

static void start_request(struct conn *c);

static void open_conn(struct conn *c) {
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->phase = CONNECTING;
    c->sent_us = now_us();
    c->ttft_us = -1;
    if (connect(c->fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static void close_conn(struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static long long deadline_us;
static int open_conns;

static void finish(struct conn *c, int ok) {
    int done = ok && c->status == 200 && memmem(c->body, c->body_len, "data: [DONE]", 12) != NULL;
    int status = ok ? (c->status == 200 && !done ? 0 : c->status) : 0;
    printf("R %d %lld %lld\n", status, done ? c->ttft_us : -1LL, now_us() - c->sent_us);
    if (!ok || c->close_after || now_us() >= deadline_us) {
        close_conn(c);
        if (!ok) usleep(1000); /* a server that refuses or resets is not hammered in a tight loop */
        if (now_us() < deadline_us) open_conn(c);
        else open_conns--;
        return;
    }
    start_request(c);
}

static void start_request(struct conn *c) {
    c->phase = HEAD;
    c->head_len = c->body_len = c->scanned = c->line_len = 0;
    c->status = 0;
    c->close_after = 0;
    c->ttft_us = -1;
    c->sent_us = now_us();
    ssize_t n = send(c->fd, request, request_len, MSG_NOSIGNAL);
    if (n != (ssize_t)request_len) finish(c, 0); /* a small request into an empty socket buffer: all or error */
}

static int header_value(const char *head, const char *name, char *out, size_t out_len) {
    size_t name_len = strlen(name);
    const char *p = head;
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, name_len) == 0 && p[name_len] == ':') {
            const char *v = p + name_len + 1;
            while (*v == ' ') v++;
            size_t i = 0;
            while (v[i] && v[i] != '\r' && i + 1 < out_len) { out[i] = v[i]; i++; }
            out[i] = 0;
            return 1;
        }
    }
    return 0;
}

/* Consume `n` bytes of the response; returns 1 when the response is complete. */
static int feed(struct conn *c, const char *data, size_t n) {
    while (n > 0) {
        switch (c->phase) {
        case CONNECTING:
            return 0;
        case HEAD: {
            append(&c->head, &c->head_len, &c->head_cap, data, n);
            char *end = strstr(c->head, "\r\n\r\n");
            if (!end) return 0;
            size_t head_bytes = (size_t)(end - c->head) + 4;
            size_t extra = c->head_len - head_bytes;
            const char *rest = data + n - extra;
            n = extra;
            data = rest;
            c->head[head_bytes - 2] = 0;
            c->status = atoi(c->head + 9);
            char value[64];
            if (header_value(c->head, "connection", value, sizeof value) && strcasecmp(value, "close") == 0)
                c->close_after = 1;
            if (header_value(c->head, "transfer-encoding", value, sizeof value) && strcasestr(value, "chunked")) {
                c->phase = BODY_CHUNK_SIZE;
            } else if (header_value(c->head, "content-length", value, sizeof value)) {
                c->remaining = atoll(value);
                c->phase = BODY_LENGTH;
                if (c->remaining == 0) return 1;
            } else {
                c->phase = BODY_CLOSE;
                c->close_after = 1;
            }
            break;
        }
        case BODY_CHUNK_SIZE:
        case BODY_CHUNK_CRLF:
        case BODY_TRAILER: {
            char ch = *data++;
            n--;
            if (c->line_len + 1 < sizeof c->line) c->line[c->line_len++] = ch;
            if (ch != '\n') break;
            c->line[c->line_len] = 0;
            int empty = c->line_len <= 2;
            c->line_len = 0;
            if (c->phase == BODY_CHUNK_CRLF) {
                c->phase = BODY_CHUNK_SIZE;
            } else if (c->phase == BODY_TRAILER) {
                if (empty) return 1;
            } else {
                c->remaining = strtoll(c->line, NULL, 16);
                c->phase = c->remaining == 0 ? BODY_TRAILER : BODY_CHUNK_DATA;
            }
            break;
        }
        case BODY_CHUNK_DATA:
        case BODY_LENGTH: {
            size_t take = n < (size_t)c->remaining ? n : (size_t)c->remaining;
            append(&c->body, &c->body_len, &c->body_cap, data, take);
            scan_first_token(c);
            data += take;
            n -= take;
            c->remaining -= take;
            if (c->remaining == 0) {
                if (c->phase == BODY_LENGTH) return 1;
                c->phase = BODY_CHUNK_CRLF;
            }
            break;
        }
        case BODY_CLOSE:
            append(&c->body, &c->body_len, &c->body_cap, data, n);
            scan_first_token(c);
            return 0;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: sseload HOST PORT PATH CONCURRENCY DURATION_S TIMEOUT_S\n");
        return 2;
    }
    const char *host = argv[1], *port = argv[2], *path = argv[3];
    int concurrency = atoi(argv[4]);
    double duration = atof(argv[5]);
    timeout_us = (long long)(atof(argv[6]) * 1e6);
    if (concurrency < 1 || concurrency > 10000 || duration <= 0 || timeout_us <= 0) {
        fprintf(stderr, "sseload: bad arguments\n");
        return 2;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) { fprintf(stderr, "sseload: cannot resolve %s\n", host); return 2; }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addr_len = res->ai_addrlen;
    freeaddrinfo(res);

    const char *body = getenv("BENCH_BODY") ? getenv("BENCH_BODY") : "{}";
    const char *extra = getenv("BENCH_HEADERS") ? getenv("BENCH_HEADERS") : "";
    request_len = (size_t)asprintf(&request,
        "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        "%sContent-Length: %zu\r\n\r\n%s", path, host, port, extra, strlen(body), body);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct conn *conns = calloc((size_t)concurrency, sizeof *conns);
    long long started = now_us();
    deadline_us = started + (long long)(duration * 1e6);
    for (int i = 0; i < concurrency; i++) open_conn(&conns[i]);
    open_conns = concurrency;

    struct epoll_event events[256];
    char buf[65536];
    while (open_conns > 0) {
        int ready = epoll_wait(epfd, events, 256, 10);
        if (ready < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (c->phase == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) { finish(c, 0); continue; }
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                start_request(c);
                continue;
            }
            for (;;) {
                ssize_t n = recv(c->fd, buf, sizeof buf, 0);
                if (n > 0) {
                    if (feed(c, buf, (size_t)n)) { finish(c, 1); break; }
                    continue;
                }
                if (n == 0) { finish(c, c->phase == BODY_CLOSE); break; }
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                finish(c, 0);
                break;
            }
        }
        long long now = now_us();
        for (int i = 0; i < concurrency; i++) {
            struct conn *c = &conns[i];
            if (c->fd >= 0 && now - c->sent_us > timeout_us) finish(c, 0);
        }
    }
    printf("END %lld\n", now_us() - started);
    return 0;
}
