// Per-worker state: wake-ups between workers, one copy of each event per
// worker, fan-out to the local subscribers, process slots, shutdown.
#include "ngx_http_sse.hpp"

#include <signal.h>

#include <new>

#define NGX_HTTP_SSE_POLL_MS 250
#define NGX_HTTP_SSE_SWEEP_MS 1000
#define NGX_HTTP_SSE_FREE_OUT_MAX 4096
// Subscribers written to per event-loop turn before publishes, accepts and
// reads get their turn.
#define NGX_HTTP_SSE_SLICE 256

struct ngx_http_sse_worker_t {
    ngx_http_sse_main_conf_t *mcf;
    std::vector<ngx_http_sse_zone_worker_t *> zones;
    ngx_connection_t *notify;  // our eventfd
    ngx_event_t poll;
    ngx_http_sse_out_t *free_out;
    ngx_uint_t nfree_out;
    ngx_queue_t dirty;  // subscribers with unsent events, oldest first
    ngx_event_t flush;
};

// This process's state, made in init_process and freed in exit_process.
static ngx_http_sse_worker_t *ngx_http_sse_w;

static void ngx_http_sse_deliver(ngx_http_sse_zone_worker_t *zw);

// Calls f(sub) for each subscriber of a local channel; f must not detach
// (ending a stream is posted, so it does not).
template <typename F>
static void ngx_http_sse_each_sub(ngx_http_sse_local_channel_t *lc, F &&f) {
    for (ngx_queue_t *q = ngx_queue_head(&lc->subs);
         q != ngx_queue_sentinel(&lc->subs); q = ngx_queue_next(q)) {
        f((ngx_queue_data(q, ngx_http_sse_link_t, queue))->sub);
    }
}

ngx_http_sse_msg_t *ngx_http_sse_msg_new(std::string_view bytes, uint64_t seq) {
    auto *msg = static_cast<ngx_http_sse_msg_t *>(
        ngx_alloc(sizeof(ngx_http_sse_msg_t) + bytes.size(), ngx_cycle->log));
    if (msg == NULL) {
        return NULL;
    }
    msg->refs = 1;
    msg->len = bytes.size();
    msg->seq = seq;
    ngx_memcpy(msg->data(), bytes.data(), bytes.size());
    return msg;
}

void ngx_http_sse_msg_unref(ngx_http_sse_msg_t *msg) {
    if (--msg->refs == 0) {
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

void ngx_http_sse_notify(ngx_http_sse_zone_t *z, uint64_t workers) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL) {
        return;
    }
    auto wanted = [workers](ngx_uint_t i) {
        return (workers >> (i < 63 ? i : 63)) & 1;
    };
    ngx_http_sse_zone_worker_t *zw = w->zones[z->index];
    if (wanted(ngx_worker) && !zw->wake.posted) {
        ngx_post_event(&zw->wake, &ngx_posted_events);
    }
    uint64_t one = 1;
    for (ngx_uint_t i = 0; i < w->mcf->nworkers; i++) {
        if (i != ngx_worker && wanted(i) && w->mcf->notify_fds[i] != -1) {
            // EAGAIN means the counter is already non-zero: it is woken.
            (void)!write(w->mcf->notify_fds[i], &one, sizeof(one));
        }
    }
}

static void ngx_http_sse_wake_handler(ngx_event_t *ev) {
    ngx_http_sse_deliver(static_cast<ngx_http_sse_zone_worker_t *>(ev->data));
}

static void ngx_http_sse_notify_handler(ngx_event_t *ev) {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    uint64_t n;
    while (read(c->fd, &n, sizeof(n)) == sizeof(n)) {
        // drain
    }
    for (auto *zw : ngx_http_sse_w->zones) {
        ngx_http_sse_deliver(zw);
    }
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
        ngx_http_sse_local_channel_t *&lc = zw->channels[link->shm];
        if (lc == NULL) {
            lc = static_cast<ngx_http_sse_local_channel_t *>(ngx_alloc(
                sizeof(ngx_http_sse_local_channel_t), ngx_cycle->log));
            if (lc == NULL) {
                zw->channels.erase(link->shm);
                throw std::bad_alloc();
            }
            lc->shm = link->shm;
            lc->nsubs = 0;
            ngx_queue_init(&lc->subs);
        }
        link->sub = sub;
        link->lc = lc;
        ngx_queue_insert_tail(&lc->subs, &link->queue);
        lc->nsubs++;
    }
}

