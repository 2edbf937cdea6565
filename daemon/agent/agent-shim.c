/*
 * agent-shim.c: each image's shim, an nbdkit process running spore's plugin
 * that exports the image over NBD on a unix socket (RUN_DIR/shims/ID16.sock)
 * and asks the agent's fetch socket for missing chunks.  Shims are
 * separate processes and outlive the agent: a restarted agent finds them by
 * their PID files.
 *
 * One image's shim (guarded by AgentImage.lock):
 *
 *            agent_shim_serve (claims the start)
 *   IDLE ------------------------------------------> STARTING
 *     ^                                               |   |
 *     |  shim_start failed (broadcast cond)           |   | shim_start ok
 *     +-----------------------------------------------+   | (broadcast)
 *     |                                                   v
 *     +-------------- agent_shim_unserve ------------- SERVING
 *
 *     agent_shim_serve finding its nbdkit gone: SERVING -> STARTING
 *     agent_shim_adopt finding a running nbdkit at load: IDLE -> SERVING
 *
 *   A serve or unserve that finds STARTING waits on AgentImage.cond until
 *   the starting thread leaves it, then decides again.
 *
 * Invariants:
 *   1. AgentImage.lock guards shim_state and shim_pid; it is held between
 *      transitions only (checks of /proc, kill, unlinks of the shim's own
 *      files), never across shim_start's spawn and polls.
 *   2. Exactly one thread at a time is in STARTING for an image: the one
 *      that left IDLE (or SERVING with its nbdkit gone); the others wait.
 *   3. No agent-wide lock is taken here: starting one image's shim (up to
 *      2 x SHIM_START_TIMEOUT_MS) delays nothing but that image's serves.
 */
#define G_LOG_DOMAIN "spore-agent" /* before any GLib header */

#include "agent-private.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "spore-error.h"

#define SHIM_START_TIMEOUT_MS 10000
#define SHIM_POLL_US          10000
/* the shim sockets: the agent's user and the shim group (QEMU) */
#define SHIM_SOCKET_MODE    0660
#define SHIM_THREADS        "16"
#define SHIM_LOG_TAIL_BYTES 600 /* of its log, in an error */

static bool
pid_is_nbdkit(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", (int)pid);
    g_autofree char *cmdline = NULL;
    gsize len = 0;

    if (pid <= 0 || kill(pid, 0) != 0)
        return false;
    if (!g_file_get_contents(path, &cmdline, &len, NULL) || len == 0)
        return false;
    return strstr(cmdline, "nbdkit") != NULL;
}

static GPid
read_pidfile(const char *path)
{
    g_autofree char *text = NULL;
    guint64 pid = 0;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    g_strstrip(text);
    if (!g_ascii_string_to_unsigned(text, 10, 1, G_MAXINT32, &pid, NULL))
        return 0;
    return (GPid)pid;
}

/*
 * shim_enter: the transition of @im's shim to @state, SHIM_SERVING (nbdkit
 * @pid) or SHIM_IDLE, under the image's lock; wakes the threads waiting out
 * a SHIM_STARTING (invariant 2).
 */
static void
shim_enter(AgentImage *im, ShimState state, GPid pid)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&im->lock);

    im->shim_state = state;
    im->shim_pid = state == SHIM_SERVING ? pid : 0;
    g_cond_broadcast(&im->cond);
}

void
agent_shim_adopt(AgentImage *im)
{
    GPid pid = read_pidfile(im->shim_pidfile);

    if (!pid_is_nbdkit(pid))
        return;
    shim_enter(im, SHIM_SERVING, pid); /* IDLE -> SERVING */
    g_message("image %.12s: shim (nbdkit pid %d) still serving on '%s'",
              im->hex, (int)pid, im->shim_socket);
}

GPid
agent_shim_pid(AgentImage *im)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&im->lock);

    return im->shim_state == SHIM_SERVING ? im->shim_pid : 0;
}

char *
agent_shim_uri(AgentImage *im)
{
    return g_strdup_printf("nbd+unix:///%s?socket=%s", im->hex,
                           im->shim_socket);
}

/* Spawn nbdkit for @im, its output appended to the shim's log; *ret_pid
 * gets the first nbdkit process (which exits once its daemon is ready). */
