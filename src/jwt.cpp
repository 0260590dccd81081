// JWT verification with libcrypto's EVP interface (OpenSSL 3) and
// nlohmann::json. Every entry point catches what the JSON library or the
// allocator throws: callers see a reason string, never an exception.
#include "jwt.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <cmath>
#include <nlohmann/json.hpp>

namespace sse::jwt {

using json = nlohmann::json;

namespace {

struct pkey_free {
    void operator()(EVP_PKEY *p) const { EVP_PKEY_free(p); }
};
struct md_ctx_free {
    void operator()(EVP_MD_CTX *p) const { EVP_MD_CTX_free(p); }
};
struct pkey_ctx_free {
    void operator()(EVP_PKEY_CTX *p) const { EVP_PKEY_CTX_free(p); }
};
struct bn_free {
    void operator()(BIGNUM *p) const { BN_free(p); }
};
struct bld_free {
    void operator()(OSSL_PARAM_BLD *p) const { OSSL_PARAM_BLD_free(p); }
};
struct params_free {
    void operator()(OSSL_PARAM *p) const { OSSL_PARAM_free(p); }
};
struct ecdsa_sig_free {
    void operator()(ECDSA_SIG *p) const { ECDSA_SIG_free(p); }
};

using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

// One supported "alg".
struct algorithm {
    const char *name;
    family fam;
    const EVP_MD *(*md)();  // nullptr for EdDSA
    size_t ec_len;          // ECDSA: bytes of r (and of s)
};

const EVP_MD *no_md() { return nullptr; }

const algorithm algorithms[] = {
    {"HS256", family::hmac, EVP_sha256, 0},
    {"HS384", family::hmac, EVP_sha384, 0},
    {"HS512", family::hmac, EVP_sha512, 0},
    {"RS256", family::rsa, EVP_sha256, 0},
    {"RS384", family::rsa, EVP_sha384, 0},
    {"RS512", family::rsa, EVP_sha512, 0},
    {"PS256", family::rsa_pss, EVP_sha256, 0},
    {"PS384", family::rsa_pss, EVP_sha384, 0},
    {"PS512", family::rsa_pss, EVP_sha512, 0},
    {"ES256", family::ecdsa, EVP_sha256, 32},
    {"ES384", family::ecdsa, EVP_sha384, 48},
    {"EdDSA", family::eddsa, no_md, 0},
};

const algorithm *find_algorithm(std::string_view name) {
    for (const auto &a : algorithms) {
        if (name == a.name) {
            return &a;
        }
    }
    return nullptr;
}

int b64url_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

}  // namespace

std::optional<std::string> base64url_decode(std::string_view in) {
    if (in.size() % 4 == 1) {
        return std::nullopt;
    }
    std::string out;
    out.reserve(in.size() / 4 * 3 + 2);
    uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : in) {
        int v = b64url_value(c);
        if (v < 0) {
            return std::nullopt;
        }
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    // The leftover bits of a canonical encoding are zero.
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        return std::nullopt;
    }
    return out;
}

struct key {
    std::string kid;     // empty: none
    std::string alg;     // empty: any alg of its family
    family fam;          // hmac for "oct"; rsa for RSA (also rsa_pss)
    std::string secret;  // oct
    size_t ec_len = 0;   // EC: coordinate bytes (32 P-256, 48 P-384)
    pkey_ptr pkey;       // RSA, EC, OKP

    bool fits(const algorithm &a) const {
        if (!alg.empty() && alg != a.name) {
            return false;
        }
        switch (a.fam) {
            case family::hmac:
                return fam == family::hmac;
            case family::rsa:
            case family::rsa_pss:
                return fam == family::rsa;
            case family::ecdsa:
                return fam == family::ecdsa && ec_len == a.ec_len;
            case family::eddsa:
                return fam == family::eddsa;
        }
        return false;
    }
};

