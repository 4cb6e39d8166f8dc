/* st.h - a strict reader for the safetensors format (read-only, mmap).
 *
 * Layout: 8 bytes little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"k": "v"}}
 * then the data buffer; offsets are relative to the buffer's start.
 *
 * st_open validates everything before returning: header length within the
 * file, JSON well-formed with no duplicate keys, each entry's fields and
 * types, byte size == dtype size x shape (overflow-checked), offsets in
 * range, and tensors tiling the buffer exactly (sorted by offset, no gap,
 * no overlap, nothing left over). Errors name the file and the tensor.
 * Interpreting the tensors (which names, which shapes) is the caller's. */
#ifndef NPP_ST_H
#define NPP_ST_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define ST_MAX_DIMS   8
#define ST_MAX_HEADER (100u << 20) /* refuse headers over 100 MiB */

typedef enum {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
    ST_F8_E4M3,
    ST_F8_E5M2,
} st_dtype;

typedef struct {
    const char *name; /* borrowed from the st_file */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    size_t nbytes;
    const void *data; /* into the mapping; may be unaligned */
} st_tensor;

typedef struct st_file st_file;

/* Maps and validates path. On success *out is new (release with
 * st_close). label names the file in messages (e.g. "model.safetensors");
 * NULL uses path. */
int st_open(const char *path, const char *label, st_file **out, npp_err *e);
void st_close(st_file *f); /* NULL is fine */

size_t st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, size_t i); /* borrowed */
/* The raw header (the 8 length bytes and the JSON), borrowed. */
const void *st_header(const st_file *f, size_t *len);
const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

/* Writing: a caller-built list of tensors (all data in host memory). */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* nbytes = size(dtype) x prod(shape) */
} st_out_tensor;

/* Writes tensors in the given order, with metadata {"format": "pt"}. */
int st_write(const char *path, const st_out_tensor *ts, size_t n, npp_err *e);

#endif
