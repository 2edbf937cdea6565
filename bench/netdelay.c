/*
 * netdelay.c: a delaying Ethernet relay between two network namespaces,
 * for the benchmarks' shaped links (bench/netns-lib.sh) on kernels without
 * sch_netem.
 *
 *   netdelay [--queue FRAMES] [--pidfile FILE] NS-A DEV-A NS-B DEV-B DELAY
 *
 * NS is a network namespace's file (/run/netns/NAME) or its name.  The
 * relay enters NS-A, creates the TAP device DEV-A there, enters NS-B,
 * creates DEV-B, returns to its own namespace (the TAP descriptors keep
 * working from anywhere) and then forwards every Ethernet frame read from
 * one TAP to the other, DELAY later (tc's units: 5ms, 250us, 0.25ms, 1s;
 * a bare number is microseconds).  Each direction gets the whole DELAY:
 * a link of one-way delay DELAY, so a round trip across it costs
 * 2 x DELAY.  Rates are not the relay's business: tc (tbf) on a TAP does
 * that.
 *
 * It goes to the background once both devices exist (the command returns
 * then, or fails with the reason), writes its PID to --pidfile, and runs
 * until SIGTERM or SIGINT (or a device fails).  Its TAP descriptors hold
 * their namespaces: `ip netns del` alone leaves the relay, its devices and
 * the namespace alive, so stop the relay first (netns_cleanup does).
 * SIGUSR1 and the exit print the counters on stderr.
 *
 * Invariants:
 *  1. One FIFO per direction, at most --queue frames (default 2048) of at
 *     most FRAME_MAX_BYTES each: the memory is bounded.  A frame that finds
 *     its FIFO full is read and dropped, and counted ("dropped"); a frame
 *     longer than FRAME_MAX_BYTES (never with the default MTU) likewise
 *     ("oversize").
 *  2. The delay is constant, so each FIFO is ordered by due time: only the
 *     heads are ever due, and the next wake-up is the earlier head.
 *  3. Idle costs nothing: the loop blocks in ppoll with no timeout while
 *     both FIFOs are empty, and with the earlier head's due time
 *     otherwise (timer slack 1 us).
 *
 * Single threaded; signals are blocked except inside ppoll, so a SIGTERM
 * is never lost between a check and the wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX_BYTES 2048u
#define QUEUE_DEFAULT   2048u
#define QUEUE_MAX       (1u << 20)
#define DELAY_MAX_NS    (10ull * 1000 * 1000 * 1000)
#define READ_BATCH      64
#define TIMER_SLACK_NS  1000
#define NETNS_DIR       "/run/netns/"

typedef struct {
    uint64_t due_ns;
    uint32_t len;
    unsigned char data[FRAME_MAX_BYTES];
} Frame;

/* one direction: frames read from in_fd, written to out_fd when due */
typedef struct {
    const char *name; /* "A->B" */
    int in_fd, out_fd;
    Frame *ring;
    uint32_t cap, head, count;
    uint64_t forwarded, dropped, oversize, write_errors;
} Direction;

static volatile sig_atomic_t stop_signal, stats_wanted;

static void
on_signal(int sig)
{
    if (sig == SIGUSR1)
        stats_wanted = 1;
    else
        stop_signal = sig;
}

static uint64_t
mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* parse_delay: "5ms", "250us", "0.25ms", "1s", "7" (us) into *ret_ns */
static bool
parse_delay(const char *s, uint64_t *ret_ns)
{
    char *end;
    double v, unit = 1e3;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return false;
    if (!strcmp(end, "s") || !strcmp(end, "sec"))
        unit = 1e9;
    else if (!strcmp(end, "ms") || !strcmp(end, "msec"))
        unit = 1e6;
    else if (!strcmp(end, "us") || !strcmp(end, "usec") || !*end)
        unit = 1e3;
    else if (!strcmp(end, "ns"))
        unit = 1;
    else
        return false;
    if (v * unit > (double)DELAY_MAX_NS)
        return false;
    *ret_ns = (uint64_t)(v * unit + 0.5);
    return true;
}

/* tap_open_in: create TAP NAME inside the namespace NS; returns its fd,
 * or -1 after saying why on stderr */
