// The JSON report: a tiny writer and percentiles.
#pragma once

#include "common.hpp"

namespace {

// ------------------------------------------------------------------ output

std::string J;  // the JSON being built

void jraw(const char *k, const std::string &v) {
    if (J.size() > 1 && J.back() != '{') J += ',';
    J += '"';
    J += k;
    J += "\":";
    J += v;
}
void jnum(const char *k, double v) {
    char b[64];
    if (v == double(int64_t(v)) && std::abs(v) < 1e15)
        snprintf(b, sizeof b, "%" PRId64, int64_t(v));
    else
        snprintf(b, sizeof b, "%.6g", v);
    jraw(k, b);
}
std::string jstr(const std::string &s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\')
            o += '\\', o += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
            char b[8];
            snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
        } else
            o += c;
    }
    return o + "\"";
}
void jbool(const char *k, bool v) { jraw(k, v ? "true" : "false"); }
void jopen(const char *k) { jraw(k, "{"); }
void jclose() { J += '}'; }

double pct(std::vector<int64_t> &v, double q) {
    if (v.empty()) return 0;
    size_t i = size_t(q * double(v.size() - 1) + 0.5);
    return double(v[std::min(i, v.size() - 1)]);
}

void jlatency(const char *k, std::vector<int64_t> &v) {
    std::sort(v.begin(), v.end());
    jopen(k);
    jnum("count", double(v.size()));
    if (!v.empty()) {
        double sum = 0;
        for (auto x : v) sum += double(x);
        jnum("min", double(v.front()) / 1e6);
        jnum("p50", pct(v, 0.50) / 1e6);
        jnum("p90", pct(v, 0.90) / 1e6);
        jnum("p99", pct(v, 0.99) / 1e6);
        jnum("p999", pct(v, 0.999) / 1e6);
        jnum("max", double(v.back()) / 1e6);
        jnum("mean", sum / double(v.size()) / 1e6);
    }
    jclose();
}

// Publish response times per second of the run (`at` = send time from the
// start): [{"s": 0, "count": N, "p50": ms, "p99": ms, "max": ms}, ...].
void jseries(const char *k, const std::vector<int64_t> &v,
             const std::vector<int64_t> &at) {
    std::map<int64_t, std::vector<int64_t>> by;
    for (size_t i = 0; i < v.size() && i < at.size(); i++)
        by[at[i] / 1000000000].push_back(v[i]);
    if (J.size() > 1 && J.back() != '{') J += ',';
    J += '"';
    J += k;
    J += "\":[";
    bool first = true;
    for (auto &[sec, xs] : by) {
        std::sort(xs.begin(), xs.end());
        char buf[160];
        snprintf(buf, sizeof buf,
                 "%s{\"s\":%lld,\"count\":%zu,\"p50\":%.4f,\"p99\":%.4f,"
                 "\"max\":%.4f}",
                 first ? "" : ",", (long long)sec, xs.size(),
                 pct(xs, 0.5) / 1e6, pct(xs, 0.99) / 1e6,
                 double(xs.back()) / 1e6);
        J += buf;
        first = false;
    }
    J += ']';
}

void jmap(const char *k, const std::map<int, int> &m) {
    jopen(k);
    for (auto &[a, b] : m) jnum(std::to_string(a).c_str(), b);
    jclose();
}

}  // namespace
