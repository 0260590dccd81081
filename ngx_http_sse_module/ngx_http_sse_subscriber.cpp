// sse_subscribe: the event stream of one client, from catch-up to its end.
#include "ngx_http_sse.hpp"

#include <liburing.h>

#include <algorithm>
#include <climits>
#include <new>

static const u_char ngx_http_sse_heartbeat_line[] = ":\n\n";
static const u_char ngx_http_sse_heartbeat_chunk[] = "3\r\n:\n\n\r\n";
static const u_char ngx_http_sse_last_chunk[] = "0\r\n\r\n";
// Clients reconnect after this long when we end a stream ourselves and
// sse_retry is off.
#define NGX_HTTP_SSE_DEFAULT_RETRY_MS 1000

static ngx_int_t ngx_http_sse_subscribe(ngx_http_request_t *r);
static void ngx_http_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_sse_end_handler(ngx_event_t *ev);
static void ngx_http_sse_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_sse_timeout_handler(ngx_event_t *ev);
static void ngx_http_sse_catchup_handler(ngx_event_t *ev);
static void ngx_http_sse_cleanup(void *data);
static void ngx_http_sse_free_request(ngx_http_sse_subscriber_t *sub);
static void ngx_http_sse_stream_end(ngx_http_sse_subscriber_t *sub);
static void ngx_http_sse_stream_close(ngx_http_sse_subscriber_t *sub);
static void ngx_http_sse_stream_read_handler(ngx_event_t *rev);
static void ngx_http_sse_stream_write_handler(ngx_event_t *wev);