void ngx_http_sse_detach(ngx_http_sse_subscriber_t *sub) {
    if (!sub->attached) {
        return;
    }
    sub->attached = 0;
    ngx_http_sse_zone_worker_t *zw = sub->zw;
    ngx_queue_remove(&sub->all);
    for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
        ngx_http_sse_link_t *link = &sub->links[i];
        if (link->lc == NULL) {
            continue;
        }
        ngx_queue_remove(&link->queue);
        if (--link->lc->nsubs == 0) {
            zw->channels.erase(link->shm);
            ngx_free(link->lc);
        }
        link->lc = NULL;
    }
    sse::store st = ngx_http_sse_store(zw->zone);
    ngx_http_sse_locked lock(zw->zone);
    for (ngx_uint_t i = 0; i < sub->nlinks; i++) {
        st.unsubscribe(sub->links[i].shm, zw->slot, ngx_current_msec);
    }
}

// Runs in every worker after each publish anywhere: copies the new events
// of the channels it has subscribers for, once, and fans them out.
static void ngx_http_sse_deliver(ngx_http_sse_zone_worker_t *zw) {
    sse::zone_root *root = zw->zone->root;
    sse::store st = ngx_http_sse_store(zw->zone);
    auto &batch = zw->batch;
    // Channels whose events this worker missed (evicted before it woke),
    // and channels deleted: their subscribers reconnect and resume.
    std::vector<std::pair<ngx_http_sse_local_channel_t *, uint64_t>> missed;
    std::vector<ngx_http_sse_local_channel_t *> deleted;

    batch.clear();
    {
        ngx_http_sse_locked lock(zw->zone);
        if (root->seq > zw->last_seen) {
            uint64_t before = zw->last_seen;
            if (!zw->channels.empty()) {
                st.for_each_since(before, [&](sse::message *m) {
                    auto it = zw->channels.find(m->chan);
                    if (it == zw->channels.end()) {
                        return;
                    }
                    ngx_http_sse_msg_t *msg =
                        ngx_http_sse_msg_new(m->wire(), m->seq);
                    if (msg == NULL) {
                        missed.emplace_back(it->second, m->seq);
                        return;
                    }
                    batch.emplace_back(it->second, msg);
                });
                if (root->dropped_seq > before) {
                    for (auto &[ch, lc] : zw->channels) {
                        if (ch->dropped_seq > before) {
                            missed.emplace_back(lc, ch->dropped_seq);
                        }
                    }
                }
            }
            zw->last_seen = root->seq;
        }
        if (root->control_gen != zw->control_gen) {
            zw->control_gen = root->control_gen;
            for (auto &[ch, lc] : zw->channels) {
                if (ch->deleted) {
                    deleted.push_back(lc);
                }
            }
        }
    }

    for (auto &[lc, dropped] : missed) {
        ngx_http_sse_each_sub(lc, [dropped = dropped](auto *sub) {
            if (sub->last_seq < dropped) {
                ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY);
            }
        });
    }

    uint64_t delivered = 0;
    for (auto &[lc, msg] : batch) {
        ngx_http_sse_each_sub(lc, [&, msg = msg](auto *sub) {
            // Multiplexed subscribers meet an event once; resumed ones
            // skip what their catch-up already sent.
            if (sub->end || msg->seq <= sub->last_seq) {
                return;
            }
            if (ngx_http_sse_enqueue(sub, msg) != NGX_OK) {
                ngx_http_sse_end(sub, NGX_HTTP_SSE_END_CLOSE);
                return;
            }
            delivered++;
            ngx_http_sse_mark_dirty(sub);
        });
        ngx_http_sse_msg_unref(msg);
    }
    batch.clear();
    ngx_http_sse_count(zw, &sse::slot_stats::delivered, delivered);

    // After what was published before the DELETE: end of stream.
    for (auto *lc : deleted) {
        ngx_http_sse_each_sub(lc, [](auto *sub) {
            ngx_http_sse_end(sub, NGX_HTTP_SSE_END_RETRY);
        });
    }
}