static int
tap_open_in(const char *ns, const char *name, int home_fd)
{
    char path[PATH_MAX];
    struct ifreq ifr;
    int ns_fd, fd = -1, saved;

    if (strlen(name) >= IFNAMSIZ) {
        fprintf(stderr, "netdelay: device name '%s' is longer than %d\n", name,
                IFNAMSIZ - 1);
        return -1;
    }
    if (strchr(ns, '/'))
        snprintf(path, sizeof path, "%s", ns);
    else
        snprintf(path, sizeof path, NETNS_DIR "%s", ns);
    ns_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) {
        fprintf(stderr, "netdelay: cannot open namespace '%s': %s\n", path,
                strerror(errno));
        return -1;
    }
    if (setns(ns_fd, CLONE_NEWNET) < 0) {
        fprintf(stderr, "netdelay: cannot enter namespace '%s': %s\n", path,
                strerror(errno));
        close(ns_fd);
        return -1;
    }
    close(ns_fd);
    /* the TAP belongs to the namespace current when /dev/net/tun opens */
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "netdelay: cannot open /dev/net/tun: %s\n",
                strerror(errno));
        goto back;
    }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        fprintf(stderr, "netdelay: cannot create TAP '%s' in '%s': %s\n", name,
                path, strerror(errno));
        close(fd);
        fd = -1;
    }
back:
    saved = errno;
    if (setns(home_fd, CLONE_NEWNET) < 0) {
        fprintf(stderr, "netdelay: cannot return to own namespace: %s\n",
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    errno = saved;
    return fd;
}

static void
direction_stats(const Direction *d)
{
    fprintf(stderr,
            "netdelay %d: %s forwarded %llu dropped %llu oversize %llu "
            "write-errors %llu queued %u\n",
            (int)getpid(), d->name, (unsigned long long)d->forwarded,
            (unsigned long long)d->dropped, (unsigned long long)d->oversize,
            (unsigned long long)d->write_errors, d->count);
}

/* direction_flush: write every frame due by now (invariant 2) */
static void
direction_flush(Direction *d, uint64_t now)
{
    while (d->count > 0 && d->ring[d->head].due_ns <= now) {
        Frame *f = &d->ring[d->head];

        if (write(d->out_fd, f->data, f->len) == (ssize_t)f->len)
            d->forwarded++;
        else
            d->write_errors++; /* device down, or the kernel refused */
        d->head = (d->head + 1) % d->cap;
        d->count--;
    }
}

/* direction_read: queue what in_fd has, due at now + delay; false on a
 * fatal read error (device gone) */
static bool
direction_read(Direction *d, uint64_t now, uint64_t delay_ns)
{
    static unsigned char scratch[65536];

    for (int i = 0; i < READ_BATCH; i++) {
        Frame *f = NULL;
        ssize_t n;

        if (d->count < d->cap)
            f = &d->ring[(d->head + d->count) % d->cap];
        /* read into scratch when full, to drop it (invariant 1) */
        n = read(d->in_fd, scratch, sizeof scratch);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            fprintf(stderr, "netdelay: cannot read (%s): %s\n", d->name,
                    strerror(errno));
            return false;
        }
        if (n == 0)
            return true;
        if ((size_t)n > FRAME_MAX_BYTES) {
            d->oversize++;
            continue;
        }
        if (!f) {
            d->dropped++;
            continue;
        }
        memcpy(f->data, scratch, (size_t)n);
        f->len = (uint32_t)n;
        f->due_ns = now + delay_ns;
        d->count++;
    }
    return true;
}

static int
usage(void)
{
    fprintf(stderr, "usage: netdelay [--queue FRAMES] [--pidfile FILE] "
                    "NS-A DEV-A NS-B DEV-B DELAY\n");
    return 2;
}

