/* store.c - the durable job store: one SQLite database (WAL) in
 * --state-dir holding every job's row and document, and a results/ folder
 * with one JSON file per finished job. A job is recorded before it is
 * answered, so that after a crash (kill -9) every accepted job is either
 * finished or queued again. With synchronous=NORMAL in WAL mode a commit
 * survives the process dying (not a power cut: that needs FULL).
 *
 * One connection, opened serialised (SQLITE_OPEN_FULLMUTEX): any thread
 * may call; statements are prepared per call (the store is not hot). */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "srv.h"

#define STORE_VERSION 2 /* 2: est_seconds; a store of version 1 gets the column */

static sqlite3 *db;
static int lock_fd = -1; /* DIR/lock, held (flock) while this nppd has the store */
static char results_dir[4096];

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id TEXT PRIMARY KEY, seq INTEGER NOT NULL, owner TEXT NOT NULL, model TEXT NOT NULL,"
    " doc TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, started REAL,"
    " ended REAL, expires REAL, est_peak INTEGER NOT NULL, est_result INTEGER NOT NULL,"
    " total INTEGER NOT NULL, nvar INTEGER NOT NULL, result_bytes INTEGER NOT NULL DEFAULT 0,"
    " result_gone INTEGER NOT NULL DEFAULT 0, err_code INTEGER NOT NULL DEFAULT 0,"
    " err_field TEXT, err_message TEXT, est_seconds REAL NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);";

static void log_err(const char *what)
{
    fprintf(stderr, "{\"event\": \"store_error\", \"what\": \"%s\", \"sqlite\": \"%s\"}\n", what,
            db ? sqlite3_errmsg(db) : "not open");
}

static int mkdirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0700) && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0700) && errno != EEXIST ? -1 : 0;
}

/* One nppd per state folder: a second one would recover (requeue, fail)
 * the jobs the first is running. The lock goes with the process. */
static int lock_dir(const char *dir, char *err, size_t errn)
{
    char path[4096], pid[32] = "";
    snprintf(path, sizeof path, "%s/lock", dir);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0)
        return snprintf(err, errn, "--state-dir %s: cannot open %s (%s)", dir, path,
                        strerror(errno)),
               -1;
    int held = flock(lock_fd, LOCK_EX | LOCK_NB) ? errno : 0;
    if (held) {
        ssize_t n = held == EWOULDBLOCK ? read(lock_fd, pid, sizeof pid - 1) : 0;
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (held == EWOULDBLOCK)
            snprintf(err, errn,
                     "--state-dir %s is in use by another nppd%s%s%s; give each server its own "
                     "state folder",
                     dir, pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "");
        else
            snprintf(err, errn, "--state-dir %s: cannot lock %s (%s)", dir, path, strerror(held));
        close(lock_fd);
        lock_fd = -1;
        return -1;
    }
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(lock_fd, 0) || pwrite(lock_fd, pid, strlen(pid), 0) < 0)
        return snprintf(err, errn, "--state-dir %s: cannot write %s (%s)", dir, path,
                        strerror(errno)),
               -1;
    return 0;
}

int store_open(const char *dir, char *err, size_t errn)
{
    char path[4096];
    if (mkdirs(dir))
        return snprintf(err, errn, "--state-dir %s: cannot create it (%s)", dir, strerror(errno)),
               -1;
    if (lock_dir(dir, err, errn))
        return -1;
    snprintf(results_dir, sizeof results_dir, "%s/results", dir);
    if (mkdirs(results_dir))
        return snprintf(err, errn, "--state-dir %s: cannot create results/ (%s)", dir,
                        strerror(errno)),
               -1;
    snprintf(path, sizeof path, "%s/jobs.sqlite", dir);
    if (sqlite3_open_v2(path, &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errn, "%s: %s", path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *st;
    int version = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    /* the column and the version together, or neither */
    if (version == 1 && sqlite3_exec(db,
                                     "BEGIN; ALTER TABLE jobs ADD COLUMN est_seconds REAL NOT NULL "
                                     "DEFAULT 0; PRAGMA user_version=2; COMMIT;",
                                     NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errn, "%s: cannot add est_seconds to a store of version 1: %s", path,
                 sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK;", NULL, NULL, NULL);
        store_close();
        return -1;
    }
    if (version > 1 && version != STORE_VERSION) {
        snprintf(err, errn, "%s: a store of version %d; this nppd reads version %d", path, version,
                 STORE_VERSION);
        store_close();
        return -1;
    }
    char *msg = NULL;
    char sql[sizeof SCHEMA + 128];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; %s PRAGMA user_version=%d;",
             SCHEMA, STORE_VERSION);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errn, "%s: %s", path, msg ? msg : "cannot create the tables");
        sqlite3_free(msg);
        store_close();
        return -1;
    }
    return 0;
}

void store_close(void)
{
    if (db)
        sqlite3_close(db);
    db = NULL;
}

void store_result_path(const char *id, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s.json", results_dir, id);
}

void store_picture_path(const char *id, const char *kind, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s.%s.svg", results_dir, id, kind);
}

static void unlink_pictures(const char *id)
{
    char path[4200];
    store_picture_path(id, "heatmap", path, sizeof path);
    unlink(path);
    store_picture_path(id, "circuit", path, sizeof path);
    unlink(path);
}

