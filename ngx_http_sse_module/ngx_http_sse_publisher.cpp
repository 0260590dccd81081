// sse_publish: backends publish, read, and delete channels.
#include "ngx_http_sse.hpp"

#include <deque>
#include <new>

#include "parser.hpp"

#define NGX_HTTP_SSE_PUBLISH_ALLOW "GET, HEAD, POST, PUT, DELETE, OPTIONS"

struct ngx_http_sse_redis_wait_t;

// Per publish request, in r->pool.
struct ngx_http_sse_publish_ctx_t {
    ngx_str_t channel;
    ngx_str_t event;
    sse::stream_parser *parser;  // a text/event-stream body; pool cleanup
    uint64_t epoch;
    uint64_t last_seq;
    uint64_t published;
    uint32_t subscribers;
    ngx_http_sse_redis_wait_t *wait;  // a Redis zone's publish under way
    sse::slot_set others;             // the other processes with subscribers
};

// A publish into a Redis zone: answered once Redis has stored the event
// (or could not). A stream's events go in groups, one group at a time
// (what was queued, up to NGX_HTTP_SSE_REDIS_GROUP_*), each stored whole
// or not at all, so that it stops at the first group that cannot be
// stored and knows how many were. Freed by r->pool's cleanup.
struct ngx_http_sse_redis_wait_t {
    ngx_http_request_t *r;
    void *inflight;  // the Redis command's handle
    size_t sending;  // events in flight
    std::deque<std::pair<std::string, std::string>> queue;  // event, data
    std::string error;     // Redis failed: 503 once nothing is in flight
    std::string fault;     // malformed stream: 400 once the queue drains
    uint32_t subscribers;  // a DELETE: this machine's, when it had the channel
    bool found;            // a DELETE: this machine had the channel
    bool remove;           // a DELETE
    bool stream;
    bool paused;  // the body is not read while the queue is long
};

// Events a streaming publish queues before it stops reading the body.
#define NGX_HTTP_SSE_REDIS_QUEUE_MAX 256

static ngx_int_t ngx_http_sse_publish(ngx_http_request_t *r);
static void ngx_http_sse_publish_body(ngx_http_request_t *r);
static void ngx_http_sse_stream_start(ngx_http_request_t *r);
static void ngx_http_sse_stream_read(ngx_http_request_t *r);

// Every refusal of a publisher request: a debug line (nginx is built
// --with-debug; "error_log FILE debug" shows it), then the one-line answer.
static ngx_int_t ngx_http_sse_refused(ngx_http_request_t *r, ngx_uint_t status,
                                      std::string_view why) {
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sse publish refused: %ui %*s", status, why.size(),
                   why.data());
    return ngx_http_sse_error(r, status, why);
}

