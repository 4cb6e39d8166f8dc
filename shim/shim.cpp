// shim.cpp - implements shim.h over libtorch (ATen).
// Every entry point catches c10::Error / std::exception and turns it into a
// shim_status; autograd is off (InferenceMode) in every call. Shapes and
// semantics are documented in shim.h; this file only checks and forwards.

#include "shim.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unordered_set>
#include <vector>

#include <sys/mman.h>

struct shim_tensor {
    at::Tensor t;
};

namespace
{

// ---- a block cache for one thread's CPU tensors (shim_block_cache) ----------
//
// libtorch's CPU allocator maps every large tensor afresh, so each value
// and temporary a job makes is faulted in and zeroed by the kernel again
// (1.1M page faults, a fifth of the time, in a 200-edge verify sweep on a
// VM where a fault costs 6-10 us). While a thread's cache is on, its
// blocks of at least 256 KiB go back to its own list when freed, and the
// next tensor of the same size (or of at least half a block's) reuses
// one. The list is bounded by the job's own budget: what the thread has
// allocated since the cache went on and not freed (used), plus what the
// list holds, stays at most the budget, so a job whose memory was
// estimated before it ran holds no more than its estimate (the oldest
// blocks are freed to make room for a new allocation, and a freed block
// that does not fit goes back to the system). Turning the cache off frees
// the list but for its newest blocks up to the thread's keep bytes
// (shim_block_keep; 0 by default), which the next period reuses within its
// own budget: a worker running job after job finds its big buffers
// already faulted in. A block freed on a thread whose cache is off goes
// back to the system at once (on another thread with its cache on, to
// that thread's list, if it fits). Every CPU tensor is allocated here
// (64-byte aligned, its size and the token of the period that counted it
// in the 64 bytes in front), so that one deleter frees them all and the
// data pointer is the context: libtorch's "raw" interface (raw_allocate /
// raw_deallocate, which oneDNN's bfloat16 kernels use on CPUs with
// AVX512-BF16) needs both.

// Trivially destructible, so that a block freed while a thread ends finds
// a valid list; when every slot is taken, the oldest block makes room.
struct block_list {
    size_t budget; // 0: off
    size_t keep;   // held while off at most (shim_block_keep)
    size_t used;   // allocated on this thread while on (this token), not yet freed
    size_t bytes;  // held in free[]
    size_t n;
    uint64_t token; // marks the blocks counted in used: one per period the cache is on
    struct {
        size_t size;
        void *p;
    } free[1024];
};

thread_local block_list blocks;
std::atomic<uint64_t> block_tokens{0};
constexpr size_t kBlockMin = 256 << 10, kAlign = 64, kHead = 64; // size, token in front
constexpr size_t kSlots = sizeof blocks.free / sizeof *blocks.free;
constexpr size_t kHugePage = 2u << 20, kHugeMin = 4u << 20;

// Frees the list's oldest blocks until it holds at most `bytes` in at
// most `slots` blocks.
void block_trim(block_list &l, size_t bytes, size_t slots = kSlots)
{
    size_t k = 0;
    while (k < l.n && (l.bytes > bytes || l.n - k > slots))
        l.bytes -= l.free[k].size, std::free(l.free[k++].p);
    memmove(l.free, l.free + k, (l.n - k) * sizeof *l.free);
    l.n -= k;
}

// Frees the list's oldest blocks until `more` bytes fit under the budget
// beside what it holds and what the thread uses (or the list is empty),
// leaving a slot free.
void block_make_room(block_list &l, size_t more)
{
    size_t want = l.used + more;
    block_trim(l, want <= l.budget ? l.budget - want : 0, kSlots - 1);
}

// The block at base (its data kHead bytes in) stops counting as the calling thread's
// (if it did: its token is this thread's period's); returns its size.
size_t block_uncount(char *base)
{
    size_t n;
    uint64_t token, none = 0;
    memcpy(&n, base, sizeof n);
    memcpy(&token, base + sizeof n, sizeof token);
    block_list &l = blocks;
    if (l.budget && token == l.token)
        l.used -= n < l.used ? n : l.used;
    memcpy(base + sizeof n, &none, sizeof none);
    return n;
}

void block_free(void *ctx)
{
    if (!ctx)
        return;
    char *base = static_cast<char *>(ctx) - kHead;
    size_t n = block_uncount(base);
    block_list &l = blocks;
    if (!l.budget || n < kBlockMin || n > l.budget) {
        std::free(base);
        return;
    }
    block_make_room(l, n);
    if (l.used + l.bytes + n > l.budget) { // the thread's live blocks leave no room
        std::free(base);
        return;
    }
    l.free[l.n].size = n, l.free[l.n++].p = base;
    l.bytes += n;
}

// A new block of n bytes, 64-byte aligned. One of at least 4 MiB starts on
// a 2 MiB boundary and asks the kernel for huge pages over its whole 2 MiB
// pages (transparent huge pages, where the system leaves them to
// madvise): one fault and one 2 MiB zeroing instead of 512 faults. On a VM
// where a fault costs ~10 us, a 42 MiB buffer took 115 ms to touch with 4
// KiB pages and 3 ms with huge pages. The pages lie inside the block, so
// its memory is what it would be with small pages, once written.
void *block_new(size_t n)
{
    void *p = nullptr;
    bool huge = n >= kHugeMin;
    if (posix_memalign(&p, huge ? kHugePage : kAlign, n))
        throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge)
        madvise(p, n / kHugePage * kHugePage, MADV_HUGEPAGE); /* a hint: failure is harmless */
#endif
    return p;
}

