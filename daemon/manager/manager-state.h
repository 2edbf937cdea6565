/*
 * manager-state.h: spored's state layer — every SQL statement of the site
 * manager behind a named function (manager-state.c).
 *
 * Contract of every function here: it runs on the caller's connection,
 * takes no lock of its own (the caller holds Manager.lock, or owns the
 * connection alone as the unit tests do), returns false or NULL with
 * @error set when the database fails, and never logs.  Functions that change
 * state do not open transactions: the caller groups them with
 * state_begin() / state_commit() and calls state_rollback() on any error,
 * so that a failed command leaves nothing half-written.  "Not found" is
 * not an error: getters set *ret to NULL and return true.
 *
 * Rows come back as structs owned by the caller (free functions below;
 * lists are GPtrArrays that own their rows).
 */
#pragma once

#include <stdbool.h>
#include <glib.h>

/* ---- named states ------------------------------------------------------
 *
 * A command's life (table commands, column state):
 *
 *   (none) --[state_command_add]--> PENDING
 *   PENDING --[state_command_finish, ack ok]--> DONE
 *   PENDING --[state_command_finish, ack not ok]--> FAILED
 *   PENDING --[state_host_set_lost, not a destroy]--> CANCELLED
 *
 * DONE, FAILED and CANCELLED are final.  A PENDING command is sent
 * (again) by send_pending() while its host is up: the sent time and the
 * attempts change, the state does not.
 */
typedef enum {
    COMMAND_PENDING,
    COMMAND_DONE,
    COMMAND_FAILED,
    COMMAND_CANCELLED,
} CommandState;

/* command_state_to_string: the name stored in the database ("pending") */
const char *command_state_to_string(CommandState state);
/* command_state_from_string: false for a name that is none of them */
bool command_state_from_string(const char *text, CommandState *ret_state);

/*
 * A host's registration (table hosts, columns accepted and lost; "up" is
 * in memory: a message within lost_after_s):
 *
 *   (none) --[state_host_insert_pending, register]--> PENDING
 *   (none) --[state_host_insert_accepted, key in hosts_dir]--> ACCEPTED
 *   PENDING --[state_host_accept, sporectl host-accept]--> ACCEPTED
 *   ACCEPTED --[a message: handle_message]--> UP
 *   UP --[silent lost_after_s: state_host_set_lost]--> LOST
 *   LOST --[a message: state_host_seen]--> UP
 *
 * host-list shows ACCEPTED as "down": accepted, not heard from since
 * spored started (or within lost_after_s).
 */
typedef enum {
    HOST_PENDING,
    HOST_DOWN, /* accepted, not heard from */
    HOST_UP,
    HOST_LOST,
} HostState;

const char *host_state_to_string(HostState state);
bool host_state_from_string(const char *text, HostState *ret_state);

/*
 * A clone's life as the manager shows it (clone-list; "desired" rows are
 * table clones, "reported" is the host's last report):
 *
 *   (none) --[state_clone_sync: desired grows]--> PENDING (no host)
 *   PENDING --[state_clone_place]--> CREATING (host, not reported)
 *   PENDING/CREATING --[host lost: state_host_set_lost]--> PENDING
 *   CREATING --[reported, this generation]--> the reported state
 *                                               (running, shut off, ...)
 *   reported, of another generation than its row --> UPDATING (a row
 *            keeps its own generation: during a rollout, old clones
 *            show their reported state; rollout.h)
 *   any --[desired shrinks or service deleted: state_clone_remove*]-->
 *         DELETING while a host still reports it --> (gone)
 *   UNKNOWN: the clone is placed on a host that has not reported since
 *            spored started (its true state is not known yet)
 */
typedef enum {
    CLONE_PENDING,
    CLONE_CREATING,
    CLONE_UPDATING,
    CLONE_DELETING,
    CLONE_UNKNOWN,
} CloneState;

const char *clone_state_to_string(CloneState state);
bool clone_state_from_string(const char *text, CloneState *ret_state);

/* ---- the database ------------------------------------------------------
 *
 * Two backends (docs/state.md): SQLite, a file in spored's state
 * directory (the default), and PostgreSQL through libpq.  A StateDb is
 * one session with one of them (state-db.h); every function below takes
 * one, whichever the backend.
 */
typedef enum {
    STATE_BACKEND_SQLITE,
    STATE_BACKEND_POSTGRESQL,
} StateBackend;

/* the name in spored.conf's [state] backend ("sqlite", "postgresql") */
const char *state_backend_to_string(StateBackend backend);
bool state_backend_from_string(const char *text, StateBackend *ret_backend);

