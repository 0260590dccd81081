// Per-worker state: wake-ups between processes, one copy of each event per
// worker, fan-out to the local subscribers, process slots, upkeep,
// shutdown.
#include "ngx_http_sse.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <new>

// A safety net only: every publish wakes the processes it concerns.
#define NGX_HTTP_SSE_POLL_MS 250
#define NGX_HTTP_SSE_SWEEP_MS 1000
#define NGX_HTTP_SSE_FREE_OUT_MAX 4096
// A delivery writes at once (before the publisher is answered, ahead of the
// rest of the turn) when at most this many subscribers wait; more wait for
// the flush, where a burst coalesces.
#define NGX_HTTP_SSE_WRITE_NOW 32

// A publish's answer held until the other processes with subscribers of
// its channel have read its event (sse_publish_wait).
struct ngx_http_sse_answer_t {
    ngx_http_sse_zone_t *z;
    uint64_t seq;
    sse::slot_set others;
    ngx_http_request_t *r;  // NULL: its pool went first
    void (*done)(ngx_http_request_t *r);
    ngx_msec_t deadline;
    ngx_pool_cleanup_t *cln;  // in r->pool: forgets r
};

struct ngx_http_sse_worker_t {
    ngx_http_sse_main_conf_t *mcf;
    std::vector<ngx_http_sse_zone_worker_t *> zones;
    // A datagram socket bound to an abstract address named by our pid: any
    // process of any generation that knows our pid (from our slot) wakes us
    // with one datagram.
    ngx_connection_t *wake;
    ngx_event_t poll;
    ngx_http_sse_out_t *free_out;
    ngx_uint_t nfree_out;
    ngx_queue_t dirty;  // subscribers with unsent events, oldest first
    ngx_uint_t ndirty;
    ngx_event_t flush;
    std::vector<ngx_http_sse_answer_t *> answers;  // oldest first
    ngx_event_t answer_timer;                      // the earliest deadline
    unsigned delivering : 1;
};

// This process's state, made in init_process and freed in exit_process.
static ngx_http_sse_worker_t *ngx_http_sse_w;

// Body filters that rewrite what passes (each has a request context when
// it does): a stream they take is not pre-framed. By name, so that a
// filter not built into this nginx needs no symbol.
static const char *const ngx_http_sse_rewriting_filters[] = {
    "ngx_http_gzip_filter_module", "ngx_http_gunzip_filter_module",
    "ngx_http_sub_filter_module",  "ngx_http_addition_filter_module",
    "ngx_http_ssi_filter_module",  "ngx_http_charset_filter_module",
    "ngx_http_xslt_filter_module", "ngx_http_image_filter_module",
    "ngx_http_subs_filter_module", "ngx_http_brotli_filter_module",
    "ngx_http_zstd_filter_module"};
#define NGX_HTTP_SSE_NFILTERS \
    (sizeof(ngx_http_sse_rewriting_filters) / sizeof(char *))
// Their ctx_index in this nginx; NGX_ERROR: not loaded.
static ngx_int_t ngx_http_sse_filter_ctx[NGX_HTTP_SSE_NFILTERS];

static void ngx_http_sse_deliver(ngx_http_sse_zone_worker_t *zw);
static void ngx_http_sse_flush(ngx_http_sse_worker_t *w);

static socklen_t ngx_http_sse_wake_addr(struct sockaddr_un *sa, ngx_pid_t pid) {
    ngx_memzero(sa, sizeof(struct sockaddr_un));
    sa->sun_family = AF_UNIX;
    // Abstract namespace: sun_path[0] is NUL; nothing on the file system.
    u_char *end =
        ngx_snprintf((u_char *)sa->sun_path + 1, sizeof(sa->sun_path) - 1,
                     "ngx-sse-wake-%P", pid);
    return offsetof(struct sockaddr_un, sun_path) +
           (end - (u_char *)sa->sun_path);
}

// Calls f(sub) for each subscriber of a local channel; f must not detach
// (ending a stream is posted, so it does not).
template <typename F>
static void ngx_http_sse_each_sub(ngx_http_sse_local_channel_t *lc, F &&f) {
    for (ngx_queue_t *q = ngx_queue_head(&lc->subs);
         q != ngx_queue_sentinel(&lc->subs); q = ngx_queue_next(q)) {
        f((ngx_queue_data(q, ngx_http_sse_link_t, queue))->sub);
    }
}

