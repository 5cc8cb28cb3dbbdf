/* The augmentation as one fused pass for CPUs: for each example, read the uint8 image once, write
   the output once, with the shift, flip, cutout and the normalisation table applied per pixel.
   Draws come from the caller (fastvar.augment.example_draws), so this file holds no randomness.
   Mirrors fastvar/augment_triton.py: output column j reads crop column 31 - j when flipped; a
   source pixel outside the image (zero padding) or inside the cutout square reads value 0. */
#include <stdint.h>

#define AUGMENT(NAME, T)                                                                            \
void NAME(const uint8_t *images, const int64_t *example, const int32_t *dy, const int32_t *dx,     \
          const int32_t *flip, const int32_t *cut_y, const int32_t *cut_x, int64_t n, int32_t shift, \
          int32_t reflect, int32_t cutout, const T *table, T *out, int32_t threads) {              \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t e = 0; e < n; e++) {                                                               \
        const uint8_t *image = images + example[e] * 3072;                                          \
        T *o = out + e * 3072;                                                                      \
        for (int i = 0; i < 32; i++) {                                                              \
            int r = i + dy[e] - shift;                                                              \
            if (reflect) r = r < 0 ? -r : (r > 31 ? 62 - r : r);                                    \
            int row_cut = cutout && i >= cut_y[e] && i < cut_y[e] + cutout;                         \
            for (int j = 0; j < 32; j++) {                                                          \
                int c = (flip[e] ? 31 - j : j) + dx[e] - shift;                                     \
                if (reflect) c = c < 0 ? -c : (c > 31 ? 62 - c : c);                                \
                int blank = r < 0 || r > 31 || c < 0 || c > 31                                     \
                            || (row_cut && j >= cut_x[e] && j < cut_x[e] + cutout);                 \
                const uint8_t *pixel = image + r * 96 + c * 3;                                      \
                for (int ch = 0; ch < 3; ch++)                                                      \
                    o[i * 96 + j * 3 + ch] = table[ch * 256 + (blank ? 0 : pixel[ch])];             \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

/* The output dtype only sets how many bytes each table entry has: the entries' bits are copied. */
AUGMENT(augment_8byte, uint64_t) /* float64 */
AUGMENT(augment_4byte, uint32_t) /* float32 */
AUGMENT(augment_2byte, uint16_t) /* bfloat16, float16 */
