// test_alloc.cpp - the shim's CPU allocator keeps libtorch's allocator
// contract: every allocation's data pointer is its context and carries the
// one deleter raw_deleter() names, so the "raw" interface (raw_allocate /
// raw_deallocate, what oneDNN's bfloat16 kernels call on CPUs with
// AVX512-BF16) works with the block cache off and on; the cache, full,
// frees its oldest blocks first. C++ because the
// contract is libtorch's; the rest of the tests are C.

#include "shim.h"

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>

#include <cstdint>
#include <cstring>

#undef CHECK /* c10's; the tests' own follows */
#include "check.h"

static void contract(const char *when)
{
    c10::Allocator *a = c10::GetAllocator(c10::DeviceType::CPU);
    CHECK(a->raw_deleter() != nullptr, "%s: raw_deleter() is null", when);
    for (size_t n : {size_t(0), size_t(100), size_t(1) << 20}) {
        c10::DataPtr d = a->allocate(n);
        CHECK(d.get() == d.get_context(), "%s: %zu bytes: data is not the context", when, n);
        CHECK(d.get_deleter() == a->raw_deleter(), "%s: %zu bytes: another deleter", when, n);
        CHECK(reinterpret_cast<uintptr_t>(d.get()) % 64 == 0, "%s: %zu bytes not 64-aligned", when,
              n);
        void *p = a->raw_allocate(n + 1);
        CHECK(p != nullptr, "%s: raw_allocate(%zu) gave null", when, n + 1);
        memset(p, 1, n + 1);
        a->raw_deallocate(p);
    }
    // a bfloat16 product: on CPUs with AVX512-BF16 it runs oneDNN, which
    // allocates its scratch through the raw interface
    at::Tensor x = at::ones({64, 256}, at::kBFloat16), w = at::ones({256, 128}, at::kBFloat16);
    at::Tensor y = at::addmm(at::zeros({128}, at::kBFloat16), x, w).to(at::kFloat);
    CHECK(y.min().item<float>() == 256.0f && y.max().item<float>() == 256.0f,
          "%s: bf16 product of ones: %g..%g, want 256", when, y.min().item<float>(),
          y.max().item<float>());
}

int main()
{
    contract("cache off");
    shim_block_cache(64u << 20);
    contract("cache on");
    c10::Allocator *a = c10::GetAllocator(c10::DeviceType::CPU);
    size_t big = 1u << 20;
    void *p = a->raw_allocate(big);
    a->raw_deallocate(p);
    void *q = a->raw_allocate(big);
    CHECK(q == p, "cache on: a freed 1 MiB block is not reused (%p, then %p)", p, q);
    a->raw_deallocate(q);
    shim_block_cache(0);
    // full, the cache makes room by freeing its oldest blocks: with room
    // for two, of three freed blocks the last two come back, newest first
    shim_block_cache(2 * big);
    void *b[3];
    for (void *&x : b)
        x = a->raw_allocate(big);
    for (void *x : b)
        a->raw_deallocate(x);
    void *r0 = a->raw_allocate(big), *r1 = a->raw_allocate(big);
    CHECK(r0 == b[2] && r1 == b[1], "full cache: got %p, %p back; want the newest two, %p, %p", r0,
          r1, b[2], b[1]);
    a->raw_deallocate(r0);
    a->raw_deallocate(r1);
    shim_block_cache(0);
    contract("cache off again");
    return check_done("alloc");
}