// Allocates a copy of `len` bytes, its chunk frame around them.
static ngx_http_sse_msg_t *ngx_http_sse_msg_alloc(size_t len) {
    auto *msg = static_cast<ngx_http_sse_msg_t *>(ngx_alloc(
        sizeof(ngx_http_sse_msg_t) + NGX_HTTP_SSE_CHUNK_ROOM + len + 2,
        ngx_cycle->log));
    if (msg == NULL) {
        return NULL;
    }
    msg->refs = 1;
    msg->len = len;
    msg->seq = 0;
    msg->cache = NULL;
    u_char line[NGX_HTTP_SSE_CHUNK_ROOM];
    msg->hlen = ngx_sprintf(line, "%xO\r\n", (off_t)len) - line;
    ngx_memcpy(msg->frame(), line, msg->hlen);
    u_char *end = msg->data() + len;
    end[0] = CR;
    end[1] = LF;
    return msg;
}

ngx_http_sse_msg_t *ngx_http_sse_msg_new(std::string_view bytes) {
    ngx_http_sse_msg_t *msg = ngx_http_sse_msg_alloc(bytes.size());
    if (msg != NULL && !bytes.empty()) {
        ngx_memcpy(msg->data(), bytes.data(), bytes.size());
    }
    return msg;
}

ngx_http_sse_msg_t *ngx_http_sse_msg_copy(ngx_http_sse_zone_worker_t *zw,
                                          const sse::message *m) {
    auto it = zw->copies.find(m->seq);
    if (it != zw->copies.end()) {
        it->second->refs++;
        return it->second;
    }
    char id[sse::max_event_id_len];
    size_t idlen = sse::format_event_id(id, {zw->epoch, m->seq});
    size_t len = sizeof("id: \n") - 1 + idlen + m->size;
    ngx_http_sse_msg_t *msg = ngx_http_sse_msg_alloc(len);
    if (msg == NULL) {
        return NULL;
    }
    msg->seq = m->seq;
    u_char *p = ngx_cpymem(msg->data(), "id: ", 4);
    p = ngx_cpymem(p, id, idlen);
    *p++ = '\n';
    ngx_memcpy(p, m->bytes(), m->size);
    try {
        zw->copies.emplace(m->seq, msg);
        msg->cache = zw;
    } catch (const std::bad_alloc &) {
        // Unshared, but still a copy.
    }
    return msg;
}

void ngx_http_sse_msg_unref(ngx_http_sse_msg_t *msg) {
    if (--msg->refs == 0) {
        if (msg->cache != NULL) {
            msg->cache->copies.erase(msg->seq);
        }
        ngx_free(msg);
    }
}

ngx_http_sse_out_t *ngx_http_sse_out_get() {
    ngx_http_sse_out_t *o;
    if (ngx_http_sse_w != NULL && ngx_http_sse_w->free_out != NULL) {
        o = ngx_http_sse_w->free_out;
        ngx_http_sse_w->free_out = o->next;
        ngx_http_sse_w->nfree_out--;
    } else {
        o = static_cast<ngx_http_sse_out_t *>(
            ngx_alloc(sizeof(ngx_http_sse_out_t), ngx_cycle->log));
        if (o == NULL) {
            return NULL;
        }
    }
    ngx_memzero(o, sizeof(ngx_http_sse_out_t));
    o->cl.buf = &o->buf;
    return o;
}

void ngx_http_sse_out_put(ngx_http_sse_out_t *o) {
    if (o->msg != NULL) {
        ngx_http_sse_msg_unref(o->msg);
        o->msg = NULL;
    }
    if (ngx_http_sse_w == NULL ||
        ngx_http_sse_w->nfree_out >= NGX_HTTP_SSE_FREE_OUT_MAX) {
        ngx_free(o);
        return;
    }
    o->next = ngx_http_sse_w->free_out;
    ngx_http_sse_w->free_out = o;
    ngx_http_sse_w->nfree_out++;
}

ngx_http_sse_zone_worker_t *ngx_http_sse_zone_worker(ngx_http_sse_zone_t *z) {
    if (ngx_http_sse_w == NULL || z->index >= ngx_http_sse_w->zones.size()) {
        return NULL;
    }
    return ngx_http_sse_w->zones[z->index];
}

void ngx_http_sse_notify(ngx_http_sse_zone_t *z, const sse::slot_set &slots) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL) {
        return;
    }
    ngx_http_sse_zone_worker_t *zw = w->zones[z->index];
    for (uint32_t s = 0; s < sse::max_slots; s++) {
        if (!slots.has(s)) {
            continue;
        }
        if (s == zw->slot) {
            if (!zw->wake.posted) {
                ngx_post_event(&zw->wake, &ngx_posted_events);
            }
            continue;
        }
        // Read unlocked: a stale pid only costs a datagram nobody gets.
        ngx_pid_t pid = sse::store::peek_slot_pid(z->root, s);
        if (pid == 0 || w->wake == NULL) {
            continue;
        }
        struct sockaddr_un sa;
        socklen_t len = ngx_http_sse_wake_addr(&sa, pid);
        // EAGAIN: its queue is full, so it is woken already.
        (void)!sendto(w->wake->fd, "w", 1, MSG_DONTWAIT,
                      reinterpret_cast<struct sockaddr *>(&sa), len);
    }
}

