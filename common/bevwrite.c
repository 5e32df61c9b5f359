/* bevwrite.c: see bevwrite.h. */
#include "common/bevwrite.h"

#include <event2/buffer.h>
#include <event2/event.h>

void bev_write_now(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (evbuffer_get_length(out) == 0)
        return;
    /* A socket bufferevent keeps the front of its output frozen, so that
     * only its own write drains it; it thaws the front around that write,
     * and so do we. */
    evbuffer_unfreeze(out, 1);
    int n = evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    /* Disabling the write event also cancels the arming that queueing the
     * bytes did: libevent's epoll changelist (EVENT_BASE_FLAG_EPOLL_USE_
     * CHANGELIST, gateway/server.c) folds an add and a delete made in the
     * same loop turn into no epoll_ctl at all. */
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(bev, EV_WRITE);
    else
        bufferevent_disable(bev, EV_WRITE);
    if (n > 0)
        bufferevent_trigger(bev, EV_WRITE, 0);
}