namespace {

// A required base64url member of a JWK.
std::optional<std::string> member(const json &k, const char *name,
                                  std::string &err) {
    auto it = k.find(name);
    if (it == k.end() || !it->is_string()) {
        err = std::string("\"") + name + "\" is missing or not a string";
        return std::nullopt;
    }
    auto v = base64url_decode(it->get_ref<const std::string &>());
    if (!v || v->empty()) {
        err = std::string("\"") + name + "\" is not base64url";
        return std::nullopt;
    }
    return v;
}

BIGNUM *to_bn(const std::string &bytes) {
    return BN_bin2bn(reinterpret_cast<const unsigned char *>(bytes.data()),
                     static_cast<int>(bytes.size()), nullptr);
}

pkey_ptr from_params(const char *type, OSSL_PARAM *params) {
    std::unique_ptr<EVP_PKEY_CTX, pkey_ctx_free> ctx(
        EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    EVP_PKEY *p = nullptr;
    if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
        EVP_PKEY_fromdata(ctx.get(), &p, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        return nullptr;
    }
    pkey_ptr key(p);
    // fromdata takes any bytes; make sure an EC point is on its curve.
    std::unique_ptr<EVP_PKEY_CTX, pkey_ctx_free> check(
        EVP_PKEY_CTX_new_from_pkey(nullptr, p, nullptr));
    if (!check || EVP_PKEY_public_check(check.get()) != 1) {
        return nullptr;
    }
    return key;
}

bool load_rsa(const json &k, key &out, std::string &err) {
    auto n = member(k, "n", err);
    if (!n) return false;
    auto e = member(k, "e", err);
    if (!e) return false;
    std::unique_ptr<BIGNUM, bn_free> bn(to_bn(*n)), be(to_bn(*e));
    if (!bn || !be) {
        err = "out of memory";
        return false;
    }
    if (BN_num_bits(bn.get()) < 2048) {
        err = "RSA modulus shorter than 2048 bits";
        return false;
    }
    std::unique_ptr<OSSL_PARAM_BLD, bld_free> bld(OSSL_PARAM_BLD_new());
    if (!bld ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn.get()) ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, be.get())) {
        err = "out of memory";
        return false;
    }
    std::unique_ptr<OSSL_PARAM, params_free> params(
        OSSL_PARAM_BLD_to_param(bld.get()));
    out.pkey = params ? from_params("RSA", params.get()) : nullptr;
    if (!out.pkey) {
        err = "not a valid RSA public key";
        return false;
    }
    out.fam = family::rsa;
    return true;
}

bool load_ec(const json &k, key &out, std::string &err) {
    auto crv = k.find("crv");
    if (crv == k.end() || !crv->is_string()) {
        err = "\"crv\" is missing or not a string";
        return false;
    }
    const std::string &c = crv->get_ref<const std::string &>();
    const char *group;
    if (c == "P-256") {
        group = "P-256";
        out.ec_len = 32;
    } else if (c == "P-384") {
        group = "P-384";
        out.ec_len = 48;
    } else {
        err = "unsupported EC curve (P-256 and P-384 are)";
        return false;
    }
    auto x = member(k, "x", err);
    if (!x) return false;
    auto y = member(k, "y", err);
    if (!y) return false;
    if (x->size() != out.ec_len || y->size() != out.ec_len) {
        err = "\"x\" or \"y\" has the wrong length for " + c;
        return false;
    }
    std::string point = "\x04" + *x + *y;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                         const_cast<char *>(group), 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                          point.size()),
        OSSL_PARAM_construct_end()};
    out.pkey = from_params("EC", params);
    if (!out.pkey) {
        err = "not a valid " + c + " public key";
        return false;
    }
    out.fam = family::ecdsa;
    return true;
}

bool load_okp(const json &k, key &out, std::string &err) {
    auto crv = k.find("crv");
    if (crv == k.end() || !crv->is_string() || *crv != "Ed25519") {
        err = "unsupported OKP curve (Ed25519 is)";
        return false;
    }
    auto x = member(k, "x", err);
    if (!x) return false;
    if (x->size() != 32) {
        err = "\"x\" is not 32 bytes";
        return false;
    }
    out.pkey.reset(EVP_PKEY_new_raw_public_key(
        EVP_PKEY_ED25519, nullptr,
        reinterpret_cast<const unsigned char *>(x->data()), x->size()));
    if (!out.pkey) {
        err = "not a valid Ed25519 public key";
        return false;
    }
    out.fam = family::eddsa;
    return true;
}

bool load_oct(const json &k, key &out, std::string &err) {
    auto s = member(k, "k", err);
    if (!s) return false;
    // RFC 7518 3.2: at least as long as the smallest hash output.
    if (s->size() < 32) {
        err = "\"k\" is shorter than 32 bytes";
        return false;
    }
    out.secret = std::move(*s);
    out.fam = family::hmac;
    return true;
}