void ngx_http_sse_deliver_now(ngx_http_sse_zone_t *z) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL || w->delivering) {
        return;
    }
    ngx_http_sse_zone_worker_t *zw = w->zones[z->index];
    if (!zw->wake.posted) {
        return;
    }
    ngx_delete_posted_event(&zw->wake);
    ngx_http_sse_deliver(zw);
    if (w->ndirty <= NGX_HTTP_SSE_WRITE_NOW) {
        ngx_http_sse_flush(w);
    }
}

// Frees an answer and disarms its pool cleanup; its request, if that is
// still there.
static ngx_http_request_t *ngx_http_sse_answer_free(ngx_http_sse_answer_t *a) {
    ngx_http_request_t *r = a->r;
    if (r != NULL) {
        a->cln->handler = NULL;
    }
    delete a;
    return r;
}

// Tells the other processes, through the zone's bits, whether this one
// holds answers for their reads.
static void ngx_http_sse_count_answer(ngx_http_sse_zone_t *z, int delta) {
    ngx_http_sse_zone_worker_t *zw = ngx_http_sse_w->zones[z->index];
    zw->answering += delta;
    if (zw->slot != sse::no_slot && zw->answering == (delta > 0 ? 1 : 0)) {
        sse::store::set_answering(z->root, zw->slot, zw->answering != 0);
    }
}

static bool ngx_http_sse_read_by_all(const ngx_http_sse_answer_t *a) {
    for (uint32_t i = 0; i < sse::max_slots / 64; i++) {
        for (uint64_t bits = a->others.bits[i]; bits != 0; bits &= bits - 1) {
            uint32_t s = i * 64 + (uint32_t)__builtin_ctzll(bits);
            if (sse::store::peek_slot_pid(a->z->root, s) != 0 &&
                sse::store::peek_cursor(a->z->root, s) < a->seq) {
                return false;
            }
        }
    }
    return true;
}

// The answer timer at the earliest deadline (each location has its own
// sse_publish_wait, so the oldest answer is not always the first due).
static void ngx_http_sse_answer_timer(ngx_http_sse_worker_t *w) {
    if (w->answers.empty()) {
        if (w->answer_timer.timer_set) {
            ngx_del_timer(&w->answer_timer);
        }
        return;
    }
    ngx_msec_t first = w->answers.front()->deadline;
    for (auto *a : w->answers) {
        if ((ngx_msec_int_t)(a->deadline - first) < 0) {
            first = a->deadline;
        }
    }
    ngx_msec_int_t in = (ngx_msec_int_t)(first - ngx_current_msec);
    if (w->answer_timer.timer_set) {
        if ((ngx_msec_int_t)(w->answer_timer.timer.key - first) <= 0) {
            return;  // due no later
        }
        // ngx_add_timer leaves a timer alone that moves by less than
        // NGX_TIMER_LAZY_DELAY.
        ngx_del_timer(&w->answer_timer);
    }
    ngx_add_timer(&w->answer_timer, in > 0 ? (ngx_msec_t)in : 1);
}

// Answers what the other processes have read, and what waited its time.
static void ngx_http_sse_answer_ready(ngx_http_sse_worker_t *w) {
    if (w->answers.empty()) {
        return;
    }
    std::vector<ngx_http_sse_answer_t *> ready;
    try {
        size_t kept = 0;
        for (auto *a : w->answers) {
            // A graceful exit answers at once: the event is stored.
            if (a->r == NULL || ngx_exiting ||
                (ngx_msec_int_t)(ngx_current_msec - a->deadline) >= 0 ||
                ngx_http_sse_read_by_all(a)) {
                ready.push_back(a);
            } else {
                w->answers[kept++] = a;
            }
        }
        w->answers.resize(kept);
    } catch (const std::exception &e) {
        // Out of memory for the list: the next wake or poll tries again.
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: %s", e.what());
        return;
    }
    if (ready.empty()) {
        return;
    }
    ngx_http_sse_answer_timer(w);
    // After the list is settled: an answer may run the connection's next
    // request, a publish that holds its own.
    for (auto *a : ready) {
        ngx_http_sse_count_answer(a->z, -1);
        auto done = a->done;
        ngx_http_request_t *r = ngx_http_sse_answer_free(a);
        if (r != NULL) {
            done(r);
        }
    }
}

