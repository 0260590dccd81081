// Event wire encoding, event ids and channel ids: pure functions, no nginx.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sse {

constexpr size_t max_channel_id_len = 255;
constexpr size_t max_channels_per_subscriber = 64;
constexpr size_t max_event_name_len = 255;
// "18446744073709551615-18446744073709551615"
constexpr size_t max_event_id_len = 41;

// An event id: EPOCH names the life of the zone, SEQ is zone-wide and grows.
struct event_id {
    uint64_t epoch;
    uint64_t seq;
};

// Parses "EPOCH-SEQ" (decimal, no sign, no spaces); nullopt when malformed
// or when either number overflows 64 bits.
std::optional<event_id> parse_event_id(std::string_view s);

// Writes "EPOCH-SEQ" into out (at least max_event_id_len bytes); returns the
// length written.
size_t format_event_id(char *out, event_id id);

// A byte of a channel id: A-Z a-z 0-9 _ . : @ ~ - /
bool is_channel_char(unsigned char c);
bool valid_channel_id(std::string_view id);

enum class channels_error {
    none,
    empty,
    bad_char,
    too_long,
    too_many,
    bad_escape
};
const char *describe(channels_error e);

// How sse_channel turns each of its values into ids (its options).
struct channel_rule {
    char split = '\0';      // `split=SEP`: the separator; '\0' for none
    bool unescape = false;  // `unescape`: %XX decoded once, after splitting
};

// Turns sse_channel's evaluated values into ids. Each value is one id,
// byte for byte, unless the rule splits it on its separator and/or
// percent-decodes each item (once, after splitting: an escaped separator
// never splits, a decoded '%' is never decoded again). Every id must be
// valid; duplicates are dropped keeping the first-seen order; more than
// `max` distinct ids is too_many. out is cleared first; the first error in
// value order is returned.
channels_error parse_channels(const std::vector<std::string_view> &values,
                              channel_rule rule, std::vector<std::string> &out,
                              size_t max = max_channels_per_subscriber);

// One comma-separated list, not decoded; ids view `list`. The same as
// parse_channels({list}, {',', false}, ...); kept for callers that want
// views.
channels_error split_channels(std::string_view list,
                              std::vector<std::string_view> &out);

// An event name may not carry CR, LF or NUL (it would forge a field).
bool valid_event_name(std::string_view name);

// Bytes encode_event() will write for this event.
size_t encoded_size(std::string_view id, std::string_view event,
                    std::string_view data);

// Writes the event in SSE wire form:
//   id: ID\n  [event: NAME\n]  data: LINE\n ...  \n
// Data is split on CRLF, lone CR and lone LF, so that no byte of it can end
// a field early; empty data gives one empty "data:" line, which EventSource
// dispatches as an empty message. out must hold encoded_size() bytes.
size_t encode_event(char *out, std::string_view id, std::string_view event,
                    std::string_view data);

std::string encode_event(std::string_view id, std::string_view event,
                         std::string_view data);

}  // namespace sse

namespace sse {

// The wire form of an event without its "id:" line, which the store's
// readers prepend (the id is assigned after the body is written):
//   [event: NAME\n]  data: LINE\n ...  \n
size_t encoded_body_size(std::string_view event, std::string_view data);
size_t encode_body(char *out, std::string_view event, std::string_view data);

}  // namespace sse