ngx_int_t ngx_http_sse_subscribe_handler(ngx_http_request_t *r) {
    try {
        return ngx_http_sse_subscribe(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

const char *ngx_http_sse_reason_text(ngx_uint_t reason) {
    static const char *const text[] = {
        "",         "max_subscribers", "stream_timeout",
        "shutdown", "zone_full",       "deleted",
        "evicted",  "token_expired",   "unavailable",
        "catch_up"};
    return reason < sizeof(text) / sizeof(text[0]) ? text[reason] : "";
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
    // The queue entry counts too: many small events cost more than bytes.
    sub->pending += o->buf.last - o->buf.pos + sse::reader_overhead;
}

ngx_int_t ngx_http_sse_enqueue(ngx_http_sse_subscriber_t *sub,
                               ngx_http_sse_msg_t *msg) {
    ngx_http_sse_out_t *o = ngx_http_sse_out_get();
    if (o == NULL) {
        return NGX_ERROR;
    }
    o->msg = msg;
    msg->refs++;
    if (sub->framed) {
        o->buf.start = o->buf.pos = msg->frame();
        o->buf.end = o->buf.last = msg->frame() + msg->frame_len();
    } else {
        o->buf.start = o->buf.pos = msg->data();
        o->buf.end = o->buf.last = msg->data() + msg->len;
    }
    ngx_http_sse_append(sub, o);
    if (msg->seq > sub->last_seq) {
        sub->last_seq = msg->seq;
    }
    return NGX_OK;
}

// Queues bytes of the module's own (a retry line, a gap or error event).
static ngx_int_t ngx_http_sse_enqueue_bytes(ngx_http_sse_subscriber_t *sub,
                                            std::string_view bytes) {
    ngx_http_sse_msg_t *msg = ngx_http_sse_msg_new(bytes);
    if (msg == NULL) {
        return NGX_ERROR;
    }
    ngx_int_t rc = ngx_http_sse_enqueue(sub, msg);
    ngx_http_sse_msg_unref(msg);
    return rc;
}

static ngx_msec_t ngx_http_sse_end_retry(ngx_http_sse_loc_conf_t *lcf) {
    return lcf->retry != NGX_HTTP_SSE_OFF ? lcf->retry
                                          : NGX_HTTP_SSE_DEFAULT_RETRY_MS;
}

// Writes "retry: MS" and the blank line that closes it; returns the length.
static size_t ngx_http_sse_retry_line(u_char *buf, ngx_msec_t ms) {
    return ngx_sprintf(buf, "retry: %M\n\n", ms) - buf;
}

// The end of a stream the server closes itself: an sse-error event naming
// why (apps tell "try later" from a network blip; EventSource ignores it),
// then retry:, which EventSource follows.
static std::string ngx_http_sse_end_bytes(ngx_http_sse_loc_conf_t *lcf,
                                          ngx_uint_t reason) {
    std::string out;
    if (reason != NGX_HTTP_SSE_R_NONE) {
        out = "event: sse-error\ndata: {\"reason\":\"";
        out += ngx_http_sse_reason_text(reason);
        out += "\"}\n\n";
    }
    u_char line[NGX_HTTP_SSE_RETRY_LINE_LEN];
    size_t n = ngx_http_sse_retry_line(line, ngx_http_sse_end_retry(lcf));
    out.append(reinterpret_cast<char *>(line), n);
    return out;
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
        size_t n = o->buf.end - o->buf.start + sse::reader_overhead;
        sub->pending -= n;
        sub->catchup -= ngx_min(n, sub->catchup);
        ngx_http_sse_out_put(o);
    }
}

// Links the writes from `first` on into one chain, flushed as one write.
static ngx_chain_t *ngx_http_sse_link(ngx_http_sse_out_t *first) {
    for (ngx_http_sse_out_t *o = first; o != NULL; o = o->next) {
        o->cl.next = o->next ? &o->next->cl : NULL;
        o->buf.flush = o->next == NULL;
    }
    return &first->cl;
}

// The first queued entry with bytes left to send (the rest of a partly
// sent one, or the next); NULL: all is out.
static ngx_http_sse_out_t *ngx_http_sse_first_unsent(
    ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_out_t *o = sub->out_head;
    while (o != NULL && o->buf.pos == o->buf.last) {
        o = o->next;
    }
    return o;
}

// Everything queued is handed to the socket now.
static void ngx_http_sse_give_all(ngx_http_sse_subscriber_t *sub) {
    if (sub->unsent != NULL) {
        sub->unsent = NULL;
        sub->last_write = ngx_current_msec;
    }
}

// A request-free stream: writes what is queued and not yet sent straight
// to the socket (through TLS's buffer, if any), the part of an earlier
// write the socket did not take first; c->buffered says whether some is
// left.
static ngx_int_t ngx_http_sse_write_direct(ngx_http_sse_subscriber_t *sub) {
    ngx_connection_t *c = sub->c;
    ngx_http_sse_out_t *first = ngx_http_sse_first_unsent(sub);
    ngx_http_sse_give_all(sub);
    if (first == NULL && !(c->buffered & NGX_LOWLEVEL_BUFFERED)) {
        c->buffered = 0;
        return NGX_OK;
    }
    if (c->error) {
        return NGX_ERROR;
    }
    ngx_chain_t *rest =
        c->send_chain(c, first ? ngx_http_sse_link(first) : NULL, 0);
    if (rest == NGX_CHAIN_ERROR) {
        c->error = 1;
        return NGX_ERROR;
    }
    c->buffered = (c->buffered & NGX_LOWLEVEL_BUFFERED) |
                  (rest != NULL ? NGX_HTTP_WRITE_BUFFERED : 0);
#if (NGX_SSL)
    if (c->ssl != NULL && c->buffered == 0) {
        // All out: TLS's 16 KB write buffer is not kept while idle (as
        // nginx frees it for a keep-alive connection).
        ngx_ssl_free_buffer(c);
    }
#endif
    return NGX_OK;
}

// Hands a chain to the output filters, or, pre-framed, straight to the
// write filter (which keeps nginx's accounting, limits and send_timeout).
static ngx_int_t ngx_http_sse_pass(ngx_http_sse_subscriber_t *sub,
                                   ngx_chain_t *cl) {
    if (!sub->framed) {
        return ngx_http_output_filter(sub->r, cl);
    }
    if (cl == NULL && !sub->r->connection->buffered) {
        // Nothing to push (a write event with all sent): the write filter
        // calls an empty call an error, the postpone filter skips it.
        return NGX_OK;
    }
    return ngx_http_write_filter(sub->r, cl);
}

// Links the unsent writes into one chain, flushed as one write.
static ngx_chain_t *ngx_http_sse_take_unsent(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_out_t *first = sub->unsent;
    if (first == NULL) {
        return NULL;
    }
    sub->unsent = NULL;
    sub->last_write = ngx_current_msec;
    return ngx_http_sse_link(first);
}

// Waits for the client to read: send_timeout armed once and re-armed only
// by progress (the write handlers), so heartbeats and new events never
// extend a stalled client's life. False on error.
static bool ngx_http_sse_wait_writable(ngx_http_sse_subscriber_t *sub) {
    ngx_event_t *wev = sub->c->write;
    if (!wev->timer_set && !wev->delayed) {
        ngx_add_timer(wev, sub->clcf->send_timeout);
    }
    return ngx_handle_write_event(wev, sub->clcf->send_lowat) == NGX_OK;
}

static void ngx_http_sse_sent(ngx_http_sse_subscriber_t *sub, ngx_int_t rc);

void ngx_http_sse_send(ngx_http_sse_subscriber_t *sub) {
    // A request-free stream links what it sends itself (from the part of
    // an earlier write the socket did not take).
    ngx_http_sse_sent(
        sub, sub->r == NULL
                 ? ngx_http_sse_write_direct(sub)
                 : ngx_http_sse_pass(sub, ngx_http_sse_take_unsent(sub)));
}

// After a write: frees what went out, and ends, bounds or waits for the
// client as what is left says.
static void ngx_http_sse_sent(ngx_http_sse_subscriber_t *sub, ngx_int_t rc) {
    ngx_connection_t *c = sub->c;
    ngx_http_sse_reclaim(sub);
    if (rc == NGX_ERROR) {
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
        return;
    }
    if (sub->pending > sub->lcf->max_pending + sub->catchup) {
        // It resumes from the ring when it comes back.
        sub->drop = NGX_HTTP_SSE_DROP_MAX_PENDING;
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "sse: subscriber owes %uz bytes, over sse_max_pending, "
                      "closing it",
                      sub->pending);
        ngx_http_sse_count(sub->zw, &sse::slot_stats::slow_dropped, 1);
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
        return;
    }
    if (!sub->live && sub->pending <= sub->lcf->max_pending / 2 &&
        !sub->catchup_ev.posted && sub->end == NGX_HTTP_SSE_END_NONE) {
        // The next part of a catch-up larger than sse_max_pending.
        ngx_post_event(&sub->catchup_ev, &ngx_posted_events);
    }
    ngx_event_t *wev = c->write;
    if (c->buffered) {
        if (!ngx_http_sse_wait_writable(sub)) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
        }
        return;
    }
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
    if (sub->r != NULL && sub->freeable && sub->framed && sub->live &&
        sub->end == NGX_HTTP_SSE_END_NONE) {
        // All out: the request can go (from a posted event, never inside
        // the handlers that use it).
        ngx_post_event(&sub->end_ev, &ngx_posted_events);
    }
}

// ------------------------------------------------------------ batched writes
//
// sse_io_uring: the one-event writes of one slice of dirty subscribers go
// to the kernel in one io_uring submission instead of one writev() each.
// Where page-table isolation is on, a system call's entry and exit are
// about a microsecond, most of a small write's CPU, and a paced event is
// one small write per subscriber. Only request-free plain-TCP streams the
// socket takes now, with one buffer to send, go there: where events
// coalesce (a burst), one writev() already carries several, and a
// several-buffer sendmsg through io_uring measured slower than writev()
// (bench/findings.md). Each send is non-blocking (MSG_DONTWAIT: the kernel
// answers EAGAIN instead of waiting), so all have completed when the
// submission returns, and each write is finished in the same turn, as
// after writev().

#define NGX_HTTP_SSE_BATCH_NONE INT_MIN  // no completion yet
// user_data of the entries that are not sends (no-ops, cancels).
#define NGX_HTTP_SSE_BATCH_OTHER UINT64_MAX