// Loads one JWK; false with err set, or true with out filled (out.fam
// unset and skip set for a key that is not for signatures).
bool load_key(const json &k, key &out, bool &skip, std::string &err) {
    skip = false;
    if (!k.is_object()) {
        err = "is not an object";
        return false;
    }
    auto use = k.find("use");
    if (use != k.end()) {
        if (!use->is_string()) {
            err = "\"use\" is not a string";
            return false;
        }
        if (*use == "enc") {
            skip = true;
            return true;
        }
        if (*use != "sig") {
            err = "\"use\" is neither \"sig\" nor \"enc\"";
            return false;
        }
    }
    auto kid = k.find("kid");
    if (kid != k.end()) {
        if (!kid->is_string()) {
            err = "\"kid\" is not a string";
            return false;
        }
        out.kid = kid->get<std::string>();
    }
    auto kty = k.find("kty");
    if (kty == k.end() || !kty->is_string()) {
        err = "\"kty\" is missing or not a string";
        return false;
    }
    const std::string &t = kty->get_ref<const std::string &>();
    bool ok;
    if (t == "oct") {
        ok = load_oct(k, out, err);
    } else if (t == "RSA") {
        ok = load_rsa(k, out, err);
    } else if (t == "EC") {
        ok = load_ec(k, out, err);
    } else if (t == "OKP") {
        ok = load_okp(k, out, err);
    } else {
        err = "unsupported \"kty\" (oct, RSA, EC and OKP are)";
        return false;
    }
    if (!ok) {
        return false;
    }
    auto alg = k.find("alg");
    if (alg != k.end()) {
        if (!alg->is_string()) {
            err = "\"alg\" is not a string";
            return false;
        }
        const algorithm *a = find_algorithm(alg->get<std::string>());
        out.alg = alg->get<std::string>();
        if (a == nullptr || !out.fits(*a)) {
            err = "\"alg\" is unsupported or does not fit \"kty\"";
            return false;
        }
    }
    return true;
}

}  // namespace

key_set::key_set() = default;
key_set::~key_set() = default;

std::string key_set::load(std::string_view text) noexcept {
    try {
        keys_.clear();
        json doc = json::parse(text.begin(), text.end(), nullptr, false);
        if (doc.is_discarded()) {
            return "not valid JSON";
        }
        if (!doc.is_object()) {
            return "not a JWK Set (a JSON object with \"keys\")";
        }
        auto ks = doc.find("keys");
        if (ks == doc.end() || !ks->is_array()) {
            return "\"keys\" is missing or not an array";
        }
        size_t i = 0;
        for (const auto &k : *ks) {
            auto out = std::make_unique<key>();
            bool skip;
            std::string err;
            if (!load_key(k, *out, skip, err)) {
                std::string where = "key " + std::to_string(i);
                if (!out->kid.empty()) {
                    where += " (kid \"" + out->kid + "\")";
                }
                keys_.clear();
                return where + ": " + err;
            }
            if (!skip) {
                keys_.push_back(std::move(out));
            }
            i++;
        }
        if (keys_.empty()) {
            return "no signature key in \"keys\"";
        }
        return {};
    } catch (const std::exception &e) {
        keys_.clear();
        return std::string("cannot load: ") + e.what();
    }
}

namespace {

bool verify_hmac(const key &k, const algorithm &a, std::string_view input,
                 const std::string &sig) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (HMAC(a.md(), k.secret.data(), static_cast<int>(k.secret.size()),
             reinterpret_cast<const unsigned char *>(input.data()),
             input.size(), mac, &len) == nullptr) {
        return false;
    }
    return sig.size() == len && CRYPTO_memcmp(mac, sig.data(), len) == 0;
}

// JOSE's ECDSA signature is r || s, each of the curve's size; libcrypto
// verifies the DER form.
bool ecdsa_der(const algorithm &a, const std::string &sig, std::string &der) {
    if (sig.size() != 2 * a.ec_len) {
        return false;
    }
    auto *p = reinterpret_cast<const unsigned char *>(sig.data());
    std::unique_ptr<ECDSA_SIG, ecdsa_sig_free> s(ECDSA_SIG_new());
    BIGNUM *r = BN_bin2bn(p, static_cast<int>(a.ec_len), nullptr);
    BIGNUM *ss = BN_bin2bn(p + a.ec_len, static_cast<int>(a.ec_len), nullptr);
    if (!s || !r || !ss || !ECDSA_SIG_set0(s.get(), r, ss)) {
        BN_free(r);
        BN_free(ss);
        return false;
    }
    int n = i2d_ECDSA_SIG(s.get(), nullptr);
    if (n <= 0) {
        return false;
    }
    der.resize(static_cast<size_t>(n));
    auto *q = reinterpret_cast<unsigned char *>(der.data());
    return i2d_ECDSA_SIG(s.get(), &q) == n;
}

