/* test_sha256.c - SHA-256 against the FIPS 180-4 example vectors (the
 * cache's content keys rest on it), in one piece and fed in odd chunks. */
#include <string.h>

#include "base/sha256.h"
#include "check.h"

static void hex(const unsigned char d[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void vector(const char *msg, size_t len, const char *want)
{
    unsigned char d[32];
    char got[65];
    sha256(msg, len, d);
    hex(d, got);
    CHECK(!strcmp(got, want), "sha256(%.20s... %zu bytes) = %s, want %s", msg, len, got, want);
    /* the same bytes in chunks of 1, 3, 63, 64, 65 */
    size_t steps[] = {1, 3, 63, 64, 65};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        sha256_ctx c;
        sha256_init(&c);
        for (size_t i = 0; i < len; i += steps[s])
            sha256_update(&c, msg + i, len - i < steps[s] ? len - i : steps[s]);
        sha256_final(&c, d);
        hex(d, got);
        CHECK(!strcmp(got, want), "chunks of %zu: %s", steps[s], got);
    }
}

int main(void)
{
    vector("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    vector("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    vector(two, strlen(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *four = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnop"
                       "jklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    vector(four, strlen(four), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    static char million[1000000];
    memset(million, 'a', sizeof million);
    vector(million, sizeof million,
           "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    return check_done("sha256");
}
