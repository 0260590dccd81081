// Who is connected: the sse_unsubscribe_request hook (a fire-and-forget
// subrequest when a subscriber leaves) and sse_presence_channel (join and
// leave events published by the module itself into a companion channel,
// kept right when a worker dies).
#include "ngx_http_sse.hpp"

#include <memory>
#include <new>

// ---------------------------------------------------------------- publish

bool ngx_http_sse_publish_internal(ngx_http_sse_zone_t *z,
                                   std::string_view channel,
                                   std::string_view event,
                                   std::string_view data,
                                   ngx_uint_t buffer_length, ngx_msec_t ttl) {
    ngx_http_sse_zone_worker_t *zw = ngx_http_sse_zone_worker(z);
    if (zw == NULL || zw->slot == sse::no_slot) {
        return false;
    }
    if (z->redis != NULL) {
        // Seqs are Redis's: through Redis like any publish (no answer to
        // wait for), never committed here with a seq of our own.
        std::string err;
        try {
            return ngx_http_sse_redis_publish(zw, channel, {{event, data}},
                                              buffer_length, ttl, NULL, NULL,
                                              &err) != NULL;
        } catch (const std::exception &) {
            return false;
        }
    }
    ngx_http_sse_stored_t out;
    try {
        return ngx_http_sse_store_local(z, channel, {{event, data}},
                                        buffer_length, ttl,
                                        &out) == sse::publish_status::ok &&
               out.published == 1;
    } catch (const std::exception &) {
        return false;
    }
}

// ---------------------------------------------------------------- registry

// Which presence channel a channel's events go to, in the zone, so that
// any worker can publish the "leave" of a dead worker's subscribers. One
// entry per channel with subscribers (the last presence name given wins);
// removed when its last subscriber leaves. Lives under the zone's lock.
#define NGX_HTTP_SSE_PRESENCE_BUCKETS 1024

struct ngx_http_sse_presence_entry_t {
    ngx_http_sse_presence_entry_t *next;
    uint32_t hash;
    uint32_t buffer_length;
    int64_t ttl;
    uint16_t chan_len;
    uint16_t pres_len;
    char *bytes() { return reinterpret_cast<char *>(this + 1); }
    std::string_view chan() { return {bytes(), chan_len}; }
    std::string_view pres() { return {bytes() + chan_len, pres_len}; }
};

struct ngx_http_sse_presence_registry_t {
    ngx_http_sse_presence_entry_t *buckets[NGX_HTTP_SSE_PRESENCE_BUCKETS];
};

// The zone's table of presence records, made on first use (a zone without
// presence spends nothing on it). In the store's arena like everything
// else, so that a worker killed while changing it leaves nothing a repair
// cannot mend. NULL when absent (or the zone is full): presence then has
// no crash recovery, nothing else.
static ngx_http_sse_presence_registry_t *ngx_http_sse_presence_registry(
    sse::store &s, bool create) {
    auto *reg = static_cast<ngx_http_sse_presence_registry_t *>(s.glue_data());
    if (reg == NULL && create) {
        reg = static_cast<ngx_http_sse_presence_registry_t *>(s.aux_alloc(
            sizeof(ngx_http_sse_presence_registry_t), ngx_current_msec));
        if (reg != NULL) {
            ngx_memzero(reg, sizeof(ngx_http_sse_presence_registry_t));
            s.set_glue_data(reg);
        }
    }
    return reg;
}

static ngx_http_sse_presence_entry_t **ngx_http_sse_presence_find(
    ngx_http_sse_presence_registry_t *reg, std::string_view chan) {
    uint32_t h = sse::hash_channel_id(chan);
    ngx_http_sse_presence_entry_t **p =
        &reg->buckets[h % NGX_HTTP_SSE_PRESENCE_BUCKETS];
    while (*p != NULL && ((*p)->hash != h || (*p)->chan() != chan)) {
        p = &(*p)->next;
    }
    return p;
}