// The held block to reuse for n bytes (its index, or l.n for none): the
// newest of exactly that size, else the smallest of up to twice the size
// (moving it from held to used changes neither's sum; only a thread that
// already uses more than its budget is refused a larger block).
size_t block_pick(const block_list &l, size_t n)
{
    size_t best = l.n;
    for (size_t i = l.n; i-- > 0;) {
        size_t c = l.free[i].size;
        if (c == n)
            return i;
        if (c > n && c - n <= n && l.used + c <= l.budget && (best == l.n || c < l.free[best].size))
            best = i;
    }
    return best;
}

struct cached_cpu_allocator final : c10::Allocator {
    c10::DataPtr allocate(size_t n) const override
    {
        block_list &l = blocks;
        void *p = nullptr;
        size_t size = n; // the block's: a reused one may be larger
        size_t i = l.budget && n >= kBlockMin ? block_pick(l, n) : l.n;
        if (i < l.n) { // the rest keep their order
            p = l.free[i].p, size = l.free[i].size;
            memmove(l.free + i, l.free + i + 1, (l.n - i - 1) * sizeof *l.free);
            l.n--;
            l.bytes -= size;
        } else {
            if (l.budget)
                block_make_room(l, n);
            p = block_new(n + kHead);
            memcpy(p, &n, sizeof n);
        }
        uint64_t token = l.budget ? l.token : 0;
        memcpy(static_cast<char *>(p) + sizeof size, &token, sizeof token);
        l.used += l.budget ? size : 0;
        char *data = static_cast<char *>(p) + kHead;
        return {data, data, &block_free, c10::Device(c10::DeviceType::CPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override
    {
        return &block_free;
    }
};

cached_cpu_allocator cpu_cache;

const bool cpu_cache_installed = [] {
    c10::SetAllocator(c10::DeviceType::CPU, &cpu_cache, 1);
    return true;
}();

void set_err(shim_status *st, int code, const char *fmt, ...)
{
    if (!st || st->code)
        return;
    st->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->msg, sizeof st->msg, fmt, ap);
    va_end(ap);
}

// Keeps only the first line of a c10 message: the rest is a C++ backtrace.
void set_torch_err(shim_status *st, const char *what)
{
    std::string s(what ? what : "unknown libtorch error");
    size_t nl = s.find('\n');
    if (nl != std::string::npos)
        s.resize(nl);
    set_err(st, SHIM_ETORCH, "libtorch: %s", s.c_str());
}

at::ScalarType to_scalar(shim_dtype d)
{
    switch (d) {
    case SHIM_F32: return at::kFloat;
    case SHIM_F16: return at::kHalf;
    case SHIM_BF16: return at::kBFloat16;
    case SHIM_I64: return at::kLong;
    }
    return at::kFloat;
}

// Host indices idx[0..n) as an index tensor on dev.
at::Tensor host_index(const int64_t *idx, int64_t n, const at::Device &dev)
{
    return at::from_blob(const_cast<int64_t *>(idx), {n}, at::kLong).to(dev);
}

at::Device to_device(shim_device d)
{
    if (d.kind == SHIM_CUDA)
        return at::Device(at::kCUDA, (c10::DeviceIndex)d.index);
    return at::Device(at::kCPU);
}

shim_tensor *wrap(at::Tensor t)
{
    return new shim_tensor{std::move(t)};
}

bool bad(shim_status *st)
{
    return st && st->code != 0;
}

thread_local bool grad_on = false; // shim_grad_mode

// ln_1's backward in place on rows r0..r1 of g (each C wide), whose inputs
// are rows r % BT of xh (normalized) and rs (1 / sigma), w ln_1's weight:
// g = (g w - mean(g w) - xh mean(g w xh)) / sigma. The row sums run in 16
// float lanes, added up in double.
inline __attribute__((always_inline)) void ln_rows(float *g, const float *xh, const float *rs,
                                                   const float *w, int64_t C, int64_t BT,
                                                   int64_t r0, int64_t r1)
{
    enum { LANES = 16 };
    for (int64_t r = r0; r < r1; r++) {
        float *gr = g + r * C;
        const float *xr = xh + (r % BT) * C;
        float l1[LANES] = {0}, l2[LANES] = {0};
        int64_t c = 0;
        for (; c + LANES <= C; c += LANES)
            for (int k = 0; k < LANES; k++) {
                float gp = gr[c + k] * w[c + k];
                l1[k] += gp, l2[k] += gp * xr[c + k];
            }
        double s1 = 0, s2 = 0;
        for (; c < C; c++) {
            float gp = gr[c] * w[c];
            s1 += gp, s2 += (double)gp * xr[c];
        }
        for (int k = 0; k < LANES; k++)
            s1 += l1[k], s2 += l2[k];
        float m1 = (float)(s1 / C), m2 = (float)(s2 / C), q = rs[r % BT];
        for (c = 0; c < C; c++)
            gr[c] = (gr[c] * w[c] - m1 - xr[c] * m2) * q;
    }
}

__attribute__((target("avx2"))) void ln_rows_avx2(float *g, const float *xh, const float *rs,
                                                  const float *w, int64_t C, int64_t BT, int64_t r0,
                                                  int64_t r1)
{
    ln_rows(g, xh, rs, w, C, BT, r0, r1);
}

void ln_rows_base(float *g, const float *xh, const float *rs, const float *w, int64_t C, int64_t BT,
                  int64_t r0, int64_t r1)
{
    ln_rows(g, xh, rs, w, C, BT, r0, r1);
}

// ln_rows compiled for AVX2 where the CPU has it. Chosen at the first call,
// not by an ifunc (target_clones): ifunc resolvers run before the
// sanitizers' runtimes are up, and ThreadSanitizer builds crash in them.
void ln_backward_rows(float *g, const float *xh, const float *rs, const float *w, int64_t C,
                      int64_t BT, int64_t r0, int64_t r1)
{
    static const bool avx2 = __builtin_cpu_supports("avx2");
    (avx2 ? ln_rows_avx2 : ln_rows_base)(g, xh, rs, w, C, BT, r0, r1);
}

} // namespace

// Runs body, converting any exception into the status. Returns the
// body's value, or fail on error (or when the status was already set).
#define SHIM_GUARD(st, fail, ...)                                                                  \
    do {                                                                                           \
        if (bad(st))                                                                               \
            return fail;                                                                           \
        try {                                                                                      \
            c10::InferenceMode guard_(!grad_on);                                                   \
            __VA_ARGS__                                                                            \
        } catch (const c10::Error &e) {                                                            \
            set_torch_err(st, e.what_without_backtrace());                                         \
        } catch (const std::bad_alloc &) {                                                         \
            set_err(st, SHIM_ENOMEM, "out of memory");                                             \
        } catch (const std::exception &e) {                                                        \
            set_torch_err(st, e.what());                                                           \
        } catch (...) {                                                                            \
            set_torch_err(st, "unknown exception");                                                \
        }                                                                                          \
        return fail;                                                                               \
    } while (0)

extern "C" {

int shim_cuda_device_count(void)
{
    try {
        return torch::cuda::is_available() ? (int)torch::cuda::device_count() : 0;
    } catch (...) {
        return 0;
    }
}

int shim_device_parse(const char *s, shim_device *out, shim_status *st)
{
    if (!s || !out) {
        set_err(st, SHIM_EINVAL, "no device given");
        return SHIM_EINVAL;
    }
    if (strcmp(s, "cpu") == 0) {
        *out = shim_device{SHIM_CPU, 0};
        return 0;
    }
    int idx = 0;
    if (strcmp(s, "cuda") == 0) {
        idx = 0;
    } else if (strncmp(s, "cuda:", 5) == 0 && s[5] >= '0' && s[5] <= '9') {
        char *end = nullptr;
        long v = strtol(s + 5, &end, 10);
        if (*end || v < 0 || v > 1024) {
            set_err(st, SHIM_EINVAL, "bad device '%s' (expected cpu, cuda or cuda:N)", s);
            return SHIM_EINVAL;
        }
        idx = (int)v;
    } else {
        set_err(st, SHIM_EINVAL, "bad device '%s' (expected cpu, cuda or cuda:N)", s);
        return SHIM_EINVAL;
    }
    int n = shim_cuda_device_count();
    if (n == 0) {
        set_err(st, SHIM_ENODEV,
                "device '%s': this build's libtorch has no CUDA or no GPU is visible", s);
        return SHIM_ENODEV;
    }
    if (idx >= n) {
        set_err(st, SHIM_ENODEV, "device '%s': only %d CUDA device(s) visible", s, n);
        return SHIM_ENODEV;
    }
    *out = shim_device{SHIM_CUDA, idx};
    return 0;
}

void shim_device_name(shim_device d, char *buf, size_t n)
{
    if (d.kind == SHIM_CUDA)
        snprintf(buf, n, "cuda:%d", d.index);
    else
        snprintf(buf, n, "cpu");
}

int shim_dtype_parse(const char *s, shim_dtype *out, shim_status *st)
{
    static const struct {
        const char *name;
        shim_dtype d;
    } names[] = {{"f32", SHIM_F32},     {"float32", SHIM_F32}, {"f16", SHIM_F16},
                 {"float16", SHIM_F16}, {"bf16", SHIM_BF16},   {"bfloat16", SHIM_BF16}};
    for (const auto &e : names) {
        if (s && strcmp(s, e.name) == 0) {
            *out = e.d;
            return 0;
        }
    }
    set_err(st, SHIM_EINVAL, "bad dtype '%s' (expected f32, f16 or bf16)", s ? s : "");
    return SHIM_EINVAL;
}

const char *shim_dtype_name(shim_dtype d)
{
    switch (d) {
    case SHIM_F32: return "f32";
    case SHIM_F16: return "f16";
    case SHIM_BF16: return "bf16";
    case SHIM_I64: return "i64";
    }
    return "?";
}

size_t shim_dtype_size(shim_dtype d)
{
    switch (d) {
    case SHIM_F32: return 4;
    case SHIM_F16: return 2;
    case SHIM_BF16: return 2;
    case SHIM_I64: return 8;
    }
    return 0;
}

void shim_set_threads(int n)
{
    if (n > 0)
        at::set_num_threads(n);
}

int shim_get_threads(void)
{
    return at::get_num_threads();
}

const char *shim_torch_version(void)
{
    return TORCH_VERSION;
}

void shim_synchronize(shim_device d, shim_status *st)
{
    if (d.kind != SHIM_CUDA)
        return;
    SHIM_GUARD(st, , {
        // A tiny device-to-host copy waits for all queued work on the stream.
        at::Tensor z = at::zeros({1}, at::TensorOptions().device(to_device(d)));
        (void)z.cpu();
        return;
    });
}

shim_tensor *shim_from_host(const void *data, shim_dtype src, const int64_t *shape, int ndim,
                            shim_device dev, shim_dtype dst, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        c10::InferenceMode normal(false); // a weight must be usable by a gradient job
        if (ndim < 0 || ndim > SHIM_MAX_DIMS) {
            set_err(st, SHIM_EINVAL, "from_host: bad rank %d", ndim);
            return nullptr;
        }
        std::vector<int64_t> sz(shape, shape + ndim);
        // Copy into an owned, aligned host tensor first: data may be an
        // unaligned pointer into a mapped file.
        at::Tensor host = at::empty(sz, at::TensorOptions().dtype(to_scalar(src)));
        if (host.nbytes())
            memcpy(host.data_ptr(), data, host.nbytes());
        at::Tensor t = host.to(to_device(dev), to_scalar(dst));
        return wrap(std::move(t));
    });
}

