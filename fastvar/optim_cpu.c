/* fastvar.optim's updates of one replica as loops over its memory, for CPUs. Each statement is
   one rounding of the torch reference (BatchedAdam.update, BatchedSGD.update), in the same order,
   so results are equal bit for bit; scalars arrive rounded to the tensors' dtype, as torch rounds a
   Python number before it meets a tensor. decay_mode: 0 none, 1 L2 (added to the gradient),
   2 decoupled (AdamW: the parameter scaled first). */
#include <stdint.h>

/* Adam in two passes around torch's own square root, which is not IEEE's correctly rounded one
   on every CPU (MKL's, on x86): the moments (and decay), then the step from sqrt(exp_avg_sq). */
#define ADAM_MOMENTS(NAME, T)                                                                      \
void NAME(T *param, const T *grad, T *exp_avg, T *exp_avg_sq, int64_t n, int32_t decay_mode,      \
          T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, int32_t threads) {      \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                             \
    for (int64_t i = 0; i < n; i++) {                                                              \
        T g = grad[i];                                                                             \
        if (decay_mode == 2) param[i] = param[i] * decay;                                          \
        if (decay_mode == 1) { T l2 = param[i] * decay; g = g + l2; }                              \
        T m = exp_avg[i] * beta1, m_step = g * one_minus_beta1;                                    \
        exp_avg[i] = m + m_step;                                                                   \
        T v = exp_avg_sq[i] * beta2, v_step = g * g;                                               \
        v_step = v_step * one_minus_beta2;                                                         \
        exp_avg_sq[i] = v + v_step;                                                                \
    }                                                                                              \
}

#define ADAM_STEP(NAME, T)                                                                         \
void NAME(T *param, const T *exp_avg, const T *root, int64_t n, T bias2_sqrt, T eps, T step_size, \
          int32_t threads) {                                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                             \
    for (int64_t i = 0; i < n; i++) {                                                              \
        T denom = root[i] / bias2_sqrt;                                                            \
        denom = denom + eps;                                                                       \
        T step = exp_avg[i] / denom;                                                               \
        step = step * step_size;                                                                   \
        param[i] = param[i] - step;                                                                \
    }                                                                                              \
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

ADAM_MOMENTS(adam_moments_float32, float)
ADAM_MOMENTS(adam_moments_float64, double)
ADAM_STEP(adam_step_float32, float)
ADAM_STEP(adam_step_float64, double)
SGD(sgd_float32, float)
SGD(sgd_float64, double)
