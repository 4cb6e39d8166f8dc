/* shim.h - the project's only door to libtorch: a small C API over the
 * handful of tensor operations GPT-2 needs.
 *
 * Everything here is plain C. Tensors are opaque handles; no C++ type or
 * exception crosses this header. Every call that can fail takes a
 * shim_status: on failure it sets st->code < 0 and a message, and returns
 * NULL (or a negative code). The status is sticky: an operation called with
 * st->code != 0 does nothing and returns NULL, so a sequence of operations
 * can be written straight and checked once at the end:
 *
 *     shim_status st = {0};
 *     shim_tensor *h = shim_layernorm(x, w, b, 1e-5, &st);   // (B, T, C)
 *     shim_tensor *y = shim_linear(h, W, bias, &st);         // (B, T, 3C)
 *     shim_free(h);
 *     if (st.code) { report(st.msg); }
 *
 * Ownership: every function returning shim_tensor * returns a NEW handle
 * the caller must release with shim_free(). Arguments are borrowed.
 * Handles may be used from any thread; one handle must not be freed while
 * another thread uses it. All operations run without autograd.
 */
#ifndef NPP_SHIM_H
#define NPP_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct shim_tensor shim_tensor;

typedef enum {
    SHIM_F32 = 0,
    SHIM_F16 = 1,
    SHIM_BF16 = 2,
    SHIM_I64 = 3,
} shim_dtype;

typedef enum { SHIM_CPU = 0, SHIM_CUDA = 1 } shim_device_kind;

typedef struct {
    shim_device_kind kind;
    int index; /* CUDA ordinal; 0 for the CPU */
} shim_device;

enum {
    SHIM_OK = 0,
    SHIM_EINVAL = -1, /* bad argument (shape, dtype, device string) */
    SHIM_ENOMEM = -2, /* allocation failed (host or device) */
    SHIM_ETORCH = -3, /* libtorch raised an error; see msg */
    SHIM_ENODEV = -4, /* device not available in this build or machine */
};

typedef struct {
    int code;      /* 0 = ok, else one of the SHIM_E* codes */
    char msg[512]; /* human-readable reason when code != 0 */
} shim_status;

#define SHIM_MAX_DIMS 8

/* ---- library-wide ---------------------------------------------------- */

/* Parses "cpu", "cuda" or "cuda:N". Fails with SHIM_ENODEV if the
 * libtorch in use has no CUDA or the ordinal does not exist. */
int shim_device_parse(const char *s, shim_device *out, shim_status *st);
/* Writes "cpu" or "cuda:N" into buf (at least 16 bytes). */
void shim_device_name(shim_device d, char *buf, size_t n);
/* Number of CUDA devices usable by this libtorch (0 in CPU builds). */
int shim_cuda_device_count(void);
/* Parses "f32" | "f16" | "bf16" (also "float32", "float16", "bfloat16"). */
int shim_dtype_parse(const char *s, shim_dtype *out, shim_status *st);
const char *shim_dtype_name(shim_dtype d); /* "f32", "f16", ... (static) */
size_t shim_dtype_size(shim_dtype d);
/* Intra-op thread count of the calling thread (and the global pool). */
void shim_set_threads(int n);
int shim_get_threads(void);
/* Version string of the linked libtorch (static storage). */
const char *shim_torch_version(void);
/* Blocks until queued device work is done (no-op on CPU). */
void shim_synchronize(shim_device d, shim_status *st);

/* ---- tensors --------------------------------------------------------- */

/* Copies n = prod(shape) elements of dtype src from host memory (any
 * alignment) into a new tensor of dtype dst on dev. */
shim_tensor *shim_from_host(const void *data, shim_dtype src, const int64_t *shape, int ndim,
                            shim_device dev, shim_dtype dst, shim_status *st);
/* Copies the tensor, converted to float32, into out (n floats, n must
 * equal the tensor's numel). Works from any device and dtype. */
int shim_to_host_f32(const shim_tensor *t, float *out, size_t n, shim_status *st);
void shim_free(shim_tensor *t); /* NULL is fine */

int shim_ndim(const shim_tensor *t);
int64_t shim_dim(const shim_tensor *t, int i); /* negative i counts from the end */
/* Bytes held by the tensor's elements (numel * element size). */
size_t shim_nbytes(const shim_tensor *t);

/* ---- shape ----------------------------------------------------------- */

/* A view or copy with a new shape (numel must match). */
shim_tensor *shim_reshape(const shim_tensor *t, const int64_t *shape, int ndim, shim_status *st);
/* The slice [start, start+len) along dim. */
shim_tensor *shim_narrow(const shim_tensor *t, int dim, int64_t start, int64_t len,
                         shim_status *st);