bool verify_pkey(const key &k, const algorithm &a, std::string_view input,
                 const std::string &sig) {
    std::string der;
    const std::string *s = &sig;
    if (a.fam == family::ecdsa) {
        if (!ecdsa_der(a, sig, der)) {
            return false;
        }
        s = &der;
    }
    std::unique_ptr<EVP_MD_CTX, md_ctx_free> ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX *pctx = nullptr;
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, a.md(), nullptr,
                                     k.pkey.get()) != 1) {
        return false;
    }
    if (a.fam == family::rsa_pss &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0)) {
        return false;
    }
    return EVP_DigestVerify(
               ctx.get(), reinterpret_cast<const unsigned char *>(s->data()),
               s->size(), reinterpret_cast<const unsigned char *>(input.data()),
               input.size()) == 1;
}

bool verify_with(const key &k, const algorithm &a, std::string_view input,
                 const std::string &sig) {
    return a.fam == family::hmac ? verify_hmac(k, a, input, sig)
                                 : verify_pkey(k, a, input, sig);
}

// A NumericDate: an integer or a finite number of seconds.
bool numeric_date(const json &v, int64_t &out) {
    if (v.is_number_unsigned()) {
        if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
            return false;
        }
        out = static_cast<int64_t>(v.get<uint64_t>());
        return true;
    }
    if (v.is_number_integer()) {
        out = v.get<int64_t>();
        return true;
    }
    if (v.is_number_float()) {
        double d = v.get<double>();
        if (!std::isfinite(d) || d > 9.2e18 || d < -9.2e18) {
            return false;
        }
        out = static_cast<int64_t>(std::floor(d));
        return true;
    }
    return false;
}

bool string_list(const json &v, std::vector<std::string> &out) {
    if (!v.is_array()) {
        return false;
    }
    for (const auto &e : v) {
        if (!e.is_string()) {
            return false;
        }
        out.push_back(e.get<std::string>());
    }
    return true;
}

// Claims are flat; a deeply nested document is refused before parsing so
// that no recursion (parse, dump, destruction) grows with the input.
constexpr int max_json_depth = 16;

bool too_deep(const std::string &text) {
    int depth = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_json_depth) {
                return true;
            }
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return false;
}

result fail(const char *why) {
    result r;
    r.error = why;
    return r;
}

result check_claims(const json &p, const options &opt) {
    result r;
    if (!p.is_object()) {
        return fail("payload is not a JSON object");
    }
    int64_t exp = 0, nbf = 0;
    auto it = p.find("exp");
    if (it != p.end()) {
        if (!numeric_date(*it, exp)) {
            return fail("\"exp\" is not a number");
        }
        // Saturating: a huge exp or leeway never wraps around.
        if (exp <= INT64_MAX - opt.leeway && opt.now >= exp + opt.leeway) {
            return fail("token expired");
        }
        r.c.exp = exp;
    }
    it = p.find("nbf");
    if (it != p.end()) {
        if (!numeric_date(*it, nbf)) {
            return fail("\"nbf\" is not a number");
        }
        if (opt.now < INT64_MAX - opt.leeway && opt.now + opt.leeway < nbf) {
            return fail("token not valid yet (nbf)");
        }
    }
    it = p.find("iat");
    int64_t iat;
    if (it != p.end() && !numeric_date(*it, iat)) {
        return fail("\"iat\" is not a number");
    }
    if (!opt.iss.empty()) {
        it = p.find("iss");
        if (it == p.end() || !it->is_string() || *it != opt.iss) {
            return fail("wrong or missing issuer (iss)");
        }
    }
    if (!opt.aud.empty()) {
        it = p.find("aud");
        bool found = false;
        if (it != p.end() && it->is_string()) {
            found = *it == opt.aud;
        } else if (it != p.end() && it->is_array()) {
            for (const auto &a : *it) {
                found = found || (a.is_string() && a == opt.aud);
            }
        }
        if (!found) {
            return fail("wrong or missing audience (aud)");
        }
    }
    it = p.find("sub");
    if (it != p.end()) {
        if (!it->is_string()) {
            return fail("\"sub\" is not a string");
        }
        r.c.sub = it->get<std::string>();
    }
    it = p.find("sse");
    if (it != p.end()) {
        if (!it->is_object()) {
            return fail("\"sse\" claim is not an object");
        }
        auto s = it->find("subscribe");
        if (s != it->end() && !string_list(*s, r.c.subscribe)) {
            return fail("\"sse\".\"subscribe\" is not a list of strings");
        }
        s = it->find("publish");
        if (s != it->end() && !string_list(*s, r.c.publish)) {
            return fail("\"sse\".\"publish\" is not a list of strings");
        }
    }
    for (const auto &[name, v] : p.items()) {
        r.c.all.emplace_back(
            name, v.is_string()
                      ? v.get<std::string>()
                      : v.dump(-1, ' ', false, json::error_handler_t::replace));
    }
    r.ok = true;
    return r;
}

