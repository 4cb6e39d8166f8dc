/* metric.c - the metrics table; see metric.h. Each function gets one
 * example's numbers and returns its value; the mean over the batch is the
 * result builder's. */
#include "patch/metric.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static double logit_diff(const metric_in *in)
{
    return (double)in->logits[0] - (double)in->logits[1];
}

static double logit(const metric_in *in)
{
    return in->logits[0];
}

static double logprob(const metric_in *in)
{
    return in->logprobs[in->tokens[0]];
}

static double prob(const metric_in *in)
{
    return exp(in->logprobs[in->tokens[0]]);
}

static double prob_diff(const metric_in *in)
{
    return exp(in->logprobs[in->tokens[0]]) - exp(in->logprobs[in->tokens[1]]);
}

/* KL(reference || patched), over the vocabulary, in double. */
static double kl(const metric_in *in)
{
    double s = 0;
    for (int64_t i = 0; i < in->vocab; i++)
        s += exp((double)in->ref[i]) * ((double)in->ref[i] - (double)in->logprobs[i]);
    return s;
}

/* ---- gradients with respect to the logits ---------------------------------- */

static void logit_diff_grad(const metric_in *in, float *d)
{
    (void)in;
    d[0] = 1, d[1] = -1;
}

static void logit_grad(const metric_in *in, float *d)
{
    (void)in;
    d[0] = 1;
}

/* d log p_t / d logit_v = [v == t] - p_v, times w, added to d */
static void add_logprob_grad(const metric_in *in, int64_t t, double w, float *d)
{
    for (int64_t v = 0; v < in->vocab; v++)
        d[v] += (float)(w * ((v == t) - exp((double)in->logprobs[v])));
}

static void logprob_grad(const metric_in *in, float *d)
{
    memset(d, 0, (size_t)in->vocab * sizeof *d);
    add_logprob_grad(in, in->tokens[0], 1, d);
}

static void prob_grad(const metric_in *in, float *d) /* d p_t = p_t d log p_t */
{
    memset(d, 0, (size_t)in->vocab * sizeof *d);
    add_logprob_grad(in, in->tokens[0], exp(in->logprobs[in->tokens[0]]), d);
}

static void prob_diff_grad(const metric_in *in, float *d)
{
    memset(d, 0, (size_t)in->vocab * sizeof *d);
    add_logprob_grad(in, in->tokens[0], exp(in->logprobs[in->tokens[0]]), d);
    add_logprob_grad(in, in->tokens[1], -exp(in->logprobs[in->tokens[1]]), d);
}

/* d KL(r || p) / d logit_v = p_v - r_v */
static void kl_grad(const metric_in *in, float *d)
{
    for (int64_t v = 0; v < in->vocab; v++)
        d[v] = (float)(exp((double)in->logprobs[v]) - exp((double)in->ref[v]));
}

static const metric_def METRICS[] = {
    {"logit_diff",
     {"target", "baseline"},
     0,
     0,
     logit_diff,
     logit_diff_grad,
     "logit of target minus logit of baseline"},
    {"logit", {"token"}, 0, 0, logit, logit_grad, "the token's logit"},
    {"logprob", {"token"}, 1, 0, logprob, logprob_grad, "the token's log-probability"},
    {"prob", {"token"}, 1, 0, prob, prob_grad, "the token's probability"},
    {"prob_diff",
     {"target", "baseline"},
     1,
     0,
     prob_diff,
     prob_diff_grad,
     "target's probability - baseline's"},
    {"kl",
     {NULL},
     1,
     1,
     kl,
     kl_grad,
     "KL divergence from the plain run of input 0 to the patched run"},
};

#define NMETRICS (int)(sizeof METRICS / sizeof METRICS[0])

const metric_def *metric_find(const char *name)
{
    for (int i = 0; name && i < NMETRICS; i++)
        if (!strcmp(METRICS[i].name, name))
            return &METRICS[i];
    return NULL;
}

const metric_def *metric_at(int i)
{
    return i >= 0 && i < NMETRICS ? &METRICS[i] : NULL;
}

int metric_count(void)
{
    return NMETRICS;
}

int metric_ntokens(const metric_def *m)
{
    int n = 0;
    while (n < METRIC_MAX_TOKENS && m->keys[n])
        n++;
    return n;
}

void metric_names(char *buf, size_t n)
{
    size_t w = 0;
    buf[0] = 0;
    for (int i = 0; i < NMETRICS && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "%s\"%s\"", i ? ", " : "", METRICS[i].name);
}

void metric_log_softmax(float *x, size_t rows, size_t V)
{
    for (size_t r = 0; r < rows; r++) {
        float *v = x + r * V;
        double mx = -INFINITY, s = 0;
        for (size_t i = 0; i < V; i++)
            mx = v[i] > mx ? v[i] : mx;
        for (size_t i = 0; i < V; i++)
            s += exp((double)v[i] - mx);
        double lse = mx + log(s);
        for (size_t i = 0; i < V; i++)
            v[i] = (float)((double)v[i] - lse);
    }
}
