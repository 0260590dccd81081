// JSON Web Token verification (RFC 7515/7519) against a JWK Set (RFC 7517),
// with OpenSSL's libcrypto: no nginx include. The glue loads a key_set once
// at configuration time and calls verify() per request; nothing here throws
// (every failure is a one-line reason) and nothing touches shared memory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sse::jwt {

// A token longer than this is refused before any decoding.
constexpr size_t max_token_len = 16384;

// Strict base64url (RFC 4648 section 5): no padding, no whitespace, unused
// trailing bits zero. nullopt when malformed.
std::optional<std::string> base64url_decode(std::string_view in);

enum class family { hmac, rsa, rsa_pss, ecdsa, eddsa };

struct key;  // one verification key (defined in jwt.cpp)

// A JWK Set of verification keys. Loaded once (configuration time), then
// read-only: safe to share between requests of one process.
class key_set {
public:
    key_set();
    ~key_set();
    key_set(const key_set &) = delete;
    key_set &operator=(const key_set &) = delete;

    // Parses a JWK Set ({"keys": [...]}); empty string on success, else a
    // one-line reason naming the key (by index and kid). Keys with
    // "use": "enc" are skipped; any other key it cannot use is an error.
    std::string load(std::string_view json) noexcept;

    size_t size() const { return keys_.size(); }
    const std::vector<std::unique_ptr<key>> &keys() const { return keys_; }

private:
    std::vector<std::unique_ptr<key>> keys_;
};

enum class right { subscribe, publish };

// What a verified token says.
struct claims {
    std::string sub;
    int64_t exp = 0;                     // seconds since the epoch; 0: no "exp"
    std::vector<std::string> subscribe;  // patterns of "sse"."subscribe"
    std::vector<std::string> publish;    // patterns of "sse"."publish"
    // Every top-level claim: strings as they are, other values as JSON.
    std::vector<std::pair<std::string, std::string>> all;

    // A pattern is an exact channel id, or a prefix ending with '*'.
    bool allowed(right r, std::string_view channel) const;
    const std::string *claim(std::string_view name) const;
};

struct options {
    int64_t now = 0;     // seconds since the epoch
    int64_t leeway = 0;  // seconds of clock skew allowed for exp and nbf
    std::string aud;     // required audience; empty: not checked
    std::string iss;     // required issuer; empty: not checked
};

struct result {
    bool ok = false;
    std::string error;  // one line, never the token's own bytes
    claims c;
};

// Verifies a compact JWS: header, signature with a key of the set that
// fits the token's "alg" (and "kid" when given), then exp/nbf/aud/iss and
// the shape of the "sse" claim. "alg": "none", a key of another family
// than the alg (an RSA key is never an HMAC secret), and any "crit" header
// are refused.
result verify(const key_set &keys, std::string_view token,
              const options &opt) noexcept;

bool pattern_matches(std::string_view pattern, std::string_view channel);

}  // namespace sse::jwt