static void ngx_http_sse_answer_timer_handler(ngx_event_t *ev) {
    ngx_http_sse_answer_ready(static_cast<ngx_http_sse_worker_t *>(ev->data));
}

bool ngx_http_sse_answer_later(ngx_http_sse_zone_t *z, uint64_t seq,
                               const sse::slot_set &others, ngx_msec_t wait,
                               ngx_http_request_t *r,
                               void (*done)(ngx_http_request_t *r)) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL || others.empty() || ngx_exiting ||
        w->zones[z->index]->slot == sse::no_slot) {
        return false;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return false;  // answered at once
    }
    auto *a = new (std::nothrow) ngx_http_sse_answer_t{
        z, seq, others, r, done, ngx_current_msec + wait, cln};
    if (a == NULL) {
        return false;
    }
    try {
        w->answers.push_back(a);
    } catch (const std::exception &) {
        delete a;
        return false;
    }
    ngx_http_sse_count_answer(z, +1);
    // Either a reader sees our count after moving its cursor, or we see
    // its cursor now (its side: cursor, fence, counts; see
    // ngx_http_sse_wake_answering).
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (ngx_http_sse_read_by_all(a)) {
        w->answers.pop_back();
        ngx_http_sse_count_answer(z, -1);
        delete a;
        return false;  // cln's handler is unset: it is skipped
    }
    // The request's pool may go first (the connection closed by
    // worker_shutdown_timeout): the answer then only leaves the list.
    cln->handler = [](void *data) {
        static_cast<ngx_http_sse_answer_t *>(data)->r = NULL;
    };
    cln->data = a;
    ngx_http_sse_answer_timer(w);
    return true;
}

// After this process read the zone further: wakes the processes that hold
// answers for such reads.
static void ngx_http_sse_wake_answering(ngx_http_sse_zone_worker_t *zw) {
    // Pairs with the fence in ngx_http_sse_answer_later.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    sse::slot_set to = sse::store::peek_answering(zw->zone->root);
    if (zw->slot != sse::no_slot) {
        to.remove(zw->slot);
    }
    if (!to.empty()) {
        ngx_http_sse_notify(zw->zone, to);
    }
}

static void ngx_http_sse_wake_handler(ngx_event_t *ev) {
    ngx_http_sse_deliver(static_cast<ngx_http_sse_zone_worker_t *>(ev->data));
}

static void ngx_http_sse_wake_read_handler(ngx_event_t *ev) {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    char buf[64];
    while (recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
        // drain
    }
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    for (auto *zw : w->zones) {
        ngx_http_sse_deliver(zw);
    }
    // Written now, ahead of the other events of this turn, when few.
    if (w->ndirty <= NGX_HTTP_SSE_WRITE_NOW) {
        ngx_http_sse_flush(w);
    }
    // The other processes wake us when they have read what we publish.
    ngx_http_sse_answer_ready(w);
}

void ngx_http_sse_attach(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_zone_worker_t *zw = sub->zw;
    // Attached first: if this throws, detach undoes what was done.
    ngx_queue_insert_tail(&zw->subs, &sub->all);
    sub->attached = 1;
    // A shutting-down worker exits once only cancelable timers are left:
    // keep it until the poll has ended this stream cleanly.
    ngx_http_sse_w->poll.cancelable = 0;
    for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
        ngx_http_sse_link_t *link = &sub->links[i];
        ngx_http_sse_local_channel_t *&lc = zw->channels[sub->chans[i]];
        if (lc == NULL) {
            lc = static_cast<ngx_http_sse_local_channel_t *>(ngx_alloc(
                sizeof(ngx_http_sse_local_channel_t), ngx_cycle->log));
            if (lc == NULL) {
                zw->channels.erase(sub->chans[i]);
                throw std::bad_alloc();
            }
            lc->shm = sub->chans[i];
            lc->nsubs = 0;
            lc->mark = 0;
            ngx_queue_init(&lc->subs);
        }
        link->sub = sub;
        link->lc = lc;
        ngx_queue_insert_tail(&lc->subs, &link->queue);
        lc->nsubs++;
    }
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                   "sse: attached to %ui channel(s), last seq %uL", sub->nlinks,
                   sub->last_seq);
}

void ngx_http_sse_detach(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_zone_worker_t *zw = sub->zw;
    if (sub->attached) {
        sub->attached = 0;
        ngx_queue_remove(&sub->all);
        for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
            ngx_http_sse_link_t *link = &sub->links[i];
            if (link->lc == NULL) {
                continue;
            }
            ngx_queue_remove(&link->queue);
            if (--link->lc->nsubs == 0) {
                zw->channels.erase(link->lc->shm);
                ngx_free(link->lc);
            }
            link->lc = NULL;
        }
    }
    if (sub->joined) {
        sub->joined = 0;
        ngx_http_sse_presence_leave(sub, zw);
    }
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, sub->c->log, 0, "sse: detached");
}

