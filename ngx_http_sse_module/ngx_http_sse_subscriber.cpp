// sse_subscribe: the event stream of one client, from catch-up to its end.
#include "ngx_http_sse.hpp"

#include <algorithm>

static const u_char ngx_http_sse_heartbeat_line[] = ":\n\n";

static ngx_int_t ngx_http_sse_subscribe(ngx_http_request_t *r);
static void ngx_http_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_sse_end_handler(ngx_event_t *ev);
static void ngx_http_sse_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_sse_timeout_handler(ngx_event_t *ev);
static void ngx_http_sse_cleanup(void *data);

ngx_int_t ngx_http_sse_subscribe_handler(ngx_http_request_t *r) {
    try {
        return ngx_http_sse_subscribe(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static void ngx_http_sse_append(ngx_http_sse_subscriber_t *sub,
                                ngx_http_sse_out_t *o) {
    o->buf.memory = 1;
    o->buf.tag = (ngx_buf_tag_t)&ngx_http_sse_module;
    if (sub->out_tail != NULL) {
        sub->out_tail->next = o;
    } else {
        sub->out_head = o;
    }
    sub->out_tail = o;
    if (sub->unsent == NULL) {
        sub->unsent = o;
    }
    sub->pending += o->buf.last - o->buf.pos;
}

ngx_int_t ngx_http_sse_enqueue(ngx_http_sse_subscriber_t *sub,
                               ngx_http_sse_msg_t *msg) {
    ngx_http_sse_out_t *o = ngx_http_sse_out_get();
    if (o == NULL) {
        return NGX_ERROR;
    }
    o->msg = msg;
    msg->refs++;
    o->buf.start = o->buf.pos = msg->data();
    o->buf.end = o->buf.last = msg->data() + msg->len;
    ngx_http_sse_append(sub, o);
    if (msg->seq > sub->last_seq) {
        sub->last_seq = msg->seq;
    }
    return NGX_OK;
}

// Queues bytes of the module's own (a retry line, a gap event).
static ngx_int_t ngx_http_sse_enqueue_bytes(ngx_http_sse_subscriber_t *sub,
                                            std::string_view bytes) {
    ngx_http_sse_msg_t *msg = ngx_http_sse_msg_new(bytes, 0);
    if (msg == NULL) {
        return NGX_ERROR;
    }
    ngx_int_t rc = ngx_http_sse_enqueue(sub, msg);
    ngx_http_sse_msg_unref(msg);
    return rc;
}

// Writes "retry: MS" and the blank line that closes it; returns the length.
static size_t ngx_http_sse_retry_line(u_char *buf, ngx_msec_t ms) {
    return ngx_sprintf(buf, "retry: %M\n\n", ms) - buf;
}

static ngx_int_t ngx_http_sse_enqueue_static(ngx_http_sse_subscriber_t *sub,
                                             const u_char *p, size_t len) {
    ngx_http_sse_out_t *o = ngx_http_sse_out_get();
    if (o == NULL) {
        return NGX_ERROR;
    }
    o->buf.start = o->buf.pos = const_cast<u_char *>(p);
    o->buf.end = o->buf.last = const_cast<u_char *>(p) + len;
    ngx_http_sse_append(sub, o);
    return NGX_OK;
}

// Frees the writes the filters are done with; they finish in order.
static void ngx_http_sse_reclaim(ngx_http_sse_subscriber_t *sub) {
    while (sub->out_head != NULL && sub->out_head != sub->unsent &&
           sub->out_head->buf.pos == sub->out_head->buf.last) {
        ngx_http_sse_out_t *o = sub->out_head;
        sub->out_head = o->next;
        if (sub->out_head == NULL) {
            sub->out_tail = NULL;
        }
        size_t n = o->buf.end - o->buf.start;
        sub->pending -= n;
        sub->catchup -= ngx_min(n, sub->catchup);
        ngx_http_sse_out_put(o);
    }
}

// Links the unsent writes into one chain, flushed as one write.
static ngx_chain_t *ngx_http_sse_take_unsent(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_out_t *first = sub->unsent;
    if (first == NULL) {
        return NULL;
    }
    for (ngx_http_sse_out_t *o = first; o != NULL; o = o->next) {
        o->cl.next = o->next ? &o->next->cl : NULL;
        o->buf.flush = o->next == NULL;
    }
    sub->unsent = NULL;
    sub->last_write = ngx_current_msec;
    return &first->cl;
}

void ngx_http_sse_send(ngx_http_sse_subscriber_t *sub) {
    ngx_http_request_t *r = sub->r;
    ngx_int_t rc = ngx_http_output_filter(r, ngx_http_sse_take_unsent(sub));
    ngx_http_sse_reclaim(sub);
    if (rc == NGX_ERROR) {
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE);
        return;
    }
    if (sub->pending > sub->lcf->max_pending + sub->catchup) {
        // It resumes from the ring when it comes back.
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: subscriber owes %uz bytes, over sse_max_pending, "
                      "closing it",
                      sub->pending);
        ngx_http_sse_count(sub->zw, &sse::slot_stats::slow_dropped, 1);
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE);
        return;
    }
    ngx_event_t *wev = r->connection->write;
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (r->connection->buffered) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }
        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE);
        }
    } else if (wev->timer_set) {
        ngx_del_timer(wev);
    }
}