struct ngx_http_sse_batch_t {
    struct io_uring ring;
    bool broken;  // not used again (see ngx_http_sse_batch_submit())
    ngx_uint_t n;
    ngx_http_sse_subscriber_t *subs[NGX_HTTP_SSE_SLICE];
    ngx_http_sse_out_t *out[NGX_HTTP_SSE_SLICE];  // the buffer sent
    struct io_uring_sqe *sqe[NGX_HTTP_SSE_SLICE];
    int res[NGX_HTTP_SSE_SLICE];
};

// NULL: off or unavailable.
static ngx_http_sse_batch_t *ngx_http_sse_batch;

void ngx_http_sse_batch_init(ngx_cycle_t *cycle, bool on) {
    if (!on) {
        return;
    }
    auto *b = new (std::nothrow) ngx_http_sse_batch_t();
    if (b == NULL) {
        return;
    }
    // Newest first: one task submits and reaps, with no task work of its
    // own between submissions. Kernels before 5.19 refuse both with EINVAL,
    // and are not used: some of them poll-arm a send that meets a full
    // socket instead of answering EAGAIN.
    static const unsigned flags[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN};
    int rc = -EINVAL;
    for (unsigned f : flags) {
        struct io_uring_params p;
        ngx_memzero(&p, sizeof(p));
        p.flags = f;
        rc = io_uring_queue_init_params(NGX_HTTP_SSE_SLICE, &b->ring, &p);
        if (rc != -EINVAL) {
            break;
        }
    }
    // Every kernel that takes these flags has IORING_OP_SEND (5.6).
    if (rc != 0) {
        // Containers often forbid io_uring (Docker's default seccomp
        // profile does): the writes stay as they were.
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, -rc,
                      "sse: io_uring is not available, stream writes use "
                      "writev()");
        delete b;
        return;
    }
    ngx_http_sse_batch = b;
}

void ngx_http_sse_batch_exit() {
    if (ngx_http_sse_batch != NULL) {
        io_uring_queue_exit(&ngx_http_sse_batch->ring);
        delete ngx_http_sse_batch;
        ngx_http_sse_batch = NULL;
    }
}

bool ngx_http_sse_batch_add(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_batch_t *b = ngx_http_sse_batch;
    ngx_connection_t *c = sub->c;
    if (b == NULL || b->broken || b->n == NGX_HTTP_SSE_SLICE ||
        sub->r != NULL || c->error || !c->write->ready || c->write->delayed ||
        c->buffered
#if (NGX_SSL)
        || c->ssl != NULL
#endif
    ) {
        return false;
    }
    ngx_http_sse_out_t *first = ngx_http_sse_first_unsent(sub);
    if (first == NULL) {
        return false;
    }
    for (ngx_http_sse_out_t *o = first->next; o != NULL; o = o->next) {
        if (o->buf.pos != o->buf.last) {
            return false;  // several events: one writev()
        }
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (sqe == NULL) {
        return false;
    }
    ngx_uint_t i = b->n++;
    io_uring_prep_send(sqe, c->fd, first->buf.pos,
                       first->buf.last - first->buf.pos,
                       MSG_DONTWAIT | MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, i);
    b->subs[i] = sub;
    b->out[i] = first;
    b->sqe[i] = sqe;
    b->res[i] = NGX_HTTP_SSE_BATCH_NONE;
    ngx_http_sse_give_all(sub);
    return true;
}

// Takes the completions there are; returns how many were new.
static ngx_uint_t ngx_http_sse_batch_reap(ngx_http_sse_batch_t *b,
                                          ngx_uint_t n) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    ngx_uint_t got = 0;
    io_uring_for_each_cqe(&b->ring, head, cqe) {
        seen++;
        uint64_t i = io_uring_cqe_get_data64(cqe);
        if (i < n && b->res[i] == NGX_HTTP_SSE_BATCH_NONE) {
            b->res[i] = cqe->res;
            got++;
        }
    }
    io_uring_cq_advance(&b->ring, seen);
    return got;
}

// Finishes one write as ngx_http_sse_write_direct() and ngx_http_sse_send()
// would after writev() returned `res`.
static void ngx_http_sse_batch_done(ngx_http_sse_batch_t *b, ngx_uint_t i) {
    ngx_http_sse_subscriber_t *sub = b->subs[i];
    ngx_connection_t *c = sub->c;
    int res = b->res[i];
    if (res == -EINTR || res == -ECANCELED) {
        ngx_http_sse_send(sub);  // nothing went out: writev() tries
        return;
    }
    if (res < 0 && res != -EAGAIN) {
        c->write->error = 1;
        c->error = 1;
        ngx_connection_error(c, -res, const_cast<char *>("send() failed"));
        ngx_http_sse_sent(sub, NGX_ERROR);
        return;
    }
    size_t sent = res < 0 ? 0 : res;
    ngx_http_sse_out_t *o = b->out[i];
    c->sent += sent;
    o->buf.pos += sent;
    bool rest = o->buf.pos != o->buf.last;
    if (rest) {
        c->write->ready = 0;  // the socket is full: epoll says when not
    }
    c->buffered = rest ? NGX_HTTP_WRITE_BUFFERED : 0;
    ngx_http_sse_sent(sub, NGX_OK);
}

// Waits at most about `ms` for the completions of the first `submitted`
// sends; returns how many came.
static ngx_uint_t ngx_http_sse_batch_wait(ngx_http_sse_batch_t *b, ngx_uint_t n,
                                          ngx_uint_t submitted, ngx_uint_t got,
                                          int ms) {
    for (int waited = 0; got < submitted && waited < ms; waited += 10) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {0, 10 * 1000 * 1000};
        io_uring_wait_cqe_timeout(&b->ring, &cqe, &ts);
        got += ngx_http_sse_batch_reap(b, n);
    }
    return got;
}

