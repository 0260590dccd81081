// Command line, clock, logging, channel names and paths.
#pragma once

#include "common.hpp"

namespace {

// ------------------------------------------------------------------ options

struct Options {
    std::string mode = "fanout";
    std::string host = "127.0.0.1";
    int sub_port = 0;
    int pub_port = 0;
    std::string sub_path = "/events/{ch}";
    std::string pub_path = "/publish/{ch}";
    std::string prefix = "bench";
    int subscribers = 10;
    int channels = 1;
    int events = 10;
    int size = 64;
    int publishers = 1;
    double rate = 0;      // events per second; 0: as fast as answered
    int batch = 200;      // subscriber connections in flight at once
    double timeout = 60;  // seconds, for each waiting phase
    bool warmup = true;
    int resume_back = 500;  // resume: events behind the end
    std::vector<std::string> sub_headers;
    bool verbose = false;
    // Several generators on one server (the 50,000 scale): subscriber
    // sockets bound round-robin to 127.0.0.SRC_BASE .. +SRC_COUNT-1, so
    // source ports do not run out; one process publishes (--wait-stdin:
    // once all are ready), the others only receive (--no-publish).
    int src_base = 0;
    int src_count = 0;
    bool publish = true;
    bool wait_stdin = false;
};

const char kUsage[] =
    "usage: sseload --mode fanout|publish|idle|resume --sub-port P "
    "--pub-port P\n"
    "  [--host 127.0.0.1] [--sub-path /events/{ch}] "
    "[--pub-path /publish/{ch}]\n"
    "  [--prefix bench] [--subscribers N] [--channels C] "
    "[--events M] [--size BYTES]\n"
    "  [--publishers P] [--rate EV_PER_S] [--batch N] "
    "[--timeout S] [--no-warmup]\n"
    "  [--src-base K --src-count N] [--no-publish] [--wait-stdin]\n"
    "  [--resume-back K] [--sub-header 'Name: value'] [--verbose]\n";

[[noreturn]] void usage(const char *msg) {
    if (msg) fprintf(stderr, "sseload: %s\n", msg);
    fputs(kUsage, stderr);
    exit(2);
}

// A flag: takes no value, sets its field to `value`.
struct Flag {
    bool Options::*field;
    bool value;
};

using Field =
    std::variant<std::string Options::*, int Options::*, double Options::*,
                 std::vector<std::string> Options::*, Flag>;

// Every option and the field it sets (the defaults are in Options, the
// help in kUsage; --self-test checks that kUsage names each of them).
const std::pair<const char *, Field> kOptions[] = {
    {"--mode", &Options::mode},
    {"--host", &Options::host},
    {"--sub-port", &Options::sub_port},
    {"--pub-port", &Options::pub_port},
    {"--sub-path", &Options::sub_path},
    {"--pub-path", &Options::pub_path},
    {"--prefix", &Options::prefix},
    {"--subscribers", &Options::subscribers},
    {"--channels", &Options::channels},
    {"--events", &Options::events},
    {"--size", &Options::size},
    {"--publishers", &Options::publishers},
    {"--rate", &Options::rate},
    {"--batch", &Options::batch},
    {"--timeout", &Options::timeout},
    {"--no-warmup", Flag{&Options::warmup, false}},
    {"--resume-back", &Options::resume_back},
    {"--sub-header", &Options::sub_headers},
    {"--src-base", &Options::src_base},
    {"--src-count", &Options::src_count},
    {"--no-publish", Flag{&Options::publish, false}},
    {"--wait-stdin", Flag{&Options::wait_stdin, true}},
    {"--verbose", Flag{&Options::verbose, true}},
};

// Sets one field from the option's value (none for a flag).
struct SetField {
    Options &o;
    const char *v;
    void operator()(std::string Options::*f) const { o.*f = v; }
    void operator()(int Options::*f) const { o.*f = atoi(v); }
    void operator()(double Options::*f) const { o.*f = atof(v); }
    void operator()(std::vector<std::string> Options::*f) const {
        (o.*f).push_back(v);
    }
    void operator()(const Flag &f) const { o.*f.field = f.value; }
};

Options parse_args(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") usage(nullptr);
        auto it = std::find_if(std::begin(kOptions), std::end(kOptions),
                               [&](const auto &k) { return a == k.first; });
        if (it == std::end(kOptions)) usage(("unknown argument " + a).c_str());
        const char *v = nullptr;
        if (!std::holds_alternative<Flag>(it->second)) {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            v = argv[++i];
        }
        std::visit(SetField{o, v}, it->second);
    }
    if (o.mode != "fanout" && o.mode != "publish" && o.mode != "idle" &&
        o.mode != "resume")
        usage("bad --mode");
    if (o.mode != "publish" && o.sub_port <= 0) usage("--sub-port needed");
    if (o.mode != "idle" && o.pub_port <= 0) usage("--pub-port needed");
    if (o.channels < 1 || o.publishers < 1 || o.events < 0 ||
        o.subscribers < 0 || o.batch < 1 || o.size < 0)
        usage("bad numbers");
    if (o.mode == "resume") {
        o.channels = 1;
        if (o.resume_back < 1 || o.resume_back >= o.events)
            usage("--resume-back must be in [1, events)");
    }
    return o;
}

Options opt;

// ------------------------------------------------------------------ clock

int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t g_now = 0;  // refreshed after every read

void logf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

std::string channel_name(int c) { return opt.prefix + std::to_string(c); }

std::string fill_path(const std::string &tmpl, const std::string &ch) {
    std::string out;
    size_t i = 0;
    while (i < tmpl.size()) {
        if (tmpl.compare(i, 4, "{ch}") == 0) {
            out += ch;
            i += 4;
        } else {
            out += tmpl[i++];
        }
    }
    return out;
}

}  // namespace
