/* tokens.c - the token file: parsed and checked whole at start-up, so a
 * mistake stops the server with the line that is wrong rather than letting
 * in a token nobody meant. Tokens are kept only as SHA-256 digests. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "base/sha256.h"
#include "srv.h"

/* Splits line (NUL-ended, modified) into at most 4 whitespace-separated
 * fields; returns their number (4: too many). */
static int fields(char *line, char **f)
{
    int n = 0;
    char *p = line;
    while (n < 4) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        f[n++] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = 0;
    }
    return n;
}

int tokens_parse(const char *text, size_t len, srv_token *out, int max, int *n, char *err,
                 size_t errn)
{
    char line[1024];
    int lineno = 0;
    *n = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        lineno++;
        if (ll >= sizeof line)
            return snprintf(err, errn, "line %d: longer than %zu bytes", lineno, sizeof line - 1),
                   -1;
        memcpy(line, text + pos, ll);
        line[ll] = 0;
        pos += ll + (nl ? 1 : 0);
        if (memchr(line, 0, ll))
            return snprintf(err, errn, "line %d: contains a NUL byte", lineno), -1;
        char *f[4];
        int nf = fields(line, f);
        if (nf == 0 || f[0][0] == '#')
            continue;
        if (nf < 2 || nf > 3)
            return snprintf(err, errn,
                            "line %d: %d field%s; expected NAME TOKEN, or NAME TOKEN admin", lineno,
                            nf > 3 ? 4 : nf, nf == 1 ? "" : "s"),
                   -1;
        if (nf == 3 && strcmp(f[2], "admin"))
            return snprintf(err, errn, "line %d: the third field must be 'admin' (got '%.32s')",
                            lineno, f[2]),
                   -1;
        if (strlen(f[0]) >= SRV_NAME_MAX)
            return snprintf(err, errn, "line %d: the name is longer than %d characters", lineno,
                            SRV_NAME_MAX - 1),
                   -1;
        for (const char *c = f[0]; *c; c++)
            if (!isalnum((unsigned char)*c) && !strchr("._-@", *c))
                return snprintf(err, errn,
                                "line %d: a name is letters, digits, '.', '_', '-' or '@'", lineno),
                       -1;
        if (strlen(f[1]) < SRV_TOKEN_MIN)
            return snprintf(err, errn,
                            "line %d: the token is shorter than %d characters; use a random one "
                            "(e.g. openssl rand -hex 16)",
                            lineno, SRV_TOKEN_MIN),
                   -1;
        if (*n == max)
            return snprintf(err, errn, "line %d: more than %d tokens", lineno, max), -1;
        srv_token *t = &out[*n];
        memset(t, 0, sizeof *t);
        sha256(f[1], strlen(f[1]), t->hash);
        snprintf(t->name, sizeof t->name, "%s", f[0]);
        t->admin = nf == 3;
        for (int i = 0; i < *n; i++) {
            if (!strcmp(out[i].name, t->name))
                return snprintf(err, errn, "line %d: the name '%s' is given twice", lineno,
                                t->name),
                       -1;
            if (!memcmp(out[i].hash, t->hash, sizeof t->hash))
                return snprintf(err, errn,
                                "line %d: the same token as %s's (every user needs their own)",
                                lineno, out[i].name),
                       -1;
        }
        (*n)++;
    }
    if (!*n)
        return snprintf(err, errn, "no tokens in it"), -1;
    return 0;
}
