/* job_internal.h - what job.c shares with preset.c: checks of a job's
 * JSON fields. Private to patch/. */
#ifndef NPP_JOB_INTERNAL_H
#define NPP_JOB_INTERNAL_H

#include <jansson.h>

#include "base/err.h"
#include "patch/job.h"

/* Refuses a key of obj not in known (NULL-ended); field names obj. */
int job_check_keys(json_t *obj, const char *field, const char *const *known, npp_err *e);
/* A position shared by every example (a node's, as in a preset) into
 * *out (0..T-1): in -T..T-1, negative from the end; 0..T-1 only when the
 * examples differ in length (each would have its own end). */
int job_position(const job *j, json_t *v, const char *field, int *out, npp_err *e);

#endif
