/* main.c - nppd: options (one table: flag, environment variable, default,
 * help), start-up (the store and its unfinished jobs, HTTP, models loaded
 * in the background so /readyz can say so), the libuv loop, and graceful
 * shutdown. Only this file exits. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "srv.h"

srv S;

#ifndef NPP_DEFAULT_MODEL
#define NPP_DEFAULT_MODEL "models/default"
#endif

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "nppd: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

/* ---- options ------------------------------------------------------------------ */

enum { T_STR, T_INT, T_LONG, T_DBL, T_FLAG, T_MODEL };

typedef struct {
    const char *flag, *env, *arg, *help;
    int type;
    void *dst;
    double lo, hi;
} option_def;

/* Every option, once: the flag, its NPP_* variable, and its help line
 * (the default is printed from the value set in set_defaults). */
static const option_def OPTS[] = {
    {"model", "NPP_MODEL", "NAME=DIR",
     "a HuggingFace GPT-2 folder to serve (repeatable; the first is the default for jobs that "
     "name none; the variable takes several, separated by commas)",
     T_MODEL, NULL, 0, 0},
    {"device", "NPP_DEVICE", "cpu|cuda:N", "where the models live", T_STR, &S.device, 0, 0},
    {"dtype", "NPP_DTYPE", "f32|f16|bf16", "their dtype", T_STR, &S.dtype, 0, 0},
    {"workers", "NPP_WORKERS", "N", "compute worker threads", T_INT, &S.workers, 1,
     SRV_MAX_WORKERS},
    {"user-workers", "NPP_USER_WORKERS", "N",
     "workers one user's jobs hold at once (the user's next job waits, showing "
     "waiting_for user_workers, while others' jobs take the rest)",
     T_INT, &S.user_workers, 1, SRV_MAX_WORKERS},
    {"threads", "NPP_THREADS", "N", "tensor threads per worker", T_INT, &S.threads, 1, 256},
    {"planners", "NPP_PLANNERS", "N", "planner threads (plan and check jobs, draw graphs)", T_INT,
     &S.planners, 1, SRV_MAX_PLANNERS},
    {"cache-mb", "NPP_CACHE_MB", "N", "value cache per model, MiB", T_LONG, &S.cache_mb, 0,
     1 << 24},
    {"memory-mb", "NPP_MEMORY_MB", "N",
     "memory for running jobs and the caches, MiB (jobs start while their estimates fit; "
     "the default is half the machine's memory)",
     T_LONG, &S.memory_mb, 1, 1 << 26},
    {"keep-mb", "NPP_KEEP_MB", "N",
     "freed tensor memory each worker keeps from one job for its next, already faulted in, "
     "MiB (reserved out of --memory-mb; 0: none)",
     T_LONG, &S.keep_mb, 0, 1 << 20},
    {"user-memory-mb", "NPP_USER_MEMORY_MB", "N",
     "memory one user's running jobs hold at once, by their estimates, MiB: the user's next "
     "job waits (waiting_for user_memory) while others' jobs take the rest, and a job over it "
     "is refused (422); 0: no bound but --memory-mb",
     T_LONG, &S.user_memory_mb, 0, 1 << 26},
    {"max-job-mb", "NPP_MAX_JOB_MB", "N",
     "a job whose estimated peak memory is larger is refused (422), MiB", T_LONG, &S.max_job_mb, 1,
     1 << 26},
    {"max-result-mb", "NPP_MAX_RESULT_MB", "N",
     "a job whose estimated result is larger is refused (422), MiB", T_LONG, &S.max_result_mb, 1,
     1 << 24},
    {"state-dir", "NPP_STATE_DIR", "DIR", "the durable job store (SQLite) and the results' files",
     T_STR, &S.state_dir, 0, 0},
    {"results-disk-mb", "NPP_RESULTS_DISK_MB", "N",
     "stored results at most, MiB (past it, the oldest of the user whose results take the most "
     "room are removed first)",
     T_LONG, &S.results_disk_mb, 1, 1 << 30},
    {"listen", "NPP_LISTEN", "HOST:PORT", "address (loopback unless you say otherwise)", T_STR,
     &S.listen, 0, 0},
    {"replica", "NPP_REPLICA", "NAME",
     "this replica's name behind a load balancer: job ids start with NAME- so nginx routes "
     "them back (lower-case letters and digits, at most 16)",
     T_STR, &S.replica, 0, 0},
    {"token-file", "NPP_TOKEN_FILE", "FILE",
     "bearer tokens: 'NAME TOKEN' or 'NAME TOKEN admin' per line; jobs are private to their "
     "token (admins see and cancel all)",
     T_STR, &S.token_file, 0, 0},
    {"max-body-kb", "NPP_MAX_BODY_KB", "N", "request body limit", T_LONG, &S.max_body_kb, 1,
     1 << 20},
    {"queue-max", "NPP_QUEUE_MAX", "N", "jobs waiting (queued or being planned) at most, all users",
     T_INT, &S.queue_max, 1, 1000000},
    {"max-inflight", "NPP_MAX_INFLIGHT", "N", "jobs planned, queued or running per token", T_INT,
     &S.max_inflight, 1, 1000000},
    {"max-values", "NPP_MAX_VALUES", "N", "ceiling on a job's plan size in values", T_LONG,
     &S.max_values, 1, 100000000},
    {"plan-seconds", "NPP_PLAN_SECONDS", "S", "a job that takes longer to plan is refused", T_DBL,
     &S.plan_seconds, 0.1, 3600},
    {"max-job-seconds", "NPP_MAX_JOB_SECONDS", "S",
     "a job whose estimated compute takes longer is refused (422); one still running after "
     "this long is stopped (0: no limit)",
     T_DBL, &S.max_job_seconds, 0, 86400 * 30},
    {"gflops", "NPP_GFLOPS", "N",
     "the rate a job's compute time is estimated at, GFLOP/s (0: measured at start-up for "
     "each model, one worker's)",
     T_DBL, &S.gflops, 0, 1e12},
    {"chunk-mb", "NPP_CHUNK_MB", "N",
     "temporaries of one attention or MLP call at most, MiB (bigger calls are cut; a cancel "
     "takes effect between two)",
     T_LONG, &S.chunk_mb, 1, 1 << 20},
    {"result-ttl", "NPP_RESULT_TTL", "S", "seconds a finished job's result is kept", T_DBL,
     &S.result_ttl, 1, 86400 * 30},
    {"drain-seconds", "NPP_DRAIN_SECONDS", "S",
     "on SIGTERM/SIGINT, grace for running jobs before they stop", T_DBL, &S.drain_seconds, 0,
     86400},
    {"private-cache", "NPP_PRIVATE_CACHE", NULL,
     "each user's jobs share cached values only with that user's own jobs (by default every "
     "job's values serve everyone's: faster, but a job's values_cached and time show whether "
     "anyone computed the same before)",
     T_FLAG, &S.private_cache, 0, 1},
    {"drain-cancel", "NPP_DRAIN_CANCEL", NULL,
     "on SIGTERM, cancel queued and interrupted jobs (by default they run at the next start)",
     T_FLAG, &S.drain_cancel, 0, 1},
    {"conn-timeout", "NPP_CONN_TIMEOUT", "S", "idle connection timeout", T_INT, &S.conn_timeout, 1,
     86400},
    {"header-timeout", "NPP_HEADER_TIMEOUT", "S",
     "a request head must arrive within this many seconds", T_INT, &S.header_timeout, 1, 3600},
    {"body-timeout", "NPP_BODY_TIMEOUT", "S",
     "a request body must arrive within this many seconds of its head", T_INT, &S.body_timeout, 1,
     3600},
    {"max-connections", "NPP_MAX_CONNECTIONS", "N", "open connections at most", T_INT,
     &S.max_connections, 16, 1000000},
    {"max-conn-per-ip", "NPP_MAX_CONN_PER_IP", "N", "connections per client address", T_INT,
     &S.max_conn_per_ip, 1, 100000},
};
#define NOPTS (int)(sizeof OPTS / sizeof OPTS[0])

