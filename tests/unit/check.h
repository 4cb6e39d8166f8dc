/* check.h - the unit tests' assertions: CHECK(cond, fmt, ...) counts and
 * reports, check_done() prints the count and gives the exit status. */
#ifndef NPP_CHECK_H
#define NPP_CHECK_H

#include <stdio.h>

static int check_run, check_failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        check_run++;                                                                               \
        if (!(cond)) {                                                                             \
            check_failed++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static inline int check_done(const char *suite)
{
    printf("%s: %d checks, %d failed\n", suite, check_run, check_failed);
    return check_failed ? 1 : 0;
}

#endif