static bool
shim_spawn(Agent *a, AgentImage *im, GPid *ret_pid, GError **error)
{
    g_autofree char *cache_arg =
        g_strdup_printf("cache=%s", chunk_cache_dir(im->cache));
    g_autofree char *agent_arg = g_strdup_printf("agent=%s", a->fetch_path);
    g_autofree char *timeout_arg =
        g_strdup_printf("timeout=%u", agent_shim_timeout(a));
    g_autofree char *log_arg = g_strdup_printf("log=%s", im->shim_log);
    /*
     * nbdkit daemonizes itself: in --foreground mode it asks the kernel to
     * kill it when its parent (us) dies (PR_SET_PDEATHSIG), and shims must
     * outlive the agent.  Its messages still go to our log file.
     */
    const char *argv[] = {
        a->cfg.nbdkit,    "--log=stderr",  "--readonly",
        "--unix",         im->shim_socket, "--pidfile",
        im->shim_pidfile, "--threads",     SHIM_THREADS,
        a->cfg.plugin,    cache_arg,       agent_arg,
        timeout_arg,      log_arg,         NULL,
    };
    int log_fd =
        open(im->shim_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    bool ok;

    if (log_fd < 0) {
        int saved = errno;
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_IO,
                    "cannot open the shim log '%s': %s", im->shim_log,
                    g_strerror(saved));
        return false;
    }
    g_unlink(im->shim_socket); /* nbdkit 1.32 leaves its socket behind */
    g_unlink(im->shim_pidfile);
    ok = g_spawn_async_with_fds(NULL, (char **)argv, NULL,
                                G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
                                NULL, NULL, ret_pid, -1, log_fd, log_fd, error);
    close(log_fd);
    if (!ok)
        g_prefix_error(error, "cannot start nbdkit '%s': ", a->cfg.nbdkit);
    return ok;
}

/* Wait (at most SHIM_START_TIMEOUT_MS) for the first nbdkit process @pid
 * to exit, successfully: its daemon is then ready.  Else the log's end is
 * the error. */
static bool
shim_wait_parent(AgentImage *im, GPid pid, GError **error)
{
    gint64 give_up =
        g_get_monotonic_time() + (gint64)SHIM_START_TIMEOUT_MS * 1000;
    g_autofree char *log_text = NULL;
    gsize len = 0;
    int status = 0;
    bool exited = false;

    while (!exited && g_get_monotonic_time() < give_up) {
        exited = waitpid(pid, &status, WNOHANG) == pid;
        if (!exited)
            g_usleep(SHIM_POLL_US);
    }
    if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return true;
    if (!exited) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    g_file_get_contents(im->shim_log, &log_text, &len, NULL);
    g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                "the shim (nbdkit) failed to start; its log '%s' ends: %s",
                im->shim_log,
                log_text
                    ? g_strchomp(log_text + (len > SHIM_LOG_TAIL_BYTES
                                                 ? len - SHIM_LOG_TAIL_BYTES
                                                 : 0))
                    : "(empty)");
    return false;
}

/* QEMU runs as another user: the socket is SHIM_SOCKET_MODE, and the shim
 * group's when there is one.  Failures are warnings. */
static void
shim_socket_grant(Agent *a, AgentImage *im)
{
    const char *group = a->cfg.shim_group;

    if (group && *group) {
        struct group *gr = getgrnam(group);

        if (!gr || chown(im->shim_socket, (uid_t)-1, gr->gr_gid) < 0)
            g_warning("image %.12s: cannot give group '%s' the shim socket "
                      "'%s'%s, ignoring",
                      im->hex, group, im->shim_socket,
                      gr ? "" : " (no such group)");
    }
    if (chmod(im->shim_socket, SHIM_SOCKET_MODE) < 0)
        g_warning("image %.12s: cannot make the shim socket '%s' mode %04o: "
                  "%s, ignoring",
                  im->hex, im->shim_socket, SHIM_SOCKET_MODE,
                  g_strerror(errno));
}

/*
 * Spawn the image's nbdkit and wait until its daemon serves; *ret_pid gets
 * the daemon's PID.  Runs in SHIM_STARTING, holding no lock (invariants 1,
 * 3): it may take up to 2 x SHIM_START_TIMEOUT_MS.
 */