static void set_defaults(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    long half =
        pages > 0 && psize > 0 ? (long)((double)pages * (double)psize / 2 / (1 << 20)) : 8192;
    S.device = "cpu", S.dtype = "f32", S.listen = "127.0.0.1:8080", S.state_dir = "nppd-state";
    S.workers = 2, S.threads = 1, S.planners = 1, S.cache_mb = 1024;
    S.memory_mb = half > 2048 ? half : 2048, S.max_job_mb = 0, S.max_result_mb = 512;
    S.results_disk_mb = 4096, S.max_body_kb = 1024, S.queue_max = 256, S.max_inflight = 32;
    S.max_values = 50000, S.plan_seconds = 10, S.max_job_seconds = 600,
    S.chunk_mb = EXEC_CHUNK_BYTES >> 20, S.result_ttl = 600;
    S.drain_seconds = 30, S.conn_timeout = 30, S.header_timeout = 10, S.body_timeout = 30,
    S.max_connections = 1024;
    S.keep_mb = -1;      /* RUN_KEEP_MB or less (after the options) */
    S.user_workers = -1; /* one less than --workers with several tokens (after the options) */
    S.max_conn_per_ip = 64;
}

/* The default, as help shows it, into buf ("" when there is none to show). */
static void default_text(const option_def *o, char *buf, size_t n)
{
    buf[0] = 0;
    if (o->dst == &S.user_workers && S.user_workers < 0) {
        snprintf(buf, n,
                 " (with a token file of two or more names one less than --workers, "
                 "at least 1; else all)");
        return;
    }
    if (o->dst == &S.keep_mb && S.keep_mb < 0) {
        snprintf(buf, n,
                 " (%d, less where the workers would keep over an eighth of --memory-mb or more "
                 "than --max-job-mb leaves)",
                 RUN_KEEP_MB);
        return;
    }
    switch (o->type) {
    case T_STR:
        if (*(const char **)o->dst)
            snprintf(buf, n, " (%s)", *(const char **)o->dst);
        break;
    case T_INT: snprintf(buf, n, " (%d)", *(int *)o->dst); break;
    case T_LONG:
        if (*(long *)o->dst)
            snprintf(buf, n, " (%ld)", *(long *)o->dst);
        break;
    case T_DBL: snprintf(buf, n, " (%g)", *(double *)o->dst); break;
    case T_MODEL: snprintf(buf, n, " (default=%s)", NPP_DEFAULT_MODEL); break;
    }
}