void ngx_http_sse_end(ngx_http_sse_subscriber_t *sub, ngx_uint_t how) {
    if (sub->end == NGX_HTTP_SSE_END_NONE) {
        ngx_post_event(&sub->end_ev, &ngx_posted_events);
    }
    if (how > sub->end) {
        sub->end = how;
    }
}

static void ngx_http_sse_stop_timers(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_unmark_dirty(sub);
    if (sub->heartbeat.timer_set) {
        ngx_del_timer(&sub->heartbeat);
    }
    if (sub->timeout.timer_set) {
        ngx_del_timer(&sub->timeout);
    }
    if (sub->end_ev.posted) {
        ngx_delete_posted_event(&sub->end_ev);
    }
}

static ngx_msec_t ngx_http_sse_end_retry(ngx_http_sse_loc_conf_t *lcf) {
    // Clients reconnect after this long when we end a stream ourselves.
    return lcf->retry != NGX_HTTP_SSE_OFF ? lcf->retry : 1000;
}

static void ngx_http_sse_end_handler(ngx_event_t *ev) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(ev->data);
    ngx_http_request_t *r = sub->r;
    ngx_connection_t *c = r->connection;

    ngx_http_sse_detach(sub);
    ngx_http_sse_stop_timers(sub);
    if (sub->end == NGX_HTTP_SSE_END_CLOSE) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }
    u_char line[NGX_HTTP_SSE_RETRY_LINE_LEN];
    size_t n = ngx_http_sse_retry_line(line, ngx_http_sse_end_retry(sub->lcf));
    ngx_int_t rc =
        ngx_http_sse_enqueue_bytes(sub, {reinterpret_cast<char *>(line), n});
    if (rc == NGX_OK) {
        rc = ngx_http_output_filter(r, ngx_http_sse_take_unsent(sub));
        if (rc != NGX_ERROR) {
            rc = ngx_http_send_special(r, NGX_HTTP_LAST);
        }
        ngx_http_sse_reclaim(sub);
    }
    ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
    ngx_http_run_posted_requests(c);
}

static void ngx_http_sse_write_handler(ngx_http_request_t *r) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    ngx_event_t *wev = r->connection->write;
    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "sse: client timed out");
        r->connection->timedout = 1;
        ngx_http_sse_detach(sub);
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    if (sub->end == NGX_HTTP_SSE_END_NONE) {
        ngx_http_sse_send(sub);
    } else {
        ngx_http_output_filter(r, NULL);
        ngx_http_sse_reclaim(sub);
    }
}

