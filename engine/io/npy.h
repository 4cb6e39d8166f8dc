/* npy.h - writes NumPy .npy files (format 1.0, little-endian float32,
 * C order), the CLI's way of handing tensors to Python. */
#ifndef NPP_NPY_H
#define NPP_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Writes prod(shape) floats from data as an array of the given shape. */
int npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim, npp_err *e);

#endif