void ngx_http_sse_count(ngx_http_sse_zone_worker_t *zw,
                        uint64_t sse::slot_stats::*field, uint64_t n) {
    if (n != 0) {
        // Only this process writes its slot; sse_status reads it unlocked.
        __atomic_fetch_add(&(zw->zone->root->per_slot[zw->slot].*field), n,
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
    if (!w->flush.posted) {
        ngx_post_event(&w->flush, &ngx_posted_events);
    }
}

void ngx_http_sse_unmark_dirty(ngx_http_sse_subscriber_t *sub) {
    if (sub->queued) {
        sub->queued = 0;
        ngx_queue_remove(&sub->dirty);
    }
}

static void ngx_http_sse_flush_handler(ngx_event_t *ev) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    for (ngx_uint_t n = 0;
         n < NGX_HTTP_SSE_SLICE && !ngx_queue_empty(&w->dirty); n++) {
        ngx_queue_t *q = ngx_queue_head(&w->dirty);
        auto *sub = ngx_queue_data(q, ngx_http_sse_subscriber_t, dirty);
        ngx_http_sse_unmark_dirty(sub);
        if (sub->end == NGX_HTTP_SSE_END_NONE) {
            ngx_http_sse_send(sub);
        }
    }
    if (!ngx_queue_empty(&w->dirty)) {
        // The rest after the next event-loop turn.
        ngx_post_event(ev, &ngx_posted_next_events);
    }
}

static void ngx_http_sse_poll_handler(ngx_event_t *ev) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    bool subscribers = false;
    for (auto *zw : w->zones) {
        if (ngx_exiting || ngx_terminate) {
            // Old workers end their streams promptly so a reload completes;
            // clients resume on the new workers.
            for (ngx_queue_t *q = ngx_queue_head(&zw->subs);
                 q != ngx_queue_sentinel(&zw->subs); q = ngx_queue_next(q)) {
                ngx_http_sse_end(
                    ngx_queue_data(q, ngx_http_sse_subscriber_t, all),
                    NGX_HTTP_SSE_END_RETRY);
            }
        }
        sse::zone_root *root = zw->zone->root;
        // A publish from a worker of an older generation wakes nobody here.
        if (root->seq != zw->last_seen ||
            root->control_gen != zw->control_gen) {
            ngx_http_sse_deliver(zw);
        }
        if (ngx_current_msec - (ngx_msec_t)root->last_sweep >=
            NGX_HTTP_SSE_SWEEP_MS) {
            sse::store st = ngx_http_sse_store(zw->zone);
            ngx_http_sse_locked lock(zw->zone);
            if (ngx_current_msec - (ngx_msec_t)root->last_sweep >=
                NGX_HTTP_SSE_SWEEP_MS) {
                st.sweep(ngx_current_msec);
            }
        }
        subscribers = subscribers || !ngx_queue_empty(&zw->subs);
    }
    ev->cancelable = !subscribers;
    ngx_add_timer(ev, NGX_HTTP_SSE_POLL_MS);
}