static void ngx_http_sse_heartbeat_handler(ngx_event_t *ev) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(ev->data);
    ngx_msec_t every = sub->lcf->heartbeat;
    ngx_msec_t idle = ngx_current_msec - sub->last_write;
    if (sub->end != NGX_HTTP_SSE_END_NONE) {
        return;
    }
    if (idle >= every) {
        if (ngx_http_sse_enqueue_static(
                sub, ngx_http_sse_heartbeat_line,
                sizeof(ngx_http_sse_heartbeat_line) - 1) != NGX_OK) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE);
            return;
        }
        ngx_http_sse_send(sub);
        idle = 0;
    }
    ngx_add_timer(ev, every - idle);
}

static void ngx_http_sse_timeout_handler(ngx_event_t *ev) {
    // The stream's longest life: the client reconnects and resumes.
    ngx_http_sse_end(static_cast<ngx_http_sse_subscriber_t *>(ev->data),
                     NGX_HTTP_SSE_END_RETRY);
}

static void ngx_http_sse_cleanup(void *data) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(data);
    if (sub->zw != NULL && ngx_http_sse_zone_worker(sub->zw->zone) == sub->zw) {
        ngx_http_sse_detach(sub);
    }
    ngx_http_sse_stop_timers(sub);
    while (sub->out_head != NULL) {
        ngx_http_sse_out_t *o = sub->out_head;
        sub->out_head = o->next;
        ngx_http_sse_out_put(o);
    }
    sub->out_tail = sub->unsent = NULL;
}

