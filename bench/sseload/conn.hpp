// Connections: nonblocking sockets, writes, the HTTP response head.
#pragma once

#include "common.hpp"

namespace {

sockaddr_in g_addr_sub{}, g_addr_pub{};

int epfd = -1;

enum : uint64_t {
    TAG_SUB = 1ull << 40,
    TAG_PUB = 2ull << 40,
    TAG_STDIN = 3ull << 40
};
const uint64_t TAG_MASK = 0xffull << 40;

// Adds fd to the loop's epoll set or changes it (op: EPOLL_CTL_ADD or
// _MOD): the events to wait for, and the tag its events come back with.
void epoll_set(int op, int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    epoll_ctl(epfd, op, fd, &ev);
}

// src: the local address to bind first (0: the kernel's choice).
int open_socket(const sockaddr_in &addr, int &err, uint32_t src = 0) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src != 0) {
        // The port is picked at connect() time, per destination: many
        // more than 64k connections over a few source addresses.
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        sockaddr_in local{};
        local.sin_family = AF_INET;
        local.sin_addr.s_addr = htonl(src);
        if (bind(fd, reinterpret_cast<sockaddr *>(&local), sizeof local) < 0) {
            err = errno;
            close(fd);
            return -1;
        }
    }
    if (connect(fd, reinterpret_cast<const sockaddr *>(&addr), sizeof addr) <
            0 &&
        errno != EINPROGRESS) {
        err = errno;
        close(fd);
        return -1;
    }
    err = 0;
    return fd;
}

void abort_close(int fd) {
    // RST instead of FIN: no TIME_WAIT pile-up across runs.
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

bool write_all_nb(int fd, const std::string &s, size_t &off) {
    while (off < s.size()) {
        ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += size_t(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        return false;
    }
    return true;
}

bool ieq_prefix(const char *p, size_t n, const char *name) {
    size_t k = strlen(name);
    if (n < k) return false;
    for (size_t i = 0; i < k; i++) {
        char a = p[i], b = name[i];
        if (a >= 'A' && a <= 'Z') a = char(a - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

struct HttpHead {
    int status = 0;
    bool chunked = false;
    int64_t content_length = -1;
    bool close = false;
};

// Parses a response head [p, p+n) ending with CRLFCRLF.
bool parse_head(const char *p, size_t n, HttpHead &h) {
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0) return false;
    h.status = atoi(p + 9);
    bool http10 = p[7] == '0';
    h.close = http10;
    const char *end = p + n;
    const char *line = static_cast<const char *>(memchr(p, '\n', n));
    while (line && line + 1 < end) {
        line++;
        const char *eol =
            static_cast<const char *>(memchr(line, '\n', size_t(end - line)));
        if (!eol) break;
        size_t len = size_t(eol - line);
        if (ieq_prefix(line, len, "transfer-encoding:")) {
            std::string v(line + 18, len - 18);
            for (auto &ch : v) ch = char(tolower(ch));
            if (v.find("chunked") != std::string::npos) h.chunked = true;
        } else if (ieq_prefix(line, len, "content-length:")) {
            h.content_length = strtoll(line + 15, nullptr, 10);
        } else if (ieq_prefix(line, len, "connection:")) {
            std::string v(line + 11, len - 11);
            for (auto &ch : v) ch = char(tolower(ch));
            if (v.find("close") != std::string::npos) h.close = true;
            if (v.find("keep-alive") != std::string::npos) h.close = false;
        }
        line = eol;
    }
    return true;
}

}  // namespace
