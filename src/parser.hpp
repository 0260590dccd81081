// Incremental parser for an SSE byte stream, as a publisher sends one in a
// `Content-Type: text/event-stream` body. Follows the WHATWG event-stream
// interpretation: lines end with CRLF, LF or CR (also when split across
// chunks), `:` starts a comment, `event:` sets the type, `data:` lines are
// joined with LF, a blank line dispatches; `id:` and `retry:` are ignored
// (ids are ours to assign). Bytes are passed through untouched otherwise:
// invalid UTF-8 stays as it came.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "event.hpp"

namespace sse {

enum class parse_status {
    ok,
    too_large,       // an event's data (or a line) over the size limit
    bad_event_name,  // an event name with NUL
};

const char *describe(parse_status s);

class stream_parser {
public:
    explicit stream_parser(size_t max_data) : max_data_(max_data) {}

    // Feeds the next bytes. Calls on_event(event, data) for each event
    // completed by them, in order. Stops at the first fault; the parser
    // then stays failed.
    template <typename F>
    parse_status feed(std::string_view in, F &&on_event);

    // True when the bytes fed so far end inside an event: at the end of
    // the body, that event is incomplete.
    bool mid_event() const { return !line_.empty() || has_fields_; }

    // Events dispatched so far.
    size_t events() const { return events_; }

private:
    template <typename F>
    parse_status line(std::string_view l, F &&on_event);

    size_t max_data_;
    size_t events_ = 0;
    std::string line_;  // a line begun in an earlier chunk
    std::string event_;
    std::string data_;
    bool has_data_ = false;
    bool has_fields_ = false;
    bool cr_ = false;  // the last chunk ended with CR: skip a leading LF
    bool bom_ = true;  // a leading U+FEFF may still come
    parse_status failed_ = parse_status::ok;
};

template <typename F>
parse_status stream_parser::line(std::string_view l, F &&on_event) {
    if (l.empty()) {
        if (has_data_) {
            std::string_view d(data_);
            d.remove_suffix(1);  // the LF after the last data line
            on_event(std::string_view(event_), d);
            events_++;
        }
        event_.clear();
        data_.clear();
        has_data_ = false;
        has_fields_ = false;
        return parse_status::ok;
    }
    if (l[0] == ':') {
        return parse_status::ok;
    }
    has_fields_ = true;
    size_t colon = l.find(':');
    std::string_view field = l.substr(0, colon);
    std::string_view value;
    if (colon != std::string_view::npos) {
        value = l.substr(colon + 1);
        if (!value.empty() && value[0] == ' ') {
            value.remove_prefix(1);
        }
    }
    if (field == "data") {
        if (data_.size() + value.size() + 1 > max_data_ + 1) {
            return parse_status::too_large;
        }
        data_.append(value);
        data_ += '\n';
        has_data_ = true;
    } else if (field == "event") {
        if (value.find('\0') != std::string_view::npos ||
            value.size() > max_event_name_len) {
            return parse_status::bad_event_name;
        }
        event_.assign(value);
    }
    return parse_status::ok;
}

template <typename F>
parse_status stream_parser::feed(std::string_view in, F &&on_event) {
    if (failed_ != parse_status::ok) {
        return failed_;
    }
    if (bom_ && !in.empty()) {
        static constexpr std::string_view bom = "\xEF\xBB\xBF";
        // The BOM may itself be split across chunks.
        std::string_view seen(line_);
        size_t want = bom.size() - seen.size();
        std::string_view head = in.substr(0, want);
        if (bom.substr(seen.size(), head.size()) == head) {
            if (head.size() == want) {
                line_.clear();
                in.remove_prefix(want);
                bom_ = false;
            } else {
                line_.append(head);
                return parse_status::ok;
            }
        } else {
            bom_ = false;
        }
    }
    size_t i = 0;
    if (cr_ && !in.empty()) {
        cr_ = false;
        if (in[0] == '\n') {
            i = 1;
        }
    }
    while (i < in.size()) {
        size_t eol = in.find_first_of("\r\n", i);
        if (eol == std::string_view::npos) {
            if (line_.size() + (in.size() - i) > max_data_ + 256) {
                return failed_ = parse_status::too_large;
            }
            line_.append(in.substr(i));
            break;
        }
        // The same limit for every line, however the body was split.
        if (line_.size() + (eol - i) > max_data_ + 256) {
            return failed_ = parse_status::too_large;
        }
        parse_status st;
        if (line_.empty()) {
            st = line(in.substr(i, eol - i), on_event);
        } else {
            line_.append(in.substr(i, eol - i));
            std::string l;
            l.swap(line_);
            st = line(l, on_event);
        }
        if (st != parse_status::ok) {
            return failed_ = st;
        }
        i = eol + 1;
        if (in[eol] == '\r') {
            if (i == in.size()) {
                cr_ = true;
            } else if (in[i] == '\n') {
                i++;
            }
        }
    }
    return parse_status::ok;
}

}  // namespace sse