// Call inside a session (s).
static void ngx_http_sse_presence_remember(sse::store &s,
                                           std::string_view chan,
                                           std::string_view pres,
                                           ngx_http_sse_loc_conf_t *lcf) {
    ngx_http_sse_presence_registry_t *reg =
        ngx_http_sse_presence_registry(s, true);
    if (reg == NULL) {
        return;
    }
    ngx_http_sse_presence_entry_t **p = ngx_http_sse_presence_find(reg, chan);
    if (*p != NULL && (*p)->pres() == pres) {
        return;
    }
    auto *e = static_cast<ngx_http_sse_presence_entry_t *>(s.aux_alloc(
        sizeof(ngx_http_sse_presence_entry_t) + chan.size() + pres.size(),
        ngx_current_msec));
    if (e == NULL) {
        return;  // a full zone: no leave for this channel after a crash
    }
    e->hash = sse::hash_channel_id(chan);
    e->buffer_length = lcf->buffer_length;
    e->ttl = lcf->message_ttl;
    e->chan_len = chan.size();
    e->pres_len = pres.size();
    ngx_memcpy(e->bytes(), chan.data(), chan.size());
    ngx_memcpy(e->bytes() + chan.size(), pres.data(), pres.size());
    // Linked before the old one is freed: a kill in between leaves a
    // block on the zone's list, never a link to freed memory.
    ngx_http_sse_presence_entry_t *old = *p;
    e->next = old != NULL ? old->next : NULL;
    *p = e;
    if (old != NULL) {
        s.aux_free(old);
    }
}

// Call inside a session (s).
static void ngx_http_sse_presence_forget(sse::store &s,
                                         std::string_view chan) {
    ngx_http_sse_presence_registry_t *reg =
        ngx_http_sse_presence_registry(s, false);
    if (reg == NULL) {
        return;
    }
    ngx_http_sse_presence_entry_t **p = ngx_http_sse_presence_find(reg, chan);
    if (*p != NULL) {
        ngx_http_sse_presence_entry_t *e = *p;
        *p = e->next;
        s.aux_free(e);
    }
}

// ---------------------------------------------------------------- events

static std::string ngx_http_sse_presence_json(const std::string *who,
                                              std::string_view chan,
                                              uint32_t count) {
    std::string json = "{\"sub\":";
    if (who != NULL) {
        ngx_http_sse_json_string(json, *who);
    } else {
        json += "null";
    }
    json += ",\"channel\":";
    ngx_http_sse_json_string(json, chan);
    json += ",\"count\":" + std::to_string(count) + "}";
    return json;
}

// An event whose count waits for the other machines' (a Redis zone).
struct ngx_http_sse_presence_pending_t {
    ngx_http_sse_zone_t *z;
    std::string pres, event, chan, who;
    bool anonymous;
    uint32_t count;  // this machine's
    ngx_uint_t buffer_length;
    ngx_msec_t ttl;
};

static void ngx_http_sse_presence_counted(void *data, bool run,
                                          int64_t others) {
    std::unique_ptr<ngx_http_sse_presence_pending_t> p(
        static_cast<ngx_http_sse_presence_pending_t *>(data));
    if (!run) {
        return;  // the worker exits
    }
    try {
        if (!ngx_http_sse_publish_internal(
                p->z, p->pres, p->event,
                ngx_http_sse_presence_json(
                    p->anonymous ? NULL : &p->who, p->chan,
                    p->count + (uint32_t)ngx_max(others, 0)),
                p->buffer_length, p->ttl)) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "sse: presence %s event not published",
                          p->event.c_str());
        }
    } catch (const std::exception &) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sse: presence event not published");
    }
}