result verify_token(const key_set &keys, std::string_view token,
                    const options &opt) {
    if (token.empty()) {
        return fail("token is empty");
    }
    if (token.size() > max_token_len) {
        return fail("token is too long");
    }
    size_t d1 = token.find('.');
    size_t d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
    if (d2 == std::string_view::npos ||
        token.find('.', d2 + 1) != std::string_view::npos) {
        return fail("token is not three dot-separated parts");
    }
    auto head_raw = base64url_decode(token.substr(0, d1));
    auto body_raw = base64url_decode(token.substr(d1 + 1, d2 - d1 - 1));
    auto sig = base64url_decode(token.substr(d2 + 1));
    if (!head_raw || !body_raw || !sig) {
        return fail("token is not base64url");
    }
    if (too_deep(*head_raw) || too_deep(*body_raw)) {
        return fail("JSON nested too deeply");
    }
    json head = json::parse(*head_raw, nullptr, false);
    if (head.is_discarded() || !head.is_object()) {
        return fail("header is not a JSON object");
    }
    auto alg_it = head.find("alg");
    if (alg_it == head.end() || !alg_it->is_string()) {
        return fail("header has no \"alg\"");
    }
    const std::string &alg_name = alg_it->get_ref<const std::string &>();
    if (alg_name == "none" || alg_name.empty()) {
        return fail("unsigned tokens (alg none) are refused");
    }
    const algorithm *alg = find_algorithm(alg_name);
    if (alg == nullptr) {
        return fail("unsupported alg");
    }
    if (head.contains("crit")) {
        return fail("header has \"crit\" extensions");
    }
    const std::string *kid = nullptr;
    auto kid_it = head.find("kid");
    if (kid_it != head.end()) {
        if (!kid_it->is_string()) {
            return fail("header \"kid\" is not a string");
        }
        kid = &kid_it->get_ref<const std::string &>();
    }
    if (sig->empty()) {
        return fail("signature is empty");
    }

    std::string_view input = token.substr(0, d2);
    bool kid_known = false, fitting = false;
    for (const auto &k : keys.keys()) {
        if (kid != nullptr && k->kid != *kid) {
            continue;
        }
        kid_known = true;
        if (!k->fits(*alg)) {
            continue;
        }
        fitting = true;
        if (verify_with(*k, *alg, input, *sig)) {
            json payload = json::parse(*body_raw, nullptr, false);
            if (payload.is_discarded()) {
                return fail("payload is not JSON");
            }
            return check_claims(payload, opt);
        }
    }
    if (!kid_known) {
        return fail("unknown kid");
    }
    if (!fitting) {
        return fail(kid != nullptr ? "the key of this kid does not fit alg"
                                   : "no key fits alg");
    }
    return fail("bad signature");
}

}  // namespace

result verify(const key_set &keys, std::string_view token,
              const options &opt) noexcept {
    try {
        return verify_token(keys, token, opt);
    } catch (const std::bad_alloc &) {
        return fail("out of memory");
    } catch (...) {
        // The JSON library's exceptions carry input bytes: never echoed.
        return fail("malformed token");
    }
}

bool pattern_matches(std::string_view pattern, std::string_view channel) {
    if (!pattern.empty() && pattern.back() == '*') {
        pattern.remove_suffix(1);
        return channel.substr(0, pattern.size()) == pattern;
    }
    return pattern == channel;
}

bool claims::allowed(right r, std::string_view channel) const {
    for (const auto &p : r == right::subscribe ? subscribe : publish) {
        if (pattern_matches(p, channel)) {
            return true;
        }
    }
    return false;
}

const std::string *claims::claim(std::string_view name) const {
    for (const auto &[n, v] : all) {
        if (n == name) {
            return &v;
        }
    }
    return nullptr;
}

}  // namespace sse::jwt