// Ends every stream of zw: what it was owed may be lost (out of memory);
// the clients resume exactly from their last ids.
static void ngx_http_sse_end_all(ngx_http_sse_zone_worker_t *zw,
                                 ngx_uint_t reason) {
    for (ngx_queue_t *q = ngx_queue_head(&zw->subs);
         q != ngx_queue_sentinel(&zw->subs); q = ngx_queue_next(q)) {
        ngx_http_sse_end(ngx_queue_data(q, ngx_http_sse_subscriber_t, all),
                         NGX_HTTP_SSE_END_RETRY, reason);
    }
}

// Runs in every worker woken by a publish: copies the new events of the
// channels it has subscribers for, once, and fans them out. The zone lock
// is held twice, briefly: to list the events (the slot's hold keeps them),
// then to move the slot's cursor past them; the copies are made between.
static void ngx_http_sse_deliver_zone(ngx_http_sse_zone_worker_t *zw) {
    auto &batch = zw->batch;
    auto &touched = zw->touched;
    // Channels whose events were lost before this worker read them (memory
    // exhaustion), and channels deleted: their subscribers reconnect.
    std::vector<std::pair<ngx_http_sse_local_channel_t *, uint64_t>> lost;
    std::vector<ngx_http_sse_local_channel_t *> deleted;
    uint64_t round = ++zw->round;
    uint64_t to;
    bool new_epoch = false;

    batch.clear();
    touched.clear();
    {
        auto s = ngx_http_sse_session(zw->zone);
        uint64_t from = s->cursor(zw->slot);
        if (s->epoch() != zw->epoch) {
            // The Redis engine took a new epoch: Redis lost the zone's
            // data. Every stream ends and resumes with an sse-gap.
            zw->epoch = s->epoch();
            new_epoch = true;
        }
        to = s->read_since_cursor(zw->slot, [&](const sse::message *m) {
            auto it = zw->channels.find(m->chan);
            if (it == zw->channels.end()) {
                return;
            }
            ngx_http_sse_local_channel_t *lc = it->second;
            batch.push_back({lc, m, NULL});
            if (lc->mark != round) {
                lc->mark = round;
                touched.push_back(lc->shm);
            }
        });
        if (s->lost_seq() > from) {
            for (auto &[ch, lc] : zw->channels) {
                if (ch->lost_seq > from) {
                    lost.emplace_back(lc, ch->lost_seq);
                }
            }
        }
        if (s->control_gen() != zw->control_gen) {
            zw->control_gen = s->control_gen();
            for (auto &[ch, lc] : zw->channels) {
                if (ch->deleted) {
                    deleted.push_back(lc);
                }
            }
        }
    }

    for (auto &item : batch) {
        item.msg = ngx_http_sse_msg_copy(zw, item.m);
    }
    {
        auto s = ngx_http_sse_session(zw->zone);
        s->end_read(zw->slot, to, touched.data(), touched.size(),
                    sse::release_budget + batch.size());
    }

    if (new_epoch) {
        ngx_http_sse_end_all(zw, NGX_HTTP_SSE_R_EVICTED);
    }
    for (auto &[lc, seq] : lost) {
        ngx_http_sse_each_sub(lc, [seq = seq](auto *sub) {
            if (sub->last_seq < seq) {
                ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY,
                                 NGX_HTTP_SSE_R_EVICTED);
            }
        });
    }

    uint64_t delivered = 0;
    for (auto &item : batch) {
        ngx_http_sse_msg_t *msg = item.msg;
        if (msg == NULL) {
            // Out of memory for the copy: its subscribers resume.
            ngx_http_sse_each_sub(item.lc, [](auto *sub) {
                ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY,
                                 NGX_HTTP_SSE_R_EVICTED);
            });
            continue;
        }
        ngx_http_sse_each_sub(item.lc, [&, msg](auto *sub) {
            // Multiplexed subscribers meet an event once; resumed ones
            // skip what their catch-up already sent.
            if (sub->end || !sub->live || msg->seq <= sub->last_seq) {
                return;
            }
            if (ngx_http_sse_enqueue(sub, msg) != NGX_OK) {
                ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE,
                                 NGX_HTTP_SSE_R_NONE);
                return;
            }
            delivered++;
            ngx_http_sse_mark_dirty(sub);
        });
        ngx_http_sse_msg_unref(msg);
        item.msg = NULL;
    }
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sse: delivered %uz event(s) to %uL stream write(s), "
                   "cursor %uL",
                   batch.size(), delivered, to);
    batch.clear();
    ngx_http_sse_count(zw, &sse::slot_stats::delivered, delivered);

    // After what was published before the DELETE: end of stream.
    for (auto *lc : deleted) {
        ngx_http_sse_each_sub(lc, [](auto *sub) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY,
                             NGX_HTTP_SSE_R_DELETED);
        });
    }
}