void ngx_http_sse_batch_submit() {
    ngx_http_sse_batch_t *b = ngx_http_sse_batch;
    if (b == NULL || b->n == 0) {
        return;
    }
    ngx_uint_t n = b->n;
    b->n = 0;
    int rc = io_uring_submit(&b->ring);
    ngx_uint_t submitted = rc < 0 ? 0 : (ngx_uint_t)rc;
    if (submitted < n) {
        // Never seen. The entries the kernel did not take stay in the ring
        // and would go with the next submission, after writev() has sent
        // their bytes: they become no-ops.
        for (ngx_uint_t i = submitted; i < n; i++) {
            io_uring_prep_nop(b->sqe[i]);
            io_uring_sqe_set_data64(b->sqe[i], NGX_HTTP_SSE_BATCH_OTHER);
        }
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, rc < 0 ? -rc : 0,
                      "sse: io_uring took %ui of %ui stream writes; stream "
                      "writes use writev() from now on",
                      submitted, n);
        b->broken = true;
    }
    ngx_uint_t got = ngx_http_sse_batch_reap(b, n);
    if (got < submitted) {
        // A send that did not finish at once (never seen with MSG_DONTWAIT
        // on 5.19 and later) would read its buffer whenever the socket
        // drains, after the stream may have freed it: each is canceled, and
        // its completion (sent, or canceled with nothing sent) awaited.
        for (ngx_uint_t i = 0; i < submitted; i++) {
            struct io_uring_sqe *sqe;
            if (b->res[i] == NGX_HTTP_SSE_BATCH_NONE &&
                (sqe = io_uring_get_sqe(&b->ring)) != NULL) {
                io_uring_prep_cancel64(sqe, i, 0);
                io_uring_sqe_set_data64(sqe, NGX_HTTP_SSE_BATCH_OTHER);
            }
        }
        io_uring_submit(&b->ring);
        got = ngx_http_sse_batch_wait(b, n, submitted, got, 1000);
        if (got < submitted) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "sse: %ui io_uring stream writes did not finish "
                          "or cancel in 1 s; stream writes use writev() "
                          "from now on",
                          submitted - got);
            b->broken = true;
        }
    }
    ngx_http_sse_zone_worker_t *zw = NULL;
    uint64_t count = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        ngx_http_sse_subscriber_t *sub = b->subs[i];
        if (b->res[i] != NGX_HTTP_SSE_BATCH_NONE) {
            if (sub->zw != zw) {
                ngx_http_sse_count(zw, &sse::slot_stats::batched_writes, count);
                zw = sub->zw;
                count = 0;
            }
            count += b->res[i] >= 0;  // bytes went out in the batch
            ngx_http_sse_batch_done(b, i);
        } else if (i >= submitted) {
            ngx_http_sse_send(sub);  // never went to the kernel
        } else {
            // Taken and neither finished nor canceled: its bytes' fate is
            // unknown, so the stream ends (the client resumes from its last
            // id).
            sub->c->error = 1;
            ngx_http_sse_sent(sub, NGX_ERROR);
        }
    }
    if (zw != NULL) {
        ngx_http_sse_count(zw, &sse::slot_stats::batched_writes, count);
    }
}

void ngx_http_sse_end(ngx_http_sse_subscriber_t *sub, ngx_uint_t how,
                      ngx_uint_t reason) {
    if (sub->end == NGX_HTTP_SSE_END_NONE) {
        ngx_post_event(&sub->end_ev, &ngx_posted_events);
        sub->reason = reason;
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                       "sse: ending stream (%ui, %s)", how,
                       ngx_http_sse_reason_text(reason));
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
    if (sub->expiry.timer_set) {
        ngx_del_timer(&sub->expiry);
    }
    if (sub->end_ev.posted) {
        ngx_delete_posted_event(&sub->end_ev);
    }
    if (sub->catchup_ev.posted) {
        ngx_delete_posted_event(&sub->catchup_ev);
    }
}

static void ngx_http_sse_end_handler(ngx_event_t *ev) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(ev->data);
    if (sub->end == NGX_HTTP_SSE_END_NONE) {
        ngx_http_sse_free_request(sub);
        return;
    }
    if (sub->r == NULL) {
        ngx_http_sse_stream_end(sub);
        return;
    }
    ngx_http_request_t *r = sub->r;
    ngx_connection_t *c = r->connection;

    ngx_int_t rc = NGX_ERROR;
    bool hooked = false;
    try {
        bool joined = sub->joined;
        ngx_http_sse_detach(sub);
        ngx_http_sse_stop_timers(sub);
        hooked = joined && ngx_http_sse_unsubscribe_hook(sub);
        if (sub->end != NGX_HTTP_SSE_END_CLOSE) {
            rc = ngx_http_sse_enqueue_bytes(
                sub, ngx_http_sse_end_bytes(sub->lcf, sub->reason));
            if (rc == NGX_OK) {
                rc = ngx_http_sse_pass(sub, ngx_http_sse_take_unsent(sub));
                if (rc != NGX_ERROR) {
                    // The chunked filter's last chunk.
                    rc = ngx_http_send_special(r, NGX_HTTP_LAST);
                }
                ngx_http_sse_reclaim(sub);
            }
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
        rc = NGX_ERROR;
    }
    if (hooked && rc == NGX_ERROR) {
        ngx_http_sse_close_after_hook(r);
    } else {
        ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
    }
    ngx_http_run_posted_requests(c);
}

static void ngx_http_sse_write_handler(ngx_http_request_t *r) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    ngx_event_t *wev = r->connection->write;
    if (wev->timedout) {
        // Nothing read for send_timeout, whatever the heartbeats did.
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "sse: client timed out");
        r->connection->timedout = 1;
        if (sub->lcf->unsubscribe_request.len > 0) {
            // The end handler sends the leave hook and closes.
            r->connection->error = 1;
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
            return;
        }
        try {
            ngx_http_sse_detach(sub);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s",
                          e.what());
        }
        ngx_http_sse_stop_timers(sub);
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    // Writable again: the client read something; its timer starts anew.
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
    if (sub->end == NGX_HTTP_SSE_END_NONE) {
        ngx_http_sse_send(sub);
    } else {
        ngx_http_output_filter(r, NULL);
        ngx_http_sse_reclaim(sub);
    }
}