/* Runs sql with the binds given as a format: 't' text, 'i' int64, 'd'
 * double, 'z' size_t (as int64); the values follow. */
static int exec_bind(const char *what, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *st;
    if (!db || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        log_err(what);
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        switch (fmt[i]) {
        case 't':
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
            break;
        case 'i': sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t)); break;
        case 'd': sqlite3_bind_double(st, i + 1, va_arg(ap, double)); break;
        case 'z': sqlite3_bind_int64(st, i + 1, (sqlite3_int64)va_arg(ap, size_t)); break;
        }
    }
    va_end(ap);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        log_err(what);
        return -1;
    }
    return 0;
}

int store_insert(const sjob *j, const char *doc, char *err, size_t errn)
{
    if (exec_bind("insert",
                  "INSERT INTO jobs (id, seq, owner, model, doc, state, created, est_peak, "
                  "est_result, total, nvar, est_seconds) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, "
                  "?, ?, ?)",
                  "titttdzziid", j->id, (int64_t)j->seq, j->owner, j->model->name, doc, j->created,
                  j->est_peak, j->est_result, (int64_t)j->total, (int64_t)j->nvar, j->est_seconds))
        return snprintf(err, errn, "the job store could not record the job: %s",
                        db ? sqlite3_errmsg(db) : "not open"),
               -1;
    return 0;
}

char *store_doc(const char *id)
{
    sqlite3_stmt *st;
    char *doc = NULL;
    if (!db || sqlite3_prepare_v2(db, "SELECT doc FROM jobs WHERE id = ?", -1, &st, NULL)) {
        log_err("doc");
        return NULL;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        doc = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return doc;
}

int store_started(const sjob *j)
{
    return exec_bind("started", "UPDATE jobs SET state = 'running', started = ? WHERE id = ?", "dt",
                     j->started, j->id);
}

int store_finished(const sjob *j)
{
    return exec_bind("finished",
                     "UPDATE jobs SET state = ?, ended = ?, expires = ?, result_bytes = ?, "
                     "err_code = ?, err_field = ?, err_message = ? WHERE id = ?",
                     "tddzittt", jstate_name(j->state), j->ended, j->expires, j->result_bytes,
                     (int64_t)j->err.code, j->err.field, j->err.message, j->id);
}

int store_requeue(const sjob *j)
{
    return exec_bind("requeue", "UPDATE jobs SET state = 'queued', started = NULL WHERE id = ?",
                     "t", j->id);
}

int store_result_gone(const char *id)
{
    char path[4200];
    store_result_path(id, path, sizeof path);
    unlink(path);
    unlink_pictures(id);
    return exec_bind("result_gone", "UPDATE jobs SET result_gone = 1 WHERE id = ?", "t", id);
}

int store_forget(const char *id)
{
    char path[4200];
    store_result_path(id, path, sizeof path);
    unlink(path);
    unlink_pictures(id);
    return exec_bind("forget", "DELETE FROM jobs WHERE id = ?", "t", id);
}

static void copy_text(char *dst, size_t n, const unsigned char *src)
{
    snprintf(dst, n, "%s", src ? (const char *)src : "");
}

int store_load(void (*fn)(void *ud, sjob *j), void *ud)
{
    sqlite3_stmt *st;
    const char *sql = "SELECT id, seq, owner, model, state, created, started, ended, expires, "
                      "est_peak, est_result, total, nvar, result_bytes, result_gone, err_code, "
                      "err_field, err_message, est_seconds FROM jobs ORDER BY seq";
    if (!db || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        log_err("load");
        return -1;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        sjob *j = calloc(1, sizeof *j);
        if (!j)
            break;
        copy_text(j->id, sizeof j->id, sqlite3_column_text(st, 0));
        j->seq = sqlite3_column_int64(st, 1);
        copy_text(j->owner, sizeof j->owner, sqlite3_column_text(st, 2));
        const char *model = (const char *)sqlite3_column_text(st, 3);
        for (int i = 0; model && i < S.nmodels; i++)
            if (!strcmp(S.models[i].name, model))
                j->model = &S.models[i];
        int state = jstate_parse((const char *)sqlite3_column_text(st, 4));
        j->state = state < 0 ? J_FAILED : (jstate)state;
        j->created = sqlite3_column_double(st, 5);
        j->started = sqlite3_column_double(st, 6);
        j->ended = sqlite3_column_double(st, 7);
        j->expires = sqlite3_column_double(st, 8);
        j->est_peak = (size_t)sqlite3_column_int64(st, 9);
        j->est_result = (size_t)sqlite3_column_int64(st, 10);
        j->total = (long)sqlite3_column_int64(st, 11);
        j->nvar = sqlite3_column_int(st, 12);
        j->result_bytes = (size_t)sqlite3_column_int64(st, 13);
        j->result_gone = sqlite3_column_int(st, 14);
        j->err.code = sqlite3_column_int(st, 15);
        copy_text(j->err.field, sizeof j->err.field, sqlite3_column_text(st, 16));
        copy_text(j->err.message, sizeof j->err.message, sqlite3_column_text(st, 17));
        j->est_seconds = sqlite3_column_double(st, 18);
        fn(ud, j); /* j->model NULL: a model this server no longer serves */
    }
    sqlite3_finalize(st);
    return 0;
}
