/* main.c - nppd: options (flags and NPP_* environment variables), start-up
 * (HTTP first, models loaded in the background so /readyz can say so),
 * the libuv loop, and graceful shutdown. Only this file exits. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/sha256.h"
#include "srv.h"

srv S;

#ifndef NPP_DEFAULT_MODEL
#define NPP_DEFAULT_MODEL "models/default"
#endif

static const char HELP[] =
    "usage: nppd [options]\n"
    "  --model NAME=DIR      a HuggingFace GPT-2 folder to serve (repeatable; the first is the\n"
    "                        default for jobs that name none). Default: default=" NPP_DEFAULT_MODEL
    "\n"
    "  --device cpu|cuda:N   where the models live (cpu)\n"
    "  --dtype f32|f16|bf16  their dtype (f32)\n"
    "  --workers N           compute worker threads (2)\n"
    "  --threads N           tensor threads per worker (1)\n"
    "  --cache-mb N          value cache per model, MiB (1024)\n"
    "  --listen HOST:PORT    address (127.0.0.1:8080; loopback unless you say otherwise)\n"
    "  --token-file FILE     bearer tokens, one 'NAME TOKEN' (or 'TOKEN') per line\n"
    "  --max-body-kb N       request body limit (1024)\n"
    "  --queue-max N         jobs waiting at most, all users (256)\n"
    "  --max-inflight N      jobs queued or running per token (32)\n"
    "  --max-values N        ceiling on a job's plan size in values (50000)\n"
    "  --result-ttl S        seconds a finished job's result is kept (600)\n"
    "  --drain-seconds S     on SIGTERM/SIGINT, grace for running jobs before cancelling (30)\n"
    "  --conn-timeout S      idle connection timeout (30)\n"
    "  --max-conn-per-ip N   connections per client address (64)\n"
    "Every option can also be set as an environment variable: NPP_MODEL (NAME=DIR, several\n"
    "separated by commas), NPP_DEVICE, NPP_DTYPE, NPP_WORKERS, NPP_THREADS, NPP_CACHE_MB,\n"
    "NPP_LISTEN, NPP_TOKEN_FILE, NPP_MAX_BODY_KB, NPP_QUEUE_MAX, NPP_MAX_INFLIGHT,\n"
    "NPP_MAX_VALUES, NPP_RESULT_TTL, NPP_DRAIN_SECONDS, NPP_CONN_TIMEOUT, NPP_MAX_CONN_PER_IP.\n"
    "Flags win over the environment.\n";

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "nppd: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static double num(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "nppd: %s: '%s' is not a number in [%g, %g]\n", name, v, lo, hi);
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

static void load_tokens(const char *path)
{
    FILE *fp = fopen(path, "r");
    char line[1024];
    if (!fp)
        die("--token-file %s: cannot open", path);
    while (fgets(line, sizeof line, fp)) {
        char *s = line, *name = NULL, *tok;
        while (isspace((unsigned char)*s))
            s++;
        s[strcspn(s, "\r\n")] = 0;
        if (!*s || *s == '#')
            continue;
        char *sp = strpbrk(s, " \t");
        if (sp) {
            *sp = 0;
            name = s;
            tok = sp + 1;
            while (isspace((unsigned char)*tok))
                tok++;
        } else {
            tok = s;
        }
        if (!*tok)
            continue;
        if (S.ntokens == SRV_MAX_TOKENS)
            die("--token-file %s: more than 256 tokens", path);
        sha256(tok, strlen(tok), S.token_hash[S.ntokens]);
        if (name)
            snprintf(S.token_name[S.ntokens], sizeof S.token_name[0], "%.63s", name);
        else
            snprintf(S.token_name[S.ntokens], sizeof S.token_name[0], "token%d", S.ntokens + 1);
        S.ntokens++;
    }
    fclose(fp);
    if (!S.ntokens)
        die("--token-file %s: no tokens in it", path);
}

static void parse_options(int argc, char **argv)
{
    enum {
        O_DEVICE = 256,
        O_DTYPE,
        O_WORKERS,
        O_THREADS,
        O_CACHE,
        O_LISTEN,
        O_TOKENS,
        O_BODY,
        O_QUEUE,
        O_INFLIGHT,
        O_VALUES,
        O_TTL,
        O_DRAIN,
        O_CONNTO,
        O_PERIP,
        O_MODEL,
        O_HELP
    };
    static const struct option opts[] = {{"model", 1, 0, O_MODEL},
                                         {"device", 1, 0, O_DEVICE},
                                         {"dtype", 1, 0, O_DTYPE},
                                         {"workers", 1, 0, O_WORKERS},
                                         {"threads", 1, 0, O_THREADS},
                                         {"cache-mb", 1, 0, O_CACHE},
                                         {"listen", 1, 0, O_LISTEN},
                                         {"token-file", 1, 0, O_TOKENS},
                                         {"max-body-kb", 1, 0, O_BODY},
                                         {"queue-max", 1, 0, O_QUEUE},
                                         {"max-inflight", 1, 0, O_INFLIGHT},
                                         {"max-values", 1, 0, O_VALUES},
                                         {"result-ttl", 1, 0, O_TTL},
                                         {"drain-seconds", 1, 0, O_DRAIN},
                                         {"conn-timeout", 1, 0, O_CONNTO},
                                         {"max-conn-per-ip", 1, 0, O_PERIP},
                                         {"help", 0, 0, O_HELP},
                                         {0, 0, 0, 0}};
    static const char *envs[] = {
        "NPP_MODEL",       "NPP_DEVICE",        "NPP_DTYPE",        "NPP_WORKERS",
        "NPP_THREADS",     "NPP_CACHE_MB",      "NPP_LISTEN",       "NPP_TOKEN_FILE",
        "NPP_MAX_BODY_KB", "NPP_QUEUE_MAX",     "NPP_MAX_INFLIGHT", "NPP_MAX_VALUES",
        "NPP_RESULT_TTL",  "NPP_DRAIN_SECONDS", "NPP_CONN_TIMEOUT", "NPP_MAX_CONN_PER_IP"};
    static const int env_opt[] = {O_MODEL,  O_DEVICE, O_DTYPE,  O_WORKERS, O_THREADS,  O_CACHE,
                                  O_LISTEN, O_TOKENS, O_BODY,   O_QUEUE,   O_INFLIGHT, O_VALUES,
                                  O_TTL,    O_DRAIN,  O_CONNTO, O_PERIP};
    S.device = "cpu", S.dtype = "f32", S.listen = "127.0.0.1:8080";
    S.workers = 2, S.threads = 1, S.cache_mb = 1024, S.max_body_kb = 1024, S.queue_max = 256;
    S.max_inflight = 32, S.max_values = 50000, S.result_ttl = 600, S.drain_seconds = 30;
    S.conn_timeout = 30, S.max_conn_per_ip = 64;
    int flag_models = 0;
    /* Environment first, then flags (which win). Pass 0 = env, 1 = argv. */
    for (int pass = 0; pass < 2; pass++) {
        int n = pass ? 0 : (int)(sizeof envs / sizeof envs[0]);
        for (int i = 0;; i++) {
            int c;
            const char *v;
            char *envcopy = NULL;
            if (pass == 0) {
                if (i == n)
                    break;
                if (!(v = getenv(envs[i])) || !*v)
                    continue;
                c = env_opt[i];
            } else {
                c = getopt_long(argc, argv, "", opts, NULL);
                if (c == -1)
                    break;
                v = optarg;
            }
            switch (c) {
            case O_MODEL:
                if (pass == 1 && !flag_models++)
                    S.nmodels = 0; /* flags replace models from the environment */
                envcopy = strdup(v);
                for (char *save = NULL, *t = strtok_r(envcopy, ",", &save); t;
                     t = strtok_r(NULL, ",", &save))
                    add_model(t);
                free(envcopy);
                break;
            case O_DEVICE: S.device = v; break;
            case O_DTYPE: S.dtype = v; break;
            case O_WORKERS: S.workers = (int)num("--workers", v, 1, SRV_MAX_WORKERS); break;
            case O_THREADS: S.threads = (int)num("--threads", v, 1, 256); break;
            case O_CACHE: S.cache_mb = (long)num("--cache-mb", v, 0, 1 << 24); break;
            case O_LISTEN: S.listen = v; break;
            case O_TOKENS: S.token_file = v; break;
            case O_BODY: S.max_body_kb = (long)num("--max-body-kb", v, 1, 1 << 20); break;
            case O_QUEUE: S.queue_max = (int)num("--queue-max", v, 1, 1000000); break;
            case O_INFLIGHT: S.max_inflight = (int)num("--max-inflight", v, 1, 1000000); break;
            case O_VALUES: S.max_values = (long)num("--max-values", v, 1, 100000000); break;
            case O_TTL: S.result_ttl = num("--result-ttl", v, 1, 86400 * 30); break;
            case O_DRAIN: S.drain_seconds = num("--drain-seconds", v, 0, 86400); break;
            case O_CONNTO: S.conn_timeout = (int)num("--conn-timeout", v, 1, 86400); break;
            case O_PERIP: S.max_conn_per_ip = (int)num("--max-conn-per-ip", v, 1, 100000); break;
            case O_HELP: fputs(HELP, stdout); exit(0);
            default: fputs(HELP, stderr); exit(2);
            }
        }
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!S.nmodels)
        add_model("default=" NPP_DEFAULT_MODEL);
    if (S.token_file)
        load_tokens(S.token_file);
}

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
        cache *c = cache_new((size_t)S.cache_mb << 20);
        pthread_mutex_lock(&S.mu);
        sm->m = m;
        sm->cache = c;
        pthread_mutex_unlock(&S.mu);
        fprintf(stderr,
                "{\"event\": \"model_loaded\", \"model\": \"%s\", \"dir\": \"%s\", \"layers\": %d, "
                "\"weights_bytes\": %zu}\n",
                sm->name, sm->dir, m->cfg.n_layer, m->param_bytes);
    }
    if (failed) { /* a server missing a model it was asked to serve is no use */
        fprintf(stderr, "nppd: a model failed to load; shutting down\n");
        kill(getpid(), SIGTERM);
        return NULL;
    }
    pthread_mutex_lock(&S.mu);
    S.ready = 1;
    pthread_mutex_unlock(&S.mu);
    fprintf(stderr, "{\"event\": \"ready\", \"listen\": \"%s\", \"workers\": %d}\n", S.listen,
            S.workers);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t lt;
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&S.mu, NULL);
    if (sched_start()) {
        fprintf(stderr, "nppd: cannot start the scheduler\n");
        return 1;
    }
    if (http_start())
        return 1;
    fprintf(stderr,
            "{\"event\": \"listening\", \"listen\": \"%s\", \"models\": %d, \"auth\": %s}\n",
            S.listen, S.nmodels, S.ntokens ? "true" : "false");
    pthread_create(&lt, NULL, loader, NULL);
    uv_run(&S.loop, UV_RUN_DEFAULT); /* returns once draining has finished */
    pthread_join(lt, NULL);
    /* Every running job has ended: answer every suspended connection, give
     * the answers a moment to leave, then close. */
    pthread_mutex_lock(&S.mu);
    S.stopping = 1;
    pthread_mutex_unlock(&S.mu);
    http_resume_all();
    usleep(300 * 1000);
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
