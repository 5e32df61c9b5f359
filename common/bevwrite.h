/* bevwrite.h: write a socket bufferevent's output now, instead of when epoll
 * next reports the socket writable.
 *
 * A libevent socket bufferevent writes only from its write event: queueing
 * bytes arms the event (an epoll_ctl), the next loop turn waits for the
 * socket to be writable (an epoll_wait that returns at once, since a socket
 * nearly always has room) and writes, and a drained buffer disarms the event
 * (another epoll_ctl). For an answer of a few hundred bytes those three
 * system calls cost more than the write itself (bench/gateway/callgrind.sh,
 * issue 18). bev_write_now() writes at once, from the same buffer, and
 * leaves the write event armed only when bytes remain; the rest is then
 * written by the bufferevent as before, under its write timeout, and an
 * error is reported to its event callback as before.
 *
 * Contract:
 * - bev is a plain socket bufferevent (bufferevent_socket_new) with a
 *   connected socket; not an OpenSSL one, which must write through SSL.
 * - Call it on the loop thread, from no callback of bev's own (it may run
 *   bev's write callback).
 * - It writes what the socket takes. If it wrote anything, it runs bev's
 *   write callback as the bufferevent's own write would: when the output
 *   is at or under the write low watermark. That callback may free bev:
 *   touch bev no more after the call.
 * - A socket that takes nothing (it would block, or it failed) leaves the
 *   bytes to the bufferevent, which meets and reports the error itself.
 */
#ifndef CASCADE_BEVWRITE_H
#define CASCADE_BEVWRITE_H

#include <event2/bufferevent.h>

void bev_write_now(struct bufferevent *bev);

#endif