int
main(int argc, char **argv)
{
    const char *pidfile = NULL;
    unsigned long queue = QUEUE_DEFAULT;
    uint64_t delay_ns;
    int home_fd, fd_a, fd_b, ready[2], i = 1;
    Direction dir[2];
    sigset_t block, unblocked;
    struct sigaction sa;
    pid_t child;

    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        if (!strcmp(argv[i], "--queue") && i + 1 < argc) {
            char *end;

            queue = strtoul(argv[++i], &end, 10);
            if (*end || queue < 1 || queue > QUEUE_MAX) {
                fprintf(stderr, "netdelay: bad --queue '%s' (1 to %u)\n",
                        argv[i], QUEUE_MAX);
                return 2;
            }
        } else if (!strcmp(argv[i], "--pidfile") && i + 1 < argc) {
            pidfile = argv[++i];
        } else {
            return usage();
        }
    }
    if (argc - i != 5)
        return usage();
    if (!parse_delay(argv[i + 4], &delay_ns)) {
        fprintf(stderr,
                "netdelay: bad delay '%s' (e.g. 5ms, 250us; at most "
                "10s)\n",
                argv[i + 4]);
        return 2;
    }

    home_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home_fd < 0) {
        fprintf(stderr, "netdelay: cannot open /proc/self/ns/net: %s\n",
                strerror(errno));
        return 1;
    }
    fd_a = tap_open_in(argv[i], argv[i + 1], home_fd);
    if (fd_a < 0)
        return 1;
    fd_b = tap_open_in(argv[i + 2], argv[i + 3], home_fd);
    if (fd_b < 0)
        return 1;
    close(home_fd);

    dir[0] = (Direction){.name = "A->B", .in_fd = fd_a, .out_fd = fd_b};
    dir[1] = (Direction){.name = "B->A", .in_fd = fd_b, .out_fd = fd_a};
    for (int k = 0; k < 2; k++) {
        dir[k].cap = (uint32_t)queue;
        /* calloc'ed pages stay untouched until a queue grows into them */
        dir[k].ring = calloc(queue, sizeof(Frame));
        if (!dir[k].ring) {
            fprintf(stderr, "netdelay: out of memory for %lu frames\n", queue);
            return 1;
        }
    }

    /* background once the devices exist: the parent returns our verdict */
    if (pipe2(ready, O_CLOEXEC) < 0) {
        fprintf(stderr, "netdelay: pipe: %s\n", strerror(errno));
        return 1;
    }
    child = fork();
    if (child < 0) {
        fprintf(stderr, "netdelay: fork: %s\n", strerror(errno));
        return 1;
    }
    if (child > 0) {
        char c = 0;

        close(ready[1]);
        free(dir[0].ring);
        free(dir[1].ring);
        if (read(ready[0], &c, 1) != 1 || c != 'y')
            return 1; /* the child said why on stderr */
        return 0;
    }
    close(ready[0]);
    setsid();
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        close(devnull);
    }
    if (pidfile) {
        FILE *pf = fopen(pidfile, "we");

        if (!pf || fprintf(pf, "%d\n", (int)getpid()) < 0 || fclose(pf)) {
            fprintf(stderr, "netdelay: cannot write pidfile '%s'\n", pidfile);
            return 1;
        }
    }
    prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &unblocked);
    sigdelset(&unblocked, SIGTERM);
    sigdelset(&unblocked, SIGINT);
    sigdelset(&unblocked, SIGUSR1);

    if (write(ready[1], "y", 1) != 1)
        return 1;
    close(ready[1]);

    for (;;) {
        struct pollfd pfd[2] = {{.fd = fd_a, .events = POLLIN},
                                {.fd = fd_b, .events = POLLIN}};
        struct timespec ts, *timeout = NULL;
        uint64_t now = mono_ns(), next = UINT64_MAX;
        int r;

        for (int k = 0; k < 2; k++) {
            direction_flush(&dir[k], now);
            if (dir[k].count > 0 && dir[k].ring[dir[k].head].due_ns < next)
                next = dir[k].ring[dir[k].head].due_ns;
        }
        if (next != UINT64_MAX) {
            uint64_t wait = next > now ? next - now : 0;

            ts.tv_sec = (time_t)(wait / 1000000000ull);
            ts.tv_nsec = (long)(wait % 1000000000ull);
            timeout = &ts;
        }
        r = ppoll(pfd, 2, timeout, &unblocked);
        if (stats_wanted) {
            stats_wanted = 0;
            direction_stats(&dir[0]);
            direction_stats(&dir[1]);
        }
        if (stop_signal)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "netdelay: poll: %s\n", strerror(errno));
            break;
        }
        now = mono_ns();
        for (int k = 0; k < 2; k++) {
            if (pfd[k].revents & (POLLERR | POLLHUP | POLLNVAL)) {
                fprintf(stderr, "netdelay: %s: device gone\n", dir[k].name);
                stop_signal = SIGHUP;
            } else if ((pfd[k].revents & POLLIN) &&
                       !direction_read(&dir[k], now, delay_ns)) {
                stop_signal = SIGHUP;
            }
        }
        if (stop_signal)
            break;
    }
    direction_stats(&dir[0]);
    direction_stats(&dir[1]);
    if (pidfile)
        unlink(pidfile);
    free(dir[0].ring);
    free(dir[1].ring);
    return stop_signal == SIGHUP ? 1 : 0;
}