ngx_int_t ngx_http_sse_publish_handler(ngx_http_request_t *r) {
    try {
        return ngx_http_sse_publish(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static std::string ngx_http_sse_id_json(uint64_t epoch, uint64_t seq) {
    if (seq == 0) {
        return "null";
    }
    char id[sse::max_event_id_len];
    size_t n = sse::format_event_id(id, {epoch, seq});
    return '"' + std::string(id, n) + '"';
}

static std::string ngx_http_sse_deleted_json(std::string_view id,
                                             uint32_t subscribers) {
    std::string json = "{\"channel\":";
    ngx_http_sse_json_string(json, id);
    return json +
           ",\"deleted\":true,\"subscribers\":" + std::to_string(subscribers) +
           "}\n";
}

void ngx_http_sse_release_deleted(ngx_http_sse_zone_t *z) {
    // A big channel's events are freed in bounded steps, the lock
    // released between them.
    for (int i = 0; i < 1024; i++) {
        auto s = ngx_http_sse_session(z);
        if (!s->release_deleted()) {
            break;
        }
    }
    // Every process ends the channel's streams.
    sse::slot_set all;
    for (auto &b : all.bits) {
        b = ~uint64_t{0};
    }
    ngx_http_sse_notify(z, all);
}

// GET: the channel's figures; DELETE: removes it and ends its streams.
// 404 when there is no such channel.
static ngx_int_t ngx_http_sse_channel_request(ngx_http_request_t *r,
                                              ngx_http_sse_zone_t *z,
                                              std::string_view id,
                                              bool remove) {
    std::string json;
    json.reserve(512);
    // A Redis zone's count: this machine's, and the others' from Redis.
    std::string post;
    uint32_t local = 0;
    bool found = false;
    {
        auto s = ngx_http_sse_session(z);
        sse::channel *ch = s->find(id);
        uint64_t epoch = s->epoch();
        if (ch != NULL && remove) {
            json = ngx_http_sse_deleted_json(id, sse::store::subscribers(ch));
            s->remove(ch, ngx_current_msec);
        } else if (ch != NULL) {
            json = "{\"channel\":";
            ngx_http_sse_json_string(json, id);
            std::string subs = std::to_string(sse::store::subscribers(ch));
            s->expire(ch, ngx_current_msec);
            const sse::message *first = sse::store::first(ch);
            json += ",\"messages\":" + std::to_string(ch->buffered()) +
                    ",\"subscribers\":";
            post = ",\"published\":" + std::to_string(ch->published) +
                   ",\"first_id\":" +
                   ngx_http_sse_id_json(epoch, first ? first->seq : 0) +
                   ",\"last_id\":" + ngx_http_sse_id_json(epoch, ch->last_seq) +
                   "}\n";
            found = true;
            local = sse::store::subscribers(ch);
            if (z->redis == NULL) {
                json += subs + post;
            }
        }
    }
    if (z->redis != NULL && !remove) {
        if (!found) {
            // No event here, but other machines may hold subscribers.
            json = "{\"channel\":";
            ngx_http_sse_json_string(json, id);
            json += ",\"messages\":0,\"subscribers\":";
            post = ",\"published\":0,\"first_id\":null,\"last_id\":null}\n";
        }
        return ngx_http_sse_redis_count_info(r, z, id, found, local,
                                             std::move(json), std::move(post));
    }
    if (json.empty()) {
        return ngx_http_sse_refused(r, NGX_HTTP_NOT_FOUND, "no such channel");
    }
    if (remove) {
        ngx_http_sse_release_deleted(z);
    }
    return ngx_http_sse_send_text(r, NGX_HTTP_OK, "application/json", json);
}

sse::publish_status ngx_http_sse_store_local(
    ngx_http_sse_zone_t *z, std::string_view channel,
    const ngx_http_sse_event_list &events, ngx_uint_t buffer_length,
    ngx_msec_t ttl, ngx_http_sse_stored_t *out) {
    *out = {};
    ngx_http_sse_zone_worker_t *zw = ngx_http_sse_zone_worker(z);
    if (events.empty()) {
        return sse::publish_status::ok;
    }
    if (zw == NULL || zw->slot == sse::no_slot) {
        return sse::publish_status::no_channel;
    }
    std::vector<sse::message *> ms;
    ms.reserve(events.size());
    {
        auto s = ngx_http_sse_session(z);
        for (const auto &[event, data] : events) {
            sse::message *m =
                s->prepare(zw->slot, sse::encoded_body_size(event, data),
                           ngx_current_msec);
            if (m == NULL) {
                break;
            }
            ms.push_back(m);
        }
    }
    for (size_t i = 0; i < ms.size(); i++) {
        sse::encode_body(ms[i]->bytes(), events[i].first, events[i].second);
    }
    sse::publish_status status = ms.size() == events.size()
                                     ? sse::publish_status::ok
                                     : sse::publish_status::no_memory;
    sse::slot_set wake{};
    {
        auto s = ngx_http_sse_session(z);
        ngx_msec_t now = ngx_current_msec;
        sse::channel *ch = s->find_or_create(channel, now);
        size_t i = 0;
        for (; ch != NULL && i < ms.size(); i++) {
            uint64_t seq;
            sse::publish_status st =
                s->commit(zw->slot, ms[i], ch, now, buffer_length, ttl, &seq);
            if (st != sse::publish_status::ok) {
                status = st;
                i++;
                break;
            }
            out->last_seq = seq;
            out->published++;
        }
        for (; i < ms.size(); i++) {
            s->abandon(zw->slot, ms[i]);
        }
        if (ch == NULL) {
            status = sse::publish_status::no_memory;
        } else {
            out->found = true;
            out->subscribers = sse::store::subscribers(ch);
            out->epoch = s->epoch();
            wake = s->slots_of(ch);
            out->others = wake;
            out->others.remove(zw->slot);
        }
    }
    if (out->published > 0 && !wake.empty()) {
        ngx_http_sse_notify(z, wake);
    }
    return status;
}

// A publish request's events, into the shared-memory zone.
static sse::publish_status ngx_http_sse_store_events(
    ngx_http_request_t *r, ngx_http_sse_publish_ctx_t *ctx,
    const ngx_http_sse_event_list &events) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    ngx_http_sse_stored_t out;
    sse::publish_status status = ngx_http_sse_store_local(
        ngx_http_sse_loc_zone(r, lcf),
        {reinterpret_cast<char *>(ctx->channel.data), ctx->channel.len}, events,
        lcf->buffer_length, lcf->message_ttl, &out);
    if (out.published > 0) {
        ctx->last_seq = out.last_seq;
        ctx->published += out.published;
        // Local subscribers first: answering lets the publisher (and
        // whatever else is runnable) take the CPU from this worker.
        ngx_http_sse_deliver_now(ngx_http_sse_loc_zone(r, lcf));
    }
    if (out.found) {
        ctx->subscribers = out.subscribers;
        ctx->epoch = out.epoch;
    }
    ctx->others = out.others;
    return status;
}

static std::string ngx_http_sse_publish_json(ngx_http_request_t *r,
                                             ngx_http_sse_publish_ctx_t *ctx,
                                             bool stream) {
    std::string json = "{\"channel\":";
    ngx_http_sse_json_string(
        json, {reinterpret_cast<char *>(ctx->channel.data), ctx->channel.len});
    json += ",\"id\":" + ngx_http_sse_id_json(ctx->epoch, ctx->last_seq) +
            ",\"subscribers\":" + std::to_string(ctx->subscribers);
    if (stream) {
        json += ",\"published\":" + std::to_string(ctx->published);
    }
    return json + "}\n";
}

static ngx_http_sse_redis_wait_t *ngx_http_sse_redis_wait(
    ngx_http_request_t *r, ngx_http_sse_publish_ctx_t *ctx);
static void ngx_http_sse_redis_done(void *data, bool ok, uint64_t epoch,
                                    uint64_t seq, int64_t others,
                                    std::string_view err);

// A DELETE in a Redis zone has been through Redis (or could not be): its
// answer.
static ngx_int_t ngx_http_sse_redis_deleted(ngx_http_request_t *r,
                                            ngx_http_sse_redis_wait_t *w,
                                            bool ok, uint64_t seq,
                                            int64_t others,
                                            std::string_view err) {
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    if (!ok) {
        if (ngx_http_sse_add_header(r, "Retry-After", "1") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return ngx_http_sse_error(
            r, NGX_HTTP_SERVICE_UNAVAILABLE,
            "redis could not delete the channel: " + std::string(err));
    }
    // The subscribers whose streams end, on every live machine.
    uint32_t subscribers = w->subscribers + (uint32_t)ngx_max(others, 0);
    if (seq == 0 && !w->found && subscribers == 0) {
        return ngx_http_sse_refused(r, NGX_HTTP_NOT_FOUND, "no such channel");
    }
    return ngx_http_sse_send_text(
        r, NGX_HTTP_OK, "application/json",
        ngx_http_sse_deleted_json(
            {reinterpret_cast<char *>(ctx->channel.data), ctx->channel.len},
            subscribers));
}

// DELETE in a Redis zone: Redis removes the channel's history and tells
// every machine, in the zone's order; answered once Redis has done it.
static ngx_int_t ngx_http_sse_redis_delete_request(ngx_http_request_t *r,
                                                   ngx_http_sse_zone_t *z,
                                                   std::string_view id) {
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_pcalloc(r->pool, sizeof(ngx_http_sse_publish_ctx_t)));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->channel.data = (u_char *)id.data();
    ctx->channel.len = id.size();
    ngx_http_set_ctx(r, ctx, ngx_http_sse_module);
    ngx_http_sse_redis_wait_t *w = ngx_http_sse_redis_wait(r, ctx);
    if (w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    {
        // This machine's subscribers; Redis adds the others'.
        auto s = ngx_http_sse_session(z);
        sse::channel *ch = s->find(id);
        w->found = ch != NULL;
        w->subscribers = ch ? sse::store::subscribers(ch) : 0;
    }
    w->remove = true;
    w->inflight = ngx_http_sse_redis_delete(
        ngx_http_sse_zone_worker(z), id, ngx_http_sse_redis_done, w, &w->error);
    if (w->inflight == NULL) {
        if (ngx_http_sse_add_header(r, "Retry-After", "1") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return ngx_http_sse_error(
            r, NGX_HTTP_SERVICE_UNAVAILABLE,
            "redis could not delete the channel: " + w->error);
    }
    r->main->count++;
    return NGX_DONE;
}

static ngx_int_t ngx_http_sse_publish(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_sse_options(r, NGX_HTTP_SSE_PUBLISH_ALLOW,
                                    "Content-Type, SSE-Event");
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_POST |
                       NGX_HTTP_PUT | NGX_HTTP_DELETE))) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sse publish refused: 405 method %V", &r->method_name);
        return ngx_http_sse_not_allowed(r, NGX_HTTP_SSE_PUBLISH_ALLOW,
                                        "method not allowed here");
    }

    std::vector<std::string_view> ids;
    ngx_int_t rc;
    if (!ngx_http_sse_channels(r, lcf, ids, &rc)) {
        return rc;
    }
    if (ids.size() != 1) {
        return ngx_http_sse_refused(r, NGX_HTTP_BAD_REQUEST,
                                    "invalid channel: publish to one channel "
                                    "at a time");
    }
    ngx_http_sse_zone_t *z = ngx_http_sse_loc_zone(r, lcf);

    if (r->method == NGX_HTTP_DELETE && z->redis != NULL) {
        return ngx_http_sse_redis_delete_request(r, z, ids[0]);
    }
    if (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_DELETE)) {
        return ngx_http_sse_channel_request(r, z, ids[0],
                                            r->method == NGX_HTTP_DELETE);
    }

    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_pcalloc(r->pool, sizeof(ngx_http_sse_publish_ctx_t)));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->channel.data = (u_char *)ids[0].data();
    ctx->channel.len = ids[0].size();

    // The event type: SSE-Event header, else the event argument.
    if (ngx_http_sse_header(r, "SSE-Event", &ctx->event) != NGX_OK) {
        if (ngx_http_arg(r, (u_char *)"event", 5, &ctx->event) == NGX_OK &&
            ngx_http_sse_unescape(r, &ctx->event) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    if (!sse::valid_event_name(
            {reinterpret_cast<char *>(ctx->event.data), ctx->event.len})) {
        return ngx_http_sse_refused(r, NGX_HTTP_BAD_REQUEST,
                                    "invalid event name: it may not contain "
                                    "CR, LF or NUL, nor exceed 255 bytes");
    }
    ngx_http_set_ctx(r, ctx, ngx_http_sse_module);

    ngx_str_t *type =
        r->headers_in.content_type ? &r->headers_in.content_type->value : NULL;
    if (type != NULL && type->len >= sizeof("text/event-stream") - 1 &&
        ngx_strncasecmp(type->data, (u_char *)"text/event-stream",
                        sizeof("text/event-stream") - 1) == 0) {
        // A stream of events, each published as soon as it is complete:
        // read the body unbuffered.
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
        void *mem = ngx_palloc(r->pool, sizeof(sse::stream_parser));
        if (cln == NULL || mem == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ctx->parser = new (mem) sse::stream_parser(lcf->max_message_size);
        cln->handler = [](void *p) {
            static_cast<sse::stream_parser *>(p)->~stream_parser();
        };
        cln->data = ctx->parser;
        r->request_body_no_buffering = 1;
        rc = ngx_http_read_client_request_body(r, ngx_http_sse_stream_start);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }
        return NGX_DONE;
    }

    // One event: its size is the body's, known up front with a
    // Content-Length. (A stream's limit is per event, checked by its
    // parser, whatever the body's length.)
    if (r->headers_in.content_length_n > (off_t)lcf->max_message_size) {
        return ngx_http_sse_refused(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "message larger than sse_max_message_size");
    }
    // One buffer (the preread part copied in): encoded straight from it.
    r->request_body_in_single_buf = 1;
    rc = ngx_http_read_client_request_body(r, ngx_http_sse_publish_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }
    return NGX_DONE;
}

// Copies the body out of its buffers, memory or temp file alike.
static ngx_int_t ngx_http_sse_body(ngx_http_request_t *r, size_t max,
                                   std::string &out) {
    if (r->request_body == NULL) {
        return NGX_OK;
    }
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        size_t n = ngx_buf_size(b);
        if (out.size() + n > max) {
            return NGX_DECLINED;
        }
        if (b->in_file) {
            size_t at = out.size();
            out.resize(at + n);
            ssize_t got = ngx_read_file(
                b->file, reinterpret_cast<u_char *>(&out[at]), n, b->file_pos);
            if (got != (ssize_t)n) {
                return NGX_ERROR;
            }
        } else {
            out.append(reinterpret_cast<char *>(b->pos), n);
        }
    }
    return NGX_OK;
}

