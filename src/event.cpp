#include "event.hpp"
#include "parser.hpp"

#include <cstring>

namespace sse {

namespace {

std::optional<uint64_t> parse_u64(std::string_view s) {
    if (s.empty() || s.size() > 20) {
        return std::nullopt;
    }
    uint64_t v = 0;
    for (char ch : s) {
        if (ch < '0' || ch > '9') {
            return std::nullopt;
        }
        uint64_t d = static_cast<uint64_t>(ch - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return std::nullopt;
        }
        v = v * 10 + d;
    }
    return v;
}

size_t format_u64(char *out, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    return n;
}

// Calls f(line) for each line of data, split on CRLF, CR or LF.
template <typename F>
void for_each_line(std::string_view data, F &&f) {
    if (data.empty()) {
        // nginx gives an empty body as a null pointer, which memchr and
        // memcpy must not see, even with length 0.
        f(std::string_view("", 0));
        return;
    }
    if (std::memchr(data.data(), '\r', data.size()) == nullptr) {
        // The common case: LF only, found with memchr.
        const char *p = data.data();
        const char *end = p + data.size();
        for (;;) {
            auto *lf = static_cast<const char *>(std::memchr(p, '\n', end - p));
            if (lf == nullptr) {
                f(std::string_view(p, end - p));
                return;
            }
            f(std::string_view(p, lf - p));
            p = lf + 1;
        }
    }
    size_t start = 0;
    size_t i = 0;
    while (i < data.size()) {
        char c = data[i];
        if (c == '\r' || c == '\n') {
            f(data.substr(start, i - start));
            i += (c == '\r' && i + 1 < data.size() && data[i + 1] == '\n') ? 2
                                                                           : 1;
            start = i;
        } else {
            i++;
        }
    }
    f(data.substr(start));
}

}  // namespace

std::optional<event_id> parse_event_id(std::string_view s) {
    size_t dash = s.find('-');
    if (dash == std::string_view::npos) {
        return std::nullopt;
    }
    auto epoch = parse_u64(s.substr(0, dash));
    auto seq = parse_u64(s.substr(dash + 1));
    if (!epoch || !seq) {
        return std::nullopt;
    }
    return event_id{*epoch, *seq};
}

size_t format_event_id(char *out, event_id id) {
    size_t n = format_u64(out, id.epoch);
    out[n++] = '-';
    return n + format_u64(out + n, id.seq);
}

bool is_channel_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' ||
           c == '@' || c == '~' || c == '-' || c == '/';
}

bool valid_channel_id(std::string_view id) {
    if (id.empty() || id.size() > max_channel_id_len) {
        return false;
    }
    for (unsigned char c : id) {
        if (!is_channel_char(c)) {
            return false;
        }
    }
    return true;
}

// The messages below spell the limits out.
static_assert(max_channel_id_len == 255 && max_channels_per_subscriber == 64);
static_assert(max_event_name_len == 255);

const char *describe(channels_error e) {
    switch (e) {
        case channels_error::none:
            return "ok";
        case channels_error::empty:
            return "empty channel id";
        case channels_error::bad_char:
            return "channel id may only contain A-Z a-z 0-9 _ . : @ ~ - /";
        case channels_error::too_long:
            return "channel id longer than 255 bytes";
        case channels_error::too_many:
            return "more than 64 channels";
        case channels_error::bad_escape:
            return "malformed %-escape in channel id";
    }
    return "bad channel";
}

