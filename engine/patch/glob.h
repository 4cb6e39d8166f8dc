// glob.h - path globs over graph names, compiled into small automata.
//
// A pattern is '/'-separated; each part matches one name with `*`, `?`,
// `[...]` (`[!...]` or `[^...]` negates, `a-z` ranges, `\` escapes), or is
// `**`, which matches any number of whole names (zero included). `{a,b}`
// is an alternative and may nest or span '/'. Patterns are anchored at
// both ends: "ln_final/**" matches every path, "**/a1" paths ending at a1.
//
// A compiled glob is a set of alternatives (brace expansion), each a list
// of at most GLOB_MAX_PARTS parts. The state of one alternative after a
// path prefix is a bitmask of the parts reached, so a path walk carries a
// few uint64s and the rest of a traversal depends only on them.
//
// Compilation checks every part against the model's alphabet: a part that
// can match no node of this model (a99, a1.head40, pos beyond the input)
// is an error.
//
// Cost is bounded before the work: brace expansion is linear in the
// pattern and refuses more than GLOB_MAX_ALTS alternatives (or more than
// 256 KiB of them) before building any; a glob_ctx, shared by every
// pattern of one job, caps the job's alternatives, names and wildcard
// name tests (a wildcard name is tested against every node name once per
// job, and the result shared).
#ifndef NPP_GLOB_H
#define NPP_GLOB_H

#include <stddef.h>
#include <stdint.h>

#include "patch/graph.h"

#define GLOB_MAX_PARTS       63          /* names in one alternative */
#define GLOB_MAX_ALTS        1024        /* alternatives of one pattern */
#define GLOB_MAX_TOTAL_ALTS  (1L << 18)  /* alternatives of one job's patterns */
#define GLOB_MAX_TOTAL_PARTS (1L << 21)  /* names of one job's patterns */
#define GLOB_MAX_NAME_TESTS  (16L << 20) /* wildcard name x node name tests per job */

typedef struct glob glob;
typedef struct glob_ctx glob_ctx;

/* A compilation context for the patterns of one job, over dims g: shares
 * compiled wildcard names and counts what compiling has cost. New (free
 * with glob_ctx_free, before or after the globs compiled with it). */
glob_ctx *glob_ctx_new(const graph_dims *g);
void glob_ctx_free(glob_ctx *c);
/* The dims the context compiles for. */
const graph_dims *glob_ctx_dims(const glob_ctx *c);

/* Compiles pattern in context c. On error returns -1 and writes a message
 * (without the field name) into err. *out is new (glob_free). */
int glob_compile(const char *pattern, glob_ctx *c, glob **out, char *err, size_t errn);
void glob_free(glob *gl);

int glob_nalts(const glob *gl);
/* State of alternative a before any name. */
uint64_t glob_start(const glob *gl, int a);
/* State after one more name. */
uint64_t glob_step(const glob *gl, int a, uint64_t state, int sym);
/* Whether the path walked so far matches alternative a. */
int glob_accepts(const glob *gl, int a, uint64_t state);

/* fnmatch-style match of one name (exposed for tests). */
int glob_name_match(const char *pat, const char *name);

#endif
