// Channel ids from sse_channel's values (src/event.hpp parse_channels, and
// split_channels, its comma-list form), compared with a reference that
// splits each value on the separator first, then percent-decodes each item
// once, then judges the items in order. And the properties the channel
// injection fix (issue 8, item 1) rests on:
//   - without `split=`, a value is one id or an error, never several;
//   - without `unescape`, every id is bytes of a value, as they came;
//   - with `unescape`, an escaped separator never splits.
//
// Input: the values (cut by FuzzedDataProvider), the rule from the end.

#include <fuzzer/FuzzedDataProvider.h>

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

int hex(char c) {
    static const std::string_view digits = "0123456789abcdef";
    char lower = (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
    size_t at = digits.find(lower);
    return at == std::string_view::npos ? -1 : static_cast<int>(at);
}

sse::channels_error reference(const std::vector<std::string> &values,
                              sse::channel_rule rule, size_t max,
                              std::vector<std::string> &out) {
    for (const auto &v : values) {
        std::vector<std::string> items(1);
        for (char c : v) {
            if (rule.split != '\0' && c == rule.split) {
                items.emplace_back();
            } else {
                items.back() += c;
            }
        }
        for (auto item : items) {
            if (rule.unescape) {
                std::string d;
                for (size_t i = 0; i < item.size(); i++) {
                    if (item[i] != '%') {
                        d += item[i];
                    } else if (i + 2 < item.size() && hex(item[i + 1]) >= 0 &&
                               hex(item[i + 2]) >= 0) {
                        d += static_cast<char>(hex(item[i + 1]) * 16 +
                                               hex(item[i + 2]));
                        i += 2;
                    } else {
                        return sse::channels_error::bad_escape;
                    }
                }
                item = d;
            }
            if (item.empty()) {
                return sse::channels_error::empty;
            }
            if (item.size() > sse::max_channel_id_len) {
                return sse::channels_error::too_long;
            }
            for (unsigned char c : item) {
                if (!reference_char(c)) {
                    return sse::channels_error::bad_char;
                }
            }
            bool seen = false;
            for (const auto &o : out) {
                seen = seen || o == item;
            }
            if (!seen) {
                if (out.size() == max) {
                    return sse::channels_error::too_many;
                }
                out.push_back(item);
            }
        }
    }
    return sse::channels_error::none;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    FuzzedDataProvider in(bytes, size);
    sse::channel_rule rule;
    static const char seps[] = {'\0', ',', ' ', ';', '|', '%', 'a'};
    rule.split = seps[in.ConsumeIntegralInRange<size_t>(0, sizeof(seps) - 1)];
    rule.unescape = in.ConsumeBool();
    size_t max = in.ConsumeBool() ? sse::max_channels_per_subscriber
                                  : in.ConsumeIntegralInRange<size_t>(1, 4);
    size_t nvalues = in.ConsumeIntegralInRange<size_t>(1, 3);
    std::vector<std::string> values;
    for (size_t i = 0; i + 1 < nvalues; i++) {
        values.push_back(in.ConsumeRandomLengthString(400));
    }
    values.push_back(in.ConsumeRemainingBytesAsString());
    std::vector<std::string_view> views(values.begin(), values.end());

    std::vector<std::string> got{"stale"}, want;  // got must be cleared
    auto err = sse::parse_channels(views, rule, got, max);
    FUZZ_CHECK(err == reference(values, rule, max, want));
    FUZZ_CHECK(sse::describe(err) != nullptr);

    // The comma-list form agrees with parse_channels on one value.
    std::vector<std::string_view> listed{"stale"};
    std::vector<std::string> parsed;
    auto lerr = sse::split_channels(values[0], listed);
    FUZZ_CHECK(lerr == sse::parse_channels({values[0]}, {',', false}, parsed));
    if (lerr == sse::channels_error::none) {
        FUZZ_CHECK(listed.size() == parsed.size());
        for (size_t i = 0; i < listed.size(); i++) {
            FUZZ_CHECK(listed[i] == parsed[i]);
            // Views into the list, not copies.
            FUZZ_CHECK(listed[i].data() >= values[0].data() &&
                       listed[i].data() + listed[i].size() <=
                           values[0].data() + values[0].size());
        }
    }

    if (err != sse::channels_error::none) {
        return 0;
    }
    FUZZ_CHECK(got == want);
    FUZZ_CHECK(got.size() <= max);
    for (const auto &id : got) {
        FUZZ_CHECK(sse::valid_channel_id(id));
        if (!rule.unescape) {
            bool inside = false;
            for (const auto &v : values) {
                inside = inside || v.find(id) != std::string::npos;
            }
            FUZZ_CHECK(inside);
        }
    }
    if (rule.split == '\0') {
        FUZZ_CHECK(got.size() <= values.size());
        if (!rule.unescape) {
            for (const auto &id : got) {
                bool whole = false;
                for (const auto &v : values) {
                    whole = whole || v == id;
                }
                FUZZ_CHECK(whole);
            }
        }
    }
    if (rule.unescape && rule.split != '\0' && rule.split != '%') {
        // An escaped separator stays in its item (and then fails as a
        // byte no id may hold): never a split.
        char esc[4];
        std::snprintf(esc, sizeof(esc), "%%%02X",
                      static_cast<unsigned char>(rule.split));
        std::vector<std::string> one;
        std::string v = "a" + std::string(esc) + "b";
        auto e = sse::parse_channels({v}, rule, one, max);
        FUZZ_CHECK(e != sse::channels_error::none ||
                   (one.size() == 1 && one[0].size() == 3));
    }
    for (unsigned c = 0; c < 256; c++) {
        FUZZ_CHECK(sse::is_channel_char(static_cast<unsigned char>(c)) ==
                   reference_char(static_cast<unsigned char>(c)));
    }
    return 0;
}