// One join or leave. In a Redis zone its count is the channel's on every
// live machine: this machine's (exact) and the others' as Redis holds
// them, asked first on the connection the event then goes by, so that a
// worker's events keep their order. False when not sent.
static bool ngx_http_sse_presence_send(ngx_http_sse_zone_t *z,
                                       std::string_view pres, const char *event,
                                       const std::string *who,
                                       std::string_view chan, uint32_t count,
                                       ngx_uint_t buffer_length,
                                       ngx_msec_t ttl) {
    if (z->redis != NULL) {
        try {
            auto p = std::make_unique<ngx_http_sse_presence_pending_t>();
            p->z = z;
            p->pres.assign(pres);
            p->event = event;
            p->chan.assign(chan);
            p->anonymous = who == NULL;
            if (who != NULL) {
                p->who = *who;
            }
            p->count = count;
            p->buffer_length = buffer_length;
            p->ttl = ttl;
            if (ngx_http_sse_redis_count_read(
                    z, chan, ngx_http_sse_presence_counted, p.get()) != NULL) {
                p.release();
                return true;
            }
        } catch (const std::exception &) {
            return false;
        }
        // Redis is known to be down: the publish says so.
    }
    return ngx_http_sse_publish_internal(
        z, pres, event, ngx_http_sse_presence_json(who, chan, count),
        buffer_length, ttl);
}

bool ngx_http_sse_presence_prepare(ngx_http_request_t *r,
                                   ngx_http_sse_subscriber_t *sub,
                                   ngx_int_t *answer) {
    ngx_http_sse_loc_conf_t *lcf = sub->lcf;
    if (lcf->presence_channel == NULL) {
        return true;
    }
    ngx_str_t v;
    if (ngx_http_complex_value(r, lcf->presence_channel, &v) != NGX_OK) {
        *answer = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (v.len == 0) {
        return true;  // no presence for this request
    }
    std::vector<std::string> parsed;
    sse::channels_error e =
        sse::parse_channels({{reinterpret_cast<char *>(v.data), v.len}},
                            sse::channel_rule{}, parsed, 1);
    if (e != sse::channels_error::none) {
        std::string why = "invalid sse_presence_channel: ";
        why += sse::describe(e);
        *answer = ngx_http_sse_error(r, NGX_HTTP_BAD_REQUEST, why);
        return false;
    }
    sub->presence = v;
    // Read now: r->pool is gone by the time the pool cleanup leaves.
    sub->who = ngx_http_sse_auth_sub(r);
    return true;
}

// One join or leave per channel of the subscriber, but none for the
// presence channel itself (a page may subscribe to both).
static void ngx_http_sse_presence_publish(
    ngx_http_sse_subscriber_t *sub, const char *event,
    const std::vector<std::pair<std::string, uint32_t>> &counts) {
    std::string_view pres(reinterpret_cast<char *>(sub->presence.data),
                          sub->presence.len);
    const std::string *who = sub->who;
    for (const auto &[chan, count] : counts) {
        if (chan.empty() || chan == pres) {
            continue;
        }
        if (!ngx_http_sse_presence_send(sub->zw->zone, pres, event, who, chan,
                                        count, sub->lcf->buffer_length,
                                        sub->lcf->message_ttl)) {
            ngx_log_error(NGX_LOG_WARN, sub->c->log, 0,
                          "sse: presence %s event not published", event);
        }
    }
}

void ngx_http_sse_presence_joined(ngx_http_sse_subscriber_t *sub) {
    if (sub->presence.len == 0) {
        return;
    }
    // Reserved now so that nothing allocates while the zone is locked.
    std::vector<std::pair<std::string, uint32_t>> counts(sub->nlinks);
    for (auto &c : counts) {
        c.first.reserve(sse::max_channel_id_len);
    }
    std::string_view pres(reinterpret_cast<char *>(sub->presence.data),
                          sub->presence.len);
    {
        auto s = ngx_http_sse_session(sub->zw->zone);
        for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
            sse::channel *ch = sub->chans[i];
            if (ch->id() == pres) {
                continue;  // counts[i] stays empty: skipped below
            }
            ngx_http_sse_presence_remember(*s, ch->id(), pres,
                                           sub->lcf);
            counts[i].first.assign(ch->id());
            counts[i].second = sse::store::subscribers(ch);
        }
    }
    ngx_http_sse_presence_publish(sub, "join", counts);
}

