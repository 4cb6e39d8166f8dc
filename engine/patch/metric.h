/* metric.h - the metrics a job can ask for, as one table: each row names
 * the metric, the token fields it reads, whether it needs log-probs over
 * the whole vocabulary (else only its tokens' logits are computed) or the
 * reference run, and the function that evaluates it for one example. The
 * job parser (job.c) and the result builder (output/result.c) both read
 * this table; adding a metric is one row and one function here.
 *
 *     const metric_def *m = metric_find("logit_diff");
 *     metric_in in = {.logits = cols, .tokens = toks};   // one example
 *     double v = m->eval(&in);
 */
#ifndef NPP_METRIC_H
#define NPP_METRIC_H

#include <stddef.h>
#include <stdint.h>

#define METRIC_MAX_TOKENS 2

/* One example's numbers, as the metric's row asks for them. */
typedef struct {
    const float *logits;   /* !full_vocab: the logits of its tokens, in key order */
    const float *logprobs; /* full_vocab: log-softmax over the vocabulary */
    const float *ref;      /* needs_ref: the reference run's log-softmax */
    int64_t vocab;
    const int64_t *tokens; /* its tokens, in key order */
} metric_in;

typedef struct {
    const char *name;
    const char *keys[METRIC_MAX_TOKENS]; /* token fields, in order; NULL after the last */
    int full_vocab;                      /* evaluated on log-probs over the vocabulary */
    int needs_ref;                       /* also the plain run of input 0 (the reference) */
    double (*eval)(const metric_in *in);
    /* d(value)/d(logit): into d[k] for token k (!full_vocab) or d[v] for
     * every vocabulary entry (full_vocab), for gradient attribution */
    void (*grad)(const metric_in *in, float *d);
    const char *doc; /* one line for errors and docs */
} metric_def;

/* The row named name, or NULL. */
const metric_def *metric_find(const char *name);
/* Row i (0 <= i < metric_count()). */
const metric_def *metric_at(int i);
int metric_count(void);
/* How many token fields the metric reads. */
int metric_ntokens(const metric_def *m);
/* Writes the names, quoted and comma-separated ("\"logit_diff\", ..."). */
void metric_names(char *buf, size_t n);
/* log-softmax of each of rows rows of V logits, in place (accumulated in
 * double): what the full-vocabulary metrics read. */
void metric_log_softmax(float *x, size_t rows, size_t V);

#endif