/* Writes text in a column from 28 to 79, words wrapped. */
static void wrapped(FILE *f, const char *text, int col)
{
    const char *p = text;
    while (*p) {
        int room = 79 - col, n = 0, last = -1;
        while (p[n] && n <= room) {
            if (p[n] == ' ')
                last = n;
            n++;
        }
        if (p[n] && last > 0)
            n = last;
        fprintf(f, "%.*s\n", n, p);
        p += n;
        while (*p == ' ')
            p++;
        if (*p)
            fprintf(f, "%28s", "");
        col = 28;
    }
}

static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', f);
        fputc(*s, f);
    }
}

/* The options as the Markdown table docs/server.md holds (a test checks
 * that it does): nppd --help-markdown. Computed defaults are described. */
static void help_markdown(FILE *f)
{
    fprintf(f, "| flag | variable | default | what |\n| --- | --- | --- | --- |\n");
    for (int i = 0; i < NOPTS; i++) {
        const option_def *o = &OPTS[i];
        char def[160];
        default_text(o, def, sizeof def);
        const char *d = def;
        if (o->dst == &S.memory_mb)
            d = " (half the machine's memory)";
        else if (o->dst == &S.max_job_mb)
            d = " (what --memory-mb leaves after the caches and the workers' kept memory)";
        else if (o->type == T_FLAG)
            d = " (off)";
        else if (o->type == T_MODEL)
            d = " (default=models/induction)";
        else if (!def[0])
            d = " (none)";
        /* " (x)" -> "x"; a "|" in a cell would end it */
        fprintf(f, "| `--%s", o->flag);
        if (o->arg) {
            fputc(' ', f);
            md_cell(f, o->arg);
        }
        fprintf(f, "` | `%s` | %.*s | ", o->env, (int)strlen(d) - 3, d + 2);
        md_cell(f, o->help);
        fprintf(f, " |\n");
    }
}