int shim_to_host_f32(const shim_tensor *t, float *out, size_t n, shim_status *st)
{
    SHIM_GUARD(st, st ? st->code : SHIM_EINVAL, {
        if ((size_t)t->t.numel() != n) {
            set_err(st, SHIM_EINVAL, "to_host: tensor has %lld elements, buffer %zu",
                    (long long)t->t.numel(), n);
            return SHIM_EINVAL;
        }
        at::Tensor c = t->t.to(at::kCPU, at::kFloat).contiguous();
        if (n)
            memcpy(out, c.data_ptr<float>(), n * sizeof(float));
        return 0;
    });
}

void shim_free(shim_tensor *t)
{
    delete t;
}

int shim_ndim(const shim_tensor *t)
{
    return (int)t->t.dim();
}

int64_t shim_dim(const shim_tensor *t, int i)
{
    int nd = (int)t->t.dim();
    if (i < 0)
        i += nd;
    if (i < 0 || i >= nd)
        return -1;
    return t->t.size(i);
}

size_t shim_nbytes(const shim_tensor *t)
{
    return (size_t)t->t.numel() * t->t.element_size();
}

shim_tensor *shim_reshape(const shim_tensor *t, const int64_t *shape, int ndim, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        std::vector<int64_t> sz(shape, shape + ndim);
        return wrap(t->t.reshape(sz));
    });
}

