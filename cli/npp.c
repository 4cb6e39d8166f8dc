/* npp.c - the command-line tool: runs the engine in-process.
 *   npp make-model  writes a random HF GPT-2 checkpoint
 *   npp tokenize    GPT-2 token ids of a text
 *   npp forward     next-token predictions (and all logits as .npy)
 * Only this file exits; the engine returns errors (see engine/err.h). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/mkmodel.h"
#include "io/npy.h"
#include "model/gpt2.h"
#include "model/model.h"
#include "model/tok.h"
#include "output/circuit.h"
#include "output/heatmap.h"
#include "output/svg.h"
#include "run/run.h"

#ifndef NPP_VOCAB_DIR
#define NPP_VOCAB_DIR "vocab"
#endif
#ifndef NPP_VERSION
#define NPP_VERSION "0.1.0"
#endif

static const char *prog = "npp";

static int die_err(const npp_err *e)
{
    fprintf(stderr, "%s: error: %s\n", prog, e->message);
    return 1;
}

/* A job's error: names the field, as the service's error body does. */
static int job_error(const npp_err *e)
{
    if (e->field[0])
        fprintf(stderr, "%s: error in '%s': %s\n", prog, e->field, e->message);
    else
        fprintf(stderr, "%s: error: %s\n", prog, e->message);
    return 1;
}

static int usage_error(const char *cmd, const char *msg)
{
    fprintf(stderr, "%s %s: %s (see '%s %s --help')\n", prog, cmd, msg, prog, cmd);
    return 2;
}

/* Parses a positive int option; returns -1 on garbage. */
static long parse_long(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    return v;
}

/* ---- make-model ------------------------------------------------------- */

static const char MAKE_HELP[] =
    "usage: npp make-model --out DIR [--layers N] [--heads N] [--embd N] [--positions N]\n"
    "                      [--inner N] [--seed S] [--dtype f32|f16|bf16] [--init-std X]\n"
    "                      [--prefix transformer.] [--untied] [--vocab-dir DIR]\n"
    "Writes a random GPT-2 checkpoint in HuggingFace's layout (config.json,\n"
    "model.safetensors, vocab.json, merges.txt), deterministic for a seed.\n"
    "Defaults: 2 layers, 4 heads, 64 wide, 128 positions, seed 0, f32, init std 0.02.\n"
    "The vocabulary is copied from --vocab-dir (encoder.json + vocab.bpe), default\n"
    "$NPP_VOCAB_DIR or " NPP_VOCAB_DIR ".\n";

static int cmd_make_model(int argc, char **argv)
{
    mkmodel_opts o = {.layers = 2, .heads = 4, .embd = 64, .positions = 128, .dtype = "f32"};
    o.vocab_dir = getenv("NPP_VOCAB_DIR") ? getenv("NPP_VOCAB_DIR") : NPP_VOCAB_DIR;
    static const struct option opts[] = {{"out", 1, 0, 'o'},       {"layers", 1, 0, 'l'},
                                         {"heads", 1, 0, 'h'},     {"embd", 1, 0, 'e'},
                                         {"positions", 1, 0, 'p'}, {"inner", 1, 0, 'i'},
                                         {"seed", 1, 0, 's'},      {"dtype", 1, 0, 'd'},
                                         {"init-std", 1, 0, 'x'},  {"prefix", 1, 0, 'P'},
                                         {"untied", 0, 0, 'u'},    {"vocab-dir", 1, 0, 'v'},
                                         {"help", 0, 0, 'H'},      {0, 0, 0, 0}};
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': o.out_dir = optarg; break;
        case 'l':
        case 'h':
        case 'e':
        case 'p':
        case 'i':
            if ((v = parse_long(optarg, 1, 1 << 20)) < 0)
                return usage_error("make-model", "numeric options take a positive integer");
            *(c == 'l'   ? &o.layers
              : c == 'h' ? &o.heads
              : c == 'e' ? &o.embd
              : c == 'p' ? &o.positions
                         : &o.inner) = (int)v;
            break;
        case 's': o.seed = strtoull(optarg, NULL, 10); break;
        case 'd': o.dtype = optarg; break;
        case 'x': o.init_std = atof(optarg); break;
        case 'P': o.prefix = optarg; break;
        case 'u': o.untied = 1; break;
        case 'v': o.vocab_dir = optarg; break;
        case 'H': fputs(MAKE_HELP, stdout); return 0;
        default: return usage_error("make-model", "unknown option");
        }
    }
    if (!o.out_dir)
        return usage_error("make-model", "--out DIR is required");
    npp_err e = {0};
    if (mkmodel_write(&o, &e))
        return die_err(&e);
    return 0;
}

