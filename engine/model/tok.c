/* tok.c - GPT-2 byte-level BPE; see tok.h for the contract.
 * Pre-tokenisation uses PCRE2 (UTF + UCP). Merging uses a heap ordered by
 * (rank, position), which merges exactly what GPT-2's "lowest-rank pair,
 * every occurrence left to right" loop merges, in O(n log n) so that a
 * long run of letters cannot stall a worker. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/tok.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ECMAScript's \s, spelled out so PCRE2's Unicode tables cannot differ
 * from it (gpt-3-encoder runs this pattern in JavaScript). */
#define WS                                                                                         \
    "\\t\\n\\x{0B}\\f\\r "                                                                         \
    "\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
static const char PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                              "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

typedef struct {
    uint64_t key; /* left << 32 | right */
    uint32_t rank;
    int32_t merged;
} merge_slot;

struct tok {
    int nvocab;           /* max id + 1 */
    char **tokens;        /* id -> byte-level string (owned), NULL for holes */
    int32_t *str_slots;   /* open-addressed hash of tokens: id or -1 */
    size_t str_cap;       /* power of two */
    merge_slot *merges;   /* open-addressed; rank UINT32_MAX = empty */
    size_t merge_cap;     /* power of two */
    unsigned char *bytes; /* decoded bytes of every token, concatenated */
    size_t *byte_off;     /* id -> offset in bytes; byte_off[nvocab] = end */
    int32_t byte_id[256]; /* id of the one-byte token for each byte */
    pcre2_code *re;
};

/* ---- byte <-> unicode map (GPT-2's bytes_to_unicode) ------------------ */

static void byte_map(uint32_t cs[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cs[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

static size_t utf8_put(uint32_t c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid; the
 * number of bytes that form a maximal invalid prefix goes to *bad. */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp, size_t *bad)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t v, lo = 0x80, hi = 0xBF;
    *bad = 1;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80, hi = 0xBF;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

int tok_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len)
{
    char *o = malloc(len * 3 + 1); /* each bad byte grows to at most 3 */
    if (!o)
        return NPP_ENOMEM;
    size_t j = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t bad, k = utf8_seq((const unsigned char *)s + i, len - i, &cp, &bad);
        if (k) {
            memcpy(o + j, s + i, k);
            j += k, i += k;
        } else {
            j += utf8_put(0xFFFD, o + j);
            i += bad;
        }
    }
    o[j] = 0;
    *out = o;
    *out_len = j;
    return 0;
}

/* ---- hash tables -------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

int32_t tok_lookup(const tok *t, const char *s)
{
    size_t m = t->str_cap - 1;
    for (size_t i = hash_str(s) & m;; i = (i + 1) & m) {
        int32_t id = t->str_slots[i];
        if (id < 0)
            return -1;
        if (strcmp(t->tokens[id], s) == 0)
            return id;
    }
}

const char *tok_token(const tok *t, int32_t id)
{
    return id >= 0 && id < t->nvocab ? t->tokens[id] : NULL;
}

int tok_vocab_size(const tok *t)
{
    return t->nvocab;
}

static const merge_slot *merge_find(const tok *t, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t m = t->merge_cap - 1;
    for (size_t i = hash_u64(key) & m;; i = (i + 1) & m) {
        const merge_slot *s = &t->merges[i];
        if (s->rank == UINT32_MAX)
            return NULL;
        if (s->key == key)
            return s;
    }
}

/* ---- loading ------------------------------------------------------------ */

static int load_vocab(tok *t, const char *path, npp_err *e)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    if (!root)
        return npp_fail(e, NPP_EFORMAT, path, "%s: not valid JSON: %s (line %d)", path, je.text,
                        je.line);
    if (!json_is_object(root) || json_object_size(root) == 0) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: expected a non-empty object of token -> id", path);
        goto fail;
    }
    const char *k;
    json_t *v;
    json_int_t maxid = -1;
    json_object_foreach(root, k, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000000) {
            rc = npp_fail(e, NPP_EFORMAT, path, "%s: token '%s' has no valid id", path, k);
            goto fail;
        }
        if (json_integer_value(v) > maxid)
            maxid = json_integer_value(v);
    }
    t->nvocab = (int)maxid + 1;
    t->tokens = calloc((size_t)t->nvocab, sizeof *t->tokens);
    t->str_cap = pow2_at_least(2 * (size_t)t->nvocab);
    t->str_slots = malloc(t->str_cap * sizeof *t->str_slots);
    if (!t->tokens || !t->str_slots) {
        rc = npp_fail(e, NPP_ENOMEM, path, "%s: out of memory", path);
        goto fail;
    }
    memset(t->str_slots, 0xff, t->str_cap * sizeof *t->str_slots);
    json_object_foreach(root, k, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        if (t->tokens[id]) {
            rc = npp_fail(e, NPP_EFORMAT, path, "%s: id %d given to both '%s' and '%s'", path, id,
                          t->tokens[id], k);
            goto fail;
        }
        if (!(t->tokens[id] = strdup(k))) {
            rc = npp_fail(e, NPP_ENOMEM, path, "%s: out of memory", path);
            goto fail;
        }
        size_t m = t->str_cap - 1, i = hash_str(k) & m;
        while (t->str_slots[i] >= 0)
            i = (i + 1) & m;
        t->str_slots[i] = id;
    }
