/*
 * control.h: the control sockets of spored and spore-agent, both sides —
 * one module for binding, reading, answering and calling
 * (docs/site-control.md, docs/agent-control.md).
 *
 * A control socket is a unix stream socket.  A request is one JSON object
 * on one line; the reply is one JSON object on one line, the envelope
 * {"ok": true, ...} or {"ok": false, "error": "MESSAGE", ...}.  A client may
 * send several requests on one connection, one after the other.
 *
 * Who may connect is who may open the socket: it is made under a umask that
 * leaves at most its mode, then given its group and mode; failing either is
 * an error, never a socket more open than asked.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "json-util.h"

/* the longest request line a server reads by default (a manifest inside) */
#define CONTROL_LINE_MAX_BYTES (32u * 1024 * 1024)
/* a read of the line reader */
#define CONTROL_READ_CHUNK_BYTES (64u * 1024)

/*
 * control_socket_listen: a threaded socket service bound to the unix
 * socket @path (an old socket file there is removed first; any other file
 * there is an error), of mode @mode
 * and, when @group is neither NULL nor "", of that group; not started: the
 * caller connects "run" and calls g_socket_service_start().
 *
 * The umask is the process's: call this at start-up, before threads that
 * make files.  Errors: SPORE_ERROR_INVALID (no such group),
 * SPORE_ERROR_IO (bind, chown, chmod), each naming @path.
 */
GSocketService *control_socket_listen(const char *path, mode_t mode,
                                      const char *group, guint max_threads,
                                      GError **error);

/*
 * ControlLineReader: bounded, buffered lines from a stream (not
 * thread-safe; one per connection).  control_line_reader_next returns the
 * next line without its '\n' (owned by the caller), or NULL: at a clean
 * end of the stream with no error set, else with SPORE_ERROR_LIMIT (a line
 * over @max_bytes, refused having read at most @max_bytes + 1 bytes of
 * it) or SPORE_ERROR_IO (also a stream that ends inside a line).
 */
typedef struct ControlLineReader ControlLineReader;

ControlLineReader *control_line_reader_new(GInputStream *in, gsize max_bytes);
char *control_line_reader_next(ControlLineReader *r, GError **error);
void control_line_reader_free(ControlLineReader *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ControlLineReader, control_line_reader_free)

/*
 * ControlHandler: answer one request (borrowed) with a reply object the
 * server takes; called on the connection's own thread, so several at once.
 */
typedef JsonObject *(*ControlHandler)(JsonObject *request, gpointer data);

typedef struct ControlServer ControlServer;

/*
 * control_server_start: serve @path (control_socket_listen's rules) with
 * @handler: each line is parsed as a JSON object (a line that is not one is
 * answered with an error envelope; a line over @max_line_bytes closes the
 * connection) and answered with the handler's reply.  Connections are
 * accepted by the caller's thread-default main context, which must run (the
 * daemon's main loop); each is then served on a thread of its own.
 */
ControlServer *control_server_start(const char *path, mode_t mode,
                                    const char *group, guint max_threads,
                                    gsize max_line_bytes,
                                    ControlHandler handler, gpointer data,
                                    GError **error);

/* control_server_stop: stop accepting, wait for the handler calls in
 * progress, remove the socket file, drop the caller's reference; after it
 * returns the handler is never called again (a connection still open ends
 * at its next request).  Call it where that main context is not being run
 * by another thread (on its own thread, or once its loop has returned).
 * NULL is accepted. */
void control_server_stop(ControlServer *server);

/* the envelope: {"ok": true} and {"ok": false, "error": MESSAGE} */
JsonObject *control_reply_ok(void);
JsonObject *control_reply_error(const char *format, ...) G_GNUC_PRINTF(1, 2);

/*
 * control_call: send @request to the server at @path, which is @what ("the
 * site manager"), and return its reply (a new reference), whether "ok" is
 * true or not; the caller reads the envelope.  Errors named after @what
 * and @path: SPORE_ERROR_UNAVAILABLE (cannot connect: why, also when @path
 * is not a socket or access was refused),
 * SPORE_ERROR_IO, SPORE_ERROR_INVALID (a reply that is not a JSON object).
 */
JsonObject *control_call(const char *what, const char *path,
                         JsonObject *request, GError **error);