static void ngx_http_sse_deliver(ngx_http_sse_zone_worker_t *zw) {
    if (zw->slot == sse::no_slot) {
        return;
    }
    ngx_http_sse_w->delivering = 1;
    uint64_t cursor = sse::store::peek_cursor(zw->zone->root, zw->slot);
    try {
        ngx_http_sse_deliver_zone(zw);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sse: delivery failed (%s); ending this worker's "
                      "streams so that they resume",
                      e.what());
        for (auto &item : zw->batch) {
            if (item.msg != NULL) {
                ngx_http_sse_msg_unref(item.msg);
            }
        }
        zw->batch.clear();
        {
            auto s = ngx_http_sse_session(zw->zone);
            s->end_read(zw->slot, s->seq(), NULL, 0);
        }
        ngx_http_sse_end_all(zw, NGX_HTTP_SSE_R_EVICTED);
    }
    if (sse::store::peek_cursor(zw->zone->root, zw->slot) != cursor) {
        ngx_http_sse_wake_answering(zw);
    }
    ngx_http_sse_w->delivering = 0;
}

void ngx_http_sse_follow_epoch(ngx_http_sse_zone_worker_t *zw) {
    if (zw->epoch != sse::store::peek_epoch(zw->zone->root)) {
        ngx_http_sse_deliver(zw);
    }
}

void ngx_http_sse_count(ngx_http_sse_zone_worker_t *zw,
                        uint64_t sse::slot_stats::*field, uint64_t n) {
    if (n != 0 && zw->slot != sse::no_slot) {
        // Only this process writes its slot; sse_status reads it unlocked.
        __atomic_fetch_add(
            &(sse::store::own_stats(zw->zone->root, zw->slot).*field), n,
            __ATOMIC_RELAXED);
    }
}

void ngx_http_sse_mark_dirty(ngx_http_sse_subscriber_t *sub) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (sub->queued) {
        return;
    }
    sub->queued = 1;
    ngx_queue_insert_tail(&w->dirty, &sub->dirty);
    w->ndirty++;
    if (!w->flush.posted) {
        ngx_post_event(&w->flush, &ngx_posted_events);
    }
}

void ngx_http_sse_unmark_dirty(ngx_http_sse_subscriber_t *sub) {
    if (sub->queued) {
        sub->queued = 0;
        ngx_queue_remove(&sub->dirty);
        ngx_http_sse_w->ndirty--;
    }
}

// Writes to a slice of the dirty subscribers; the rest after the next
// event-loop turn.
static void ngx_http_sse_flush(ngx_http_sse_worker_t *w) {
    for (ngx_uint_t n = 0;
         n < NGX_HTTP_SSE_SLICE && !ngx_queue_empty(&w->dirty); n++) {
        ngx_queue_t *q = ngx_queue_head(&w->dirty);
        auto *sub = ngx_queue_data(q, ngx_http_sse_subscriber_t, dirty);
        ngx_http_sse_unmark_dirty(sub);
        if (sub->end == NGX_HTTP_SSE_END_NONE && !ngx_http_sse_batch_add(sub)) {
            ngx_http_sse_send(sub);
        }
    }
    ngx_http_sse_batch_submit();
    if (ngx_queue_empty(&w->dirty)) {
        if (w->flush.posted) {
            ngx_delete_posted_event(&w->flush);
        }
    } else if (!w->flush.posted) {
        ngx_post_event(&w->flush, &ngx_posted_next_events);
    }
}

static void ngx_http_sse_flush_handler(ngx_event_t *ev) {
    ngx_http_sse_flush(static_cast<ngx_http_sse_worker_t *>(ev->data));
}

// Clears the slots of processes that died without clearing them (SIGKILL,
// crash): their subscriptions and holds would keep events forever.
static void ngx_http_sse_reap_slots(ngx_http_sse_zone_t *z) {
    ngx_pid_t dead[sse::max_slots];
    uint32_t ndead = 0;
    for (uint32_t s = 0; s < sse::max_slots; s++) {
        ngx_pid_t pid = sse::store::peek_slot_pid(z->root, s);
        if (pid != 0 && pid != ngx_pid && kill(pid, 0) == -1 &&
            ngx_errno == NGX_ESRCH) {
            dead[ndead++] = s;
        }
    }
    if (ndead == 0) {
        return;
    }
    for (uint32_t i = 0; i < ndead; i++) {
        // Re-checked under the lock; publishes the presence "leave"s.
        bool cleared;
        ngx_http_sse_presence_clear_slot(z, dead[i], &cleared);
    }
}