fail:
    json_decref(root);
    return rc;
}

/* Each token's bytes, through the inverse of the byte map. */
static int build_bytes(tok *t, const char *path, npp_err *e)
{
    uint32_t cs[256];
    int16_t inv[512];
    byte_map(cs);
    memset(inv, 0xff, sizeof inv);
    for (int b = 0; b < 256; b++)
        inv[cs[b]] = (int16_t)b;
    size_t total = 0;
    for (int id = 0; id < t->nvocab; id++)
        total += t->tokens[id] ? strlen(t->tokens[id]) : 0;
    t->bytes = malloc(total + 1);
    t->byte_off = malloc(((size_t)t->nvocab + 1) * sizeof *t->byte_off);
    if (!t->bytes || !t->byte_off)
        return npp_fail(e, NPP_ENOMEM, path, "%s: out of memory", path);
    size_t at = 0;
    for (int id = 0; id < t->nvocab; id++) {
        t->byte_off[id] = at;
        const unsigned char *s = (const unsigned char *)(t->tokens[id] ? t->tokens[id] : "");
        size_t n = strlen((const char *)s);
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t bad, k = utf8_seq(s + i, n - i, &cp, &bad);
            if (!k || cp >= 512 || inv[cp] < 0)
                return npp_fail(e, NPP_EFORMAT, path,
                                "%s: token %d ('%s') has a character outside GPT-2's byte map",
                                path, id, t->tokens[id]);
            t->bytes[at++] = (unsigned char)inv[cp];
            i += k;
        }
    }
    t->byte_off[t->nvocab] = at;
    for (int b = 0; b < 256; b++) {
        char buf[8] = {0};
        utf8_put(cs[b], buf);
        if ((t->byte_id[b] = tok_lookup(t, buf)) < 0)
            return npp_fail(e, NPP_EFORMAT, path, "%s: no token for byte 0x%02x ('%s')", path, b,
                            buf);
    }
    return 0;
}

static int add_merge(tok *t, const char *path, size_t line, char *a, char *b, uint32_t rank,
                     npp_err *e)
{
    int32_t ia = tok_lookup(t, a), ib = tok_lookup(t, b);
    size_t la = strlen(a), lb = strlen(b);
    char *ab = malloc(la + lb + 1);
    if (!ab)
        return npp_fail(e, NPP_ENOMEM, path, "%s: out of memory", path);
    memcpy(ab, a, la);
    memcpy(ab + la, b, lb + 1);
    int32_t im = tok_lookup(t, ab);
    free(ab);
    if (ia < 0 || ib < 0 || im < 0)
        return npp_fail(e, NPP_EFORMAT, path,
                        "%s:%zu: merge '%s %s' uses or makes a token not in the vocabulary", path,
                        line, a, b);
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    size_t m = t->merge_cap - 1, i = hash_u64(key) & m;
    while (t->merges[i].rank != UINT32_MAX && t->merges[i].key != key)
        i = (i + 1) & m;
    /* A repeated pair keeps its last rank, like GPT-2's dict(zip(...)). */
    t->merges[i] = (merge_slot){key, rank, im};
    return 0;
}

