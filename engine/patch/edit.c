/* edit.c - parsing interventions into a job's edit table; see edit.h. */
#include "patch/edit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base64.h"
#include "base/sha256.h"

const char *const EDIT_KEYS[] = {"ablate", "of", "patch", "steer", "scale", "positions", NULL};

void edit_table_init(edit_table *t, int T, int C, int n_inputs)
{
    memset(t, 0, sizeof *t);
    t->T = T, t->C = C, t->n_inputs = n_inputs;
}

void edit_table_free(edit_table *t)
{
    for (int i = 0; i < t->n; i++) {
        free(t->e[i].vec);
        free(t->e[i].mask);
    }
    free(t->e);
    memset(t, 0, sizeof *t);
}

static int input_index(json_t *v, const edit_table *t, const char *f, int *out, npp_err *e)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= t->n_inputs)
        return npp_fail(e, NPP_EINVAL, f, "%s: an input index in 0..%d", f, t->n_inputs - 1);
    *out = (int)json_integer_value(v);
    return 0;
}

/* The steering vector: C numbers, or {"base64": little-endian float32,
 * "shape": [C]}. */
static int parse_vector(json_t *v, const edit_table *t, const char *f, float *out, npp_err *e)
{
    if (json_is_array(v)) {
        if ((int)json_array_size(v) != t->C)
            return npp_fail(e, NPP_EINVAL, f, "%s: %zu numbers, but the model is %d wide", f,
                            json_array_size(v), t->C);
        for (int i = 0; i < t->C; i++) {
            json_t *x = json_array_get(v, (size_t)i);
            double d = json_number_value(x);
            if (!json_is_number(x) || !isfinite(d) || fabs(d) > 3.4e38) {
                char xf[192];
                snprintf(xf, sizeof xf, "%s[%d]", f, i);
                return npp_fail(e, NPP_EINVAL, xf,
                                "%s: a finite number within float32's range (|x| <= 3.4e38)", xf);
            }
            out[i] = (float)d;
        }
        return 0;
    }
    json_t *b = json_is_object(v) ? json_object_get(v, "base64") : NULL;
    json_t *sh = json_is_object(v) ? json_object_get(v, "shape") : NULL;
    if (!json_is_string(b) || !json_is_array(sh) || json_array_size(sh) != 1 ||
        json_object_size(v) != 2)
        return npp_fail(e, NPP_EINVAL, f,
                        "%s: a list of %d numbers, or {\"base64\": float32 little-endian, "
                        "\"shape\": [%d]}",
                        f, t->C, t->C);
    char sf[192];
    snprintf(sf, sizeof sf, "%s.shape", f);
    if (json_integer_value(json_array_get(sh, 0)) != t->C)
        return npp_fail(e, NPP_EINVAL, sf, "%s: must be [%d] (the model's width)", sf, t->C);
    size_t n = 0;
    unsigned char *raw = base64_decode(json_string_value(b), json_string_length(b), &n);
    snprintf(sf, sizeof sf, "%s.base64", f);
    if (!raw || n != (size_t)t->C * 4) {
        free(raw);
        return npp_fail(e, NPP_EINVAL, sf, "%s: not base64 of %d float32 values (%d bytes)", sf,
                        t->C, 4 * t->C);
    }
    for (int i = 0; i < t->C; i++) {
        uint32_t u = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                     (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
        memcpy(&out[i], &u, 4);
        if (!isfinite(out[i])) {
            free(raw);
            return npp_fail(e, NPP_EINVAL, sf, "%s: value %d is not finite", sf, i);
        }
    }
    free(raw);
    return 0;
}

static int parse_positions(json_t *v, const edit_table *t, const char *f, int uneven, uint8_t *mask,
                           npp_err *e)
{
    char g[192];
    if (!v) {
        memset(mask, 1, (size_t)t->T);
        return 0;
    }
    if (!json_is_array(v) || !json_array_size(v))
        return npp_fail(e, NPP_EINVAL, f, "%s: a non-empty list of positions", f);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *x = json_array_get(v, i);
        json_int_t p = json_integer_value(x);
        snprintf(g, sizeof g, "%s[%zu]", f, i);
        if (uneven && json_is_integer(x) && p < 0)
            return npp_fail(e, NPP_EINVAL, g,
                            "%s: the examples have different lengths, so a position here counts "
                            "from the start: 0..%d",
                            g, t->T - 1);
        if (!json_is_integer(x) || p < -t->T || p >= t->T)
            return npp_fail(e, NPP_EINVAL, g,
                            "%s: a position in %d..%d (negative counts from the end)", g, -t->T,
                            t->T - 1);
        int q = (int)(p < 0 ? p + t->T : p);
        if (mask[q])
            return npp_fail(e, NPP_EINVAL, g, "%s: position %d is listed twice", g, q);
        mask[q] = 1;
    }
    return 0;
}