static void ngx_http_sse_poll_zone(ngx_http_sse_zone_worker_t *zw) {
    if (ngx_exiting || ngx_terminate) {
        // Old workers end their streams promptly so a reload completes;
        // clients resume on the new workers.
        ngx_http_sse_end_all(zw, NGX_HTTP_SSE_R_SHUTDOWN);
    }
    if (zw->redis != NULL) {
        ngx_http_sse_redis_poll(zw);
    }
    sse::zone_root *root = zw->zone->root;
    if (zw->slot != sse::no_slot &&
        (sse::store::peek_seq(root) !=
             sse::store::peek_cursor(root, zw->slot) ||
         sse::store::peek_control_gen(root) != zw->control_gen)) {
        ngx_http_sse_deliver(zw);
    }
    if (ngx_current_msec - (ngx_msec_t)sse::store::peek_last_sweep(root) >=
        NGX_HTTP_SSE_SWEEP_MS) {
        ngx_http_sse_reap_slots(zw->zone);
        auto s = ngx_http_sse_session(zw->zone);
        // Again under the lock: another worker may have swept meanwhile.
        if (ngx_current_msec - (ngx_msec_t)sse::store::peek_last_sweep(root) >=
            NGX_HTTP_SSE_SWEEP_MS) {
            s->sweep(ngx_current_msec);
        }
    }
}

static void ngx_http_sse_poll_handler(ngx_event_t *ev) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    bool subscribers = false;
    for (auto *zw : w->zones) {
        try {
            ngx_http_sse_poll_zone(zw);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: %s", e.what());
        }
        subscribers = subscribers || !ngx_queue_empty(&zw->subs);
    }
    // A reader that died (its slot now free) never wakes us.
    ngx_http_sse_answer_ready(w);
    ev->cancelable = !subscribers;
    ngx_add_timer(ev, NGX_HTTP_SSE_POLL_MS);
}

static uint32_t ngx_http_sse_claim_slot(ngx_http_sse_zone_t *z) {
    ngx_http_sse_reap_slots(z);
    auto s = ngx_http_sse_session(z);
    int32_t worker = ngx_process == NGX_PROCESS_WORKER
                         ? (int32_t)ngx_min(ngx_worker, 0x7fffffff)
                         : -1;
    uint32_t slot = s->claim_slot(ngx_pid, worker);
    if (slot == sse::no_slot) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sse: zone \"%V\" has no free process slot (%d "
                      "processes use it, old workers of reloads included); "
                      "this worker refuses its streams until restarted",
                      &z->shm_zone->shm.name, (int)sse::max_slots);
    }
    return slot;
}

static ngx_int_t ngx_http_sse_wake_socket(ngx_cycle_t *cycle,
                                          ngx_http_sse_worker_t *w) {
    ngx_socket_t fd =
        socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == (ngx_socket_t)-1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_socket_errno,
                      "sse: socket() for wake-ups failed");
        return NGX_ERROR;
    }
    struct sockaddr_un sa;
    socklen_t len = ngx_http_sse_wake_addr(&sa, ngx_pid);
    if (bind(fd, reinterpret_cast<struct sockaddr *>(&sa), len) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_socket_errno,
                      "sse: bind() of the wake-up socket failed");
        close(fd);
        return NGX_ERROR;
    }
    ngx_connection_t *c = ngx_get_connection(fd, cycle->log);
    if (c == NULL) {
        close(fd);
        return NGX_ERROR;
    }
    c->data = c;
    c->read->handler = ngx_http_sse_wake_read_handler;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    ngx_uint_t flags = (ngx_event_flags & NGX_USE_CLEAR_EVENT)
                           ? (ngx_uint_t)NGX_CLEAR_EVENT
                           : (ngx_uint_t)NGX_LEVEL_EVENT;
    if (ngx_add_event(c->read, NGX_READ_EVENT, flags) != NGX_OK) {
        ngx_close_connection(c);
        return NGX_ERROR;
    }
    w->wake = c;
    return NGX_OK;
}

static void ngx_http_sse_find_filters(ngx_cycle_t *cycle) {
    for (size_t i = 0; i < NGX_HTTP_SSE_NFILTERS; i++) {
        ngx_http_sse_filter_ctx[i] = NGX_ERROR;
        for (ngx_uint_t m = 0; cycle->modules[m] != NULL; m++) {
            if (cycle->modules[m]->type == NGX_HTTP_MODULE &&
                ngx_strcmp(cycle->modules[m]->name,
                           ngx_http_sse_rewriting_filters[i]) == 0) {
                ngx_http_sse_filter_ctx[i] = cycle->modules[m]->ctx_index;
            }
        }
    }
}

