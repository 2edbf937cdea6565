/*
 * manager-zap.c: who may connect to spored (ZAP, RFC 27).  The agents'
 * socket (domain "spore") admits accepted host keys only, with the host's
 * name as user id; the registration socket ("spore-register") admits any
 * CURVE key, with the key as user id, and only ever answers "register".
 *
 * A key placed as HOSTS_DIR/NAME.pub is accepted as host NAME when it
 * first connects (manager_accept_from_dir), in a savepoint with its event, in
 * the transaction of the ZAP requests waiting (manager_zap_drain).
 * Runs on the main thread, under the manager's lock.
 */
#include "manager-private.h"

#include <string.h>
#include <glib/gstdio.h>
#include <zmq.h>

#include "zmq-zap.h"

#define REFUSAL_LOG_US (60 * G_USEC_PER_SEC)
/* hosts_dir is read again after this long even if its mtime is the same */
#define DIR_REREAD_US (2 * G_USEC_PER_SEC)

/* read_hosts_dir: m->dir_keys (key -> NAME) from hosts_dir's NAME.pub
 * files, read again only when the directory changed (its mtime) or
 * DIR_REREAD_US passed (a file rewritten in place): a thousand hosts
 * connecting at once read the directory once, not once each */
static void
read_hosts_dir(Manager *m)
{
    g_autoptr(GDir) dir = NULL;
    const char *entry;
    GStatBuf st;
    gint64 now = g_get_monotonic_time();
    gint64 mtime;

    if (!m->config.hosts_dir || g_stat(m->config.hosts_dir, &st) != 0) {
        g_clear_pointer(&m->dir_keys, g_hash_table_unref);
        return;
    }
    mtime =
        (gint64)st.st_mtim.tv_sec * G_USEC_PER_SEC + st.st_mtim.tv_nsec / 1000;
    if (m->dir_keys && mtime == m->dir_mtime &&
        now - m->dir_read < DIR_REREAD_US)
        return;
    g_clear_pointer(&m->dir_keys, g_hash_table_unref);
    m->dir_keys =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    m->dir_mtime = mtime;
    m->dir_read = now;
    if (!(dir = g_dir_open(m->config.hosts_dir, 0, NULL)))
        return;
    while ((entry = g_dir_read_name(dir))) {
        g_autofree char *path = NULL;
        g_autofree char *file_key = NULL;
        g_autofree char *name = NULL;

        if (!g_str_has_suffix(entry, ".pub"))
            continue;
        name = g_strndup(entry, strlen(entry) - 4);
        if (!wire_host_name_valid(name))
            continue;
        path = g_build_filename(m->config.hosts_dir, entry, NULL);
        file_key = wire_key_read_file(path, NULL);
        if (file_key)
            g_hash_table_insert(m->dir_keys, g_steal_pointer(&file_key),
                                g_steal_pointer(&name));
    }
}

char *
manager_accept_from_dir(Manager *m, const char *key, GError **error)
{
    const char *found;
    g_autofree char *name = NULL;
    g_autofree char *path = NULL;

    read_hosts_dir(m);
    found = m->dir_keys ? g_hash_table_lookup(m->dir_keys, key) : NULL;
    if (!found)
        return NULL;
    name = g_strdup(found);
    path = g_strdup_printf("%s/%s.pub", m->config.hosts_dir, name);
    if (!state_savepoint(m->db, error) ||
        !state_host_insert_accepted(m->db, name, key, error) ||
        !manager_event(m, error, "host-accepted", NULL, name,
                       "host %s accepted: its key is in %s", name, path) ||
        !state_release(m->db, error)) {
        state_rollback_to(m->db);
        return NULL;
    }
    return g_steal_pointer(&name);
}

bool
manager_should_log_refusal(Manager *m, const char *key)
{
    gint64 now = g_get_monotonic_time();
    gint64 *last = g_hash_table_lookup(m->refused, key);

    if (last && now - *last < REFUSAL_LOG_US)
        return false;
    last = g_new(gint64, 1);
    *last = now;
    g_hash_table_insert(m->refused, g_strdup(key), last);
    return true;
}

/* log_refusal: an event for a refused key, once a minute per key */
static bool
log_refusal(Manager *m, const char *address, const char *key, GError **error)
{
    g_autoptr(HostRow) pending = NULL;

    if (!manager_should_log_refusal(m, key))
        return true;
    if (!state_host_get_by_key(m->db, key, &pending, error))
        return false;
    if (pending)
        return manager_event(m, error, "host-refused", NULL, pending->name,
                             "refused host %s from %s: its key is not "
                             "accepted (sporectl host-accept %s)",
                             pending->name, address, pending->name);
    return manager_event(m, error, "host-refused", NULL, NULL,
                         "refused an unknown key from %s (%s): not accepted",
                         address, key);
}

/* zap_decide: the user id for an admitted client, or NULL with *why */
static char *
zap_decide(Manager *m, const char *domain, const char *address,
           const char *mechanism, const char *key, const char **why)
{
    g_autoptr(HostRow) host = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *name = NULL;

    if (!g_str_equal(mechanism, "CURVE") || !key) {
        *why = "CURVE only";
        return NULL;
    }
    if (g_str_equal(domain, WIRE_ZAP_REGISTER_DOMAIN))
        return g_strdup(key);
    if (!g_str_equal(domain, WIRE_ZAP_DOMAIN)) {
        *why = "unknown ZAP domain";
        return NULL;
    }
    if (!state_host_get_by_key(m->db, key, &host, &err)) {
        g_warning("cannot admit a key from %s: %s", address, err->message);
        *why = "the site manager's database failed";
        return NULL;
    }
    if (host && host->accepted)
        return g_strdup(host->name);
    name = manager_accept_from_dir(m, key, &err);
    if (name)
        return g_steal_pointer(&name);
    if (!err)
        log_refusal(m, address, key, &err);
    if (err)
        g_warning("cannot admit a key from %s: %s", address, err->message);
    *why = "host key not accepted";
    return NULL;
}

/* decide: zap_decide as the ZAP handler's callback */
static char *
decide(const char *domain, const char *address, const char *mechanism,
       const char *key, const char **why, gpointer data)
{
    return zap_decide(data, domain, address, mechanism, key, why);
}

/*
 * manager_zap_drain: the requests waiting, under the lock, in one
 * transaction (one fdatasync for a thousand hosts connecting at once,
 * not one each; an acceptance is a savepoint of it).  Should the commit
 * fail, the hosts admitted by it have no row yet: their messages are
 * applied to no host, and their next connection is admitted again.
 */
void
manager_zap_drain(Manager *m)
{
    g_autoptr(GMutexLocker) locker = NULL;
    g_autoptr(GError) err = NULL;
    int events = 0;
    size_t len = sizeof(events);
    bool batch;

    if (zmq_getsockopt(m->zap, ZMQ_EVENTS, &events, &len) == 0 &&
        !(events & ZMQ_POLLIN))
        return; /* nothing waits */
    locker = g_mutex_locker_new(&m->lock);
    batch = state_begin(m->db, &err);
    if (!batch)
        g_warning("admissions not batched: %s", err->message);
    spore_zap_drain(m->zap, decide, m);
    g_clear_error(&err);
    if (batch && !state_commit(m->db, &err)) {
        state_rollback(m->db);
        g_warning("admissions not recorded: %s", err->message);
    }
}
