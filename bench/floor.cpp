// floor: the least a Server-Sent Events fan-out server can do, as a
// reference line for the bench (issue 11). One thread, one epoll loop:
//
//   GET /events/CHANNEL   (port --sub-port) answers a chunked
//                         text/event-stream head and keeps the connection
//   POST /publish/CHANNEL (port --pub-port, keep-alive, Content-Length body)
//                         answers 202, then frames "id: N\ndata: BODY\n\n"
//                         as one HTTP chunk and writes it to each subscriber
//                         of the channel with one write()
//
// No buffering of events, no shared memory, no second process, no resume:
// what a write() leaves unsent waits in a per-connection string (so the
// load generator's exactly-once check holds), and that is all. Anything
// else (another method, a body without Content-Length) gets a 400 and a
// close. Stops on SIGTERM or SIGINT.
//
// Build: make -C bench (g++ -std=c++17 -O2 -o build/floor bench/floor.cpp)

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

enum Kind : uint8_t { LISTEN_SUB, LISTEN_PUB, CONN };

struct Conn {
    int fd = -1;
    Kind kind = CONN;
    bool pub = false;        // accepted on the publish port
    bool streaming = false;  // a subscriber past its response head
    std::string in;          // request bytes not yet handled
    std::string out;         // what write() left unsent
    std::string channel;
    size_t index = 0;  // in its channel's list
};

std::unordered_map<std::string, std::vector<Conn *>> channels;
int epfd = -1;
uint64_t seq = 0;
volatile sig_atomic_t stop = 0;
std::vector<Conn *> graveyard;

const char k_head[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
const char k_accepted[] =
    "HTTP/1.1 202 Accepted\r\nContent-Type: text/plain\r\n"
    "Content-Length: 3\r\n\r\nok\n";
const char k_bad[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close"
    "\r\n\r\n";

void on_stop(int) { stop = 1; }

void watch(Conn *c, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(epfd, op, c->fd, &ev);
}

void drop(Conn *c) {
    if (c->streaming) {
        auto &list = channels[c->channel];
        list[c->index] = list.back();
        list[c->index]->index = c->index;
        list.pop_back();
        if (list.empty()) channels.erase(c->channel);
    }
    close(c->fd);
    c->fd = -1;
    c->streaming = false;
    graveyard.push_back(c);  // freed after this batch of epoll events
}

// Writes what is queued, then `data`; keeps the rest for EPOLLOUT. False:
// the peer is gone.
bool send_bytes(Conn *c, const char *data, size_t len) {
    if (!c->out.empty()) {
        c->out.append(data, len);
        return true;
    }
    ssize_t n = write(c->fd, data, len);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) return false;
        n = 0;
    }
    if (size_t(n) < len) {
        c->out.assign(data + n, len - size_t(n));
        watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
    }
    return true;
}

bool flush_out(Conn *c) {
    while (!c->out.empty()) {
        ssize_t n = write(c->fd, c->out.data(), c->out.size());
        if (n < 0) return errno == EAGAIN || errno == EINTR;
        c->out.erase(0, size_t(n));
    }
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
    return true;
}

// "/events/CH" or "/publish/CH" from a request line; empty if neither.
std::string channel_of(const std::string &line, const char *prefix) {
    size_t sp = line.find(' ');
    if (sp == std::string::npos) return "";
    size_t end = line.find(' ', sp + 1);
    std::string path = line.substr(sp + 1, end - sp - 1);
    size_t plen = strlen(prefix);
    if (path.compare(0, plen, prefix) != 0 || path.size() == plen) return "";
    return path.substr(plen);
}

long content_length(const std::string &head) {
    size_t pos = 0;
    while ((pos = head.find("\r\n", pos)) != std::string::npos) {
        pos += 2;
        if (strncasecmp(head.c_str() + pos, "content-length:", 15) == 0)
            return strtol(head.c_str() + pos + 15, nullptr, 10);
    }
    return -1;
}