// ngx_http_test_reading()'s check, for the sse_unsubscribe_request
// streams and the request-free ones (epoll or poll): true, with the
// connection marked and logged, when the client has closed.
static bool ngx_http_sse_peer_closed(ngx_http_sse_subscriber_t *sub,
                                     ngx_err_t *errp) {
    ngx_connection_t *c = sub->c;
    ngx_event_t *rev = c->read;
    ngx_err_t err = 0;
    bool closed = false;
#if (NGX_HAVE_EPOLLRDHUP)
    if ((ngx_event_flags & NGX_USE_EPOLL_EVENT) && ngx_use_epoll_rdhup) {
        if (!rev->pending_eof) {
            return false;
        }
        closed = true;
        socklen_t len = sizeof(ngx_err_t);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *)&err, &len) == -1) {
            err = ngx_socket_errno;
        }
    } else
#endif
    {
        char buf[1];
        ssize_t n = recv(c->fd, buf, 1, MSG_PEEK);
        if (n == 0) {
            closed = true;
        } else if (n == -1) {
            err = ngx_socket_errno;
            closed = err != NGX_EAGAIN;
        }
    }
    if (!closed) {
        if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && rev->active &&
            ngx_del_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
            *errp = ngx_errno;
            return true;
        }
        return false;
    }
    rev->eof = 1;
    c->error = 1;
    if (err) {
        rev->error = 1;
    }
    sub->drop = NGX_HTTP_SSE_DROP_CLIENT_CLOSED;
    ngx_log_error(NGX_LOG_INFO, c->log, err,
                  "client prematurely closed connection");
    *errp = err;
    return true;
}

// ngx_http_test_reading(), but a closed client ends the stream through the
// end handler, which sends sse_unsubscribe_request before closing (the
// original finalizes at once, which would cut the subrequest).
static void ngx_http_sse_read_handler(ngx_http_request_t *r) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    bool native = sub == NULL || sub->end != NGX_HTTP_SSE_END_NONE;
#if (NGX_HTTP_V2)
    native = native || r->stream != NULL;
#endif
#if (NGX_HTTP_V3)
    native = native || r->connection->quic != NULL;
#endif
#if (NGX_HAVE_KQUEUE)
    native = native || (ngx_event_flags & NGX_USE_KQUEUE_EVENT);
#endif
    if (native) {
        ngx_http_test_reading(r);
        return;
    }
    ngx_err_t err = 0;
    if (ngx_http_sse_peer_closed(sub, &err)) {
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
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
        ngx_int_t rc = sub->framed
                           ? ngx_http_sse_enqueue_static(
                                 sub, ngx_http_sse_heartbeat_chunk,
                                 sizeof(ngx_http_sse_heartbeat_chunk) - 1)
                           : ngx_http_sse_enqueue_static(
                                 sub, ngx_http_sse_heartbeat_line,
                                 sizeof(ngx_http_sse_heartbeat_line) - 1);
        if (rc != NGX_OK) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
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
                     NGX_HTTP_SSE_END_RETRY, NGX_HTTP_SSE_R_STREAM_TIMEOUT);
}

// Timers further away than this are re-armed when they fire.
#define NGX_HTTP_SSE_MAX_TIMER ((ngx_msec_t)NGX_MAX_INT32_VALUE)

// Milliseconds until the token expires, at least 1; far futures within a
// timer's range (re-checked when the timer fires).
static ngx_msec_t ngx_http_sse_expires_in(ngx_http_sse_subscriber_t *sub) {
    ngx_time_t *tp = ngx_timeofday();
    int64_t left = sub->expires_ms - ((int64_t)tp->sec * 1000 + tp->msec);
    if (left <= 0) {
        return 1;
    }
    return left >= (int64_t)NGX_HTTP_SSE_MAX_TIMER ? NGX_HTTP_SSE_MAX_TIMER
                                                   : (ngx_msec_t)left;
}

static void ngx_http_sse_expiry_handler(ngx_event_t *ev) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(ev->data);
    ngx_msec_t left = ngx_http_sse_expires_in(sub);
    if (left > 1) {
        ngx_add_timer(ev, ngx_min(left, NGX_HTTP_SSE_MAX_TIMER));
        return;
    }
    // The client fetches a fresh token and resumes with nothing lost.
    ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY, NGX_HTTP_SSE_R_TOKEN_EXPIRED);
}

// Frees what is queued; timers stopped first.
static void ngx_http_sse_free_out(ngx_http_sse_subscriber_t *sub) {
    while (sub->out_head != NULL) {
        ngx_http_sse_out_t *o = sub->out_head;
        sub->out_head = o->next;
        ngx_http_sse_out_put(o);
    }
    sub->out_tail = sub->unsent = NULL;
}

static void ngx_http_sse_cleanup(void *data) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(data);
    if (sub->r == NULL) {
        // Request-free from now on: its connection's close ends it.
        return;
    }
    if (sub->zw != NULL && ngx_http_sse_zone_worker(sub->zw->zone) == sub->zw) {
        try {
            ngx_http_sse_detach(sub);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: %s", e.what());
        }
    }
    ngx_http_sse_stop_timers(sub);
    ngx_http_sse_free_out(sub);
    if (sub->owned) {
        ngx_free(sub);  // malloc'd, and never went request-free
    }
}

// ---------------------------------------------------------------- request-free
//
// An HTTP/1.1 stream (plain or TLS) on the pre-framed path frees its
// request once set up and all sent, as nginx does for a keep-alive
// connection: the access log entry is written
// then, the request's pool and the header buffers are freed, and only the
// connection and the subscriber record are left; the pre-framed chunks go
// to c->send_chain. Everything that ends a stream ends here: end events
// (retry, deleted channel, shutdown, ...), max_pending, send_timeout, the
// client's close.

// nginx's NGX_HTTP_LIMIT_CONN_PASSED (not in a header): limit_conn counts
// the request until it is freed.
#define NGX_HTTP_SSE_LIMIT_CONN_PASSED 1

// The large header buffers of a chain (hc->free, hc->busy), as
// ngx_http_set_keepalive() frees them.
static void ngx_http_sse_free_bufs(ngx_connection_t *c, ngx_chain_t **chain) {
    for (ngx_chain_t *cl = *chain, *ln; cl != NULL; /* void */) {
        ln = cl;
        cl = cl->next;
        ngx_pfree(c->pool, ln->buf->start);
        ngx_free_chain(c->pool, ln);
    }
    *chain = NULL;
}