static int load_merges(tok *t, const char *path, npp_err *e)
{
    FILE *fp = fopen(path, "rb");
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    uint32_t rank = 0;
    int rc = 0;
    if (!fp)
        return npp_fail(e, NPP_EIO, path, "%s: cannot open: %s", path, strerror(errno));
    t->merge_cap = pow2_at_least(2 * (size_t)t->nvocab + 16);
    t->merges = malloc(t->merge_cap * sizeof *t->merges);
    if (!t->merges) {
        rc = npp_fail(e, NPP_ENOMEM, path, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < t->merge_cap; i++)
        t->merges[i].rank = UINT32_MAX;
    ssize_t n;
    while ((n = getline(&line, &cap, fp)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0 || (lineno == 1 && strncmp(line, "#version", 8) == 0))
            continue;
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) {
            rc = npp_fail(e, NPP_EFORMAT, path, "%s:%zu: expected two tokens separated by a space",
                          path, lineno);
            goto fail;
        }
        if (rank >= t->merge_cap / 2) {
            rc = npp_fail(e, NPP_EFORMAT, path, "%s: more merges than the vocabulary allows", path);
            goto fail;
        }
        *sp = 0;
        if ((rc = add_merge(t, path, lineno, line, sp + 1, rank++, e)))
            goto fail;
    }
fail:
    free(line);
    fclose(fp);
    return rc;
}

int tok_load(const char *vocab_path, const char *merges_path, tok **out, npp_err *e)
{
    int rc;
    *out = NULL;
    tok *t = calloc(1, sizeof *t);
    if (!t)
        return npp_fail(e, NPP_ENOMEM, vocab_path, "out of memory");
    if ((rc = load_vocab(t, vocab_path, e)) || (rc = build_bytes(t, vocab_path, e)) ||
        (rc = load_merges(t, merges_path, e)))
        goto fail;
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec,
                          &eo, NULL);
    if (!t->re) {
        rc = npp_fail(e, NPP_EINVAL, "tokenizer", "internal: pattern does not compile (%d at %zu)",
                      ec, (size_t)eo);
        goto fail;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    *out = t;
    return 0;
fail:
    tok_free(t);
    return rc;
}

void tok_free(tok *t)
{
    if (!t)
        return;
    for (int i = 0; t->tokens && i < t->nvocab; i++)
        free(t->tokens[i]);
    free(t->tokens);
    free(t->str_slots);
    free(t->merges);
    free(t->bytes);
    free(t->byte_off);
    if (t->re)
        pcre2_code_free(t->re);
    free(t);
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct {
    int32_t id;
    int32_t prev, next; /* neighbours; -1 at the ends */
    int alive;
} sym;

typedef struct {
    uint32_t rank, pos;
    int32_t left, right, merged;
} cand;

static int cand_less(const cand *a, const cand *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    h[i] = c;
    while (i && cand_less(&h[i], &h[(i - 1) / 2])) {
        cand x = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = x;
        i = (i - 1) / 2;
    }
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0];
    h[0] = h[--*n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(&h[l], &h[m]))
            m = l;
        if (r < *n && cand_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            break;
        cand x = h[i];
        h[i] = h[m];
        h[m] = x;
        i = m;
    }
    return top;
}

static void try_pair(const tok *t, const sym *s, int32_t i, cand *h, size_t *hn)
{
    if (i < 0 || s[i].next < 0)
        return;
    const merge_slot *m = merge_find(t, s[i].id, s[s[i].next].id);
    if (m)
        heap_push(h, hn, (cand){m->rank, (uint32_t)i, s[i].id, s[s[i].next].id, m->merged});
}