namespace {

channels_error check_channel_id(std::string_view id) {
    if (id.empty()) {
        return channels_error::empty;
    }
    // Length first: a long id is reported as such whatever its bytes.
    if (id.size() > max_channel_id_len) {
        return channels_error::too_long;
    }
    return valid_channel_id(id) ? channels_error::none
                                : channels_error::bad_char;
}

// Calls f(item) for each item of value split on sep ('\0': no split) and
// stops at the first error f returns.
template <typename F>
channels_error for_each_item(std::string_view value, char sep, F &&f) {
    if (sep == '\0') {
        return f(value);
    }
    size_t start = 0;
    for (;;) {
        size_t at = value.find(sep, start);
        channels_error e = f(value.substr(
            start, at == std::string_view::npos ? at : at - start));
        if (e != channels_error::none || at == std::string_view::npos) {
            return e;
        }
        start = at + 1;
    }
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = static_cast<char>(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// Decodes every %XX once; false when a '%' is not followed by two hex
// digits.
bool percent_decode(std::string_view in, std::string &out) {
    out.clear();
    for (size_t i = 0; i < in.size(); i++) {
        if (in[i] != '%') {
            out += in[i];
            continue;
        }
        int hi = i + 2 < in.size() ? hex_value(in[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(in[i + 2]) : -1;
        if (lo < 0) {
            return false;
        }
        out += static_cast<char>(hi << 4 | lo);
        i += 2;
    }
    return true;
}

}  // namespace

channels_error parse_channels(const std::vector<std::string_view> &values,
                              channel_rule rule, std::vector<std::string> &out,
                              size_t max) {
    out.clear();
    std::string decoded;
    auto add = [&](std::string_view item) {
        if (rule.unescape) {
            if (!percent_decode(item, decoded)) {
                return channels_error::bad_escape;
            }
            item = decoded;
        }
        channels_error e = check_channel_id(item);
        if (e != channels_error::none) {
            return e;
        }
        for (const std::string &seen : out) {
            if (seen == item) {
                return channels_error::none;
            }
        }
        if (out.size() == max) {
            return channels_error::too_many;
        }
        out.emplace_back(item);
        return channels_error::none;
    };
    for (std::string_view value : values) {
        channels_error e = for_each_item(value, rule.split, add);
        if (e != channels_error::none) {
            return e;
        }
    }
    return channels_error::none;
}

channels_error split_channels(std::string_view list,
                              std::vector<std::string_view> &out) {
    out.clear();
    return for_each_item(list, ',', [&out](std::string_view id) {
        channels_error e = check_channel_id(id);
        if (e != channels_error::none) {
            return e;
        }
        for (std::string_view seen : out) {
            if (seen == id) {
                return channels_error::none;
            }
        }
        if (out.size() == max_channels_per_subscriber) {
            return channels_error::too_many;
        }
        out.push_back(id);
        return channels_error::none;
    });
}

const char *describe(parse_status s) {
    switch (s) {
        case parse_status::ok:
            return "ok";
        case parse_status::too_large:
            return "an event larger than sse_max_message_size";
        case parse_status::bad_event_name:
            return "an event name with NUL or over 255 bytes";
    }
    return "malformed event stream";
}

bool valid_event_name(std::string_view name) {
    if (name.size() > max_event_name_len) {
        return false;
    }
    for (char c : name) {
        if (c == '\r' || c == '\n' || c == '\0') {
            return false;
        }
    }
    return true;
}

size_t encoded_size(std::string_view id, std::string_view event,
                    std::string_view data) {
    size_t n = sizeof("id: \n") - 1 + id.size();
    if (!event.empty()) {
        n += sizeof("event: \n") - 1 + event.size();
    }
    for_each_line(data, [&](std::string_view line) {
        n += sizeof("data: \n") - 1 + line.size();
    });
    return n + 1;
}

size_t encode_event(char *out, std::string_view id, std::string_view event,
                    std::string_view data) {
    char *p = out;
    auto put = [&p](std::string_view s) {
        if (!s.empty()) {  // an empty view's data() may be null
            std::memcpy(p, s.data(), s.size());
            p += s.size();
        }
    };
    put("id: ");
    put(id);
    put("\n");
    if (!event.empty()) {
        put("event: ");
        put(event);
        put("\n");
    }
    for_each_line(data, [&](std::string_view line) {
        put("data: ");
        put(line);
        put("\n");
    });
    put("\n");
    return static_cast<size_t>(p - out);
}

std::string encode_event(std::string_view id, std::string_view event,
                         std::string_view data) {
    std::string s(encoded_size(id, event, data), '\0');
    s.resize(encode_event(s.data(), id, event, data));
    return s;
}

}  // namespace sse

namespace sse {

size_t encoded_body_size(std::string_view event, std::string_view data) {
    return encoded_size({}, event, data) - (sizeof("id: \n") - 1);
}

size_t encode_body(char *out, std::string_view event,
                   std::string_view data) {
    char *p = out;
    if (!event.empty()) {
        std::memcpy(p, "event: ", 7);
        std::memcpy(p + 7, event.data(), event.size());
        p += 7 + event.size();
        *p++ = '\n';
    }
    for_each_line(data, [&p](std::string_view line) {
        std::memcpy(p, "data: ", 6);
        if (!line.empty()) {
            std::memcpy(p + 6, line.data(), line.size());
        }
        p += 6 + line.size();
        *p++ = '\n';
    });
    *p++ = '\n';
    return static_cast<size_t>(p - out);
}

}  // namespace sse