shim_tensor *shim_narrow(const shim_tensor *t, int dim, int64_t start, int64_t len, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(t->t.narrow(dim, start, len)); });
}

shim_tensor *shim_cat(shim_tensor *const *ts, int n, int dim, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        std::vector<at::Tensor> v;
        v.reserve((size_t)n);
        for (int i = 0; i < n; i++)
            v.push_back(ts[i]->t);
        return wrap(at::cat(v, dim));
    });
}

shim_tensor *shim_clone(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(t->t.clone(at::MemoryFormat::Contiguous)); });
}

shim_tensor *shim_take_rows(const shim_tensor *t, const int64_t *idx, int64_t n, shim_status *st)
{
    SHIM_GUARD(st, nullptr,
               { return wrap(t->t.index_select(0, host_index(idx, n, t->t.device()))); });
}

shim_tensor *shim_edit_positions(const shim_tensor *x, const shim_tensor *minus,
                                 const shim_tensor *plus, const int64_t *pos, int64_t npos,
                                 const float *vec, float scale, int replace, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        const at::Tensor &X = x->t; // (B, T, C)
        at::Tensor i = host_index(pos, npos, X.device());
        at::Tensor y = X.clone(at::MemoryFormat::Contiguous);
        if (replace) {
            if (plus)
                y.index_copy_(1, i, plus->t.index_select(1, i).to(X.scalar_type()));
            else
                y.index_fill_(1, i, 0);
            return wrap(y);
        }
        at::Tensor d = at::zeros({X.size(0), npos, X.size(2)}, X.options());
        if (plus)
            d += plus->t.index_select(1, i);
        if (minus)
            d -= minus->t.index_select(1, i);
        if (vec) {
            at::Tensor v = at::from_blob(const_cast<float *>(vec), {X.size(2)}, at::kFloat)
                               .to(X.device(), X.scalar_type());
            d += v * scale;
        }
        y.index_add_(1, i, d);
        return wrap(y);
    });
}