void ngx_http_sse_presence_leave(ngx_http_sse_subscriber_t *sub,
                                 ngx_http_sse_zone_worker_t *zw) {
    std::vector<std::pair<std::string, uint32_t>> counts;
    try {
        if (sub->presence.len != 0) {
            counts.resize(sub->nlinks);
            for (auto &c : counts) {
                c.first.reserve(sse::max_channel_id_len);
            }
        }
    } catch (const std::bad_alloc &) {
        counts.clear();  // leave anyway, without events
    }
    if (counts.empty()) {
        auto s = ngx_http_sse_session(zw->zone);
        ngx_http_sse_redis_count_touch_all(zw->zone, *s, sub->chans,
                                           sub->nlinks);
        s->leave(zw->slot, sub->chans, sub->nlinks, ngx_current_msec);
        return;
    }
    {
        auto s = ngx_http_sse_session(zw->zone);
        // Read before leave(), which may free a channel left empty.
        for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
            sse::channel *ch = sub->chans[i];
            uint32_t n = sse::store::subscribers(ch);
            counts[i].first.assign(ch->id());
            counts[i].second = n > 0 ? n - 1 : 0;
            if (counts[i].second == 0) {
                ngx_http_sse_presence_forget(*s, ch->id());
            }
        }
        ngx_http_sse_redis_count_touch_all(zw->zone, *s, sub->chans,
                                           sub->nlinks);
        s->leave(zw->slot, sub->chans, sub->nlinks, ngx_current_msec);
    }
    ngx_http_sse_presence_publish(sub, "leave", counts);
}

struct ngx_http_sse_presence_lost_t {
    ngx_http_sse_zone_t *z;
    std::string chan, pres;
    uint32_t count;
    ngx_uint_t buffer_length;
    ngx_msec_t ttl;
};

// Leaves found while this worker starts (it reaps before it has a slot to
// publish from): published once it is ready.
static std::vector<ngx_http_sse_presence_lost_t> ngx_http_sse_presence_later;
static bool ngx_http_sse_presence_ready;

static void ngx_http_sse_presence_publish_lost(
    std::vector<ngx_http_sse_presence_lost_t> &left) {
    // Who they were died with the process: "sub" is null.
    for (const auto &l : left) {
        if (!ngx_http_sse_presence_send(l.z, l.pres, "leave", NULL, l.chan,
                                        l.count, l.buffer_length, l.ttl)) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "sse: presence leave event not published");
        }
    }
    left.clear();
}

void ngx_http_sse_presence_worker_ready(bool ready) {
    ngx_http_sse_presence_ready = ready;
    if (ready) {
        ngx_http_sse_presence_publish_lost(ngx_http_sse_presence_later);
    } else {
        ngx_http_sse_presence_later.clear();
    }
}

void ngx_http_sse_presence_clear_slot(ngx_http_sse_zone_t *z, uint32_t slot,
                                      bool *cleared) {
    std::vector<ngx_http_sse_presence_lost_t> left;
    left.reserve(16);  // more is rare: a few channels per dead worker
    {
        auto s = ngx_http_sse_session(z);
        ngx_pid_t pid = s->slot_pid(slot);
        // Checked again under the lock: another worker may have reaped it.
        if (cleared != NULL && (pid == 0 || pid == ngx_pid ||
                                kill(pid, 0) != -1 || ngx_errno != NGX_ESRCH)) {
            *cleared = false;
            return;
        }
        ngx_http_sse_presence_registry_t *reg =
            ngx_http_sse_presence_registry(*s, false);
        if (reg != NULL) {
            for (auto [chan, count] : s->memberships(slot)) {
                ngx_http_sse_presence_entry_t **p =
                    ngx_http_sse_presence_find(reg, chan->id());
                if (*p == NULL) {
                    continue;
                }
                uint32_t n = sse::store::subscribers(chan);
                n -= ngx_min(n, count);
                left.push_back({z, std::string((*p)->chan()),
                                std::string((*p)->pres()), n,
                                (*p)->buffer_length, (ngx_msec_t)(*p)->ttl});
                if (n == 0) {
                    ngx_http_sse_presence_forget(*s, chan->id());
                }
            }
        }
        if (cleared != NULL) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "sse: clearing the slot of process %P, gone", pid);
            *cleared = true;
        }
        ngx_http_sse_redis_count_touch_slot(z, *s, slot);
        s->clear_slot(slot, ngx_current_msec);
    }
    if (ngx_http_sse_presence_ready) {
        ngx_http_sse_presence_publish_lost(left);
    } else {
        for (auto &l : left) {
            ngx_http_sse_presence_later.push_back(std::move(l));
        }
    }
}