static void put_u32(sha256_ctx *c, uint32_t x)
{
    unsigned char b[4] = {(unsigned char)x, (unsigned char)(x >> 8), (unsigned char)(x >> 16),
                          (unsigned char)(x >> 24)};
    sha256_update(c, b, 4);
}

int edit_parse(edit_table *t, json_t *rule, const char *field, int uneven, npp_err *e)
{
    char f[160];
    json_t *ab = json_object_get(rule, "ablate"), *pa = json_object_get(rule, "patch"),
           *st = json_object_get(rule, "steer"), *of = json_object_get(rule, "of"),
           *sc = json_object_get(rule, "scale");
    if (!!ab + !!pa + !!st != 1)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: an intervene rule needs exactly one of \"ablate\" (\"zero\" or "
                        "\"mean\"), \"patch\" (an input) or \"steer\" (a vector)",
                        field);
    if (t->n == t->cap) {
        int c = t->cap ? 2 * t->cap : 8;
        edit *ne = realloc(t->e, (size_t)c * sizeof *ne);
        if (!ne)
            return npp_fail(e, NPP_ENOMEM, field, "out of memory");
        t->e = ne, t->cap = c;
    }
    edit *d = &t->e[t->n];
    memset(d, 0, sizeof *d);
    d->scale = 1;
    if (!(d->mask = calloc((size_t)t->T, 1)))
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    int rc = 0;
    if (ab) {
        snprintf(f, sizeof f, "%s.ablate", field);
        const char *s = json_is_string(ab) ? json_string_value(ab) : "";
        if (!strcmp(s, "zero"))
            d->kind = EDIT_ZERO;
        else if (!strcmp(s, "mean"))
            d->kind = EDIT_MEAN;
        else
            rc = npp_fail(e, NPP_EINVAL, f, "%s: \"zero\" or \"mean\"", f);
        snprintf(f, sizeof f, "%s.of", field);
        if (!rc && of && d->kind != EDIT_MEAN)
            rc = npp_fail(e, NPP_EINVAL, f, "%s: only for \"ablate\": \"mean\"", f);
        else if (!rc && of)
            rc = input_index(of, t, f, &d->input, e);
    } else if (pa) {
        d->kind = EDIT_PATCH;
        snprintf(f, sizeof f, "%s.patch", field);
        rc = input_index(pa, t, f, &d->input, e);
    } else {
        d->kind = EDIT_STEER;
        snprintf(f, sizeof f, "%s.steer", field);
        if (!(d->vec = malloc((size_t)t->C * sizeof *d->vec)))
            rc = npp_fail(e, NPP_ENOMEM, field, "out of memory");
        else
            rc = parse_vector(st, t, f, d->vec, e);
    }
    snprintf(f, sizeof f, "%s.of", field);
    if (!rc && of && !ab)
        rc = npp_fail(e, NPP_EINVAL, f, "%s: only for \"ablate\": \"mean\"", f);
    snprintf(f, sizeof f, "%s.scale", field);
    if (!rc && sc && !st)
        rc = npp_fail(e, NPP_EINVAL, f, "%s: only for \"steer\"", f);
    else if (!rc && sc &&
             (!json_is_number(sc) || !isfinite(json_number_value(sc)) ||
              fabs(json_number_value(sc)) > 1e30))
        rc = npp_fail(e, NPP_EINVAL, f, "%s: a finite number, |scale| <= 1e30", f);
    else if (!rc && sc)
        d->scale = (float)json_number_value(sc);
    snprintf(f, sizeof f, "%s.positions", field);
    if (!rc)
        rc = parse_positions(json_object_get(rule, "positions"), t, f, uneven, d->mask, e);
    if (rc) {
        free(d->vec);
        free(d->mask);
        return -1;
    }
    sha256_ctx c;
    sha256_init(&c);
    put_u32(&c, 0x6e706501u); /* edit key format */
    put_u32(&c, (uint32_t)d->kind);
    put_u32(&c, (uint32_t)d->input);
    put_u32(&c, (uint32_t)t->T);
    sha256_update(&c, d->mask, (size_t)t->T);
    if (d->vec) {
        float s = d->scale;
        sha256_update(&c, &s, sizeof s);
        sha256_update(&c, d->vec, (size_t)t->C * sizeof *d->vec);
    }
    sha256_final(&c, d->key);
    return t->n++;
}