/* ---- shared by tokenize / forward ------------------------------------- */

typedef struct {
    const char *model_dir, *device, *dtype, *ids, *logits_out;
    int json, top_k, threads, repeat;
    const char *text;
} run_args;

static const struct option RUN_OPTS[] = {
    {"model", 1, 0, 'm'},  {"device", 1, 0, 'D'},  {"dtype", 1, 0, 'd'}, {"json", 0, 0, 'j'},
    {"top-k", 1, 0, 'k'},  {"threads", 1, 0, 't'}, {"ids", 1, 0, 'i'},   {"logits-out", 1, 0, 'L'},
    {"repeat", 1, 0, 'r'}, {"help", 0, 0, 'H'},    {0, 0, 0, 0}};

static int parse_run_args(const char *cmd, const char *help, int argc, char **argv, run_args *a)
{
    int c;
    long v;
    memset(a, 0, sizeof *a);
    a->top_k = 10;
    a->model_dir = getenv("NPP_MODEL");
    while ((c = getopt_long(argc, argv, "", RUN_OPTS, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case 'D': a->device = optarg; break;
        case 'd': a->dtype = optarg; break;
        case 'j': a->json = 1; break;
        case 'i': a->ids = optarg; break;
        case 'L': a->logits_out = optarg; break;
        case 'k':
        case 't':
        case 'r':
            if ((v = parse_long(optarg, 1, 1000000)) < 0)
                return usage_error(cmd, "--top-k, --threads and --repeat take a positive integer");
            *(c == 'k' ? &a->top_k : c == 't' ? &a->threads : &a->repeat) = (int)v;
            break;
        case 'H': fputs(help, stdout); return -1;
        default: return usage_error(cmd, "unknown option");
        }
    }
    if (!a->model_dir)
        return usage_error(cmd, "--model DIR is required (or set NPP_MODEL)");
    if (optind < argc)
        a->text = argv[optind++];
    if (optind < argc)
        return usage_error(cmd, "one TEXT argument only (quote it)");
    if (!a->text == !a->ids)
        return usage_error(cmd, "give either TEXT or --ids");
    if (a->threads)
        shim_set_threads(a->threads);
    return 0;
}

/* Token ids from TEXT or "--ids 1,2,3". *ids is new. */
static int get_ids(const model *m, const run_args *a, int64_t **ids, size_t *n, npp_err *e)
{
    if (a->text) {
        int32_t *t32;
        int rc = tok_encode(m->tok, a->text, strlen(a->text), &t32, n, e);
        if (rc)
            return rc;
        *ids = malloc((*n ? *n : 1) * sizeof **ids);
        for (size_t i = 0; *ids && i < *n; i++)
            (*ids)[i] = t32[i];
        free(t32);
        return *ids ? 0 : npp_fail(e, NPP_ENOMEM, "text", "out of memory");
    }
    size_t cap = strlen(a->ids) / 2 + 1;
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids)
        return npp_fail(e, NPP_ENOMEM, "ids", "out of memory");
    for (const char *p = a->ids; *p;) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v >= m->cfg.vocab_size || (*end && *end != ','))
            return npp_fail(e, NPP_EINVAL, "ids",
                            "--ids: expected comma-separated token ids in 0..%d near '%s'",
                            m->cfg.vocab_size - 1, p);
        (*ids)[(*n)++] = v;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static json_t *token_json(const model *m, int64_t id)
{
    int32_t i32 = (int32_t)id;
    char *s = NULL;
    size_t len;
    json_t *j = NULL;
    if (tok_decode(m->tok, &i32, 1, &s, &len, NULL) == 0)
        j = json_stringn(s, len);
    free(s);
    return j ? j : json_null();
}

/* ---- tokenize ---------------------------------------------------------- */

static const char TOK_HELP[] =
    "usage: npp tokenize --model DIR [--json] TEXT\n"
    "Prints the GPT-2 token ids of TEXT, one 'id<TAB>token' per line, or a JSON\n"
    "array with --json. '<|endoftext|>' in TEXT is plain text (see docs).\n";

static int cmd_tokenize(int argc, char **argv)
{
    run_args a;
    int rc = parse_run_args("tokenize", TOK_HELP, argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!a.text)
        return usage_error("tokenize", "TEXT is required");
    npp_err e = {0};
    tok *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (model_tok_load(a.model_dir, &t, &e) ||
        tok_encode(t, a.text, strlen(a.text), &ids, &n, &e)) {
        tok_free(t);
        return die_err(&e);
    }
    if (a.json) {
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i ? ", " : "", ids[i]);
        puts("]");
    } else {
        for (size_t i = 0; i < n; i++) {
            char *s;
            size_t len;
            tok_decode(t, &ids[i], 1, &s, &len, NULL);
            printf("%d\t%s\n", ids[i], s);
            free(s);
        }
    }
    free(ids);
    tok_free(t);
    return 0;
}