static void ngx_http_sse_free_request(ngx_http_sse_subscriber_t *sub) {
    ngx_http_request_t *r = sub->r;
    ngx_connection_t *c = sub->c;
    if (r == NULL || !sub->freeable || !sub->live || c->buffered || c->error) {
        return;  // tried again once all is out
    }
    if (r->count != 1 || r->blocked || r->out != NULL || r->postponed != NULL ||
        r->limit_rate != 0 ||
        r->main->limit_conn_status == NGX_HTTP_SSE_LIMIT_CONN_PASSED) {
        // Still in use, or limit_conn and limit_rate need it: the request
        // lives as long as the stream.
        sub->freeable = 0;
        return;
    }
    // Own copies of what points into the request's pool.
    u_char *presence = NULL;
    std::string *who = NULL;
    try {
        if (sub->presence.len != 0) {
            presence =
                static_cast<u_char *>(ngx_alloc(sub->presence.len, c->log));
            if (presence == NULL) {
                throw std::bad_alloc();
            }
            ngx_memcpy(presence, sub->presence.data, sub->presence.len);
        }
        if (sub->who != NULL) {
            who = new std::string(*sub->who);
        }
    } catch (const std::exception &) {
        ngx_free(presence);
        sub->freeable = 0;
        return;
    }
    if (presence != NULL) {
        sub->presence.data = presence;
    }
    sub->who = who;
    ngx_http_connection_t *hc = r->http_connection;
    // From here on the pool cleanup leaves the stream alone.
    sub->r = NULL;
    // Runs the log phase (the access log entry) and frees the pool.
    ngx_http_free_request(r, 0);
    c->data = sub;
    c->log->action = const_cast<char *>("sending events");

    // The header buffers, as ngx_http_set_keepalive() frees them.
    ngx_buf_t *b = c->buffer;
    if (b != NULL && b->start != NULL &&
        ngx_pfree(c->pool, b->start) == NGX_OK) {
        b->start = b->pos = b->last = b->end = NULL;
    }
    ngx_http_sse_free_bufs(c, &hc->free);
    ngx_http_sse_free_bufs(c, &hc->busy);
    hc->nbusy = 0;

    c->read->handler = ngx_http_sse_stream_read_handler;
    c->write->handler = ngx_http_sse_stream_write_handler;
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "sse: request freed");
}

// The one line a request-free stream leaves when it ends (its access log
// entry was written when it was set up).
static void ngx_http_sse_log_end(ngx_http_sse_subscriber_t *sub,
                                 std::string_view channels) {
    static const char *const drops[] = {"error", "client_closed", "max_pending",
                                        "send_timeout"};
    const char *why = sub->end == NGX_HTTP_SSE_END_CLOSE
                          ? drops[sub->drop]
                          : ngx_http_sse_reason_text(sub->reason);
    if (*why == '\0') {
        why = "end";
    }
    ngx_str_t ch = {channels.size(), (u_char *)channels.data()};
    ngx_log_error(NGX_LOG_INFO, sub->c->log, 0,
                  "sse: stream ended (%s): channel(s) \"%V\", %O bytes sent "
                  "in %M ms",
                  why, &ch, sub->c->sent, ngx_current_msec - sub->start);
}

// Ends a request-free stream: leaves its channels, writes the end of
// stream (sse-error, retry: and the last chunk) unless dropped, and closes
// once that is out.
static void ngx_http_sse_stream_end(ngx_http_sse_subscriber_t *sub) {
    ngx_connection_t *c = sub->c;
    std::string channels;
    try {
        for (ngx_uint_t i = 0; sub->joined && i < sub->nlinks; i++) {
            // Read while joined: leaving may free the channel.
            if (i > 0) {
                channels += ',';
            }
            channels += sub->chans[i]->id();
        }
    } catch (const std::exception &) {
        channels.clear();  // the line goes without them
    }
    try {
        ngx_http_sse_detach(sub);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
    }
    ngx_http_sse_stop_timers(sub);
    sub->closing = 1;
    bool wait = false;
    if (sub->end != NGX_HTTP_SSE_END_CLOSE) {
        ngx_int_t rc = NGX_ERROR;
        try {
            rc = ngx_http_sse_enqueue_bytes(
                sub, ngx_http_sse_end_bytes(sub->lcf, sub->reason));
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
        }
        if (rc == NGX_OK) {
            rc = ngx_http_sse_enqueue_static(
                sub, ngx_http_sse_last_chunk,
                sizeof(ngx_http_sse_last_chunk) - 1);
        }
        if (rc == NGX_OK) {
            rc = ngx_http_sse_write_direct(sub);
            ngx_http_sse_reclaim(sub);
        }
        wait = rc == NGX_OK && c->buffered && ngx_http_sse_wait_writable(sub);
    }
    ngx_http_sse_log_end(sub, channels);
    if (!wait) {
        ngx_http_sse_stream_close(sub);
    }
}

static void ngx_http_sse_stream_close(ngx_http_sse_subscriber_t *sub) {
    ngx_connection_t *c = sub->c;
    if (c->timedout && sub->clcf->reset_timedout_connection) {
        // As nginx does for a timed-out request: RST, no FIN_WAIT.
        struct linger linger = {1, 0};
        if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, (const void *)&linger,
                       sizeof(struct linger)) == -1) {
            ngx_log_error(NGX_LOG_ALERT, c->log, ngx_socket_errno,
                          "setsockopt(SO_LINGER) failed");
        }
    }
    ngx_http_sse_stop_timers(sub);
    ngx_http_sse_free_out(sub);
    if (sub->presence.len != 0) {
        ngx_free(sub->presence.data);
    }
    delete sub->who;
    ngx_free(sub);
    ngx_http_close_connection(c);
}

// Ends a request-free stream at once: the client is gone or stalled, or
// nginx closes connections (worker_shutdown_timeout).
static void ngx_http_sse_stream_drop(ngx_http_sse_subscriber_t *sub) {
    if (sub->closing) {
        ngx_http_sse_stream_close(sub);
        return;
    }
    sub->end = NGX_HTTP_SSE_END_CLOSE;
    ngx_http_sse_stream_end(sub);
}