// The event framed once, written to every subscriber of the channel.
void publish(const std::string &channel, const char *body, size_t len) {
    std::string ev = "id: " + std::to_string(++seq) + "\ndata: ";
    ev.append(body, len);
    ev += "\n\n";
    char size[32];
    int n = snprintf(size, sizeof size, "%zx\r\n", ev.size());
    std::string chunk(size, size_t(n));
    chunk += ev;
    chunk += "\r\n";
    auto it = channels.find(channel);
    if (it == channels.end()) return;
    std::vector<Conn *> gone;
    for (Conn *s : it->second)
        if (!send_bytes(s, chunk.data(), chunk.size())) gone.push_back(s);
    for (Conn *s : gone) drop(s);
}

// Handles the complete requests in c->in; false: close c.
bool handle(Conn *c) {
    for (;;) {
        size_t end = c->in.find("\r\n\r\n");
        if (end == std::string::npos) return c->in.size() < 65536;
        std::string head = c->in.substr(0, end + 2);
        std::string line = head.substr(0, head.find("\r\n"));
        if (!c->pub) {
            std::string ch = channel_of(line, "/events/");
            if (line.compare(0, 4, "GET ") != 0 || ch.empty()) {
                send_bytes(c, k_bad, sizeof k_bad - 1);
                return false;
            }
            c->in.clear();
            c->channel = ch;
            c->streaming = true;
            auto &list = channels[ch];
            c->index = list.size();
            list.push_back(c);
            return send_bytes(c, k_head, sizeof k_head - 1);
        }
        std::string ch = channel_of(line, "/publish/");
        long len = content_length(head);
        if (line.compare(0, 5, "POST ") != 0 || ch.empty() || len < 0) {
            send_bytes(c, k_bad, sizeof k_bad - 1);
            return false;
        }
        if (c->in.size() < end + 4 + size_t(len)) return true;  // more body
        // Answered first, as nginx does (202 before the fan-out): the
        // publisher is not held back by the fan-out, only by the CPU.
        if (!send_bytes(c, k_accepted, sizeof k_accepted - 1)) return false;
        publish(ch, c->in.data() + end + 4, size_t(len));
        c->in.erase(0, end + 4 + size_t(len));
    }
}

int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 ||
        listen(fd, 4096) != 0) {
        fprintf(stderr, "floor: cannot listen on 127.0.0.1:%d: %s\n", port,
                strerror(errno));
        exit(1);
    }
    return fd;
}

void accept_all(Conn *l) {
    for (;;) {
        int fd = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        auto *c = new Conn;
        c->fd = fd;
        c->pub = l->kind == LISTEN_PUB;
        watch(c, EPOLLIN, EPOLL_CTL_ADD);
    }
}

void conn_io(Conn *c, uint32_t events) {
    if (c->fd < 0) return;  // dropped earlier in this batch
    if ((events & EPOLLOUT) && !flush_out(c)) return drop(c);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return drop(c);
        if (n < 0) return;
        if (c->streaming) continue;  // a subscriber says nothing more
        c->in.append(buf, size_t(n));
        if (!handle(c)) return drop(c);
    }
}

}  // namespace

int main(int argc, char **argv) {
    int sub_port = 0, pub_port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--sub-port") == 0) sub_port = atoi(argv[i + 1]);
        if (strcmp(argv[i], "--pub-port") == 0) pub_port = atoi(argv[i + 1]);
    }
    if (sub_port <= 0 || pub_port <= 0) {
        fprintf(stderr, "usage: floor --sub-port P --pub-port P\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    Conn lsub, lpub;
    lsub.kind = LISTEN_SUB;
    lsub.fd = listen_on(sub_port);
    lpub.kind = LISTEN_PUB;
    lpub.fd = listen_on(pub_port);
    watch(&lsub, EPOLLIN, EPOLL_CTL_ADD);
    watch(&lpub, EPOLLIN, EPOLL_CTL_ADD);
    fprintf(stderr, "floor: listening on %d and %d\n", sub_port, pub_port);

    std::vector<epoll_event> evs(1024);
    while (!stop) {
        int n = epoll_wait(epfd, evs.data(), int(evs.size()), 1000);
        for (int i = 0; i < n; i++) {
            auto *c = static_cast<Conn *>(evs[size_t(i)].data.ptr);
            if (c->kind == CONN)
                conn_io(c, evs[size_t(i)].events);
            else
                accept_all(c);
        }
        for (Conn *c : graveyard) delete c;
        graveyard.clear();
    }
    return 0;
}
