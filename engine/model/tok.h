/* tok.h - GPT-2's byte-level BPE tokenizer (encode and decode).
 *
 *     tok *t;
 *     if (tok_load("m/vocab.json", "m/merges.txt", &t, &err)) ...
 *     int32_t *ids; size_t n;
 *     tok_encode(t, "Hello world", 11, &ids, &n, &err);   // [15496, 995]
 *     char *s; size_t len;
 *     tok_decode(t, ids, n, &s, &len, &err);               // "Hello world"
 *     free(ids); free(s); tok_free(t);
 *
 * Encoding: text (valid UTF-8, else an error naming the byte offset) is cut
 * by GPT-2's pre-tokenisation pattern
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * where \s is the ECMAScript whitespace set (that of the gpt-3-encoder
 * package, whose ids this tokenizer reproduces); each piece's bytes are
 * mapped through GPT-2's byte-to-unicode table and merged by rank.
 *
 * <|endoftext|>: text is always plain text. The string "<|endoftext|>"
 * inside a text encodes as its seven ordinary tokens, exactly as
 * gpt-3-encoder does, so no user text can forge a control token. To put
 * the end-of-text token (id 50256) in an input, pass token ids.
 *
 * Decoding concatenates the tokens' bytes; tok_decode then replaces every
 * invalid UTF-8 sequence (a character cut at a token boundary, say) with
 * U+FFFD following the WHATWG rule, so it never fails on valid ids.
 *
 * A loaded tok is immutable: any number of threads may use one at once. */
#ifndef NPP_TOK_H
#define NPP_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct tok tok;

/* Loads vocab.json ({"token": id}) and merges.txt (GPT-2 format, first line
 * "#version..."). *out is new; release with tok_free. */
int tok_load(const char *vocab_path, const char *merges_path, tok **out, npp_err *e);
void tok_free(tok *t); /* NULL is fine */

/* Number of ids (max id + 1). */
int tok_vocab_size(const tok *t);

/* Encodes len bytes of text. *ids is new (free()); *n may be 0. */
int tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n, npp_err *e);
/* Decodes to raw bytes (possibly invalid UTF-8). *out is new, NUL-ended. */
int tok_decode_bytes(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len,
                     npp_err *e);
/* Decodes to valid UTF-8 (U+FFFD for broken sequences). *out is new. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, char **out, size_t *len, npp_err *e);

/* The id of a vocabulary entry in its byte-level form (e.g. "\xc4\xa0the"
 * for " the"), or -1. */
int32_t tok_lookup(const tok *t, const char *token);
/* The vocabulary entry of id in its byte-level form (borrowed), or NULL. */
const char *tok_token(const tok *t, int32_t id);

/* Replaces invalid UTF-8 in s[0..len) with U+FFFD (WHATWG decoder rule).
 * *out is new and NUL-ended. Returns 0 or NPP_ENOMEM. */
int tok_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len);

#endif