// Sends the next queued event, or answers once there is nothing left to
// do; NGX_AGAIN while waiting.
static ngx_int_t ngx_http_sse_redis_pump(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    ngx_http_sse_redis_wait_t *w = ctx->wait;
    if (w->inflight != NULL) {
        return NGX_AGAIN;
    }
    std::string count =
        "; " + std::to_string(ctx->published) + " published before it";
    if (w->error.empty() && !w->queue.empty()) {
        ngx_http_sse_zone_t *z = ngx_http_sse_loc_zone(r, lcf);
        ngx_http_sse_event_list group;
        size_t bytes = 0;
        for (auto &[event, data] : w->queue) {
            bytes += event.size() + data.size();
            if (!group.empty() &&
                (group.size() == NGX_HTTP_SSE_REDIS_GROUP_EVENTS ||
                 bytes > NGX_HTTP_SSE_REDIS_GROUP_BYTES)) {
                break;
            }
            group.emplace_back(event, data);
        }
        w->inflight = ngx_http_sse_redis_publish(
            ngx_http_sse_zone_worker(z),
            {reinterpret_cast<char *>(ctx->channel.data), ctx->channel.len},
            group, lcf->buffer_length, lcf->message_ttl,
            ngx_http_sse_redis_done, w, &w->error);
        w->sending = group.size();
        w->queue.erase(w->queue.begin(), w->queue.begin() + group.size());
        if (w->inflight != NULL) {
            return NGX_AGAIN;
        }
    }
    if (!w->error.empty()) {
        w->queue.clear();
        if (ngx_http_sse_add_header(r, "Retry-After", "1") != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return ngx_http_sse_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "redis could not store the event: " +
                                      w->error + (w->stream ? count : ""));
    }
    if (!w->fault.empty()) {
        return ngx_http_sse_error(r, NGX_HTTP_BAD_REQUEST,
                                  "malformed event stream: " + w->fault + "; " +
                                      std::to_string(ctx->published) +
                                      " events published before it");
    }
    if (w->stream && r->reading_body) {
        return NGX_AGAIN;
    }
    return ngx_http_sse_send_text(r, NGX_HTTP_ACCEPTED, "application/json",
                                  ngx_http_sse_publish_json(r, ctx, w->stream));
}