// Where the client resumes from: sse_last_event_id if set, else the
// Last-Event-ID header, else the last_event_id argument. Used as nginx
// gives it, never percent-decoded (as sse_channel values): ids need no
// escaping.
static ngx_int_t ngx_http_sse_resume_point(ngx_http_request_t *r,
                                           ngx_http_sse_loc_conf_t *lcf,
                                           ngx_str_t *id) {
    ngx_str_null(id);
    if (lcf->last_event_id != NULL) {
        return ngx_http_complex_value(r, lcf->last_event_id, id);
    }
    if (ngx_http_sse_header(r, "Last-Event-ID", id) == NGX_OK) {
        return NGX_OK;
    }
    if (ngx_http_arg(r, (u_char *)"last_event_id", 13, id) != NGX_OK) {
        ngx_str_null(id);
    }
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_stream_headers(ngx_http_request_t *r) {
    static ngx_str_t type = ngx_string("text/event-stream; charset=utf-8");
    if (ngx_http_sse_cors(r) != NGX_OK) {
        return NGX_ERROR;
    }
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type = type;
    // The MIME type alone, which gzip_types and friends match on.
    r->headers_out.content_type_len = sizeof("text/event-stream") - 1;
    r->headers_out.content_length_n = -1;
    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    if (ngx_http_sse_add_header(r, "Cache-Control", "no-cache") != NGX_OK ||
        ngx_http_sse_add_header(r, "X-Accel-Buffering", "no") != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_send_header(r);
}

// Overload or shutdown: a "retry:" and a clean end, which EventSource
// follows, rather than a 5xx, which would stop it for good.
static ngx_int_t ngx_http_sse_refuse(ngx_http_request_t *r,
                                     ngx_http_sse_loc_conf_t *lcf) {
    ngx_int_t rc = ngx_http_sse_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, NGX_HTTP_SSE_RETRY_LINE_LEN);
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->last += ngx_http_sse_retry_line(b->last, ngx_http_sse_end_retry(lcf));
    b->last_buf = 1;
    ngx_chain_t out = {b, NULL};
    return ngx_http_output_filter(r, &out);
}

static std::string ngx_http_sse_gap_json(std::string_view requested,
                                         const char *reason) {
    std::string json = "{\"requested\":";
    // Names what was asked for, but a 10 kB header needn't be echoed whole.
    ngx_http_sse_json_string(json, requested.substr(0, 128));
    json += ",\"reason\":\"";
    json += reason;
    json += "\"}";
    return json;
}

static ngx_int_t ngx_http_sse_subscribe(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_sse_options(r, "GET, HEAD, OPTIONS",
                                    "Last-Event-ID, Cache-Control");
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return ngx_http_sse_not_allowed(r, "GET, HEAD, OPTIONS",
                                        "subscribers use GET");
    }
    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return ngx_http_sse_not_allowed(r, "GET, HEAD, OPTIONS",
                                        "a subscribe request takes no body");
    }

    std::vector<std::string_view> ids;
    ngx_int_t rc;
    if (!ngx_http_sse_channels(r, lcf, ids, &rc)) {
        return rc;
    }
    ngx_http_sse_zone_t *z = ngx_http_sse_loc_zone(r, lcf);
    ngx_http_sse_zone_worker_t *zw = ngx_http_sse_zone_worker(z);
    if (zw == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }
    if (r->method == NGX_HTTP_HEAD) {
        return ngx_http_sse_stream_headers(r);
    }
    if (ngx_exiting || ngx_terminate) {
        return ngx_http_sse_refuse(r, lcf);
    }
    ngx_str_t resume;
    if (ngx_http_sse_resume_point(r, lcf, &resume) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        ngx_pcalloc(r->pool, sizeof(ngx_http_sse_subscriber_t)));
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (sub == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    sub->links = static_cast<ngx_http_sse_link_t *>(
        ngx_pcalloc(r->pool, ids.size() * sizeof(ngx_http_sse_link_t)));
    if (sub->links == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    sub->r = r;
    sub->lcf = lcf;
    sub->zw = zw;
    sub->nlinks = ids.size();
    cln->handler = ngx_http_sse_cleanup;
    cln->data = sub;
    ngx_http_set_ctx(r, sub, ngx_http_sse_module);

    // Under the lock: join the channels and copy what the client is owed.
    // Everything up to the zone's newest seq is either copied now or not
    // wanted, so the live stream continues after it with no gap and no
    // duplicate.
    std::vector<const sse::message *> owed;
    struct msg_list : std::vector<ngx_http_sse_msg_t *> {
        ~msg_list() {
            for (auto *msg : *this) {
                ngx_http_sse_msg_unref(msg);
            }
        }
    } copies;
    std::string gap;
    bool full = false;
    bool overloaded = false;
    uint64_t epoch;
    {
        sse::zone_root *root = z->root;
        sse::store st = ngx_http_sse_store(z);
        ngx_msec_t now = ngx_current_msec;
        ngx_http_sse_locked lock(z);
        // Each channel is counted as soon as it is found: an empty,
        // unsubscribed channel may be freed to make room for the next.
        ngx_uint_t joined = 0;
        for (; joined < ids.size(); joined++) {
            sse::channel *ch = st.find_or_create(ids[joined], now);
            if (ch == NULL) {
                full = true;
                break;
            }
            if (lcf->max_subscribers &&
                sse::store::subscribers(ch) >= lcf->max_subscribers) {
                overloaded = true;
                break;
            }
            st.subscribe(ch, zw->slot);
            sub->links[joined].shm = ch;
        }
        if (full || overloaded) {
            while (joined > 0) {
                st.unsubscribe(sub->links[--joined].shm, zw->slot, now);
            }
        } else {
            for (ngx_uint_t i = 0; i < ids.size(); i++) {
                st.expire(sub->links[i].shm, now);
            }
            std::string_view want(reinterpret_cast<char *>(resume.data),
                                  resume.len);
            uint64_t after = 0;
            uint32_t limit = UINT32_MAX;
            const char *reason = NULL;
            if (!want.empty()) {
                auto id = sse::parse_event_id(want);
                if (!id) {
                    reason = "malformed";
                } else if (id->epoch != root->epoch) {
                    reason = "epoch";
                } else if (id->seq > root->seq) {
                    reason = "unknown";
                } else {
                    after = id->seq;
                    for (ngx_uint_t i = 0; i < ids.size(); i++) {
                        if (st.gap(sub->links[i].shm, after)) {
                            reason = "evicted";
                        }
                    }
                }
                if (reason != NULL) {
                    gap = ngx_http_sse_gap_json(want, reason);
                }
            } else {
                limit = lcf->initial_events;
            }
            if (limit > 0) {
                for (ngx_uint_t i = 0; i < ids.size(); i++) {
                    st.for_each_in(
                        sub->links[i].shm, after, limit,
                        [&](const sse::message *m) { owed.push_back(m); });
                }
                std::sort(owed.begin(), owed.end(),
                          [](const sse::message *a, const sse::message *b) {
                              return a->seq < b->seq;
                          });
                if (owed.size() > limit) {
                    owed.erase(owed.begin(), owed.end() - limit);
                }
            }
            copies.reserve(owed.size());
            for (const sse::message *m : owed) {
                ngx_http_sse_msg_t *msg =
                    ngx_http_sse_msg_new(m->wire(), m->seq);
                if (msg == NULL) {
                    break;
                }
                copies.push_back(msg);
            }
            sub->last_seq = root->seq;
            epoch = root->epoch;
        }
    }
    if (full) {
        return ngx_http_sse_error(r, NGX_HTTP_INSUFFICIENT_STORAGE,
                                  "the sse zone is full");
    }
    if (overloaded) {
        return ngx_http_sse_refuse(r, lcf);
    }
    // From here on the pool cleanup gives the counts back, whatever fails.
    ngx_http_sse_attach(sub);
    if (copies.size() != owed.size()) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_sse_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    // retry:, then the gap, then the catch-up: one write.
    if (lcf->retry != NGX_HTTP_SSE_OFF) {
        u_char line[NGX_HTTP_SSE_RETRY_LINE_LEN];
        size_t n = ngx_http_sse_retry_line(line, lcf->retry);
        if (ngx_http_sse_enqueue_bytes(
                sub, {reinterpret_cast<char *>(line), n}) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    if (!gap.empty()) {
        // Its id lets a client that reconnects now resume exactly after
        // the gap rather than meet it again.
        uint64_t at = owed.empty() ? sub->last_seq : owed.front()->seq - 1;
        char id[sse::max_event_id_len];
        size_t n = sse::format_event_id(id, {epoch, at});
        if (ngx_http_sse_enqueue_bytes(
                sub, sse::encode_event({id, n}, "sse-gap", gap)) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    // Catch-up seqs are all <= last_seq: enqueueing them leaves it alone.
    for (auto *msg : copies) {
        if (ngx_http_sse_enqueue(sub, msg) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    sub->catchup = sub->pending;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_sse_write_handler;
    sub->end_ev.handler = ngx_http_sse_end_handler;
    sub->end_ev.data = sub;
    sub->end_ev.log = r->connection->log;
    sub->last_write = ngx_current_msec;
    if (lcf->heartbeat != NGX_HTTP_SSE_OFF) {
        sub->heartbeat.handler = ngx_http_sse_heartbeat_handler;
        sub->heartbeat.data = sub;
        sub->heartbeat.log = r->connection->log;
        sub->heartbeat.cancelable = 1;
        ngx_add_timer(&sub->heartbeat, lcf->heartbeat);
    }
    if (lcf->stream_timeout != NGX_HTTP_SSE_OFF) {
        sub->timeout.handler = ngx_http_sse_timeout_handler;
        sub->timeout.data = sub;
        sub->timeout.log = r->connection->log;
        sub->timeout.cancelable = 1;
        ngx_add_timer(&sub->timeout, lcf->stream_timeout);
    }

    // Headers and catch-up go out now, in one write; with nothing to
    // catch up, flush anyway so that the client sees the response (and
    // EventSource fires onopen) before the first event.
    if (sub->unsent == NULL &&
        ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }
    ngx_http_sse_send(sub);
    r->main->count++;
    return NGX_DONE;
}