/* ---- forward ----------------------------------------------------------- */

static const char FWD_HELP[] =
    "usage: npp forward --model DIR [--top-k K] [--json] [--logits-out FILE.npy]\n"
    "                   [--device cpu|cuda:N] [--dtype f32|f16|bf16] [--threads N]\n"
    "                   [--repeat N] (TEXT | --ids 1,2,3)\n"
    "Runs GPT-2 on TEXT and prints the top-k next tokens after its last token with\n"
    "their probabilities. --logits-out writes every position's logits as a float32\n"
    ".npy of shape [T, vocab]. --repeat N times N more forward passes after the\n"
    "first and prints the median milliseconds to stderr.\n";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times `repeat` forward passes; prints the median to stderr. */
static int time_forward(const model *m, const int64_t *ids, size_t n, int repeat, npp_err *e)
{
    double *ms = calloc((size_t)repeat, sizeof *ms);
    if (!ms)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (int r = 0; r < repeat; r++) {
        shim_tensor *lg = NULL;
        shim_status st = {0};
        double t0 = now_ms();
        int rc = gpt2_forward(m, ids, 1, (int64_t)n, NULL, &lg, e);
        shim_synchronize(m->device, &st);
        ms[r] = now_ms() - t0;
        shim_free(lg);
        if (rc) {
            free(ms);
            return rc;
        }
    }
    qsort(ms, (size_t)repeat, sizeof *ms, cmp_double);
    fprintf(stderr, "forward: %zu tokens, %d threads, median %.3f ms over %d runs (min %.3f)\n", n,
            shim_get_threads(), ms[repeat / 2], repeat, ms[0]);
    free(ms);
    return 0;
}

typedef struct {
    int64_t id;
    double lp;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->lp != y->lp)
        return x->lp < y->lp ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The k best tokens of one row of logits, by log-probability. */
static scored *top_k(const float *row, int64_t V, int k, int *nk)
{
    double mx = -INFINITY, sum = 0;
    for (int64_t i = 0; i < V; i++)
        mx = row[i] > mx ? row[i] : mx;
    for (int64_t i = 0; i < V; i++)
        sum += exp(row[i] - mx);
    double lse = mx + log(sum);
    scored *all = malloc((size_t)V * sizeof *all);
    if (!all)
        return NULL;
    for (int64_t i = 0; i < V; i++)
        all[i] = (scored){i, row[i] - lse};
    qsort(all, (size_t)V, sizeof *all, cmp_scored);
    *nk = k < V ? k : (int)V;
    return all;
}

static int print_forward(const model *m, const run_args *a, const int64_t *ids, size_t n,
                         const float *last)
{
    int nk;
    scored *best = top_k(last, m->cfg.vocab_size, a->top_k, &nk);
    if (!best)
        return fprintf(stderr, "%s: out of memory\n", prog), 1;
    if (a->json) {
        json_t *root = json_object(), *toks = json_array(), *tk = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(toks, json_integer(ids[i]));
        for (int i = 0; i < nk; i++)
            json_array_append_new(tk, json_pack("{s:I,s:o,s:f,s:f}", "id", (json_int_t)best[i].id,
                                                "token", token_json(m, best[i].id), "prob",
                                                exp(best[i].lp), "logprob", best[i].lp));
        json_object_set_new(root, "tokens", toks);
        json_object_set_new(root, "position", json_integer((json_int_t)n - 1));
        json_object_set_new(root, "top_k", tk);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(root);
    } else {
        printf("%zu tokens; next-token predictions after the last one:\n", n);
        for (int i = 0; i < nk; i++) {
            json_t *t = token_json(m, best[i].id);
            char *q = json_dumps(t, JSON_ENCODE_ANY);
            printf("%3d. %-20s id %-6lld p=%.6f  logp=%.4f\n", i + 1, q ? q : "?",
                   (long long)best[i].id, exp(best[i].lp), best[i].lp);
            free(q);
            json_decref(t);
        }
    }
    free(best);
    return 0;
}