typedef struct StateDb StateDb;

/* the schema version both backends are brought up to */
#define STATE_SCHEMA_VERSION 4

/*
 * state_open: open (creating it 0600 if missing) the SQLite database at
 * @path, WAL, synchronous=FULL, with the schema, brought up from an older
 * version; fails on a newer one.  Close with state_close().
 */
StateDb *state_open(const char *path, GError **error);
/*
 * state_open_postgresql: a session to the PostgreSQL database of @dsn
 * (libpq's conninfo or URI), with the schema, created or brought up the
 * same way (under an advisory lock: two spored starting at once migrate
 * once).  Errors name the DSN without its password.
 */
StateDb *state_open_postgresql(const char *dsn, GError **error);
void state_close(StateDb *db);
StateBackend state_backend(const StateDb *db);

/*
 * state_copy: every row of every table of @from into @to, in one
 * transaction of @to (its id sequences follow); @to must be empty (no
 * service, image, host or command) and of the same schema version.
 * spored --migrate-state uses it from SQLite to PostgreSQL; it works
 * between any two backends.  *ret_rows: how many rows were copied.
 */
bool state_copy(StateDb *from, StateDb *to, gint64 *ret_rows, GError **error);

/* state_begin: a write transaction: SQLite BEGIN IMMEDIATE (the write
 * lock now, or SQLITE_BUSY after the busy timeout); PostgreSQL BEGIN
 * ISOLATION LEVEL SERIALIZABLE.  The one place a lost PostgreSQL session
 * is reconnected. */
bool state_begin(StateDb *db, GError **error);
/* state_begin_read: a consistent snapshot for reads: SQLite BEGIN
 * (deferred), PostgreSQL BEGIN ISOLATION LEVEL REPEATABLE READ */
bool state_begin_read(StateDb *db, GError **error);
bool state_commit(StateDb *db, GError **error);
/* state_rollback: ROLLBACK if a transaction is open; never fails */
void state_rollback(StateDb *db);

/* state_savepoint: a savepoint inside the caller's transaction, ended
 * by state_release (kept) or state_rollback_to (undone); not nested.
 * Outside a transaction it begins one, which state_release commits and
 * state_rollback_to rolls back (SQLite's rule, on both backends). */
bool state_savepoint(StateDb *db, GError **error);
bool state_release(StateDb *db, GError **error);
/* state_rollback_to: undo and end the savepoint; never fails */
void state_rollback_to(StateDb *db);

double state_now(void);

/* ---- services ---------------------------------------------------------- */

typedef struct {
    char *name;
    char *manifest; /* canonical XML */
    gint64 generation;
    char *image;
    gint64 desired;
    bool deleting;
    double cooldown_until;
} ServiceRow;

void service_row_free(ServiceRow *row);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ServiceRow, service_row_free)

bool state_service_get(StateDb *db, const char *name, ServiceRow **ret_row,
                       GError **error);
/* state_service_generation: -1 when there is no such service */
bool state_service_generation(StateDb *db, const char *name,
                              gint64 *ret_generation, GError **error);
/* of ServiceRow, by name */
GPtrArray *state_service_list(StateDb *db, GError **error);
bool state_service_insert(StateDb *db, const char *name, const char *canonical,
                          const char *image, gint64 desired, GError **error);
bool state_service_update(StateDb *db, const char *name, const char *canonical,
                          gint64 generation, const char *image, gint64 desired,
                          GError **error);
bool state_service_set_deleting(StateDb *db, const char *name, GError **error);
bool state_service_set_desired(StateDb *db, const char *name, gint64 desired,
                               double cooldown_until, GError **error);
/* state_service_remove: the service's row goes (its clones first) */
bool state_service_remove(StateDb *db, const char *name, GError **error);
/* state_service_image_id: the id of the service's image, NULL if none */
bool state_service_image_id(StateDb *db, const char *service, char **ret_id,
                            GError **error);
/* state_service_busy: pending commands of @service to hosts not lost */
bool state_service_busy(StateDb *db, const char *service, bool *ret_busy,
                        GError **error);

/* ---- images ------------------------------------------------------------ */

typedef struct {
    char *name;
    char *id;
    char *format;
    char *origins; /* JSON array */
    GBytes *index; /* image_index_encoding() */
    gint64 size;
    gint64 chunk_size;
} ImageRow;

void image_row_free(ImageRow *row);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImageRow, image_row_free)

bool state_image_get(StateDb *db, const char *name, ImageRow **ret_row,
                     GError **error);
