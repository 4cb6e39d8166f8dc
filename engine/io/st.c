/* st.c - safetensors reading and writing; see st.h for the checks made.
 * The header is parsed with jansson (duplicate keys rejected); the data
 * stays in a read-only mapping owned by the st_file. */
#include "io/st.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct st_file {
    char *label;
    void *map;
    size_t size;
    st_tensor *ts;
    char **names; /* owned copies of the tensor names */
    size_t n;
};

static const struct {
    const char *name;
    st_dtype d;
    size_t size;
} dtypes[] = {
    {"BOOL", ST_BOOL, 1}, {"U8", ST_U8, 1},           {"I8", ST_I8, 1},
    {"I16", ST_I16, 2},   {"U16", ST_U16, 2},         {"F16", ST_F16, 2},
    {"BF16", ST_BF16, 2}, {"I32", ST_I32, 4},         {"U32", ST_U32, 4},
    {"F32", ST_F32, 4},   {"F64", ST_F64, 8},         {"I64", ST_I64, 8},
    {"U64", ST_U64, 8},   {"F8_E4M3", ST_F8_E4M3, 1}, {"F8_E5M2", ST_F8_E5M2, 1},
};

const char *st_dtype_name(st_dtype d)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].d == d)
            return dtypes[i].name;
    return "?";
}

size_t st_dtype_size(st_dtype d)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].d == d)
            return dtypes[i].size;
    return 0;
}

static int dtype_parse(const char *s, st_dtype *out)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        if (strcmp(dtypes[i].name, s) == 0) {
            *out = dtypes[i].d;
            return 0;
        }
    }
    return -1;
}

const void *st_header(const st_file *f, size_t *len)
{
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    *len = 8 + (size_t)hlen;
    return p;
}

size_t st_count(const st_file *f)
{
    return f->n;
}

const st_tensor *st_at(const st_file *f, size_t i)
{
    return i < f->n ? &f->ts[i] : NULL;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->names[i]);
    free(f->names);
    free(f->ts);
    if (f->map && f->size)
        munmap(f->map, f->size);
    free(f->label);
    free(f);
}

/* One header entry -> t (shape, dtype, byte range). begin/end are
 * returned for the tiling check. */
static int parse_entry(const st_file *f, const char *name, json_t *v, st_tensor *t, uint64_t *begin,
                       uint64_t *end, uint64_t data_size, npp_err *e)
{
    const char *L = f->label;
    if (!json_is_object(v))
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': entry is not a JSON object", L, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': missing or non-string \"dtype\"", L,
                        name);
    if (dtype_parse(json_string_value(jd), &t->dtype))
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': unknown dtype \"%s\"", L, name,
                        json_string_value(jd));
    if (!json_is_array(js))
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': missing or non-array \"shape\"", L,
                        name);
    if (json_array_size(js) > ST_MAX_DIMS)
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': rank %zu over the limit of %d", L,
                        name, json_array_size(js), ST_MAX_DIMS);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return npp_fail(e, NPP_EFORMAT, L,
                        "%s: tensor '%s': \"data_offsets\" must be [begin, end] integers", L, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t en = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || en < b)
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': bad data_offsets [%lld, %lld]", L,
                        name, (long long)b, (long long)en);
    if ((uint64_t)en > data_size)
        return npp_fail(e, NPP_EFORMAT, L,
                        "%s: tensor '%s': data_offsets [%lld, %lld] past the end of the data "
                        "(%llu bytes; file truncated?)",
                        L, name, (long long)b, (long long)en, (unsigned long long)data_size);
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return npp_fail(e, NPP_EFORMAT, L,
                            "%s: tensor '%s': shape[%d] is not a non-negative integer", L, name, i);
        t->shape[i] = json_integer_value(d);
        if (t->shape[i] && numel > UINT64_MAX / (uint64_t)t->shape[i])
            return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': shape overflows", L, name);
        numel *= (uint64_t)t->shape[i];
    }
    size_t es = st_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es)
        return npp_fail(e, NPP_EFORMAT, L, "%s: tensor '%s': byte size overflows", L, name);
    uint64_t need = numel * es;
    if (need != (uint64_t)(en - b))
        return npp_fail(e, NPP_EFORMAT, L,
                        "%s: tensor '%s': data_offsets [%lld, %lld] hold %llu bytes but %s x "
                        "%llu elements need %llu",
                        L, name, (long long)b, (long long)en, (unsigned long long)(en - b),
                        st_dtype_name(t->dtype), (unsigned long long)numel,
                        (unsigned long long)need);
    t->numel = numel;
    t->nbytes = (size_t)need;
    *begin = (uint64_t)b;
    *end = (uint64_t)en;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    size_t idx;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Tensors must tile [0, data_size) exactly, as the reference
 * implementation requires: no gap, no overlap, nothing after the end. */