static int cmd_forward(int argc, char **argv)
{
    run_args a;
    int rc = parse_run_args("forward", FWD_HELP, argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    npp_err e = {0};
    model *m = NULL;
    int64_t *ids = NULL;
    size_t n = 0;
    float *all = NULL;
    shim_tensor *logits = NULL;
    model_opts mo = {a.device, a.dtype};
    if ((rc = model_load(a.model_dir, &mo, &m, &e)) || (rc = get_ids(m, &a, &ids, &n, &e)))
        goto fail;
    if (n == 0) {
        rc = npp_fail(&e, NPP_EINVAL, "text", "the text has no tokens");
        goto fail;
    }
    if ((rc = gpt2_forward(m, ids, 1, (int64_t)n, NULL, &logits, &e)))
        goto fail;
    int64_t V = m->cfg.vocab_size;
    all = malloc(n * (size_t)V * sizeof *all);
    shim_status st = {0};
    if (!all || shim_to_host_f32(logits, all, n * (size_t)V, &st)) {
        rc = npp_fail(&e, NPP_ENOMEM, "", "copying logits: %s", all ? st.msg : "out of memory");
        goto fail;
    }
    if (a.logits_out) {
        int64_t shape[2] = {(int64_t)n, V};
        if ((rc = npy_write_f32(a.logits_out, all, shape, 2, &e)))
            goto fail;
    }
    if (a.repeat && (rc = time_forward(m, ids, n, a.repeat, &e)))
        goto fail;
    rc = print_forward(m, &a, ids, n, all + (n - 1) * (size_t)V);
fail:
    if (rc && e.code)
        rc = die_err(&e);
    free(all);
    shim_free(logits);
    free(ids);
    model_free(m);
    return rc;
}

/* ---- run ---------------------------------------------------------------- */

/* Writes an SVG picture to path (consumes text); flag names it in errors. */
static int write_svg(const char *flag, const char *path, char *text, size_t n, npp_err *e)
{
    FILE *f = fopen(path, "w");
    int ok = f && fwrite(text, 1, n, f) == n;
    ok = f && !fclose(f) && ok;
    free(text);
    return ok ? 0 : npp_fail(e, NPP_EIO, "", "%s: cannot write %s", flag, path);
}

/* Prints v as compact JSON and takes it; null if v is NULL (a string that
 * was not UTF-8, or out of memory). */
static void put_json(json_t *v)
{
    if (!v || json_dumpf(v, stdout, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER))
        fputs("null", stdout);
    json_decref(v);
}

/* A job's error ending a line: "error": {"field": ..., "message": ...}} */
static void put_error(const npp_err *e)
{
    fputs("\"error\": ", stdout);
    put_json(json_pack("{s:s, s:s}", "field", e->field, "message", e->message));
    puts("}");
}

/* A plan line's start: {"job": PATH */
static void put_job_name(const char *path)
{
    fputs("{\"job\": ", stdout);
    put_json(json_string(path));
}

static const char RUN_HELP[] =
    "usage: npp run --model DIR JOB.json [--svg FILE] [--heatmap FILE] [--circuit FILE]\n"
    "               [--npy-dir DIR]\n"
    "               [--cache-mb N]\n"
    "               [--max-values N] [--repeat N] [--device cpu|cuda:N] [--dtype f32|f16|bf16]\n"
    "               [--threads N] [--chunk-mb N] [--keep-mb N] [--memory-report] [--compact]\n"
    "       npp run --model DIR --jsonl JOBS.jsonl [options but the four that write files]\n"
    "Runs a path-patching job (JSON; '-' reads stdin) in-process and prints the result\n"
    "JSON. --svg writes the path graph (a sweep's: one file per variant, FILE-0.svg,\n"
    "FILE-1.svg, ...); --heatmap writes a grid job's heatmap (SVG); --circuit an\n"
    "attribution, discover or circuit job's circuit (SVG); --npy-dir writes tensors\n"
    "as .npy files instead of base64. --repeat N runs the job N times on one cache (the last "
    "result is\n"
    "printed: its stats show what the cache saved). NPP_DEVICE and NPP_DTYPE set\n"
    "the defaults of --device and --dtype. --chunk-mb bounds the temporaries of one\n"
    "attention or MLP call (MiB, 32; larger calls are cut). --keep-mb bounds the freed\n"
    "tensor memory one job (or repeat) leaves to the next, already faulted in (MiB,\n"
    "256; 0: none). --memory-report prints, on\n"
    "stderr, the RSS before the job and its peak during the job (Linux), with the\n"
    "estimate nppd admits it by. --compact prints the result without indentation\n"
    "(as nppd stores it). --jsonl reads one job per line (a file, or '-': stdin, as\n"
    "the lines come) and prints one line per job as it finishes: the result\n"
    "(compact), or {\"error\": {\"field\": ..., \"message\": ...}} and on to the next\n"
    "line. Each job runs as its own `npp run` would (a fresh cache; the model is\n"
    "loaded once); the exit status is 1 if any job failed. Job format: docs/jobs.md.\n";

/* VmRSS or VmHWM of this process in bytes (Linux /proc), 0 if unknown. */
static size_t proc_status_bytes(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0, n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            kb = strtoull(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0). */
static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static json_t *load_job(const char *path, npp_err *e)
{
    json_error_t je;
    json_t *doc = strcmp(path, "-") ? json_load_file(path, JSON_REJECT_DUPLICATES, &je)
                                    : json_loadf(stdin, JSON_REJECT_DUPLICATES, &je);
    if (!doc)
        npp_fail(e, NPP_EINVAL, path, "%s: not valid JSON: %s (line %d, column %d)", path, je.text,
                 je.line, je.column);
    return doc;
}

/* What every job of one `npp run` shares. */
typedef struct {
    const char *model_dir, *svg, *npy_dir, *heat, *circ;
    long cache_mb, max_values, repeat, chunk_mb, keep_mb;
    int memory_report, compact;
} job_args;

/* A job's limits.max_seconds in npp run: a thread that sets the job's
 * cancel flag when they have passed (nppd's workers are stopped by its
 * timer instead). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, fired;
    double seconds;
} watchdog;

/* The cancel flag of the job npp run is running (a run_output's plans keep
 * pointing at it after the run). */
static volatile int job_cancel;

static void *watch(void *arg)
{
    watchdog *w = arg;
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    double s = floor(w->seconds);
    at.tv_sec += (time_t)s;
    at.tv_nsec += (long)((w->seconds - s) * 1e9);
    if (at.tv_nsec >= 1000000000L)
        at.tv_sec++, at.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &at);
    if (!w->done) {
        w->fired = 1;
        __atomic_store_n(&job_cancel, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* run_job, stopped after the job's limits.max_seconds if it has them. */
static int run_job_limited(const model *m, json_t *doc, run_opts *ro, run_output **r, npp_err *e)
{
    json_t *ms = json_object_get(json_object_get(doc, "limits"), "max_seconds");
    watchdog w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, json_number_value(ms)};
    pthread_t th;
    job_cancel = 0;
    int watched =
        w.seconds > 0 && w.seconds <= JOB_MAX_SECONDS && !pthread_create(&th, NULL, watch, &w);
    if (watched)
        ro->cancel = &job_cancel;
    int rc = run_job(m, doc, ro, r, e);
    if (watched) {
        pthread_mutex_lock(&w.mu);
        w.done = 1;
        pthread_cond_signal(&w.cv);
        pthread_mutex_unlock(&w.mu);
        pthread_join(th, NULL);
        ro->cancel = NULL;
    }
    if (rc == NPP_ECANCELED && w.fired) {
        *e = (npp_err){0};
        rc = npp_fail(e, NPP_ELIMIT, "limits.max_seconds",
                      "limits.max_seconds: the job ran for longer than its limit of %g s and was "
                      "stopped",
                      w.seconds);
    }
    return rc;
}

/* Runs one job (its own cache) and prints its result, then its warnings on
 * stderr; writes the files the options ask for. */
static int run_print(const model *m, json_t *doc, const job_args *a, npp_err *e)
{
    cache *ca = NULL;
    run_output *r = NULL;
    int rc = 0;
    if (!(ca = cache_new((size_t)a->cache_mb << 20))) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    run_opts ro = {.cache = ca,
                   .max_values = (size_t)a->max_values,
                   .npy_dir = a->npy_dir,
                   .model_name = a->model_dir,
                   .chunk_bytes = (size_t)a->chunk_mb << 20};
    size_t rss0 = 0;
    if (a->memory_report) { /* the job's own peak, not the model loader's */
        reset_peak_rss();
        rss0 = proc_status_bytes("VmRSS");
    }
    for (long i = 0; i < a->repeat; i++) {
        run_output_free(r);
        r = NULL;
        if ((rc = run_job_limited(m, doc, &ro, &r, e)))
            goto done;
    }
    /* the result first: a picture that cannot be drawn or written fails
     * the command, but the work is printed */
    json_dumpf(r->result, stdout,
               (a->compact ? JSON_COMPACT : JSON_INDENT(1)) | JSON_PRESERVE_ORDER);
    putchar('\n');
    fflush(stdout);
    for (size_t k = 0; k < json_array_size(r->job->warnings); k++)
        fprintf(stderr, "npp: warning: %s\n",
                json_string_value(json_object_get(json_array_get(r->job->warnings, k), "message")));
    if (a->memory_report)
        fprintf(stderr,
                "{\"memory\": {\"rss_before_bytes\": %zu, \"rss_peak_bytes\": %zu, "
                "\"estimate_peak_bytes\": %zu, \"estimate_result_bytes\": %zu}}\n",
                rss0, proc_status_bytes("VmHWM"), r->est.peak_bytes, r->est.result_bytes);
    for (int i = 0; a->svg && i < (r->job->nvar ? r->job->nvar : 1); i++) {
        char path[4096];
        size_t stem = strlen(a->svg);
        if (stem > 4 && !strcmp(a->svg + stem - 4, ".svg"))
            stem -= 4;
        if (r->job->nvar)
            snprintf(path, sizeof path, "%.*s-%d.svg", (int)stem, a->svg, i);
        else
            snprintf(path, sizeof path, "%s", a->svg);
        if ((rc = svg_write_file(run_tree(r, i), r->job, path, e)))
            goto done;
    }
    if (a->heat) {
        char *text = NULL;
        size_t n = 0;
        json_t *grid = json_object_get(r->result, "grid");
        if (!grid)
            rc = npp_fail(e, NPP_EINVAL, "grid",
                          "--heatmap: the job has no grid (see \"grid\" in docs/jobs.md)");
        else if (!(rc = heatmap_svg(grid, &text, &n, e)))
            rc = write_svg("--heatmap", a->heat, text, n, e);
        if (rc)
            goto done;
    }
    if (a->circ) {
        char *text = NULL;
        size_t n = 0;
        const model_config *c = &m->cfg;
        if (!(rc = circuit_svg(r->result, c->n_layer, c->n_head, &text, &n, e)))
            rc = write_svg("--circuit", a->circ, text, n, e);
        if (rc)
            goto done;
    }
done:
    run_output_free(r);
    cache_free(ca);
    return rc;
}

/* --jsonl: one job per line of f, one result or error line per job. */
static int run_lines(const model *m, FILE *f, const job_args *a)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failed = 0;
    for (long no = 1; (n = getline(&line, &cap, f)) >= 0; no++) {
        if (strspn(line, " \t\r\n") == (size_t)n)
            continue; /* blank lines are not jobs */
        npp_err e = {0};
        json_error_t je;
        char where[32];
        snprintf(where, sizeof where, "line %ld", no);
        json_t *doc = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &je);
        if (!doc)
            npp_fail(&e, NPP_EINVAL, where, "%s: not valid JSON: %s (column %d)", where, je.text,
                     je.column);
        if (!doc || run_print(m, doc, a, &e)) {
            putchar('{');
            put_error(&e);
            fflush(stdout);
            failed = 1;
        }
        json_decref(doc);
    }
    free(line);
    return failed;
}

static int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},    {"svg", 1, 0, 's'},        {"npy-dir", 1, 0, 'n'},
        {"cache-mb", 1, 0, 'c'}, {"max-values", 1, 0, 'x'}, {"repeat", 1, 0, 'r'},
        {"device", 1, 0, 'D'},   {"dtype", 1, 0, 'd'},      {"threads", 1, 0, 't'},
        {"chunk-mb", 1, 0, 'k'}, {"keep-mb", 1, 0, 'K'},    {"memory-report", 0, 0, 'M'},
        {"compact", 0, 0, 'C'},  {"heatmap", 1, 0, 'h'},    {"circuit", 1, 0, 'G'},
        {"jsonl", 0, 0, 'L'},    {"help", 0, 0, 'H'},       {0, 0, 0, 0}};
    job_args a = {.model_dir = getenv("NPP_MODEL"),
                  .cache_mb = 1024,
                  .max_values = 50000,
                  .repeat = 1,
                  .chunk_mb = EXEC_CHUNK_BYTES >> 20,
                  .keep_mb = RUN_KEEP_MB};
    model_opts mo = {getenv("NPP_DEVICE"), getenv("NPP_DTYPE")};
    long v;
    int c, lines = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a.model_dir = optarg; break;
        case 's': a.svg = optarg; break;
        case 'h': a.heat = optarg; break;
        case 'G': a.circ = optarg; break;
        case 'n': a.npy_dir = optarg; break;
        case 'D': mo.device = optarg; break;
        case 'd': mo.dtype = optarg; break;
        case 'M': a.memory_report = 1; break;
        case 'C': a.compact = 1; break;
        case 'L': lines = 1; break;
        case 'c':
        case 'x':
        case 'r':
        case 't':
        case 'k':
        case 'K':
            if ((v = parse_long(optarg, c == 'c' || c == 'K' ? 0 : 1, 100000000)) < 0)
                return usage_error("run", "numeric options take a non-negative integer");
            if (c == 't')
                shim_set_threads((int)v);
            *(c == 'c'   ? &a.cache_mb
              : c == 'x' ? &a.max_values
              : c == 'r' ? &a.repeat
              : c == 'k' ? &a.chunk_mb
              : c == 'K' ? &a.keep_mb
                         : &v) = v;
            break;
        case 'H': fputs(RUN_HELP, stdout); return 0;
        default: return usage_error("run", "unknown option");
        }
    }
    if (!a.model_dir)
        return usage_error("run", "--model DIR is required (or set NPP_MODEL)");
    if (optind + 1 != argc)
        return usage_error("run", lines ? "give exactly one JOBS.jsonl ('-': stdin)"
                                        : "give exactly one JOB.json");
    if (lines && (a.svg || a.heat || a.circ || a.npy_dir))
        return usage_error("run", "--svg, --heatmap, --circuit and --npy-dir take one job, "
                                  "not --jsonl");
    npp_err e = {0};
    model *m = NULL;
    json_t *doc = NULL;
    FILE *f = NULL;
    int rc = 0;
    if (lines) {
        const char *path = argv[optind];
        if (!(f = strcmp(path, "-") ? fopen(path, "r") : stdin)) {
            rc = npp_fail(&e, NPP_EIO, path, "%s: %s", path, strerror(errno));
            goto fail;
        }
        a.compact = 1;
    } else if (!(doc = load_job(argv[optind], &e)))
        goto fail;
    if ((rc = model_load(a.model_dir, &mo, &m, &e)))
        goto fail;
    shim_block_keep((size_t)a.keep_mb << 20);
    rc = lines ? run_lines(m, f, &a) : run_print(m, doc, &a, &e);
    shim_block_keep(0);
