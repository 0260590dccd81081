// Channel lists (src/event.hpp split_channels): compared with a reference
// that splits on every comma first and then judges the pieces in order;
// what is accepted is a list of distinct valid ids, in first-seen order,
// views into the input, that joined with commas split the same way (and are
// the input itself when it held no duplicate). Kept small on purpose:
// `split=` and `unescape` (issue 8, item 1) will change how values become
// lists, and this target with them.
//
// Input: the list.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "event.hpp"
#include "fuzz_check.hpp"

namespace {

bool reference_char(unsigned char c) {
    static const std::string_view allowed =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        "_.:@~-/";
    return c != 0 && allowed.find(static_cast<char>(c)) != allowed.npos;
}

sse::channels_error reference(std::string_view list,
                              std::vector<std::string> &out) {
    std::vector<std::string> pieces(1);
    for (char c : list) {
        if (c == ',') {
            pieces.emplace_back();
        } else {
            pieces.back() += c;
        }
    }
    for (const auto &p : pieces) {
        if (p.empty()) {
            return sse::channels_error::empty;
        }
        if (p.size() > sse::max_channel_id_len) {
            return sse::channels_error::too_long;
        }
        for (unsigned char c : p) {
            if (!reference_char(c)) {
                return sse::channels_error::bad_char;
            }
        }
        bool seen = false;
        for (const auto &o : out) {
            seen = seen || o == p;
        }
        if (!seen) {
            if (out.size() == sse::max_channels_per_subscriber) {
                return sse::channels_error::too_many;
            }
            out.push_back(p);
        }
    }
    return sse::channels_error::none;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    std::string_view list(reinterpret_cast<const char *>(bytes), size);
    std::vector<std::string_view> got{"stale"};  // must be cleared
    std::vector<std::string> want;
    auto err = sse::split_channels(list, got);
    FUZZ_CHECK(err == reference(list, want));
    FUZZ_CHECK(sse::describe(err) != nullptr);
    if (err != sse::channels_error::none) {
        return 0;
    }
    FUZZ_CHECK(got.size() == want.size());
    for (size_t i = 0; i < got.size(); i++) {
        FUZZ_CHECK(got[i] == want[i]);
        FUZZ_CHECK(sse::valid_channel_id(got[i]));
        // Views into the input, not copies.
        FUZZ_CHECK(got[i].data() >= list.data() &&
                   got[i].data() + got[i].size() <= list.data() + list.size());
    }
    // The ids joined: the input itself when it held no duplicate, and a
    // list that splits into the same ids.
    std::vector<std::string_view> again;
    std::string joined;
    for (auto id : got) {
        joined += (joined.empty() ? "" : ",") + std::string(id);
    }
    size_t pieces = 1;
    for (char c : list) {
        pieces += c == ',';
    }
    FUZZ_CHECK(pieces >= got.size());
    FUZZ_CHECK(pieces > got.size() || joined == list);
    FUZZ_CHECK(sse::split_channels(joined, again) == sse::channels_error::none);
    FUZZ_CHECK(again == got);
    for (unsigned c = 0; c < 256; c++) {
        FUZZ_CHECK(sse::is_channel_char(static_cast<unsigned char>(c)) ==
                   reference_char(static_cast<unsigned char>(c)));
    }
    return 0;
}
