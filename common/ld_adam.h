/* ld_adam: the Adam optimiser (Kingma & Ba 2015) over one flat float array,
 * and an exponential moving average of weights.
 *
 * Update (PyTorch's torch.optim.Adam without weight decay or amsgrad):
 *   t += 1; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
 *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * Every element is updated by the same float operations in the same order,
 * so a run restored from (m, v, t) continues bit-identically.
 *
 * Divergence: a trainer steps with ld_adam_step_checked, which measures the
 * gradient it is given and refuses a non-finite one, and checks the weights
 * it produced, so every trainer stops on the same conditions.
 *
 * Ownership: ld_adam_t owns m and v (n floats each, zero at creation); the
 * caller owns the parameters and gradients it passes in. */
#ifndef LD_ADAM_H
#define LD_ADAM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    double lr;      /* > 0 */
    double beta1;   /* in [0, 1) */
    double beta2;   /* in [0, 1) */
    double eps;     /* > 0 */
} ld_adam_params_t;

/* LD_ERANGE with a detail naming the field. */
int ld_adam_validate(const ld_adam_params_t *p);

typedef struct ld_adam_s ld_adam_t;

/* State for n parameters. Caller owns *out. */
int ld_adam_new(size_t n, const ld_adam_params_t *p, ld_adam_t **out);
void ld_adam_destroy(ld_adam_t **self_p);

/* One update of params[0..n) from grad[0..n). */
void ld_adam_step(ld_adam_t *self, float *params, const float *grad);
/* ld_adam_step guarded: *grad_norm = the L2 norm of grad (summed in
 * double); LD_ENUMERIC and nothing updated when it is not finite (a NaN or
 * Inf in grad); LD_ENUMERIC when a weight is NaN/Inf after the update (which
 * stays applied: a diverged run's weights are not to be used). */
int ld_adam_step_checked(ld_adam_t *self, float *params, const float *grad, double *grad_norm);

size_t ld_adam_size(const ld_adam_t *self);
/* The moment estimates (n floats each), for checkpoints. */
float *ld_adam_m(ld_adam_t *self);
float *ld_adam_v(ld_adam_t *self);
/* Number of updates done (t). */
uint64_t ld_adam_steps(const ld_adam_t *self);
void ld_adam_set_steps(ld_adam_t *self, uint64_t t);

/* ema = decay * ema + (1 - decay) * params, elementwise over n floats. */
void ld_ema_update(float *ema, const float *params, size_t n, double decay);

#endif