fail:
    if (e.code)
        rc = job_error(&e);
    if (f && f != stdin)
        fclose(f);
    model_free(m);
    json_decref(doc);
    return rc;
}

/* ---- plan ---------------------------------------------------------------- */

static const char PLAN_HELP[] =
    "usage: npp plan --model DIR [--max-values N] [--seconds [--threads N]] JOB.json...\n"
    "Plans each job without computing anything and prints, per job, the number of\n"
    "values (baselines and a KL reference included, when the job asks for them; a\n"
    "sweep's union) and path-tree nodes, the planning time and the estimate of its\n"
    "peak memory and result size (bytes, at the default chunk budget, as nppd admits\n"
    "it), then the size of the union of all the jobs' values (what one sweep of these\n"
    "jobs would compute). A job that is refused prints its error as its line\n"
    "({\"job\": FILE, \"error\": {\"field\": ..., \"message\": ...}}, and on stderr) and\n"
    "the others are still planned; the exit status is then 1.\n"
    "The estimate's gflop is the compute the job needs as if no value were cached\n"
    "(multiply-adds twice; an elementwise step weighs as 4), gflop_field the job's\n"
    "field behind most of it. --seconds first times a small plain run of the model\n"
    "(on --threads tensor threads), as nppd does at start-up, and adds the time each\n"
    "job would take: its compute at that rate, and text_seconds to build and write its\n"
    "result (20 ns a byte); what nppd compares with --max-job-seconds.\n";