static void ngx_http_sse_stream_read_handler(ngx_event_t *rev) {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(c->data);
    if (c->close) {
        ngx_http_sse_stream_drop(sub);
        return;
    }
    ngx_err_t err = 0;
    if (!ngx_http_sse_peer_closed(sub, &err)) {
        return;
    }
    if (sub->closing) {
        ngx_http_sse_stream_close(sub);
        return;
    }
    // Posted, as for any stream: callers iterating subscribers are safe.
    ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
}

static void ngx_http_sse_stream_write_handler(ngx_event_t *wev) {
    auto *c = static_cast<ngx_connection_t *>(wev->data);
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(c->data);
    if (wev->timedout) {
        // Nothing read for send_timeout, whatever the heartbeats did.
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "sse: client timed out");
        c->timedout = 1;
        sub->drop = NGX_HTTP_SSE_DROP_SEND_TIMEOUT;
        ngx_http_sse_stream_drop(sub);
        return;
    }
    // Writable again: the client read something; its timer starts anew.
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
    if (!sub->closing) {
        if (sub->end == NGX_HTTP_SSE_END_NONE) {
            ngx_http_sse_send(sub);
        }
        return;  // else the end handler runs soon
    }
    // The end of stream: out, then close.
    ngx_int_t rc = ngx_http_sse_write_direct(sub);
    ngx_http_sse_reclaim(sub);
    if (rc == NGX_OK && c->buffered && ngx_http_sse_wait_writable(sub)) {
        return;
    }
    ngx_http_sse_stream_close(sub);
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

// Overload or shutdown: an sse-error event, "retry:" and a clean end,
// which EventSource follows, rather than a 5xx, which would stop it for
// good.
static ngx_int_t ngx_http_sse_refuse(ngx_http_request_t *r,
                                     ngx_http_sse_loc_conf_t *lcf,
                                     ngx_uint_t reason) {
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sse: refusing subscriber: %s",
                   ngx_http_sse_reason_text(reason));
    ngx_int_t rc = ngx_http_sse_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    std::string bytes = ngx_http_sse_end_bytes(lcf, reason);
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, bytes.size());
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->last = ngx_cpymem(b->last, bytes.data(), bytes.size());
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

// Copies the owed events (listed in the session that set the slot's hold)
// into this worker's shared copies and queues them, then ends the hold.
// False when out of memory.
static bool ngx_http_sse_queue_owed(ngx_http_sse_subscriber_t *sub,
                                    const sse::catch_up_result &res) {
    ngx_http_sse_zone_worker_t *zw = sub->zw;
    bool ok = true;
    size_t before = sub->pending;
    uint64_t queued = 0;
    for (const sse::message *m : zw->owed) {
        ngx_http_sse_msg_t *msg = ngx_http_sse_msg_copy(zw, m);
        if (msg == NULL) {
            ok = false;
            break;
        }
        ngx_int_t rc = ngx_http_sse_enqueue(sub, msg);
        ngx_http_sse_msg_unref(msg);
        if (rc != NGX_OK) {
            ok = false;
            break;
        }
        queued++;
    }
    zw->owed.clear();
    {
        auto s = ngx_http_sse_session(zw->zone);
        s->end_read(zw->slot, 0, sub->chans, sub->nlinks);
    }
    sub->catchup += sub->pending - before;
    ngx_http_sse_count(zw, &sse::slot_stats::delivered, queued);
    if (ok) {
        // Catch-up seqs are all <= last_seq; live events follow it.
        sub->last_seq = res.last_seq;
        sub->live = !res.more;
    }
    return ok;
}

