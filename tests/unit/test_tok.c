/* test_tok.c - the C tokenizer against gpt-3-encoder's own ids.
 *   test_tok VOCAB_DIR EXPECTED.json
 * EXPECTED.json comes from tests/tokenizer/node_encode.js. Checks, for
 * every string: encode == node's ids, decode(encode(x)) == x. Then unit
 * cases: broken UTF-8 in, split characters out, bad ids. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok.h"

static int failures, passes;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passes++;                                                                              \
        } else {                                                                                   \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static void check_corpus(const tok *t, json_t *cases)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        json_t *jt = json_object_get(c, "text"), *jids = json_object_get(c, "ids");
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt), n = 0;
        int32_t *ids = NULL;
        npp_err e = {0};
        int rc = tok_encode(t, text, len, &ids, &n, &e);
        int same = rc == 0 && n == json_array_size(jids);
        for (size_t k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(jids, k));
        if (!same) {
            char *want = json_dumps(jids, JSON_COMPACT), *q = json_dumps(jt, JSON_ENCODE_ANY);
            fprintf(stderr, "case %zu %s: want %s got", i, q, want);
            for (size_t k = 0; k < n; k++)
                fprintf(stderr, " %d", ids[k]);
            fprintf(stderr, "%s\n", rc ? e.message : "");
            free(want);
            free(q);
        }
        CHECK(same, "encode mismatch on corpus case %zu", i);
        char *back = NULL;
        size_t blen = 0;
        rc = tok_decode(t, ids, n, &back, &blen, &e);
        CHECK(rc == 0 && blen == len && memcmp(back, text, len) == 0,
              "decode(encode(x)) != x on corpus case %zu", i);
        free(back);
        free(ids);
    }
}

static void check_edges(const tok *t)
{
    npp_err e = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    /* Invalid UTF-8 is refused with the byte offset. */
    int rc = tok_encode(t, "ok\xff", 3, &ids, &n, &e);
    CHECK(rc == NPP_EINVAL && strstr(e.message, "byte 2"), "invalid UTF-8: %s", e.message);
    free(ids);
    /* "é" is one token? No: in GPT-2 it is 2 bytes, ids for each half. A
     * token boundary inside a character decodes to U+FFFD, never fails. */
    int32_t half[1];
    rc = tok_encode(t, "\xe2\x82\xac", 3, &ids, &n, &e); /* EURO SIGN */
    CHECK(rc == 0 && n >= 1, "euro encodes");
    half[0] = t ? tok_lookup(t, "\xc3\xa2") : -1; /* the byte 0xE2 alone */
    char *s = NULL;
    size_t len = 0;
    rc = tok_decode(t, half, 1, &s, &len, &e);
    CHECK(rc == 0 && len == 3 && memcmp(s, "\xef\xbf\xbd", 3) == 0,
          "lone lead byte decodes to U+FFFD");
    free(s);
    free(ids);
    int32_t bad[2] = {15496, 999999};
    memset(&e, 0, sizeof e);
    rc = tok_decode(t, bad, 2, &s, &len, &e);
    CHECK(rc == NPP_EINVAL && strstr(e.message, "999999"), "bad id refused: %s", e.message);
    /* <|endoftext|> in text is plain text; id 50256 decodes to its string. */
    rc = tok_encode(t, "<|endoftext|>", 13, &ids, &n, &e);
    CHECK(rc == 0 && n == 7, "<|endoftext|> is seven plain tokens");
    free(ids);
    int32_t eot = 50256;
    rc = tok_decode(t, &eot, 1, &s, &len, &e);
    CHECK(rc == 0 && strcmp(s, "<|endoftext|>") == 0, "id 50256 decodes");
    free(s);
    /* A long run with no spaces is encoded without quadratic blow-up. */
    size_t big = 1 << 20;
    char *long_text = malloc(big);
    for (size_t i = 0; i < big; i++)
        long_text[i] = "abcdefghij"[i % 10];
    rc = tok_encode(t, long_text, big, &ids, &n, &e);
    CHECK(rc == 0 && n > 1000, "1 MiB word encodes (%zu tokens)", n);
    free(ids);
    free(long_text);
    /* Sanitizer: WHATWG replacement of maximal subparts. */
    rc = tok_utf8_sanitize("a\xe0\x80z\xf0\x9f\x98", 7, &s, &len);
    CHECK(rc == 0 && strcmp(s, "a\xef\xbf\xbd\xef\xbf\xbdz\xef\xbf\xbd") == 0,
          "sanitize maximal subparts");
    free(s);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_tok VOCAB_DIR EXPECTED.json\n");
        return 2;
    }
    char vp[4096], mp[4096];
    snprintf(vp, sizeof vp, "%s/encoder.json", argv[1]);
    snprintf(mp, sizeof mp, "%s/vocab.bpe", argv[1]);
    tok *t = NULL;
    npp_err e = {0};
    if (tok_load(vp, mp, &t, &e)) {
        fprintf(stderr, "tok_load: %s\n", e.message);
        return 1;
    }
    json_error_t je;
    json_t *cases = json_load_file(argv[2], 0, &je);
    if (!cases || json_array_size(cases) < 500) {
        fprintf(stderr, "%s: need at least 500 cases (%s)\n", argv[2], cases ? "too few" : je.text);
        return 1;
    }
    check_corpus(t, cases);
    check_edges(t);
    printf("tokenizer: %zu corpus strings\n", json_array_size(cases));
    printf("%d passed, %d failed\n", passes, failures);
    json_decref(cases);
    tok_free(t);
    return failures ? 1 : 0;
}