static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

static int cmd_plan(int argc, char **argv)
{
    static const struct option opts[] = {{"model", 1, 0, 'm'},   {"max-values", 1, 0, 'x'},
                                         {"seconds", 0, 0, 's'}, {"threads", 1, 0, 't'},
                                         {"help", 0, 0, 'H'},    {0, 0, 0, 0}};
    const char *model_dir = getenv("NPP_MODEL");
    long max_values = 1000000, threads = 0;
    int c, seconds = 0;
    double rate = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'x':
            if ((max_values = parse_long(optarg, 1, 100000000)) < 0)
                return usage_error("plan", "--max-values takes a positive integer");
            break;
        case 's': seconds = 1; break;
        case 't':
            if ((threads = parse_long(optarg, 1, 1024)) < 0)
                return usage_error("plan", "--threads takes a positive integer");
            break;
        case 'H': fputs(PLAN_HELP, stdout); return 0;
        default: return usage_error("plan", "unknown option");
        }
    }
    if (!model_dir || optind >= argc)
        return usage_error("plan", "--model DIR and at least one JOB.json are required");
    npp_err e = {0};
    model *m = NULL;
    unsigned char *keys = NULL;
    size_t nkeys = 0;
    double total = 0;
    int rc = 0, refused = 0;
    if (threads)
        shim_set_threads((int)threads);
    if ((rc = model_load(model_dir, NULL, &m, &e)) ||
        (seconds && (rc = run_measure_rate(m, &rate, &e))))
        goto fail;
    for (int i = optind; i < argc; i++) {
        run_opts ro = {.max_values = (size_t)max_values};
        run_output *r = NULL;
        json_t *doc = load_job(argv[i], &e);
        double t0 = now_ms();
        if (!doc || run_prepare(m, doc, &ro, &r, &e)) {
            /* this job's error, then the next job (r is NULL) */
            put_job_name(argv[i]);
            fputs(", ", stdout);
            put_error(&e);
            fprintf(stderr, "%s: %s: error in '%s': %s\n", prog, argv[i], e.field, e.message);
            e = (npp_err){0};
            json_decref(doc);
            refused++;
            continue;
        }
        double ms = now_ms() - t0;
        total += ms;
        const plan *p = &r->plan;
        unsigned char *nk = realloc(keys, (nkeys + (size_t)p->nv) * 32);
        if (nk) {
            keys = nk;
            for (int32_t v = 0; v < p->nv; v++)
                memcpy(keys + 32 * nkeys++, p->v[v].key, 32);
        }
        const run_estimate *est = &r->est;
        put_job_name(argv[i]);
        printf(", \"values\": %d, \"path_nodes\": %ld, \"plan_ms\": %.3f, "
               "\"estimate\": {\"peak_bytes\": %zu, \"result_bytes\": %zu, \"plan_bytes\": %zu, "
               "\"exec_bytes\": %zu, \"output_bytes\": %zu, \"chunks\": %ld, \"peak_field\": "
               "\"%s\", \"result_field\": \"%s\", \"gflop\": %.3f, \"gflop_field\": \"%s\"",
               p->nv, run_path_nodes(r), ms, est->peak_bytes, est->result_bytes, est->plan_bytes,
               est->exec_bytes, est->output_bytes, est->chunks, est->peak_field, est->result_field,
               2e-9 * est->work, est->work_field);
        if (seconds)
            printf(", \"seconds\": %.6g, \"text_seconds\": %.6g, \"gflop_per_s\": %.6g",
                   run_seconds(est, rate, NULL),
                   (double)est->result_bytes * RUN_TEXT_SECONDS_PER_BYTE, 2e-9 * rate);
        puts("}}");
        run_output_free(r);
        json_decref(doc);
        if (!nk) {
            rc = npp_fail(&e, NPP_ENOMEM, "", "out of memory");
            goto fail;
        }
    }
    qsort(keys, nkeys, 32, cmp_key);
    size_t uniq = 0;
    for (size_t k = 0; k < nkeys; k++)
        uniq += k == 0 || memcmp(keys + 32 * k, keys + 32 * (k - 1), 32) != 0;
    printf("{\"jobs\": %d, \"refused\": %d, \"union_values\": %zu, \"sum_values\": %zu, "
           "\"total_plan_ms\": %.3f}\n",
           argc - optind, refused, uniq, nkeys, total);
    rc = refused ? 1 : 0;