static void help(FILE *f)
{
    fprintf(f, "usage: nppd [options]\n");
    for (int i = 0; i < NOPTS; i++) {
        char left[64], text[640], def[128];
        snprintf(left, sizeof left, "--%s%s%s", OPTS[i].flag, OPTS[i].arg ? " " : "",
                 OPTS[i].arg ? OPTS[i].arg : "");
        default_text(&OPTS[i], def, sizeof def);
        snprintf(text, sizeof text, "%s%s [%s]", OPTS[i].help, def, OPTS[i].env);
        fprintf(f, "  %-25s ", left);
        if (strlen(left) > 25)
            fprintf(f, "\n%28s", "");
        wrapped(f, text, 28);
    }
    fprintf(f, "Every option is also the environment variable in brackets; flags win over the\n"
               "environment. --max-job-mb defaults to what --memory-mb leaves after the caches\n"
               "and the workers' kept memory (--workers x --keep-mb).\n");
}

static double num(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "nppd: --%s: '%s' is not a number in [%g, %g]\n", name, v, lo, hi);
        exit(2);
    }
    return x;
}

static void add_model(const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        die("--model '%s': expected NAME=DIR", spec);
    if (S.nmodels == SRV_MAX_MODELS)
        die("too many models (at most 16): %s", spec);
    for (const char *p = spec; p < eq; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
            die("--model '%s': a name is letters, digits, '.', '_' or '-'", spec);
    srv_model *m = &S.models[S.nmodels++];
    m->name = strndup(spec, (size_t)(eq - spec));
    m->dir = strdup(eq + 1);
    for (int i = 0; i < S.nmodels - 1; i++)
        if (!strcmp(S.models[i].name, m->name))
            die("--model: the name '%s' is given twice", m->name);
}

static void set_option(const option_def *o, const char *v, int from_flag, int *flag_models)
{
    switch (o->type) {
    case T_MODEL:
        if (from_flag && !(*flag_models)++)
            S.nmodels = 0; /* flags replace models from the environment */
        {
            char *copy = strdup(v);
            for (char *save = NULL, *t = strtok_r(copy, ",", &save); t;
                 t = strtok_r(NULL, ",", &save))
                add_model(t);
            free(copy);
        }
        break;
    case T_STR: *(const char **)o->dst = v; break;
    case T_INT: *(int *)o->dst = (int)num(o->flag, v, o->lo, o->hi); break;
    case T_LONG: *(long *)o->dst = (long)num(o->flag, v, o->lo, o->hi); break;
    case T_DBL: *(double *)o->dst = num(o->flag, v, o->lo, o->hi); break;
    case T_FLAG:
        if (!from_flag && strcmp(v, "1") && strcmp(v, "0") && strcmp(v, "true") &&
            strcmp(v, "false"))
            die("%s: expected 1, 0, true or false", o->env);
        *(int *)o->dst = from_flag || !strcmp(v, "1") || !strcmp(v, "true");
        break;
    }
}

static void load_tokens(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        die("--token-file %s: cannot open", path);
    char *text = NULL, err[256];
    size_t cap = 0, len = 0, n;
    char buf[4096];
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0) {
        if (len + n > (1 << 20))
            die("--token-file %s: larger than 1 MiB", path);
        if (len + n > cap) {
            cap = 2 * (len + n);
            if (!(text = realloc(text, cap)))
                die("--token-file %s: out of memory", path);
        }
        memcpy(text + len, buf, n);
        len += n;
    }
    fclose(fp);
    if (tokens_parse(text ? text : "", len, S.tokens, SRV_MAX_TOKENS, &S.ntokens, err,
                     sizeof err)) {
        fprintf(stderr, "nppd: --token-file %s: %s\n", path, err);
        exit(2);
    }
    free(text);
}