/* state_image_list: of ImageRow, by name, without their index */
GPtrArray *state_image_list(StateDb *db, GError **error);
bool state_image_put(StateDb *db, const ImageRow *row, GError **error);

typedef struct {
    char *host;
    char *image; /* id */
    double cached;
    gint64 origin_bytes, peer_bytes, local_bytes;
    gint64 profile_boots; /* -1: no profile */
    gint64 profile_chunks;
} HostImageRow;

void host_image_row_free(HostImageRow *row);

/* state_host_image_list: of HostImageRow for image @id, or all when NULL */
GPtrArray *state_host_image_list(StateDb *db, const char *id, GError **error);
bool state_host_image_put(StateDb *db, const HostImageRow *row, GError **error);
/* state_host_image_cached: the cached fraction, 0 when unknown */
bool state_host_image_cached(StateDb *db, const char *host, const char *id,
                             double *ret_cached, GError **error);
/* state_host_image_cached_map: host -> double * (its cached fraction)
 * of image @id, for the hosts that reported it */
GHashTable *state_host_image_cached_map(StateDb *db, const char *id,
                                        GError **error);
bool state_profile_put(StateDb *db, const char *host, const char *id,
                       gint64 boots, const char *chunks, GError **error);
/* state_profile_best: the chunks (JSON) of the profile with most boots of
 * image @id, NULL if none */
bool state_profile_best(StateDb *db, const char *id, char **ret_chunks,
                        GError **error);

/* ---- hosts ------------------------------------------------------------- */

typedef struct {
    char *name;
    char *key;
    char *address;
    bool accepted;
    bool lost;
    gint64 cpus;
    gint64 memory_kib;
    gint64 clones; /* desired clones placed on it */
} HostRow;

void host_row_free(HostRow *row);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(HostRow, host_row_free)

bool state_host_get(StateDb *db, const char *name, HostRow **ret_row,
                    GError **error);
bool state_host_get_by_key(StateDb *db, const char *key, HostRow **ret_row,
                           GError **error);
/* state_host_list: of HostRow, by name; @live: accepted and not lost only */
GPtrArray *state_host_list(StateDb *db, bool live, GError **error);
bool state_host_insert_pending(StateDb *db, const char *name, const char *key,
                               const char *address, GError **error);
/* state_host_insert_accepted: @name with @key, accepted, replacing any
 * host of that name or key */
bool state_host_insert_accepted(StateDb *db, const char *name, const char *key,
                                GError **error);
bool state_host_accept(StateDb *db, const char *name, GError **error);
bool state_host_hello(StateDb *db, const char *name, const char *address,
                      gint64 cpus, gint64 memory_kib, const char *virt,
                      GError **error);
/* state_host_seen: heard from now; *ret_was_lost: it was lost */
bool state_host_seen(StateDb *db, const char *name, bool *ret_was_lost,
                     GError **error);
/* state_host_set_lost: lost; its clones unplaced, its pending commands
 * other than destroys cancelled */
bool state_host_set_lost(StateDb *db, const char *name, GError **error);

/* ---- clones ------------------------------------------------------------ */

typedef struct {
    char *service;
    gint64 index;
    char *host;        /* NULL: not placed */
    gint64 generation; /* the service's */
} CloneRow;

void clone_row_free(CloneRow *row);

/* state_clone_list: of CloneRow, by service and index; of @service only
 * unless NULL, of those on @host only unless NULL */
GPtrArray *state_clone_list(StateDb *db, const char *service, const char *host,
                            GError **error);
/* state_clone_list_unplaced: of CloneRow, of services not being deleted */
GPtrArray *state_clone_list_unplaced(StateDb *db, GError **error);
/* state_clone_sync: exactly the rows 0..@desired-1 of @service (new ones
 * of the service's generation) */
bool state_clone_sync(StateDb *db, const char *service, gint64 desired,
                      GError **error);
bool state_clone_remove_all(StateDb *db, const char *service, GError **error);
/* state_clone_add: row @index of @service, of @generation, unplaced; an
 * error if the index is taken */
bool state_clone_add(StateDb *db, const char *service, gint64 index,
                     gint64 generation, GError **error);
bool state_clone_remove(StateDb *db, const char *service, gint64 index,
                        GError **error);
bool state_clone_place(StateDb *db, const char *service, gint64 index,
                       const char *host, GError **error);
/* state_clone_writes: how many times this session wrote (or tried to
 * write) the clones table, through any function above or
 * state_host_set_lost / state_service_remove: rows read when it was N are
 * still the table's while it is N and nobody else writes (the leader
 * alone does) */
guint64 state_clone_writes(const StateDb *db);

