/* fastvar.engine.optim's updates of one replica as loops over its memory, for CPUs. Each statement is
   one rounding of the torch reference (BatchedAdam.update, BatchedSGD.update), in the same order,
   so results are equal bit for bit; scalars arrive rounded to the tensors' dtype, as torch rounds a
   Python number before it meets a tensor. decay_mode: 0 none, 1 L2 (added to the gradient),
   2 decoupled (AdamW: the parameter scaled first). */
#include <math.h>
#include <stdint.h>

/* Adam in one pass, float32 only: sqrtf is IEEE's correctly rounded root, which the reference
   computes through float64 (optim.sqrt_rounded_once). No C float64 root matches torch's on CPUs
   whose float64 sqrt is MKL's, so float64 keeps the reference. */
void adam_float32(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
                  int32_t decay_mode, float decay, float beta1, float one_minus_beta1, float beta2,
                  float one_minus_beta2, float bias2_sqrt, float eps, float step_size, int32_t threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        float p = param[i], g = grad[i];
        if (decay_mode == 2) p = p * decay;
        if (decay_mode == 1) { float l2 = p * decay; g = g + l2; }
        float m = exp_avg[i] * beta1, m_step = g * one_minus_beta1;
        m = m + m_step;
        exp_avg[i] = m;
        float v = exp_avg_sq[i] * beta2, v_step = g * g;
        v_step = v_step * one_minus_beta2;
        v = v + v_step;
        exp_avg_sq[i] = v;
        float denom = sqrtf(v) / bias2_sqrt;
        denom = denom + eps;
        float step = m / denom;
        step = step * step_size;
        param[i] = p - step;
    }
}

/* momentum_mode: 0 none, 1 the first step (the buffer starts at the gradient), 2 later steps. */
#define SGD(NAME, T)                                                                               \
void NAME(T *param, const T *grad, T *buffer, int64_t n, int32_t decay, T weight_decay,           \
          int32_t momentum_mode, T momentum, int32_t nesterov, T lr, int32_t threads) {            \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                             \
    for (int64_t i = 0; i < n; i++) {                                                              \
        T p = param[i], g = grad[i];                                                               \
        if (decay) { T l2 = p * weight_decay; g = g + l2; }                                        \
        if (momentum_mode) {                                                                       \
            T b = g;                                                                               \
            if (momentum_mode == 2) { b = buffer[i] * momentum; b = b + g; }                       \
            buffer[i] = b;                                                                         \
            if (nesterov) { T look = b * momentum; g = g + look; } else g = b;                     \
        }                                                                                          \
        T step = g * lr;                                                                           \
        param[i] = p - step;                                                                       \
    }                                                                                              \
}

SGD(sgd_float32, float)
SGD(sgd_float64, double)