/* BPE of one pre-token; appends ids to out. s and h have room for n. */
static size_t bpe_piece(const tok *t, const unsigned char *p, size_t n, sym *s, cand *h,
                        int32_t *out)
{
    size_t hn = 0;
    for (size_t i = 0; i < n; i++)
        s[i] = (sym){t->byte_id[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    for (size_t i = 0; i + 1 < n; i++)
        try_pair(t, s, (int32_t)i, h, &hn);
    while (hn) {
        cand c = heap_pop(h, &hn);
        sym *a = &s[c.pos];
        if (!a->alive || a->id != c.left || a->next < 0 || s[a->next].id != c.right)
            continue; /* stale: one side was merged since */
        sym *b = &s[a->next];
        a->id = c.merged;
        a->next = b->next;
        if (b->next >= 0)
            s[b->next].prev = (int32_t)c.pos;
        b->alive = 0;
        try_pair(t, s, a->prev, h, &hn);
        try_pair(t, s, (int32_t)c.pos, h, &hn);
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = s[i].next)
        out[k++] = s[i].id;
    return k;
}

int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n, npp_err *e)
{
    *ids = NULL;
    *n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t bad, k = utf8_seq((const unsigned char *)text + i, len - i, &cp, &bad);
        if (!k)
            return npp_fail(e, NPP_EINVAL, "text", "text is not valid UTF-8 at byte %zu", i);
        i += k;
    }
    int rc = 0;
    int32_t *out = malloc((len ? len : 1) * sizeof *out); /* a token covers >= 1 byte */
    sym *s = malloc((len ? len : 1) * sizeof *s);
    /* Each merge pushes at most 2 candidates and there are < n merges. */
    cand *h = malloc((len ? 3 * len : 1) * sizeof *h);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!out || !s || !h || !md) {
        rc = npp_fail(e, NPP_ENOMEM, "text", "out of memory encoding %zu bytes", len);
        goto fail;
    }
    size_t at = 0, k = 0;
    while (at < len) {
        int m = pcre2_match(t->re, (PCRE2_SPTR)text, len, at, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m < 0) {
            rc = npp_fail(e, NPP_EINVAL, "text", "pre-tokenisation failed at byte %zu (%d)", at, m);
            goto fail;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[0] != at || ov[1] <= ov[0]) {
            /* Every character matches one alternative, so this is a bug. */
            rc = npp_fail(e, NPP_EINVAL, "text", "internal: pre-tokenisation skipped byte %zu", at);
            goto fail;
        }
        k += bpe_piece(t, (const unsigned char *)text + ov[0], ov[1] - ov[0], s, h, out + k);
        at = ov[1];
    }
    *ids = out;
    *n = k;
    out = NULL;
fail:
    pcre2_match_data_free(md);
    free(out);
    free(s);
    free(h);
    return rc;
}

/* ---- decoding ------------------------------------------------------------ */

int tok_decode_bytes(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len,
                     npp_err *e)
{
    size_t total = 0;
    *out = NULL;
    *len = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->nvocab || !t->tokens[ids[i]])
            return npp_fail(e, NPP_EINVAL, "ids",
                            "token id %d at index %zu is not in the vocabulary (0..%d)", ids[i], i,
                            t->nvocab - 1);
        total += t->byte_off[ids[i] + 1] - t->byte_off[ids[i]];
    }
    char *o = malloc(total + 1);
    if (!o)
        return npp_fail(e, NPP_ENOMEM, "ids", "out of memory");
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        size_t a = t->byte_off[ids[i]], b = t->byte_off[ids[i] + 1];
        memcpy(o + j, t->bytes + a, b - a);
        j += b - a;
    }
    o[j] = 0;
    *out = o;
    *len = j;
    return 0;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len, npp_err *e)
{
    char *raw;
    size_t rl;
    int rc = tok_decode_bytes(t, ids, n, &raw, &rl, e);
    if (rc)
        return rc;
    rc = tok_utf8_sanitize(raw, rl, out, len);
    free(raw);
    return rc ? npp_fail(e, NPP_ENOMEM, "ids", "out of memory") : 0;
}