shim_tensor *shim_batch_mean(const shim_tensor *x, const float *w, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        const at::Tensor &X = x->t; // (B, T, C)
        int64_t B = X.size(0), T = X.size(1);
        at::Tensor W = at::from_blob(const_cast<float *>(w), {B, T, 1}, at::kFloat).to(X.device());
        at::Tensor m = (X.to(at::kFloat) * W).sum(0, true).to(X.scalar_type()); // (1, T, C)
        return wrap(m.expand_as(X).contiguous());
    });
}

shim_tensor *shim_embed(const shim_tensor *wte, const shim_tensor *wpe, const int64_t *ids,
                        int64_t B, int64_t T, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        const at::Tensor &E = wte->t; // (V, C)
        const at::Tensor &P = wpe->t; // (Pmax, C)
        if (T > P.size(0)) {
            set_err(st, SHIM_EINVAL, "embed: %lld tokens but only %lld positions", (long long)T,
                    (long long)P.size(0));
            return nullptr;
        }
        for (int64_t i = 0; i < B * T; i++) {
            if (ids[i] < 0 || ids[i] >= E.size(0)) {
                set_err(st, SHIM_EINVAL, "embed: token id %lld outside vocabulary of %lld",
                        (long long)ids[i], (long long)E.size(0));
                return nullptr;
            }
        }
        at::Tensor tok = E.index_select(0, host_index(ids, B * T, E.device()))
                             .view({B, T, E.size(1)}); // (B, T, C)
        return wrap(tok + P.narrow(0, 0, T).unsqueeze(0));
    });
}

shim_tensor *shim_layernorm(const shim_tensor *x, const shim_tensor *w, const shim_tensor *b,
                            double eps, shim_status *st)
{
    SHIM_GUARD(st, nullptr,
               { return wrap(at::layer_norm(x->t, {x->t.size(-1)}, w->t, b->t, eps)); });
}

shim_tensor *shim_linear(const shim_tensor *x, const shim_tensor *w, const shim_tensor *b,
                         shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        const at::Tensor &X = x->t; // (..., in)
        int64_t in = w->t.size(0), out = w->t.size(1);
        if (X.size(-1) != in) {
            set_err(st, SHIM_EINVAL, "linear: input width %lld, weight expects %lld",
                    (long long)X.size(-1), (long long)in);
            return nullptr;
        }
        std::vector<int64_t> osz(X.sizes().begin(), X.sizes().end());
        osz.back() = out;
        at::Tensor X2 = X.reshape({-1, in});
        at::Tensor y = b ? at::addmm(b->t, X2, w->t) : at::mm(X2, w->t); // (N, out)
        return wrap(y.view(osz));
    });
}

shim_tensor *shim_gelu(const shim_tensor *x, int tanh_approx, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(at::gelu(x->t, tanh_approx ? "tanh" : "none")); });
}

int shim_gelu_(shim_tensor *x, int tanh_approx, shim_status *st)
{
    SHIM_GUARD(st, -1, {
        at::gelu_(x->t, tanh_approx ? "tanh" : "none");
        return 0;
    });
}

