// Event ids (src/event.hpp): parse_event_id accepts exactly
// DIGITS "-" DIGITS with each number at most 20 digits and below 2^64 (the
// reference below reads them with 128-bit arithmetic), and formatting what
// it parsed gives the input back without leading zeros; formatting any two
// numbers and parsing the result gives them back.
//
// Input: the id text; its first 16 bytes also serve as the two numbers.

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "event.hpp"
#include "fuzz_check.hpp"

namespace {

std::optional<uint64_t> reference_number(std::string_view s) {
    if (s.empty() || s.size() > 20) {
        return std::nullopt;
    }
    unsigned __int128 v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > UINT64_MAX) {
        return std::nullopt;
    }
    return static_cast<uint64_t>(v);
}

std::string without_leading_zeros(std::string_view s) {
    size_t i = 0;
    while (i + 1 < s.size() && s[i] == '0') {
        i++;
    }
    return std::string(s.substr(i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    std::string_view text(reinterpret_cast<const char *>(bytes), size);
    char buf[sse::max_event_id_len];

    auto got = sse::parse_event_id(text);
    size_t dash = text.find('-');
    std::optional<uint64_t> epoch, seq;
    if (dash != std::string_view::npos) {
        epoch = reference_number(text.substr(0, dash));
        seq = reference_number(text.substr(dash + 1));
    }
    FUZZ_CHECK(got.has_value() == (epoch && seq));
    if (got) {
        FUZZ_CHECK(got->epoch == *epoch && got->seq == *seq);
        std::string_view back(buf, sse::format_event_id(buf, *got));
        FUZZ_CHECK(back == without_leading_zeros(text.substr(0, dash)) + "-" +
                               without_leading_zeros(text.substr(dash + 1)));
    }

    uint64_t n[2] = {0, 0};
    std::memcpy(n, bytes, size < sizeof(n) ? size : sizeof(n));
    sse::event_id id{n[0], n[1]};
    size_t len = sse::format_event_id(buf, id);
    FUZZ_CHECK(len >= 3 && len <= sse::max_event_id_len);
    auto round = sse::parse_event_id(std::string_view(buf, len));
    FUZZ_CHECK(round && round->epoch == id.epoch && round->seq == id.seq);
    return 0;
}
