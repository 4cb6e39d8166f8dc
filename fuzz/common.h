/* common.h - what the fuzz targets share: a file holding the input (for
 * readers that take a path), and the environment that names the model and
 * vocabulary some targets need. */
#ifndef NPP_FUZZ_COMMON_H
#define NPP_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* The input as an in-memory file; its path is written into path. Returns
 * the descriptor (close it), or -1. */
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t n)
{
    int fd = memfd_create("fuzz", 0);
    if (fd < 0)
        return -1;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, n, "/proc/self/fd/%d", fd);
    return fd;
}

/* An environment variable a target cannot run without. */
static inline const char *fuzz_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "fuzz: set %s (see fuzz/README.md)\n", name);
        exit(2);
    }
    return v;
}

#endif