/* Concatenation of n tensors along dim. */
shim_tensor *shim_cat(shim_tensor *const *ts, int n, int dim, shim_status *st);
/* A copy with its own storage (so a slice no longer pins its parent). */
shim_tensor *shim_clone(const shim_tensor *t, shim_status *st);
/* Rows idx[0..n) of t along dim 0 (idx on the host). */
shim_tensor *shim_take_rows(const shim_tensor *t, const int64_t *idx, int64_t n, shim_status *st);

/* x (B, T, C) changed at positions pos[0..npos) (along dim 1), as a new
 * tensor. replace: those rows become plus's (or zeros when plus is NULL);
 * else they get plus - minus + scale * vec added (each part optional; vec:
 * C host floats). */
shim_tensor *shim_edit_positions(const shim_tensor *x, const shim_tensor *minus,
                                 const shim_tensor *plus, const int64_t *pos, int64_t npos,
                                 const float *vec, float scale, int replace, shim_status *st);
/* Row (b, t) of the result is sum over b' of w[b' * T + t] * x[b', t]
 * (w: B*T host floats), accumulated in float32: a weighted batch mean,
 * broadcast back to (B, T, C). */
shim_tensor *shim_batch_mean(const shim_tensor *x, const float *w, shim_status *st);

/* ---- GPT-2 operations ------------------------------------------------ */

/* Token + position embedding: wte[ids[b][t]] + wpe[t].
 * ids: host, B*T int64 row-major. wte (V, C), wpe (P, C) -> (B, T, C). */
shim_tensor *shim_embed(const shim_tensor *wte, const shim_tensor *wpe, const int64_t *ids,
                        int64_t B, int64_t T, shim_status *st);
/* Layer norm over the last dim: (..., C) -> (..., C). */
shim_tensor *shim_layernorm(const shim_tensor *x, const shim_tensor *w, const shim_tensor *b,
                            double eps, shim_status *st);
/* Conv1D as GPT-2 stores it: x (..., in) @ w (in, out) + b (out); b NULL: no bias. */
shim_tensor *shim_linear(const shim_tensor *x, const shim_tensor *w, const shim_tensor *b,
                         shim_status *st);
/* GELU; tanh_approx selects GPT-2's "gelu_new". */
shim_tensor *shim_gelu(const shim_tensor *x, int tanh_approx, shim_status *st);
/* The same in place (x must not be shared): one (N, I) temporary fewer. */
int shim_gelu_(shim_tensor *x, int tanh_approx, shim_status *st);
shim_tensor *shim_add(const shim_tensor *a, const shim_tensor *b, shim_status *st);
/* Causal multi-head attention core.
 * q (B, Tq, H*D), k, v (B, Tk, H*D), Tq <= Tk, holding H heads side by
 * side -> (B, Tq, H*D): q's rows are the last Tq of the Tk positions (row
 * i at position Tk - Tq + i sees keys 0 .. Tk - Tq + i).
 * scores = q·k / scale_div, causal mask, softmax in float32.
 * If probs is not NULL it receives a new (B, H, Tq, Tk) float32 tensor. */
shim_tensor *shim_attention(const shim_tensor *q, const shim_tensor *k, const shim_tensor *v,
                            int n_head, double scale_div, shim_tensor **probs, shim_status *st);
/* x (N, C) · w (V, C)^T -> (N, V), computed in x's dtype. */
shim_tensor *shim_matmul_nt(const shim_tensor *x, const shim_tensor *w, shim_status *st);

/* The calling thread's cache of freed CPU tensor blocks of at least 256
 * KiB, reused by the next tensor it makes of the same size (or of at least
 * half a held block's size): a tensor made anew is faulted in and zeroed
 * page by page. On with a budget (> 0): what the thread allocates from
 * then on and has not freed, plus what the cache holds, stays at most
 * budget bytes (the cache frees its oldest blocks to make room, and a
 * freed block that does not fit goes back to the system), so a job given
 * its estimated peak as the budget holds no more than that unless what it
 * uses alone is more. Off (0) frees what it holds but its newest blocks
 * up to the keep bound (shim_block_keep). Off by default; calling it
 * again while on changes the budget (what the thread uses still counts).
 * Returns the budget before (0: it was off), so that a nested user can put
 * it back. */
size_t shim_block_cache(size_t budget);
/* What the calling thread's cache keeps when it goes off: its newest held
 * blocks up to bytes, for the next period it is on (they count in that
 * period's budget; freed blocks never join them while it is off). 0 (the
 * default) keeps nothing; while off, a lower bound frees the oldest at
 * once, so a thread calls shim_block_keep(0) before it ends. A worker that
 * runs job after job keeps its big buffers faulted in. */
void shim_block_keep(size_t bytes);
/* Frees the calling thread's oldest held blocks until it holds at most
 * bytes (its cache on or off). */
void shim_block_trim(size_t bytes);
/* t's storage stops counting toward the budget of the thread that made it
 * (called on that thread; elsewhere it only stops counting): a value the
 * shared cache keeps is the cache's bytes, bounded by the cache's own
 * budget, not the job's. Nothing for other tensors. */