bool ngx_http_sse_can_frame(ngx_http_request_t *r) {
    if (!r->chunked || r != r->main || r->header_only ||
        r->headers_out.content_encoding != NULL) {
        return false;
    }
    for (ngx_int_t idx : ngx_http_sse_filter_ctx) {
        if (idx != NGX_ERROR && r->ctx[idx] != NULL) {
            return false;
        }
    }
    return true;
}

ngx_int_t ngx_http_sse_worker_init(ngx_cycle_t *cycle) {
    ngx_http_sse_find_filters(cycle);
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_sse_module));
    if (mcf == NULL || mcf->zones.nelts == 0 ||
        (ngx_process != NGX_PROCESS_WORKER &&
         ngx_process != NGX_PROCESS_SINGLE)) {
        return NGX_OK;
    }
    try {
        auto *w = new ngx_http_sse_worker_t();
        ngx_http_sse_w = w;
        w->mcf = mcf;
        ngx_queue_init(&w->dirty);
        auto **zones = static_cast<ngx_http_sse_zone_t **>(mcf->zones.elts);
        for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
            auto *zw = new ngx_http_sse_zone_worker_t();
            w->zones.push_back(zw);
            zw->zone = zones[i];
            ngx_queue_init(&zw->subs);
            zw->slot = ngx_http_sse_claim_slot(zones[i]);
            zw->epoch = sse::store::peek_epoch(zones[i]->root);
            zw->control_gen = sse::store::peek_control_gen(zones[i]->root);
            zw->wake.handler = ngx_http_sse_wake_handler;
            zw->wake.data = zw;
            zw->wake.log = cycle->log;
            ngx_http_sse_redis_worker_init(zw);
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "sse: %s", e.what());
        return NGX_ERROR;
    }

    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    ngx_http_sse_batch_init(cycle, mcf->io_uring != 0);
    w->flush.handler = ngx_http_sse_flush_handler;
    w->flush.data = w;
    w->flush.log = cycle->log;
    // Not cancelable: a graceful exit waits for the answers it holds.
    w->answer_timer.handler = ngx_http_sse_answer_timer_handler;
    w->answer_timer.data = w;
    w->answer_timer.log = cycle->log;
    if (ngx_http_sse_wake_socket(cycle, w) != NGX_OK) {
        return NGX_ERROR;
    }
    w->poll.handler = ngx_http_sse_poll_handler;
    w->poll.data = w;
    w->poll.log = cycle->log;
    w->poll.cancelable = 1;  // never holds up a graceful shutdown
    ngx_add_timer(&w->poll, NGX_HTTP_SSE_POLL_MS);
    try {
        ngx_http_sse_presence_worker_ready(true);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: %s", e.what());
    }
    return NGX_OK;
}

void ngx_http_sse_worker_exit(ngx_cycle_t *cycle) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL) {
        return;
    }
    ngx_http_sse_presence_worker_ready(false);
    for (auto *zw : w->zones) {
        ngx_http_sse_redis_worker_exit(zw);
        if (zw->slot != sse::no_slot) {
            auto s = ngx_http_sse_session(zw->zone);
            ngx_http_sse_redis_count_touch_slot(zw->zone, *s, zw->slot);
            s->clear_slot(zw->slot, ngx_current_msec);
        }
        if (zw->slot != sse::no_slot) {
            // Gone: publishes waiting for this process need not wait.
            ngx_http_sse_wake_answering(zw);
        }
        for (auto &[ch, lc] : zw->channels) {
            ngx_free(lc);
        }
        // Copies still queued to connections outlive this table.
        for (auto &[seq, msg] : zw->copies) {
            msg->cache = NULL;
        }
        delete zw;
    }
    if (w->wake != NULL) {
        // An open connection at exit would be reported as a leak.
        ngx_close_connection(w->wake);
    }
    while (w->free_out != NULL) {
        ngx_http_sse_out_t *o = w->free_out;
        w->free_out = o->next;
        ngx_free(o);
    }
    if (w->poll.timer_set) {
        ngx_del_timer(&w->poll);
    }
    if (w->flush.posted) {
        ngx_delete_posted_event(&w->flush);
    }
    // Left only when the process ends at once (a graceful exit waits for
    // the timer): their requests' pools are not destroyed before it ends.
    for (auto *a : w->answers) {
        ngx_http_sse_answer_free(a);
    }
    if (w->answer_timer.timer_set) {
        ngx_del_timer(&w->answer_timer);
    }
    ngx_http_sse_batch_exit();
    delete w;
    ngx_http_sse_w = NULL;
}