/* ---- generations and rollouts ------------------------------------------
 *
 * Every generation of a service is kept with its manifest (the newest
 * STATE_GENERATIONS_KEPT, and any that clones still have), so that old
 * clones keep their UUIDs during a rollout, a rollback finds the previous
 * manifest, and a number is never given to two manifests of one service
 * (not even across a delete and a new submit).
 *
 * A service's last rollout (table rollouts, column state):
 *
 *   (none)/any --[state_rollout_start: submit or rollback changes the
 *                generation]--> rolling
 *   rolling --[state_rollout_finish: no clone of another generation
 *             left]--> done
 *   rolling --[state_rollout_finish: a new clone failed]--> failed
 *   failed --[state_rollout_start: rollback or a new submit]--> rolling
 */
#define STATE_GENERATIONS_KEPT 10
#define STATE_ROLLOUT_ROLLING  "rolling"
#define STATE_ROLLOUT_DONE     "done"
#define STATE_ROLLOUT_FAILED   "failed"

bool state_generation_put(StateDb *db, const char *service, gint64 generation,
                          const char *canonical, const char *image,
                          GError **error);
/* state_generation_get: the manifest (and image, unless @ret_image is
 * NULL) of @generation; NULL when not kept */
bool state_generation_get(StateDb *db, const char *service, gint64 generation,
                          char **ret_canonical, char **ret_image,
                          GError **error);
/* state_generation_next: one more than any generation @service ever had */
bool state_generation_next(StateDb *db, const char *service,
                           gint64 *ret_generation, GError **error);
/* state_generation_before: the newest kept generation below @generation,
 * -1 if none */
bool state_generation_before(StateDb *db, const char *service,
                             gint64 generation, gint64 *ret_generation,
                             GError **error);

typedef struct {
    char *service;
    gint64 generation;      /* to */
    gint64 from_generation; /* from */
    char *state;            /* "rolling", "done" or "failed" */
    double started;
    double finished; /* 0 while rolling */
    char *reason;    /* why it failed, or NULL */
} RolloutRow;

void rollout_row_free(RolloutRow *row);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(RolloutRow, rollout_row_free)

bool state_rollout_get(StateDb *db, const char *service, RolloutRow **ret_row,
                       GError **error);
bool state_rollout_start(StateDb *db, const char *service, gint64 generation,
                         gint64 from_generation, GError **error);
bool state_rollout_finish(StateDb *db, const char *service, const char *state,
                          const char *reason, GError **error);
/* state_create_failure: "HOST: ERROR" of the newest clone-create of
 * @service at @generation that failed since @since, NULL if none */
bool state_create_failure(StateDb *db, const char *service, gint64 generation,
                          double since, char **ret_reason, GError **error);

/* ---- commands ---------------------------------------------------------- */

typedef struct {
    gint64 id;
    char *host;
    char *op;
    char *service;
    char *body;
} CommandRow;

void command_row_free(CommandRow *row);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CommandRow, command_row_free)

bool state_command_add(StateDb *db, const char *host, const char *op,
                       const char *service, const char *body, gint64 *ret_id,
                       GError **error);
/* state_command_add_sent: a command that is sent once the caller's
 * transaction commits: stored as sent at @sent, its first attempt (the
 * sends are not recorded in a transaction of their own); one that then
 * cannot go is marked with state_command_unsent */
bool state_command_add_sent(StateDb *db, const char *host, const char *op,
                            const char *service, const char *body, double sent,
                            gint64 *ret_id, GError **error);
/* state_command_unsent: command @id was not sent after all: due now, one
 * attempt less */
bool state_command_unsent(StateDb *db, gint64 id, GError **error);
/* state_command_get_pending: command @id to @host if pending, else NULL */
bool state_command_get_pending(StateDb *db, gint64 id, const char *host,
                               CommandRow **ret_row, GError **error);
/* state_command_list_pending: of CommandRow: those of @host (all if NULL)
 * last sent before @sent_before, by id */
GPtrArray *state_command_list_pending(StateDb *db, const char *host,
                                      double sent_before, GError **error);
/* state_command_list_pending_heads: of CommandRow with their id and host
 * only (op, service and body NULL): every pending command, by id */
GPtrArray *state_command_list_pending_heads(StateDb *db, GError **error);
bool state_command_finish(StateDb *db, gint64 id, CommandState state,
                          const char *reason, GError **error);
bool state_command_sent(StateDb *db, gint64 id, double now, GError **error);
/* state_command_resend: send @host's pending commands at the next pass */
bool state_command_resend(StateDb *db, const char *host, GError **error);

