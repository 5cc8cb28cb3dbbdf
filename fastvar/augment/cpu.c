/* The augmentation as one fused pass for CPUs: for each example, read the uint8 image once, write
   the output once, with the shift, flip, cutout and the normalisation table applied per pixel.
   Draws come from the caller (fastvar.augment.example_draws), so this file holds no randomness.
   Images are H×W×C. Mirrors fastvar/augment/triton_kernel.py: output column j reads crop column W-1-j when
   flipped; a source pixel outside the image (zero padding) or inside the cutout square reads 0. */
#include <stdint.h>

#define AUGMENT(NAME, T)                                                                            \
void NAME(const uint8_t *images, const int64_t *example, const int32_t *dy, const int32_t *dx,     \
          const int32_t *flip, const int32_t *cut_y, const int32_t *cut_x, int64_t n, int32_t h,   \
          int32_t w, int32_t ch, int32_t shift, int32_t reflect, int32_t cutout, const T *table,   \
          T *out, int32_t threads) {                                                                \
    const int64_t size = (int64_t)h * w * ch;                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t e = 0; e < n; e++) {                                                               \
        const uint8_t *image = images + example[e] * size;                                          \
        T *o = out + e * size;                                                                      \
        for (int i = 0; i < h; i++) {                                                               \
            int r = i + dy[e] - shift;                                                              \
            if (reflect) r = r < 0 ? -r : (r > h - 1 ? 2 * (h - 1) - r : r);                        \
            int row_cut = cutout && i >= cut_y[e] && i < cut_y[e] + cutout;                         \
            for (int j = 0; j < w; j++) {                                                           \
                int c = (flip[e] ? w - 1 - j : j) + dx[e] - shift;                                  \
                if (reflect) c = c < 0 ? -c : (c > w - 1 ? 2 * (w - 1) - c : c);                    \
                int blank = r < 0 || r > h - 1 || c < 0 || c > w - 1                               \
                            || (row_cut && j >= cut_x[e] && j < cut_x[e] + cutout);                 \
                const uint8_t *pixel = image + ((int64_t)r * w + c) * ch;                           \
                for (int k = 0; k < ch; k++)                                                        \
                    o[((int64_t)i * w + j) * ch + k] = table[k * 256 + (blank ? 0 : pixel[k])];     \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

/* The output dtype only sets how many bytes each table entry has: the entries' bits are copied. */
AUGMENT(augment_8byte, uint64_t) /* float64 */
AUGMENT(augment_4byte, uint32_t) /* float32 */
AUGMENT(augment_2byte, uint16_t) /* bfloat16, float16 */