fail:
    if (e.code)
        rc = job_error(&e);
    free(keys);
    model_free(m);
    return rc;
}

/* ---- main -------------------------------------------------------------- */

static int cmd_version(int argc, char **argv)
{
    (void)argc, (void)argv;
    printf("npp %s (libtorch %s, %d CUDA device(s))\n", NPP_VERSION, shim_torch_version(),
           shim_cuda_device_count());
    return 0;
}

/* Every command once: `npp --help` and the dispatch both read this. */
static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} COMMANDS[] = {
    {"make-model", cmd_make_model, "write a random GPT-2 checkpoint in HuggingFace's layout"},
    {"tokenize", cmd_tokenize, "print GPT-2 token ids of a text"},
    {"forward", cmd_forward, "next-token predictions of a text (and all logits as .npy)"},
    {"run", cmd_run, "run a path-patching job in-process and print its result"},
    {"plan", cmd_plan, "plan jobs without computing: sizes, time, memory estimate"},
    {"version", cmd_version, "print versions"},
};

static void main_help(FILE *f)
{
    fprintf(f, "usage: npp COMMAND [options]\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "'npp COMMAND --help' describes each command.\n");
}

int main(int argc, char **argv)
{
    run_malloc_setup();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        main_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    argv[1] = argv[0];
    argc--, argv++;
    optind = 1;
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(cmd, COMMANDS[i].name))
            return COMMANDS[i].fn(argc, argv);
    fprintf(stderr, "%s: unknown command '%s'\n", prog, cmd);
    main_help(stderr);
    return 2;
}