static void ngx_http_sse_stream_step(ngx_http_request_t *r, bool read);

static void ngx_http_sse_redis_done(void *data, bool ok, uint64_t epoch,
                                    uint64_t seq, int64_t others,
                                    std::string_view err) {
    auto *w = static_cast<ngx_http_sse_redis_wait_t *>(data);
    ngx_http_request_t *r = w->r;
    ngx_connection_t *c = r->connection;
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    w->inflight = NULL;
    ngx_int_t rc;
    try {
        if (w->remove) {
            rc = ngx_http_sse_redis_deleted(r, w, ok, seq, others, err);
        } else {
            if (ok) {
                ctx->epoch = epoch;
                ctx->last_seq = seq;
                ctx->published += w->sending;
                auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
                    ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
                auto s = ngx_http_sse_session(ngx_http_sse_loc_zone(r, lcf));
                sse::channel *ch =
                    s->find({reinterpret_cast<char *>(ctx->channel.data),
                             ctx->channel.len});
                // This machine's subscribers (exact), and the other
                // machines' as Redis holds them.
                ctx->subscribers = (ch ? sse::store::subscribers(ch) : 0) +
                                   (uint32_t)ngx_max(others, 0);
            } else {
                w->error.assign(err);
            }
            rc = ngx_http_sse_redis_pump(r);
            if (rc == NGX_AGAIN && w->paused &&
                w->queue.size() < NGX_HTTP_SSE_REDIS_QUEUE_MAX / 2) {
                w->paused = false;
                ngx_http_sse_stream_step(r, true);
                ngx_http_run_posted_requests(c);
                return;
            }
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_AGAIN) {
        ngx_http_finalize_request(r, rc);
    }
    ngx_http_run_posted_requests(c);
}

static ngx_http_sse_redis_wait_t *ngx_http_sse_redis_wait(
    ngx_http_request_t *r, ngx_http_sse_publish_ctx_t *ctx) {
    if (ctx->wait != NULL) {
        return ctx->wait;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }
    auto *w = new ngx_http_sse_redis_wait_t();
    w->r = r;
    cln->handler = [](void *p) {
        auto *w = static_cast<ngx_http_sse_redis_wait_t *>(p);
        if (w->inflight != NULL) {
            ngx_http_sse_redis_cancel(w->inflight);
        }
        delete w;
    };
    cln->data = w;
    ctx->wait = w;
    return w;
}

static ngx_int_t ngx_http_sse_publish_answer_rc(ngx_http_request_t *r) {
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    return ngx_http_sse_send_text(r, NGX_HTTP_ACCEPTED, "application/json",
                                  ngx_http_sse_publish_json(r, ctx, false));
}

// sse_publish_wait's answer, once the other workers have read the event.
static void ngx_http_sse_publish_answer(ngx_http_request_t *r) {
    ngx_connection_t *c = r->connection;
    ngx_int_t rc;
    try {
        rc = ngx_http_sse_publish_answer_rc(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

static ngx_int_t ngx_http_sse_publish_now(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));

    std::string data;
    std::string_view view;
    ngx_int_t rc = NGX_OK;
    ngx_chain_t *bufs = r->request_body ? r->request_body->bufs : NULL;
    if (bufs != NULL && bufs->next == NULL && !bufs->buf->in_file) {
        // The usual case: the whole body in one buffer; no copy.
        view = {reinterpret_cast<char *>(bufs->buf->pos),
                static_cast<size_t>(bufs->buf->last - bufs->buf->pos)};
        if (view.size() > lcf->max_message_size) {
            rc = NGX_DECLINED;
        }
    } else {
        rc = ngx_http_sse_body(r, lcf->max_message_size, data);
        view = data;
    }
    if (rc == NGX_DECLINED) {
        return ngx_http_sse_refused(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "message larger than sse_max_message_size");
    }
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_sse_loc_zone(r, lcf)->redis != NULL) {
        // Answered when Redis has stored it.
        ngx_http_sse_redis_wait_t *w = ngx_http_sse_redis_wait(r, ctx);
        if (w == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        w->queue.emplace_back(
            std::string(reinterpret_cast<char *>(ctx->event.data),
                        ctx->event.len),
            std::string(view));
        return ngx_http_sse_redis_pump(r);
    }

    ngx_http_sse_event_list events;
    events.emplace_back(
        std::string_view(reinterpret_cast<char *>(ctx->event.data),
                         ctx->event.len),
        view);
    if (ngx_http_sse_store_events(r, ctx, events) != sse::publish_status::ok) {
        return ngx_http_sse_refused(r, NGX_HTTP_INSUFFICIENT_STORAGE,
                                    "message does not fit in the sse zone");
    }
    if (lcf->publish_wait != NGX_HTTP_SSE_OFF &&
        ngx_http_sse_answer_later(
            ngx_http_sse_loc_zone(r, lcf),
            // A large fan-out may trail by one event per 1,024 subscribers,
            // so that its writes keep coalescing under a burst.
            ctx->last_seq - ngx_min(ctx->last_seq, ctx->subscribers / 1024),
            ctx->others, lcf->publish_wait, r, ngx_http_sse_publish_answer)) {
        return NGX_AGAIN;  // answered once the other workers have read it
    }
    return ngx_http_sse_publish_answer_rc(r);
}

static void ngx_http_sse_publish_body(ngx_http_request_t *r) {
    ngx_int_t rc;
    try {
        rc = ngx_http_sse_publish_now(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc == NGX_AGAIN) {
        // Answered from ngx_http_sse_redis_done (a Redis zone), or once
        // the other workers have read the event (sse_publish_wait).
        return;
    }
    ngx_http_finalize_request(r, rc);
}

// Parses what has arrived of a text/event-stream body and publishes the
// events it completes; answers once the body ends or turns out malformed.
static ngx_int_t ngx_http_sse_stream_consume(ngx_http_request_t *r) {
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    // The parser's views last only through the callback: keep copies.
    std::vector<std::pair<std::string, std::string>> parsed;
    sse::parse_status ps = sse::parse_status::ok;
    auto collect = [&parsed](std::string_view event, std::string_view data) {
        parsed.emplace_back(event, data);
    };
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        if (ps == sse::parse_status::ok) {
            if (b->in_file) {
                std::string tmp(ngx_buf_size(b), '\0');
                if (ngx_read_file(b->file, reinterpret_cast<u_char *>(&tmp[0]),
                                  tmp.size(),
                                  b->file_pos) != (ssize_t)tmp.size()) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
                ps = ctx->parser->feed(tmp, collect);
            } else {
                ps = ctx->parser->feed({reinterpret_cast<char *>(b->pos),
                                        static_cast<size_t>(b->last - b->pos)},
                                       collect);
            }
        }
        // Consumed: nginx reuses the buffer for what comes next.
        b->pos = b->last;
        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }
    r->request_body->bufs = NULL;

    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if (ngx_http_sse_loc_zone(r, lcf)->redis != NULL) {
        ngx_http_sse_redis_wait_t *w = ngx_http_sse_redis_wait(r, ctx);
        if (w == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        w->stream = true;
        if (w->fault.empty() && w->error.empty()) {
            for (auto &e : parsed) {
                w->queue.push_back(std::move(e));
            }
            if (ps != sse::parse_status::ok) {
                w->fault = sse::describe(ps);
            } else if (!r->reading_body && ctx->parser->mid_event()) {
                w->fault = "the body ends inside an event";
            }
        }
        return ngx_http_sse_redis_pump(r);
    }

    ngx_http_sse_event_list events(parsed.begin(), parsed.end());
    if (ngx_http_sse_store_events(r, ctx, events) != sse::publish_status::ok) {
        return ngx_http_sse_refused(r, NGX_HTTP_INSUFFICIENT_STORAGE,
                                    "an event does not fit in the sse zone; " +
                                        std::to_string(ctx->published) +
                                        " published before it");
    }
    const char *fault = NULL;
    if (ps != sse::parse_status::ok) {
        fault = sse::describe(ps);
    } else if (!r->reading_body && ctx->parser->mid_event()) {
        fault = "the body ends inside an event";
    }
    if (fault != NULL) {
        std::string why = "malformed event stream: ";
        why += fault;
        why += "; " + std::to_string(ctx->published) +
               " events published before it";
        return ngx_http_sse_refused(r, NGX_HTTP_BAD_REQUEST, why);
    }
    if (r->reading_body) {
        return NGX_AGAIN;
    }
    return ngx_http_sse_send_text(r, NGX_HTTP_ACCEPTED, "application/json",
                                  ngx_http_sse_publish_json(r, ctx, true));
}

static void ngx_http_sse_stream_step(ngx_http_request_t *r, bool read) {
    ngx_int_t rc = NGX_AGAIN;
    try {
        // With its buffer full, nginx stops reading until the consumer
        // calls again: read and consume until nothing new arrives.
        auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
            ngx_http_get_module_ctx(r, ngx_http_sse_module));
        for (;;) {
            if (ctx->wait != NULL &&
                ctx->wait->queue.size() >= NGX_HTTP_SSE_REDIS_QUEUE_MAX) {
                // Redis is slower than the client: read on once it caught
                // up (ngx_http_sse_redis_done).
                ctx->wait->paused = true;
                rc = NGX_AGAIN;
                break;
            }
            if (read) {
                if (!r->reading_body) {
                    // The body is all read (maybe with the head: nginx then
                    // has no body buffer, and reading on would crash); a
                    // Redis reply answers the request.
                    rc = NGX_AGAIN;
                    break;
                }
                rc = ngx_http_read_unbuffered_request_body(r);
                if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
                    break;
                }
            }
            read = true;
            bool got = r->request_body->bufs != NULL;
            rc = ngx_http_sse_stream_consume(r);
            if (rc != NGX_AGAIN || !got) {
                break;
            }
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_AGAIN) {
        ngx_http_finalize_request(r, rc);
    }
}

static void ngx_http_sse_stream_start(ngx_http_request_t *r) {
    r->read_event_handler = ngx_http_sse_stream_read;
    ngx_http_sse_stream_step(r, false);
}

static void ngx_http_sse_stream_read(ngx_http_request_t *r) {
    ngx_http_sse_stream_step(r, true);
}