static void parse_options(int argc, char **argv)
{
    struct option lo[NOPTS + 3];
    for (int i = 0; i < NOPTS; i++)
        lo[i] = (struct option){OPTS[i].flag, OPTS[i].type == T_FLAG ? 0 : 1, 0, 256 + i};
    lo[NOPTS] = (struct option){"help", 0, 0, 'h'};
    lo[NOPTS + 1] = (struct option){"help-markdown", 0, 0, 'M'};
    lo[NOPTS + 2] = (struct option){0, 0, 0, 0};
    set_defaults();
    int flag_models = 0;
    for (int i = 0; i < NOPTS; i++) { /* the environment first, then flags (which win) */
        const char *v = getenv(OPTS[i].env);
        if (v && *v)
            set_option(&OPTS[i], v, 0, &flag_models);
    }
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        if (c == 'h' || c == 'M') {
            (c == 'h' ? help : help_markdown)(stdout);
            exit(0);
        }
        if (c < 256 || c >= 256 + NOPTS) {
            help(stderr);
            exit(2);
        }
        set_option(&OPTS[c - 256], optarg ? optarg : "1", 1, &flag_models);
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!S.nmodels)
        add_model("default=" NPP_DEFAULT_MODEL);
    if (S.token_file)
        load_tokens(S.token_file);
    if (S.user_workers < 0) /* with users, one worker is out of any one's reach */
        S.user_workers = S.ntokens > 1 && S.workers > 1 ? S.workers - 1 : S.workers;
    if (S.user_workers > S.workers) { /* no cap: what limits shows */
        fprintf(stderr, "nppd: --user-workers %d is over --workers %d; using %d\n", S.user_workers,
                S.workers, S.workers);
        S.user_workers = S.workers;
    }
    if (S.replica) {
        size_t n = strlen(S.replica);
        for (size_t i = 0; i < n; i++)
            if (!islower((unsigned char)S.replica[i]) && !isdigit((unsigned char)S.replica[i]))
                die("--replica '%s': lower-case letters and digits only", S.replica);
        if (!n || n > 16)
            die("--replica '%s': 1 to 16 characters", S.replica);
    }
    if (S.keep_mb < 0) { /* RUN_KEEP_MB, within --memory-mb / 8, beside --max-job-mb */
        long room = S.memory_mb / 8;
        if (S.max_job_mb) {
            long left = S.memory_mb - (long)S.nmodels * S.cache_mb - S.max_job_mb;
            room = left < room ? left : room;
        }
        S.keep_mb = room <= 0                         ? 0
                    : RUN_KEEP_MB * S.workers <= room ? RUN_KEEP_MB
                                                      : room / S.workers;
    }
    /* the limits must leave room for one job at the limit */
    long caches = (long)S.nmodels * S.cache_mb + (long)S.workers * S.keep_mb;
    if (!S.max_job_mb)
        S.max_job_mb = S.memory_mb - caches;
    if (S.max_job_mb < 1 || S.max_job_mb + caches > S.memory_mb) {
        fprintf(stderr,
                "nppd: --memory-mb %ld cannot hold the caches (%d model(s) x --cache-mb %ld), "
                "the workers' kept memory (%d x --keep-mb %ld) and one job at --max-job-mb %ld; "
                "raise --memory-mb or lower the others\n",
                S.memory_mb, S.nmodels, S.cache_mb, S.workers, S.keep_mb, S.max_job_mb);
        exit(2);
    }
    if (S.max_result_mb > S.results_disk_mb) {
        fprintf(stderr, "nppd: --max-result-mb %ld is over --results-disk-mb %ld\n",
                S.max_result_mb, S.results_disk_mb);
        exit(2);
    }
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)S.max_connections + 64 > rl.rlim_cur) {
        fprintf(stderr, "nppd: --max-connections %d needs %d file descriptors; the limit is %lu\n",
                S.max_connections, S.max_connections + 64, (unsigned long)rl.rlim_cur);
        exit(2);
    }
}

/* ---- start-up and shutdown ------------------------------------------------------------ */