static int check_tiling(const st_file *f, span *sp, size_t n, uint64_t data_size, npp_err *e)
{
    const char *L = f->label;
    qsort(sp, n, sizeof *sp, span_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = f->ts[sp[i].idx].name;
        if (sp[i].begin < at)
            return npp_fail(e, NPP_EFORMAT, L,
                            "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s'", L,
                            name, (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end,
                            f->ts[sp[i - 1].idx].name);
        if (sp[i].begin > at)
            return npp_fail(e, NPP_EFORMAT, L,
                            "%s: tensor '%s': gap in the data before offset %llu (previous "
                            "tensor ends at %llu)",
                            L, name, (unsigned long long)sp[i].begin, (unsigned long long)at);
        at = sp[i].end;
    }
    if (at != data_size)
        return npp_fail(e, NPP_EFORMAT, L,
                        "%s: %llu bytes of data after the last tensor (data ends at %llu, file "
                        "holds %llu)",
                        L, (unsigned long long)(data_size - at), (unsigned long long)at,
                        (unsigned long long)data_size);
    return 0;
}

static int parse_header(st_file *f, const char *hdr, size_t hlen, npp_err *e)
{
    const char *L = f->label;
    json_error_t je;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &je);
    span *sp = NULL;
    int rc = 0;
    if (!root)
        return npp_fail(e, NPP_EFORMAT, L, "%s: header is not valid JSON: %s (header byte %d)", L,
                        je.text, je.position);
    if (!json_is_object(root)) {
        rc = npp_fail(e, NPP_EFORMAT, L, "%s: header is not a JSON object", L);
        goto fail;
    }
    size_t cap = json_object_size(root);
    f->ts = calloc(cap ? cap : 1, sizeof *f->ts);
    f->names = calloc(cap ? cap : 1, sizeof *f->names);
    sp = calloc(cap ? cap : 1, sizeof *sp);
    if (!f->ts || !f->names || !sp) {
        rc = npp_fail(e, NPP_ENOMEM, L, "%s: out of memory reading the header", L);
        goto fail;
    }
    uint64_t data_size = f->size - 8 - hlen;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) {
                rc = npp_fail(e, NPP_EFORMAT, L, "%s: \"__metadata__\" is not an object", L);
                goto fail;
            }
            json_object_foreach(v, mk, mv)
            {
                if (!json_is_string(mv)) {
                    rc = npp_fail(e, NPP_EFORMAT, L,
                                  "%s: \"__metadata__\" value of '%s' is not a string", L, mk);
                    goto fail;
                }
            }
            continue;
        }
        st_tensor *t = &f->ts[f->n];
        if (!(f->names[f->n] = strdup(key))) {
            rc = npp_fail(e, NPP_ENOMEM, L, "%s: out of memory", L);
            goto fail;
        }
        t->name = f->names[f->n];
        f->n++;
        rc = parse_entry(f, key, v, t, &sp[f->n - 1].begin, &sp[f->n - 1].end, data_size, e);
        if (rc)
            goto fail;
        sp[f->n - 1].idx = f->n - 1;
        t->data = (const char *)f->map + 8 + hlen + sp[f->n - 1].begin;
    }
    rc = check_tiling(f, sp, f->n, data_size, e);
fail:
    free(sp);
    json_decref(root);
    return rc;
}

int st_open(const char *path, const char *label, st_file **out, npp_err *e)
{
    *out = NULL;
    const char *L = label ? label : path;
    int fd = -1, rc = 0;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->label = strdup(L))) {
        rc = npp_fail(e, NPP_ENOMEM, L, "%s: out of memory", L);
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = npp_fail(e, NPP_EIO, L, "%s: cannot open: %s", L, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        rc = npp_fail(e, NPP_EIO, L, "%s: not a regular file", L);
        goto fail;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        rc = npp_fail(e, NPP_EFORMAT, L, "%s: file is %zu bytes, too short for a header", L,
                      f->size);
        goto fail;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        rc = npp_fail(e, NPP_EIO, L, "%s: cannot map: %s", L, strerror(errno));
        goto fail;
    }
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > f->size - 8) {
        rc = npp_fail(e, NPP_EFORMAT, L,
                      "%s: header length %llu runs past the end of the file (%zu bytes)", L,
                      (unsigned long long)hlen, f->size);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER) {
        rc = npp_fail(e, NPP_EFORMAT, L, "%s: header length %llu over the limit of %u bytes", L,
                      (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if ((rc = parse_header(f, (const char *)p + 8, (size_t)hlen, e)))
        goto fail;
    close(fd);
    *out = f;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    st_close(f);
    return rc;
}

static int write_all(FILE *fp, const void *p, size_t n)
{
    return fwrite(p, 1, n, fp) == n ? 0 : -1;
}

int st_write(const char *path, const st_out_tensor *ts, size_t n, npp_err *e)
{
    int rc = 0;
    char *hdr = NULL;
    FILE *fp = NULL;
    json_t *root = json_object();
    json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb = st_dtype_size(ts[i].dtype);
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].ndim; d++) {
            nb *= (uint64_t)ts[i].shape[d];
            json_array_append_new(shape, json_integer(ts[i].shape[d]));
        }
        json_object_set_new(root, ts[i].name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", st_dtype_name(ts[i].dtype),
                                      "shape", shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + nb)));
        off += nb;
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        rc = npp_fail(e, NPP_ENOMEM, path, "%s: cannot build the header", path);
        goto fail;
    }
    /* Pad the header with spaces so the data starts 8-byte aligned. */
    size_t hl = strlen(hdr), pad = (8 - (8 + hl) % 8) % 8;
    uint64_t hlen = hl + pad;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)(hlen >> (8 * i));
    fp = fopen(path, "wb");
    if (!fp) {
        rc = npp_fail(e, NPP_EIO, path, "%s: cannot create: %s", path, strerror(errno));
        goto fail;
    }
    int w = write_all(fp, lenb, 8) | write_all(fp, hdr, hl) | write_all(fp, "        ", pad);
    for (size_t i = 0; i < n && !w; i++) {
        size_t nb = st_dtype_size(ts[i].dtype);
        for (int d = 0; d < ts[i].ndim; d++)
            nb *= (size_t)ts[i].shape[d];
        w |= write_all(fp, ts[i].data, nb);
    }
    if (fclose(fp) || w) {
        fp = NULL;
        rc = npp_fail(e, NPP_EIO, path, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    fp = NULL;
fail:
    if (fp)
        fclose(fp);
    free(hdr);
    json_decref(root);
    return rc;
}
