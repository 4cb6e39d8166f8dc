/* svgtext.h - what the hand-written SVG pictures (heatmap.c, circuit.c)
 * share: a growing text buffer, XML-escaped text and the diverging colour
 * scale (white at 0, #2166ac at -vmax, #b2182b at +vmax). */
#ifndef NPP_SVGTEXT_H
#define NPP_SVGTEXT_H

#include <stddef.h>

typedef struct {
    char *s;
    size_t n, cap;
    int failed; /* out of memory: the text is incomplete */
} svgbuf;

/* Appends printf-formatted text. */
void svg_put(svgbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s with <, >, & and " escaped. */
void svg_text(svgbuf *b, const char *s);
/* The colour of v on the diverging scale [-vmax, vmax] ("#rrggbb"). */
void svg_colour(double v, double vmax, char *out, size_t n);

#endif