// ---------------------------------------------------------------- hook

bool ngx_http_sse_unsubscribe_hook(ngx_http_sse_subscriber_t *sub) {
    ngx_http_request_t *r = sub->r;
    if (sub->lcf->unsubscribe_request.len == 0 || sub->hooked || r != r->main) {
        return false;
    }
    sub->hooked = 1;
    // In the background: it neither delays nor writes into the stream; the
    // subscriber's request (and connection) lives until it is answered.
    ngx_http_request_t *sr;
    if (ngx_http_subrequest(r, &sub->lcf->unsubscribe_request, NULL, &sr, NULL,
                            NGX_HTTP_SUBREQUEST_BACKGROUND) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sse: sse_unsubscribe_request not sent");
        return false;
    }
    // As for the subscribe hook: a fake body, and no response body wanted.
    sr->request_body = static_cast<ngx_http_request_body_t *>(
        ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t)));
    if (sr->request_body == NULL) {
        return true;  // counted by the subrequest: it finalizes itself
    }
    sr->header_only = 1;
    return true;
}

// The client is gone or broken, and the hook's subrequest still runs:
// nothing more is written, and the last reference (the subrequest's) closes
// the connection once it is answered.
void ngx_http_sse_close_after_hook(ngx_http_request_t *r) {
    r->connection->error = 1;
    r->keepalive = 0;
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
    ngx_http_finalize_request(r, NGX_DONE);
}

const char *ngx_http_sse_leave_reason(ngx_http_request_t *r) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        ngx_http_get_module_ctx(r->main, ngx_http_sse_module));
    if (sub == NULL || !sub->hooked) {
        return NULL;
    }
    if (sub->reason != NGX_HTTP_SSE_R_NONE) {
        return ngx_http_sse_reason_text(sub->reason);
    }
    return r->main->connection->timedout ? "client_timeout" : "client_closed";
}

// ---------------------------------------------------------------- config

// sse_subscribe_request and sse_unsubscribe_request: a URI or "off", into
// the ngx_str_t at cmd->offset.
char *ngx_http_sse_hook_uri(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
    auto *uri =
        reinterpret_cast<ngx_str_t *>(static_cast<char *>(conf) + cmd->offset);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (uri->data != NULL) {
        return (char *)"is duplicate";
    }
    if (ngx_strcmp(value[1].data, "off") == 0) {
        ngx_str_set(uri, "");
        return NGX_CONF_OK;
    }
    if (value[1].len == 0 || value[1].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "expected a URI starting with \"/\" or \"off\"",
                           &value[1], &cmd->name);
        return (char *)NGX_CONF_ERROR;
    }
    *uri = value[1];
    return NGX_CONF_OK;
}

char *ngx_http_sse_presence_channel(ngx_conf_t *cf, ngx_command_t *cmd,
                                    void *conf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(conf);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->presence_channel != NGX_CONF_UNSET_PTR) {
        return (char *)"is duplicate";
    }
    if (ngx_strcmp(value[1].data, "off") == 0) {
        lcf->presence_channel = NULL;
        return NGX_CONF_OK;
    }
    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"\" in \"%V\" directive, expected "
                           "a channel id (variables allowed) or \"off\"",
                           &cmd->name);
        return (char *)NGX_CONF_ERROR;
    }
    auto *cv = static_cast<ngx_http_complex_value_t *>(
        ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = cv;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return (char *)NGX_CONF_ERROR;
    }
    lcf->presence_channel = cv;
    return NGX_CONF_OK;
}
