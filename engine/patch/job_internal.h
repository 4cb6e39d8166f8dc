/* job_internal.h - what job.c shares with preset.c: checks of a job's
 * JSON fields. Private to patch/. */
#ifndef NPP_JOB_INTERNAL_H
#define NPP_JOB_INTERNAL_H

#include <jansson.h>

#include "base/err.h"

/* Refuses a key of obj not in known (NULL-ended); field names obj. */
int job_check_keys(json_t *obj, const char *field, const char *const *known, npp_err *e);
/* A position in -T..T-1 (negative from the end) into *out (0..T-1). */
int job_position(json_t *v, int T, const char *field, int *out, npp_err *e);

#endif