void shim_block_disown(const shim_tensor *t);
/* The calling thread's cache: bytes allocated since it went on and not
 * freed (used; 0 when off) and bytes it holds free (held; when off, what
 * it keeps). */
void shim_block_cache_usage(size_t *used, size_t *held);

/* ---- gradients (attribution) ----------------------------------------- */

/* Gradient mode for the calling thread: on, the operations record what
 * backward needs (everything else runs in inference mode). */
void shim_grad_mode(int on);
int shim_grad_enabled(void);
/* t's data as the start of a graph: gradients flow back to it and stop
 * there (nothing behind it is recorded). t must not change while it is in
 * use; a tensor made outside gradient mode is copied. */
shim_tensor *shim_grad_leaf(const shim_tensor *t, shim_status *st);
/* t's data with no graph behind it and no gradient (a view). */
shim_tensor *shim_detach(const shim_tensor *t, shim_status *st);
/* t itself (a view) whose gradient shim_grad reads after shim_backward: a
 * receiver's own copy of its input, for example. */
shim_tensor *shim_grad_tap(const shim_tensor *t, shim_status *st);
/* dst (R, K) rows [row0, row0 + H), columns [col0, col0 + numel(z1)) =
 * (z1 - z0)_h W_O[h], the change of head h's share of an attention output
 * (no bias) in row row0 + h, in float32: z1, z0 (..., C) two outputs of
 * the attention core (same shape), w_proj (C, C) c_proj's weight. In
 * place, no gradient. */
int shim_rows_head_deltas(shim_tensor *dst, int64_t row0, int64_t col0, const shim_tensor *z1,
                          const shim_tensor *z0, const shim_tensor *w_proj, int n_head,
                          shim_status *st);
/* t as one float32 row (1, numel), no gradient. */
shim_tensor *shim_flat_f32(const shim_tensor *t, shim_status *st);
/* dst (R, K) rows [row0, row0 + n) += a * src, src any shape of n*K
 * elements (a block of rows), in place, no gradient. */
int shim_rows_add(shim_tensor *dst, int64_t row0, double a, const shim_tensor *src,
                  shim_status *st);
/* dst += the sum of rows [0, n) of rows (R, K), in place, no gradient:
 * with idx NULL, K is numel(dst); else dst is seen as rows of width
 * K / nidx and the sum's nidx rows are added to its rows idx[0..nidx). */
int shim_add_row_sum(shim_tensor *dst, const shim_tensor *rows, int64_t n, const int64_t *idx,
                     int64_t nidx, shim_status *st);
/* shim_take_rows of t seen as nrows rows, (n, width), no gradient; with
 * idx NULL all of them (a view). An index of -1 gives a row of zeros. */
shim_tensor *shim_gather_rows(const shim_tensor *t, int64_t nrows, const int64_t *idx, int64_t n,
                              shim_status *st);
/* The same rows = src (converted to dst's dtype). */
int shim_rows_set(shim_tensor *dst, int64_t row0, const shim_tensor *src, shim_status *st);
/* An uninitialized (rows, cols) float32 tensor on dev (for the shim_rows_*
 * functions, in or out of gradient mode). */
shim_tensor *shim_empty_f32(int64_t rows, int64_t cols, shim_device dev, shim_status *st);
/* a x + b y (same shapes). */
shim_tensor *shim_axpby(double a, const shim_tensor *x, double b, const shim_tensor *y,
                        shim_status *st);
/* Backpropagates seed (y's shape: dM/dy) from y. cancel (or NULL): checked
 * before each step of the backward graph; once set, it stops there with an
 * error ("cancelled"), the gradients left incomplete. */
int shim_backward(const shim_tensor *y, const shim_tensor *seed, const volatile int *cancel,
                  shim_status *st);
/* The gradient backward left on a tap or leaf (zeros when none reached it). */
shim_tensor *shim_grad(const shim_tensor *t, shim_status *st);
/* Per-head input gradients of one attention layer: gqkv (B, T, 3C) is dM/d
 * of its c_attn output, w_attn (C, 3C), x (B, T, C) the ln_1 input, ln_w
 * ln_1's weight. Row cH + h of the result (3H, B*T*C, float32) is dM/dx
 * through head h's query (c 0), key (1) or value (2) alone: each head's own
 * copy of its input. extra (B*T*C elements, or NULL) becomes one more row
 * after those (so one product takes a layer's MLP receiver too). buf (or
 * NULL): a float32 tensor of at least that many elements (shim_empty_f32)
 * that the result is written into and views, so that one buffer serves
 * every layer. */
shim_tensor *shim_head_input_grads(const shim_tensor *gqkv, const shim_tensor *w_attn,
                                   const shim_tensor *x, const shim_tensor *ln_w, double eps,
                                   int n_head, const shim_tensor *extra, shim_tensor *buf,
                                   shim_status *st);

#ifdef __cplusplus
}
#endif
#endif