// The next part of a catch-up that was larger than sse_max_pending, once
// the client has read most of the previous part.
static void ngx_http_sse_catchup_handler(ngx_event_t *ev) {
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(ev->data);
    ngx_http_sse_zone_worker_t *zw = sub->zw;
    if (sub->end != NGX_HTTP_SSE_END_NONE || sub->live) {
        return;
    }
    try {
        sse::catch_up_result res;
        {
            auto s = ngx_http_sse_session(zw->zone);
            res = s->catch_up_after(zw->slot, sub->chans, sub->nlinks,
                                    sub->last_seq, sub->lcf->max_pending,
                                    zw->owed);
        }
        if (res.gap != sse::gap_reason::none) {
            // The ring moved past it meanwhile: it resumes and learns of
            // the gap.
            zw->owed.clear();
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY,
                             NGX_HTTP_SSE_R_CATCH_UP);
            return;
        }
        if (!ngx_http_sse_queue_owed(sub, res)) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
            return;
        }
        ngx_http_sse_send(sub);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, sub->c->log, 0, "sse: %s", e.what());
        zw->owed.clear();
        ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE, NGX_HTTP_SSE_R_NONE);
    }
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
        return ngx_http_sse_refuse(r, lcf, NGX_HTTP_SSE_R_SHUTDOWN);
    }
    if (zw->slot == sse::no_slot) {
        return ngx_http_sse_refuse(r, lcf, NGX_HTTP_SSE_R_UNAVAILABLE);
    }
    if (z->redis != NULL) {
        // Ids are Redis's: none is served before this machine has them.
        if (!ngx_http_sse_redis_ready(z)) {
            return ngx_http_sse_refuse(r, lcf, NGX_HTTP_SSE_R_UNAVAILABLE);
        }
        ngx_http_sse_follow_epoch(zw);
    }
    ngx_str_t resume;
    if (ngx_http_sse_resume_point(r, lcf, &resume) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    // sse_free_request: where the stream may outlive its request, the
    // record (links and channels after it) is malloc'd, else in r->pool.
    bool freeable = lcf->free_request && lcf->unsubscribe_request.len == 0 &&
                    r == r->main && r->http_version < NGX_HTTP_VERSION_20;
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    size_t size =
        sizeof(ngx_http_sse_subscriber_t) +
        ids.size() * (sizeof(ngx_http_sse_link_t) + sizeof(sse::channel *));
    auto *sub = static_cast<ngx_http_sse_subscriber_t *>(
        freeable ? ngx_calloc(size, r->connection->log)
                 : ngx_pcalloc(r->pool, size));
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    sub->links = reinterpret_cast<ngx_http_sse_link_t *>(sub + 1);
    sub->chans = reinterpret_cast<sse::channel **>(sub->links + ids.size());
    sub->owned = sub->freeable = freeable;
    sub->r = r;
    sub->c = r->connection;
    sub->clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    sub->start = ngx_current_msec;
    sub->expires_ms = ngx_http_sse_auth_expires_at(r);
    sub->lcf = lcf;
    sub->zw = zw;
    sub->end_ev.handler = ngx_http_sse_end_handler;
    sub->end_ev.data = sub;
    sub->end_ev.log = r->connection->log;
    sub->catchup_ev.handler = ngx_http_sse_catchup_handler;
    sub->catchup_ev.data = sub;
    sub->catchup_ev.log = r->connection->log;
    // Registered before joining: from here on the pool cleanup gives the
    // counts back, whatever fails.
    cln->handler = ngx_http_sse_cleanup;
    cln->data = sub;
    ngx_http_set_ctx(r, sub, ngx_http_sse_module);
    if (!ngx_http_sse_presence_prepare(r, sub, &rc)) {
        return rc;
    }

    // Reserved now so that nothing allocates while the zone is locked.
    std::vector<sse::channel *> joined;
    joined.reserve(ids.size());
    zw->owed.clear();
    zw->owed.reserve(64);

    sse::join_status js;
    sse::catch_up_result res{};
    {
        auto s = ngx_http_sse_session(z);
        js = s->join(zw->slot, ids, lcf->max_subscribers, ngx_current_msec,
                     joined);
        if (js == sse::join_status::ok) {
            ngx_http_sse_redis_count_touch_all(z, *s, joined.data(),
                                               joined.size());
            sub->joined = 1;
            sub->nlinks = joined.size();
            ngx_memcpy(sub->chans, joined.data(),
                       joined.size() * sizeof(sse::channel *));
            res =
                s->catch_up(zw->slot, sub->chans, sub->nlinks,
                            {reinterpret_cast<char *>(resume.data), resume.len},
                            lcf->initial_events, ngx_current_msec,
                            lcf->max_pending, zw->owed);
        }
    }
    if (js == sse::join_status::zone_full) {
        return ngx_http_sse_refuse(r, lcf, NGX_HTTP_SSE_R_ZONE_FULL);
    }
    if (js == sse::join_status::max_subscribers) {
        return ngx_http_sse_refuse(r, lcf, NGX_HTTP_SSE_R_MAX_SUBSCRIBERS);
    }
    ngx_http_sse_presence_joined(sub);

    // The gap event first: its id lets a client that reconnects now
    // resume exactly after the gap rather than meet it again.
    std::string gap;
    if (res.gap != sse::gap_reason::none) {
        uint64_t at =
            zw->owed.empty() ? res.last_seq : zw->owed.front()->seq - 1;
        char id[sse::max_event_id_len];
        size_t n = sse::format_event_id(id, {res.epoch, at});
        gap = sse::encode_event(
            {id, n}, "sse-gap",
            ngx_http_sse_gap_json(
                {reinterpret_cast<char *>(resume.data), resume.len},
                sse::describe(res.gap)));
    }
    // retry:, then the gap, then the catch-up: one write.
    if (lcf->retry != NGX_HTTP_SSE_OFF) {
        u_char line[NGX_HTTP_SSE_RETRY_LINE_LEN];
        size_t n = ngx_http_sse_retry_line(line, lcf->retry);
        if (ngx_http_sse_enqueue_bytes(
                sub, {reinterpret_cast<char *>(line), n}) != NGX_OK) {
            zw->owed.clear();
            auto s = ngx_http_sse_session(z);
            s->end_read(zw->slot, 0, NULL, 0);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    if (!gap.empty() && ngx_http_sse_enqueue_bytes(sub, gap) != NGX_OK) {
        zw->owed.clear();
        auto s = ngx_http_sse_session(z);
        s->end_read(zw->slot, 0, NULL, 0);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!ngx_http_sse_queue_owed(sub, res)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_sse_attach(sub);

    rc = ngx_http_sse_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    r->read_event_handler = lcf->unsubscribe_request.len > 0
                                ? ngx_http_sse_read_handler
                                : ngx_http_test_reading;
    r->write_event_handler = ngx_http_sse_write_handler;
    // Events are small writes, often close together: Nagle would hold the
    // second of two behind the client's delayed ACK (tens of ms on a real
    // network). nginx itself sets it only on keep-alive and upgraded
    // connections; `tcp_nodelay off` keeps it off here too. A failure is
    // logged by nginx and costs only latency.
    if (sub->clcf->tcp_nodelay && r->http_version < NGX_HTTP_VERSION_20) {
        (void)ngx_tcp_nodelay(r->connection);
    }
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
    if (sub->expires_ms != 0) {
        sub->expiry.handler = ngx_http_sse_expiry_handler;
        sub->expiry.data = sub;
        sub->expiry.log = r->connection->log;
        sub->expiry.cancelable = 1;
        ngx_add_timer(&sub->expiry, ngx_http_sse_expires_in(sub));
    }

    // Headers and catch-up go out now, in one write; with nothing to
    // catch up, flush anyway so that the client sees the response (and
    // EventSource fires onopen) before the first event.
    if (sub->unsent == NULL &&
        ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }
    ngx_http_sse_send(sub);
    // From here on (all queued so far went through the filters): events
    // go out as the worker copy's ready-made chunks, no filter work and no
    // allocation per subscriber.
    sub->framed = ngx_http_sse_can_frame(r);
    sub->freeable = sub->freeable && sub->framed;
    r->main->count++;
    if (sub->freeable && sub->live && !r->connection->buffered &&
        sub->end == NGX_HTTP_SSE_END_NONE) {
        // Set up and all out: the request goes once this handler is done.
        ngx_post_event(&sub->end_ev, &ngx_posted_events);
    }
    return NGX_DONE;
}