/* ---- requests (auto-scaling) ------------------------------------------- */

bool state_request_add(StateDb *db, const char *service, gint64 count,
                       GError **error);
bool state_request_sum(StateDb *db, const char *service, double since,
                       gint64 *ret_sum, GError **error);
bool state_request_prune(StateDb *db, double before, GError **error);

/* ---- schedules (scheduled scaling) ------------------------------------- */

/* state_schedule_handled: a new table owned by the caller: each schedule
 * of @service (by manifest_schedule_text) -> the time up to which its
 * occurrences were handled (double *) */
GHashTable *state_schedule_handled(StateDb *db, const char *service,
                                   GError **error);
bool state_schedule_set_handled(StateDb *db, const char *service,
                                const char *schedule, double handled,
                                GError **error);
/* state_schedule_remove: @service's row of @schedule, or all its rows
 * when @schedule is NULL */
bool state_schedule_remove(StateDb *db, const char *service,
                           const char *schedule, GError **error);

/* ---- events ------------------------------------------------------------ */

typedef struct {
    gint64 id;
    double time;
    char *kind;
    char *service; /* may be NULL */
    char *host;    /* may be NULL */
    char *message;
} EventRow;

void event_row_free(EventRow *row);

bool state_event_add(StateDb *db, const char *kind, const char *service,
                     const char *host, const char *message, GError **error);
/* state_event_list: the newest @limit events after @since (of @service
 * unless NULL), oldest first */
GPtrArray *state_event_list(StateDb *db, gint64 since, const char *service,
                            gint64 limit, GError **error);

/* ---- metrics ----------------------------------------------------------- */

typedef struct {
    GHashTable *commands_by_state; /* state name -> GINT_TO_POINTER(count) */
    gint64 command_sends;
    gint64 commands_retried;
    gint64 commands_acknowledged;
    gint64 clones_desired;
    gint64 hosts_accepted;
    gint64 hosts_lost;
    gint64 events;
} StateCounts;

void state_counts_clear(StateCounts *counts);
/* state_last_scaling: service -> the time (double *) of its last scaling
 * action (a rule's scaled-up or scaled-down, a scheduled policy), from the
 * events kept */
bool state_last_scaling(StateDb *db, GHashTable **ret_times, GError **error);
bool state_counts(StateDb *db, StateCounts *ret_counts, GError **error);

/* ---- the active manager (state-leader.c) ------------------------------- */

/* the leader row: which spored is the site's active manager */
typedef struct {
    gint64 epoch;     /* 0: no manager was ever active on this state */
    char *holder;     /* "HOSTNAME pid PID (ENDPOINT)" */
    char *public_key; /* its CURVE public key: the agents' manager_key */
    double since;     /* when it took over, seconds since the epoch */
} LeaderRow;

void leader_row_clear(LeaderRow *row);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(LeaderRow, leader_row_clear)

/*
 * state_leader_lease: make @db a lease session: on PostgreSQL the server
 * ends it when it stays idle @lease_s seconds (idle_session_timeout),
 * which frees its advisory lock: the holder must call
 * state_leader_read more often.  Nothing on SQLite.
 */
bool state_leader_lease(StateDb *db, guint lease_s, GError **error);
/*
 * state_leader_try_lock: take the site's leader lock for @db's session
 * if no other session holds it (PostgreSQL: pg_try_advisory_lock;
 * SQLite: always, one process per file).  *@ret_held: whether @db holds
 * it now.
 */
bool state_leader_try_lock(StateDb *db, bool *ret_held, GError **error);
/* state_leader_unlock: give the lock back (PostgreSQL) */
bool state_leader_unlock(StateDb *db, GError **error);
/* state_leader_read: the leader row (epoch 0 and NULL strings when
 * none); clear it with leader_row_clear */
bool state_leader_read(StateDb *db, LeaderRow *ret_row, GError **error);
/*
 * state_leader_take: with the leader lock held, make this manager the
 * active one: the epoch one more than the row's, @holder and
 * @public_key; *@ret_before: the row as it was.  Refused
 * (SPORE_ERROR_CONFLICT) when the row has another public key: the agents
 * would not accept this manager.
 */
bool state_leader_take(StateDb *db, const char *holder, const char *public_key,
                       LeaderRow *ret_before, gint64 *ret_epoch,
                       GError **error);
/*
 * state_fence: every later write transaction of @db (state_begin) checks
 * first that the leader row's epoch is still @epoch, and fails when
 * another manager took over; state_fenced says one did.
 */
void state_fence(StateDb *db, gint64 epoch);
bool state_fenced(StateDb *db);