shim_tensor *shim_add(const shim_tensor *a, const shim_tensor *b, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(a->t + b->t); });
}

shim_tensor *shim_attention(const shim_tensor *q, const shim_tensor *k, const shim_tensor *v,
                            int n_head, double scale_div, shim_tensor **probs, shim_status *st)
{
    if (probs)
        *probs = nullptr;
    SHIM_GUARD(st, nullptr, {
        const at::Tensor &Q = q->t; // (B, T, H*D)
        if (Q.dim() != 3 || n_head <= 0 || Q.size(2) % n_head) {
            set_err(st, SHIM_EINVAL, "attention: q must be (B, T, H*D) with H=%d", n_head);
            return nullptr;
        }
        int64_t B = Q.size(0), T = Q.size(1), C = Q.size(2), D = C / n_head;
        int64_t Tk = k->t.dim() == 3 ? k->t.size(1) : -1;
        if (Tk < T || k->t.sizes() != v->t.sizes() || k->t.size(0) != B || k->t.size(2) != C) {
            set_err(st, SHIM_EINVAL, "attention: k and v must be (B, Tk, C) with Tk >= q's T");
            return nullptr;
        }
        auto heads = [&](const at::Tensor &x) { // (B, t, C) -> (B, H, t, D)
            return x.view({B, x.size(1), n_head, D}).transpose(1, 2);
        };
        at::Tensor qh = heads(Q), kh = heads(k->t), vh = heads(v->t);
        // In place where the result is the same, so that at most two
        // (B, H, T, T) float32 tensors are alive at once: the scores and the
        // probabilities (exec.c's attn_cost counts on it).
        at::Tensor s = at::matmul(qh, kh.transpose(-1, -2)); // (B, H, T, Tk)
        if (scale_div != 1.0)
            s.div_(scale_div);
        s = s.to(at::kFloat); // the same tensor in float32
        at::Tensor mask = at::ones({T, Tk}, at::TensorOptions().dtype(at::kBool).device(Q.device()))
                              .triu(1 + Tk - T);
        s.masked_fill_(mask, -INFINITY);
        at::Tensor p = s.softmax(-1);
        s = at::Tensor();
        at::Tensor y = at::matmul(p.to(Q.scalar_type()), vh); // (B, H, T, D)
        if (probs)
            *probs = wrap(p);
        p = at::Tensor();
        return wrap(y.transpose(1, 2).reshape({B, T, C}));
    });
}

void shim_grad_mode(int on)
{
    grad_on = on != 0;
}

int shim_grad_enabled(void)
{
    return grad_on;
}

shim_tensor *shim_grad_leaf(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        if (!grad_on) {
            set_err(st, SHIM_EINVAL, "grad_leaf: gradient mode is off");
            return nullptr;
        }
        at::Tensor d = t->t.detach(); // t's data, no graph behind it
        if (d.is_inference())         // made in inference mode: a normal copy
            d = d.clone();
        return wrap(d.requires_grad_(true));
    });
}

shim_tensor *shim_detach(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(t->t.detach()); });
}

shim_tensor *shim_grad_tap(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        if (!t->t.requires_grad()) {
            set_err(st, SHIM_EINVAL, "grad_tap: the tensor is not computed from a gradient leaf");
            return nullptr;
        }
        at::Tensor y = t->t.view_as(t->t);
        y.retain_grad();
        return wrap(y);
    });
}

namespace
{

struct cancelled : std::exception {
    const char *what() const noexcept override
    {
        return "cancelled";
    }
};

// Before each node of the backward graph runs: stop when *flag is set (the
// engine hands the exception back to backward's caller).
struct cancel_hook : torch::autograd::FunctionPreHook {
    const volatile int *flag;
    explicit cancel_hook(const volatile int *f) : flag(f)
    {
    }
    torch::autograd::variable_list operator()(const torch::autograd::variable_list &g) override
    {
        if (__atomic_load_n(flag, __ATOMIC_RELAXED))
            throw cancelled();
        return g;
    }
};

} // namespace

int shim_backward(const shim_tensor *y, const shim_tensor *seed, const volatile int *cancel,
                  shim_status *st)
{
    SHIM_GUARD(st, -1, {
        if (cancel) { // a hook on every node of the graph below y
            std::vector<torch::autograd::Node *> todo;
            std::unordered_set<torch::autograd::Node *> seen;
            if (y->t.grad_fn())
                todo.push_back(y->t.grad_fn().get());
            while (!todo.empty()) {
                torch::autograd::Node *n = todo.back();
                todo.pop_back();
                if (!seen.insert(n).second)
                    continue;
                n->add_pre_hook(std::make_unique<cancel_hook>(cancel));
                for (const torch::autograd::Edge &e : n->next_edges())
                    if (e.function)
                        todo.push_back(e.function.get());
            }
        }
        y->t.backward(seed->t);
        return 0;
    });
}

