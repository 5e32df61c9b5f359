/* redis_server.h: a real redis-server for the unit tests that need one
 * (test_stats.c, test_policy.c), started on a free loopback port, without
 * persistence, and killed by the test that started it.
 *
 * A missing or broken redis-server is a failure, never a silent pass:
 * redis_start() exits 1 with the reason. Header-only (static functions), so
 * each test links nothing more than hiredis, which cascade_cache brings. */
#ifndef CASCADE_TEST_REDIS_SERVER_H
#define CASCADE_TEST_REDIS_SERVER_H

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A port nothing listens on now (the kernel's choice for an ephemeral bind). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

/* Start redis-server on port and wait (up to 5 s) until it answers PING. */
static pid_t redis_start(int port)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return pid;
        } else if (c) {
            redisFree(c);
        }
        usleep(50000);
    }
    fprintf(stderr, "redis-server did not start on port %d (is it installed?)\n", port);
    exit(1);
}

static void redis_stop(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

#endif