static uint32_t ngx_http_sse_claim_slot(ngx_http_sse_zone_t *z) {
    sse::zone_root *root = z->root;
    sse::store st = ngx_http_sse_store(z);
    ngx_http_sse_locked lock(z);
    // Counts of processes that died without cleaning up (SIGKILL, crash)
    // are dropped first, whichever slot we then take.
    for (uint32_t s = 0; s < sse::max_slots; s++) {
        pid_t pid = root->slot_pid[s];
        if (pid != 0 && kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
            st.clear_slot(s, ngx_current_msec);
            root->slot_pid[s] = 0;
            root->slot_worker[s] = -1;
        }
    }
    for (uint32_t s = 0; s < sse::max_slots; s++) {
        if (root->slot_pid[s] == 0) {
            root->slot_pid[s] = ngx_pid;
            root->slot_worker[s] = (int16_t)ngx_min(ngx_worker, 0x7fff);
            return s;
        }
    }
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sse: more than %d processes share a zone; subscriber "
                  "counts of crashed workers may linger",
                  (int)sse::max_slots);
    return sse::max_slots - 1;
}

ngx_int_t ngx_http_sse_worker_init(ngx_cycle_t *cycle) {
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
        auto **zones = static_cast<ngx_http_sse_zone_t **>(mcf->zones.elts);
        for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
            auto *zw = new ngx_http_sse_zone_worker_t();
            w->zones.push_back(zw);
            zw->zone = zones[i];
            zw->slot = ngx_http_sse_claim_slot(zones[i]);
            {
                ngx_http_sse_locked lock(zones[i]);
                zw->last_seen = zones[i]->root->seq;
                zw->control_gen = zones[i]->root->control_gen;
            }
            ngx_queue_init(&zw->subs);
            zw->wake.handler = ngx_http_sse_wake_handler;
            zw->wake.data = zw;
            zw->wake.log = cycle->log;
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "sse: %s", e.what());
        return NGX_ERROR;
    }

    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    ngx_queue_init(&w->dirty);
    w->flush.handler = ngx_http_sse_flush_handler;
    w->flush.data = w;
    w->flush.log = cycle->log;
    if (ngx_worker < mcf->nworkers && mcf->notify_fds[ngx_worker] != -1) {
        ngx_connection_t *c =
            ngx_get_connection(mcf->notify_fds[ngx_worker], cycle->log);
        if (c == NULL) {
            return NGX_ERROR;
        }
        c->data = c;
        c->read->handler = ngx_http_sse_notify_handler;
        c->read->log = cycle->log;
        c->write->log = cycle->log;
        ngx_uint_t flags = (ngx_event_flags & NGX_USE_CLEAR_EVENT)
                               ? (ngx_uint_t)NGX_CLEAR_EVENT
                               : (ngx_uint_t)NGX_LEVEL_EVENT;
        if (ngx_add_event(c->read, NGX_READ_EVENT, flags) != NGX_OK) {
            ngx_free_connection(c);
            return NGX_ERROR;
        }
        w->notify = c;
    }

    w->poll.handler = ngx_http_sse_poll_handler;
    w->poll.data = w;
    w->poll.log = cycle->log;
    w->poll.cancelable = 1;  // never holds up a graceful shutdown
    ngx_add_timer(&w->poll, NGX_HTTP_SSE_POLL_MS);
    return NGX_OK;
}

void ngx_http_sse_worker_exit(ngx_cycle_t *cycle) {
    ngx_http_sse_worker_t *w = ngx_http_sse_w;
    if (w == NULL) {
        return;
    }
    for (auto *zw : w->zones) {
        sse::store st = ngx_http_sse_store(zw->zone);
        {
            ngx_http_sse_locked lock(zw->zone);
            st.clear_slot(zw->slot, ngx_current_msec);
            if (zw->zone->root->slot_pid[zw->slot] == ngx_pid) {
                zw->zone->root->slot_pid[zw->slot] = 0;
                zw->zone->root->slot_worker[zw->slot] = -1;
            }
        }
        for (auto &[ch, lc] : zw->channels) {
            ngx_free(lc);
        }
        delete zw;
    }
    if (w->notify != NULL) {
        // An open connection at exit would be reported as a leak.
        w->mcf->notify_fds[ngx_worker] = -1;
        ngx_close_connection(w->notify);
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
    delete w;
    ngx_http_sse_w = NULL;
}