/* Loads every model (in the background: HTTP answers /readyz meanwhile). */
static void *loader(void *arg)
{
    (void)arg;
    int failed = 0;
    for (int i = 0; i < S.nmodels; i++) {
        srv_model *sm = &S.models[i];
        model_opts mo = {S.device, S.dtype};
        npp_err e = {0};
        model *m = NULL;
        if (model_load(sm->dir, &mo, &m, &e)) {
            fprintf(stderr, "{\"event\": \"model_failed\", \"model\": \"%s\", \"error\": \"%s\"}\n",
                    sm->name, e.message);
            failed = 1;
            continue;
        }
        /* the rate jobs' times are estimated at: a worker's, on its threads */
        double rate = S.gflops * 1e9 / 2;
        shim_set_threads(S.threads);
        if (rate <= 0 && run_measure_rate(m, &rate, &e)) {
            fprintf(stderr,
                    "{\"event\": \"model_failed\", \"model\": \"%s\", \"error\": \"timing a "
                    "run: %s\"}\n",
                    sm->name, e.message);
            model_free(m);
            failed = 1;
            continue;
        }
        cache *c = cache_new((size_t)S.cache_mb << 20);
        pthread_mutex_lock(&S.mu);
        sm->m = m;
        sm->cache = c;
        sm->rate = rate;
        pthread_mutex_unlock(&S.mu);
        fprintf(stderr,
                "{\"event\": \"model_loaded\", \"model\": \"%s\", \"dir\": \"%s\", \"layers\": %d, "
                "\"weights_bytes\": %zu, \"gflop_per_s\": %.2f}\n",
                sm->name, sm->dir, m->cfg.n_layer, m->param_bytes, 2e-9 * rate);
    }
    if (failed) { /* a server missing a model it was asked to serve is no use */
        fprintf(stderr, "nppd: a model failed to load; shutting down\n");
        kill(getpid(), SIGTERM);
        return NULL;
    }
    pthread_mutex_lock(&S.mu);
    S.ready = 1;
    pthread_mutex_unlock(&S.mu);
    srv_kick(); /* recovered jobs may start */
    fprintf(stderr, "{\"event\": \"ready\", \"listen\": \"%s\", \"workers\": %d}\n", S.listen,
            S.workers);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t lt;
    char err[512];
    run_malloc_setup();
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&S.mu, NULL);
    if (store_open(S.state_dir, err, sizeof err)) {
        fprintf(stderr, "nppd: %s\n", err);
        return 1;
    }
    if (sched_recover() || sched_start() || planner_start()) {
        fprintf(stderr, "nppd: cannot start the scheduler\n");
        return 1;
    }
    if (http_start())
        return 1;
    fprintf(stderr,
            "{\"event\": \"listening\", \"listen\": \"%s\", \"models\": %d, \"auth\": %s, "
            "\"state_dir\": \"%s\", \"memory_mb\": %ld, \"max_job_mb\": %ld}\n",
            S.listen, S.nmodels, S.ntokens ? "true" : "false", S.state_dir, S.memory_mb,
            S.max_job_mb);
    pthread_create(&lt, NULL, loader, NULL);
    uv_run(&S.loop, UV_RUN_DEFAULT); /* returns once draining has finished */
    pthread_join(lt, NULL);
    /* Every running job has ended: stop the planners, answer every
     * suspended connection, give the answers a moment to leave, close. */
    pthread_mutex_lock(&S.mu);
    S.stopping = 1;
    pthread_mutex_unlock(&S.mu);
    planner_stop();
    http_resume_all();
    for (int i = 0; i < 60 && conn_busy() > 0; i++)
        usleep(5 * 1000); /* at most 300 ms for the answers to leave */
    http_resume_all();
    http_stop();
    sched_stop_workers();
    uv_close((uv_handle_t *)&S.kick, NULL);
    uv_close((uv_handle_t *)&S.resume, NULL);
    uv_close((uv_handle_t *)&S.tick, NULL);
    uv_close((uv_handle_t *)&S.sigterm, NULL);
    uv_close((uv_handle_t *)&S.sigint, NULL);
    uv_run(&S.loop, UV_RUN_DEFAULT);
    uv_loop_close(&S.loop);
    store_close();
    int exit_code = 0;
    for (int i = 0; i < S.nmodels; i++) {
        if (!S.models[i].m)
            exit_code = 1; /* asked to serve a model that never loaded */
        cache_free(S.models[i].cache);
        model_free(S.models[i].m);
        free(S.models[i].name);
        free(S.models[i].dir);
    }
    fprintf(stderr, "{\"event\": \"stopped\", \"exit\": %d}\n", exit_code);
    return exit_code;
}