shim_tensor *shim_grad(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        at::Tensor g = t->t.grad();
        return wrap(g.defined() ? g.detach() : at::zeros_like(t->t.detach()));
    });
}

shim_tensor *shim_head_input_grads(const shim_tensor *gqkv, const shim_tensor *w_attn,
                                   const shim_tensor *x, const shim_tensor *ln_w, double eps,
                                   int n_head, const shim_tensor *extra, shim_tensor *buf,
                                   shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        at::NoGradGuard no_grad;
        const at::Tensor &w = w_attn->t;
        int64_t C = w.size(0), H = n_head, D = C / H, BT = gqkv->t.numel() / (3 * C);
        int64_t K = 3 * H, rows = K + (extra ? 1 : 0);
        // gy[k] = g[:, k*D : +D] @ W[:, k*D : +D]^T, k = c*H + h: the gradient on
        // the ln_1 output that only head h's query (c 0), key (1) or value (2)
        // sees. Both operands are strided views of g and W (copied only to
        // convert a float16 or bfloat16 model's), the product goes straight
        // into the result's rows.
        at::Tensor g = gqkv->t.detach().to(at::kFloat).reshape({BT, 3 * C}).contiguous();
        at::Tensor wf = w.detach().to(at::kFloat).contiguous();
        if (buf && (buf->t.scalar_type() != at::kFloat || buf->t.numel() < rows * BT * C ||
                    !buf->t.is_contiguous())) {
            set_err(st, SHIM_EINVAL, "head_input_grads: buf is not a float32 tensor of %lld",
                    (long long)(rows * BT * C));
            return nullptr;
        }
        at::Tensor out = buf ? buf->t.view({-1}).narrow(0, 0, rows * BT * C).view({rows, BT, C})
                             : at::empty({rows, BT, C}, g.options());
        at::Tensor gy = out.narrow(0, 0, K);
        at::bmm_out(gy, g.view({BT, K, D}).transpose(0, 1), wf.view({C, K, D}).permute({1, 2, 0}));
        if (extra)
            out.select(0, K).copy_(extra->t.detach().reshape({BT, C}));
        // ln_1's backward for each: gx = (g' - mean(g') - xh * mean(g' xh)) / sigma
        at::Tensor xf = x->t.detach().to(at::kFloat).reshape({BT, C});
        at::Tensor mu = xf.mean(-1, true);
        at::Tensor rs = (xf - mu).pow(2).mean(-1, true).add(eps).rsqrt();
        at::Tensor xh = (xf - mu) * rs;
        at::Tensor lw = ln_w->t.detach().to(at::kFloat).contiguous();
        if (!gy.is_cpu()) { // in place: each temporary is as big as the result
            at::Tensor gp = gy.mul_(lw);
            at::Tensor m2 = (gp * xh).mean(-1, true);
            gp.sub_(gp.mean(-1, true)).sub_(xh * m2).mul_(rs);
            return wrap(out.reshape({rows, BT * C}));
        }
        // on a CPU, two passes over each row and no temporary
        xh = xh.contiguous(), rs = rs.contiguous();
        float *gd = gy.data_ptr<float>();
        const float *xd = xh.data_ptr<float>(), *rd = rs.data_ptr<float>(),
                    *wd = lw.data_ptr<float>();
        at::parallel_for(0, K * BT, 64, [&](int64_t r0, int64_t r1) {
            ln_backward_rows(gd, xd, rd, wd, C, BT, r0, r1);
        });
        return wrap(out.reshape({rows, BT * C}));
    });
}

int shim_rows_head_deltas(shim_tensor *dst, int64_t row0, int64_t col0, const shim_tensor *z1,
                          const shim_tensor *z0, const shim_tensor *w_proj, int n_head,
                          shim_status *st)
{
    SHIM_GUARD(st, -1, {
        at::NoGradGuard no_grad;
        const at::Tensor &w = w_proj->t;
        int64_t C = w.size(0), H = n_head, D = C / H, N = z1->t.numel() / C;
        at::Tensor dz = z1->t.detach().to(at::kFloat) - z0->t.detach().to(at::kFloat);
        at::Tensor z3 = dz.reshape({N, H, D}).transpose(0, 1);
        at::Tensor w3 = w.detach().to(at::kFloat).reshape({H, D, C});
        at::Tensor rows = dst->t.narrow(0, row0, H);
        if (col0 == 0 && N * C == rows.size(1)) { // whole rows: straight into them
            at::Tensor out = rows.view({H, N, C});
            at::bmm_out(out, z3, w3);
            return 0;
        }
        rows.narrow(1, col0, N * C).copy_(at::bmm(z3, w3).view({H, N * C}));
        return 0;
    });
}

