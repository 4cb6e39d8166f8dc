// test_alloc.cpp - the shim's CPU allocator keeps libtorch's allocator
// contract: every allocation's data pointer is its context and carries the
// one deleter raw_deleter() names, so the "raw" interface (raw_allocate /
// raw_deallocate, what oneDNN's bfloat16 kernels call on CPUs with
// AVX512-BF16) works with the block cache off and on; and the cache keeps
// what the thread uses plus what it holds within its budget (freeing its
// oldest blocks to make room), reusing a freed block of the same size or of
// up to twice it; and what it keeps from one period to the next
// (shim_block_keep). C++ because the contract is libtorch's; the rest of
// the tests are C.

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

static void usage(const char *when, size_t want_used, size_t want_held)
{
    size_t used, held;
    shim_block_cache_usage(&used, &held);
    CHECK(used == want_used && held == want_held, "%s: used %zu, held %zu; want %zu, %zu", when,
          used, held, want_used, want_held);
}

int main()
{
    contract("cache off");
    shim_block_cache(64u << 20);
    contract("cache on");
    shim_block_cache(0);
    shim_block_cache(64u << 20);
    c10::Allocator *a = c10::GetAllocator(c10::DeviceType::CPU);
    const size_t big = 1u << 20;
    void *p = a->raw_allocate(big);
    usage("one block in use", big, 0);
    a->raw_deallocate(p);
    usage("one block freed", 0, big);
    void *q = a->raw_allocate(big);
    CHECK(q == p, "cache on: a freed 1 MiB block is not reused (%p, then %p)", p, q);
    a->raw_deallocate(q);
    shim_block_cache(0);
    shim_block_cache(64u << 20);
    // a smaller request takes a held block of up to twice its size, the
    // smallest; one more than twice its size is not used
    void *h15 = a->raw_allocate(big + big / 2), *h2 = a->raw_allocate(2 * big);
    a->raw_deallocate(h15);
    a->raw_deallocate(h2);
    void *s = a->raw_allocate(big - 4096);
    CHECK(s == h15, "a 1 MiB - 4 KiB request: got %p, want the 1.5 MiB block %p", s, h15);
    usage("a held block reused for less", big + big / 2, 2 * big);
    void *t = a->raw_allocate(big / 2);
    CHECK(t != h2, "a 512 KiB request took a block over twice its size (%p)", t);
    a->raw_deallocate(s);
    a->raw_deallocate(t);
    shim_block_cache(0);
    usage("off", 0, 0);
    // the budget: with room for two blocks, three in use and freed leave
    // the last two held (the first freed had no room while the others
    // were in use), and they come back newest first
    shim_block_cache(2 * big);
    void *b[3];
    for (void *&x : b)
        x = a->raw_allocate(big);
    usage("three blocks over a budget of two", 3 * big, 0);
    for (void *x : b)
        a->raw_deallocate(x);
    usage("three freed under a budget of two", 0, 2 * big);
    void *r0 = a->raw_allocate(big), *r1 = a->raw_allocate(big);
    CHECK(r0 == b[2] && r1 == b[1], "budget of two: got %p, %p back; want the newest two, %p, %p",
          r0, r1, b[2], b[1]);
    a->raw_deallocate(r1);
    a->raw_deallocate(r0); // held: r1 (older), r0
    // a new block of another size makes room by freeing the oldest held
    void *n = a->raw_allocate(big / 2 - 4096);
    usage("room made for a new block", big / 2 - 4096, big);
    void *r = a->raw_allocate(big);
    CHECK(r == r0, "after making room: got %p; want the newer block %p", r, r0);
    a->raw_deallocate(r);
    a->raw_deallocate(n);
    // a lower budget frees the oldest held blocks at once
    usage("both freed", 0, big + big / 2 - 4096);
    shim_block_cache(big);
    size_t used, held;
    shim_block_cache_usage(&used, &held);
    CHECK(used + held <= big, "budget lowered to 1 MiB: used %zu + held %zu", used, held);
    // a block of 4 MiB or more starts on a 2 MiB boundary (its data 64
    // bytes in), so that its whole 2 MiB pages can be huge pages
    void *hp = a->raw_allocate(8u << 20);
    CHECK(reinterpret_cast<uintptr_t>(hp) % (2u << 20) == 64, "an 8 MiB block at %p", hp);
    memset(hp, 1, 8u << 20);
    a->raw_deallocate(hp);
    shim_block_cache(0);
    usage("off, keeping nothing", 0, 0);
    // kept from one period to the next (shim_block_keep): going off keeps
    // the newest held blocks up to the bound, and the next period reuses
    // them within its own budget
    shim_block_keep(big + big / 2);
    shim_block_cache(4 * big);
    void *k[3];
    for (void *&x : k)
        x = a->raw_allocate(big);
    for (void *x : k)
        a->raw_deallocate(x);
    shim_block_cache(0);
    usage("off, keeping 1.5 MiB of three 1 MiB blocks", 0, big);
    void *off = a->raw_allocate(big);
    CHECK(off != k[2], "cache off: the kept block was handed out (%p)", off);
    a->raw_deallocate(off);
    usage("a block freed while off is not kept", 0, big);
    shim_block_cache(4 * big);
    void *again = a->raw_allocate(big);
    CHECK(again == k[2], "the next period: got %p, want the kept (newest) block %p", again, k[2]);
    usage("the kept block in use", big, 0);
    a->raw_deallocate(again);
    shim_block_cache(0);
    usage("kept again", 0, big);
    shim_block_cache(big / 2);
    usage("a period's budget under what was kept frees it", 0, 0);
    shim_block_cache(0);
    shim_block_cache(4 * big);
    again = a->raw_allocate(big);
    a->raw_deallocate(again);
    shim_block_cache(0);
    usage("kept once more", 0, big);
    shim_block_trim(big);
    usage("trimmed to what it holds: nothing freed", 0, big);
    shim_block_trim(big - 1);
    usage("trimmed under it: freed", 0, 0);
    shim_block_cache(4 * big);
    again = a->raw_allocate(big);
    a->raw_deallocate(again);
    shim_block_cache(0);
    shim_block_keep(0);
    usage("keeping nothing frees it", 0, 0);
    contract("cache off again");
    return check_done("alloc");
}