static bool
shim_start(Agent *a, AgentImage *im, GPid *ret_pid, GError **error)
{
    gint64 give_up;
    GPid pid = 0;

    if (!shim_spawn(a, im, &pid, error) || !shim_wait_parent(im, pid, error))
        return false;
    /* nbdkit's daemon writes its PID file once it accepts connections,
     * which may be just after its parent exited: wait for it */
    give_up = g_get_monotonic_time() + (gint64)SHIM_START_TIMEOUT_MS * 1000;
    while (!pid_is_nbdkit(pid = read_pidfile(im->shim_pidfile)) &&
           g_get_monotonic_time() < give_up)
        g_usleep(SHIM_POLL_US);
    if (!pid_is_nbdkit(pid)) {
        g_set_error(error, SPORE_ERROR, SPORE_ERROR_FAILED,
                    "the shim (nbdkit) did not start serving on '%s'; see "
                    "'%s'",
                    im->shim_socket, im->shim_log);
        return false;
    }
    shim_socket_grant(a, im);
    *ret_pid = pid;
    return true;
}

/*
 * shim_claim_start: under the image's lock, wait out a start in progress,
 * then decide: false when the shim serves; else true, and the caller is the
 * one thread that starts it (IDLE, or SERVING with its nbdkit gone, ->
 * STARTING; invariant 2).  The lock is released on return, before the
 * spawn (invariant 1).
 */
static bool
shim_claim_start(AgentImage *im)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&im->lock);

    while (im->shim_state == SHIM_STARTING)
        g_cond_wait(&im->cond, &im->lock);
    if (im->shim_state == SHIM_SERVING && pid_is_nbdkit(im->shim_pid))
        return false;
    im->shim_state = SHIM_STARTING;
    im->shim_pid = 0;
    return true;
}

/*
 * Start the image's nbdkit unless it runs: the SHIM_IDLE -> SHIM_STARTING
 * -> SHIM_SERVING | SHIM_IDLE transitions.  Concurrent calls for the same
 * image wait on im->cond for the one that starts it and share its outcome
 * (a failed start is retried by the next caller).  Holds no agent-wide lock
 * (invariant 3), and the image's lock only between transitions.
 */
bool
agent_shim_serve(Agent *a, AgentImage *im, GError **error)
{
    GPid pid = 0;
    bool ok;

    if (!shim_claim_start(im))
        return true; /* it serves */
    /* this thread starts it, holding no lock (invariant 1) */
    ok = shim_start(a, im, &pid, error);
    shim_enter(im, ok ? SHIM_SERVING : SHIM_IDLE, pid);
    if (ok) {
        g_message("image %.12s: shim (nbdkit pid %d) serving on '%s'", im->hex,
                  (int)pid, im->shim_socket);
        agent_image_prefetch_profile(im);
    }
    return ok;
}

/* shim_stop: SERVING -> IDLE under the image's lock, after waiting out a
 * start in progress: its nbdkit is signalled and the shim's own files go
 * (invariant 1).  Returns the PID signalled, 0 when none ran. */
static GPid
shim_stop(AgentImage *im)
{
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&im->lock);
    GPid pid;

    while (im->shim_state == SHIM_STARTING)
        g_cond_wait(&im->cond, &im->lock);
    pid = im->shim_state == SHIM_SERVING && pid_is_nbdkit(im->shim_pid)
              ? im->shim_pid
              : 0;
    im->shim_state = SHIM_IDLE;
    im->shim_pid = 0;
    if (pid)
        kill(pid, SIGTERM);
    g_unlink(im->shim_socket);
    g_unlink(im->shim_pidfile);
    return pid;
}

/* Stop the image's nbdkit (SHIM_SERVING -> SHIM_IDLE), after waiting out a
 * start in progress. */
void
agent_shim_unserve(AgentImage *im)
{
    GPid pid = shim_stop(im);

    if (pid)
        g_message("image %.12s: shim (nbdkit pid %d) stopped", im->hex,
                  (int)pid);
}

/* ---- the typed API (agent.h) -------------------------------------------- */

bool
agent_image_serve(Agent *a, const char *name, char **ret_uri, GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);

    if (!im || !agent_shim_serve(a, im, error))
        return false;
    if (ret_uri)
        *ret_uri = agent_shim_uri(im);
    return true;
}

bool
agent_image_unserve(Agent *a, const char *name, GError **error)
{
    AgentImage *im = agent_find_image(a, name, error);

    if (!im)
        return false;
    agent_shim_unserve(im);
    return true;
}