shim_tensor *shim_flat_f32(const shim_tensor *t, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        at::NoGradGuard no_grad;
        return wrap(t->t.detach().to(at::kFloat).reshape({1, t->t.numel()}).contiguous());
    });
}

int shim_rows_add(shim_tensor *dst, int64_t row0, double a, const shim_tensor *src, shim_status *st)
{
    SHIM_GUARD(st, -1, {
        at::NoGradGuard no_grad;
        at::Tensor s = src->t.detach().reshape({-1, dst->t.size(1)});
        dst->t.narrow(0, row0, s.size(0)).add_(s.to(dst->t.scalar_type()), a);
        return 0;
    });
}

int shim_add_row_sum(shim_tensor *dst, const shim_tensor *rows, int64_t n, const int64_t *idx,
                     int64_t nidx, shim_status *st)
{
    SHIM_GUARD(st, -1, {
        at::NoGradGuard no_grad;
        at::Tensor d = dst->t.detach();
        at::Tensor sum = rows->t.detach().narrow(0, 0, n).sum(0).to(d.scalar_type());
        if (!idx) {
            d.add_(sum.view(d.sizes()));
            return 0;
        }
        int64_t w = sum.numel() / nidx;
        d.view({-1, w}).index_add_(0, host_index(idx, nidx, d.device()), sum.view({nidx, w}));
        return 0;
    });
}

shim_tensor *shim_gather_rows(const shim_tensor *t, int64_t nrows, const int64_t *idx, int64_t n,
                              shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        at::NoGradGuard no_grad;
        at::Tensor r = t->t.detach().reshape({nrows, -1});
        if (!idx)
            return wrap(r);
        if (std::none_of(idx, idx + n, [](int64_t i) { return i < 0; }))
            return wrap(r.index_select(0, host_index(idx, n, r.device())));
        // -1: row 0, then zeroed
        std::vector<int64_t> k(idx, idx + n), zero;
        for (int64_t i = 0; i < n; i++)
            if (k[i] < 0)
                k[i] = 0, zero.push_back(i);
        at::Tensor s = r.index_select(0, host_index(k.data(), n, r.device()));
        s.index_fill_(0, host_index(zero.data(), (int64_t)zero.size(), r.device()), 0);
        return wrap(s);
    });
}

int shim_rows_set(shim_tensor *dst, int64_t row0, const shim_tensor *src, shim_status *st)
{
    SHIM_GUARD(st, -1, {
        at::NoGradGuard no_grad;
        at::Tensor s = src->t.detach().reshape({-1, dst->t.size(1)});
        dst->t.narrow(0, row0, s.size(0)).copy_(s);
        return 0;
    });
}

shim_tensor *shim_empty_f32(int64_t rows, int64_t cols, shim_device dev, shim_status *st)
{
    SHIM_GUARD(st, nullptr, {
        c10::InferenceMode normal(false); // the shim_rows_* functions update it in either mode
        return wrap(
            at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat).device(to_device(dev))));
    });
}

shim_tensor *shim_axpby(double a, const shim_tensor *x, double b, const shim_tensor *y,
                        shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(x->t * a + y->t * b); });
}

shim_tensor *shim_matmul_nt(const shim_tensor *x, const shim_tensor *w, shim_status *st)
{
    SHIM_GUARD(st, nullptr, { return wrap(at::matmul(x->t, w->t.t())); });
}

size_t shim_block_cache(size_t budget)
{
    block_list &l = blocks;
    size_t prev = l.budget;
    (void)cpu_cache_installed;
    if (budget && !l.budget)
        l.token = ++block_tokens, l.used = 0;
    l.budget = budget;
    if (!budget) {
        block_trim(l, l.keep);
        l.used = 0;
    } else {
        block_make_room(l, 0);
    }
    return prev;
}

void shim_block_trim(size_t bytes)
{
    block_trim(blocks, bytes);
}

void shim_block_keep(size_t bytes)
{
    block_list &l = blocks;
    l.keep = bytes;
    if (!l.budget)
        block_trim(l, bytes);
}

void shim_block_disown(const shim_tensor *t)
{
    if (!t || !t->t.defined() || !t->t.has_storage())
        return;
    const c10::DataPtr &d = t->t.storage().data_ptr();
    if (d.get_deleter() != &block_free || !d.get())
        return;
    block_uncount(static_cast<char *>(d.get_context()) - kHead);
}

void shim_block_cache_usage(size_t *used, size_t *held)
{
    *used = blocks.used;
    *held = blocks.bytes;
}

} // extern "C"
