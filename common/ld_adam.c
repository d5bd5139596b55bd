/* ld_adam: Adam and weight EMA. The bias corrections are computed in double
 * once per step; the per-element arithmetic is float, as in PyTorch. */
#include "ld_adam.h"
#include "ld_error.h"

#include <math.h>
#include <stdlib.h>

struct ld_adam_s {
    ld_adam_params_t p;
    size_t n;
    uint64_t t;
    float *m, *v;
};

int ld_adam_validate(const ld_adam_params_t *p)
{
    if (!(p->lr > 0) || !isfinite(p->lr))
        return ld_seterr(LD_ERANGE, "adam: learning rate %g must be a finite number > 0", p->lr);
    if (!(p->beta1 >= 0 && p->beta1 < 1))
        return ld_seterr(LD_ERANGE, "adam: beta1 %g must be in [0, 1)", p->beta1);
    if (!(p->beta2 >= 0 && p->beta2 < 1))
        return ld_seterr(LD_ERANGE, "adam: beta2 %g must be in [0, 1)", p->beta2);
    if (!(p->eps > 0) || !isfinite(p->eps))
        return ld_seterr(LD_ERANGE, "adam: eps %g must be a finite number > 0", p->eps);
    return LD_OK;
}

int ld_adam_new(size_t n, const ld_adam_params_t *p, ld_adam_t **out)
{
    *out = NULL;
    int rc = ld_adam_validate(p);
    if (rc)
        return rc;
    ld_adam_t *self = calloc(1, sizeof *self);
    if (self) {
        self->p = *p;
        self->n = n;
        self->m = calloc(n ? n : 1, sizeof *self->m);
        self->v = calloc(n ? n : 1, sizeof *self->v);
    }
    if (!self || !self->m || !self->v) {
        ld_adam_destroy(&self);
        return ld_seterr(LD_ENOMEM, "adam: out of memory for the moments of %zu parameters", n);
    }
    *out = self;
    return LD_OK;
}

void ld_adam_destroy(ld_adam_t **self_p)
{
    ld_adam_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    free(self->m);
    free(self->v);
    free(self);
    *self_p = NULL;
}

void ld_adam_step(ld_adam_t *self, float *params, const float *grad)
{
    self->t++;
    const float b1 = (float)self->p.beta1, b2 = (float)self->p.beta2, eps = (float)self->p.eps;
    const float bc1 = (float)(1.0 - pow(self->p.beta1, (double)self->t));
    const float sqrt_bc2 = (float)sqrt(1.0 - pow(self->p.beta2, (double)self->t));
    const float step = (float)self->p.lr / bc1;
    float *m = self->m, *v = self->v;
    for (size_t i = 0; i < self->n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * grad[i];
        v[i] = b2 * v[i] + (1.0f - b2) * grad[i] * grad[i];
        params[i] -= step * (m[i] / (sqrtf(v[i]) / sqrt_bc2 + eps));
    }
}

static double l2_norm(const float *v, size_t n)
{
    double sq = 0;
    for (size_t i = 0; i < n; i++)
        sq += (double)v[i] * v[i];
    return sqrt(sq);
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

int ld_adam_step_checked(ld_adam_t *self, float *params, const float *grad, double *grad_norm)
{
    /* The norm is finite exactly when every element is: a float's square
     * is below 2^256, so no sum of them that fits in memory overflows. */
    *grad_norm = l2_norm(grad, self->n);
    if (!isfinite(*grad_norm))
        return ld_seterr(LD_ENUMERIC, "the parameter gradient is not finite");
    ld_adam_step(self, params, grad);
    if (!all_finite(params, self->n))
        return ld_seterr(LD_ENUMERIC, "a weight became NaN/Inf after the Adam step");
    return LD_OK;
}

size_t ld_adam_size(const ld_adam_t *self)
{
    return self->n;
}

float *ld_adam_m(ld_adam_t *self)
{
    return self->m;
}

float *ld_adam_v(ld_adam_t *self)
{
    return self->v;
}

uint64_t ld_adam_steps(const ld_adam_t *self)
{
    return self->t;
}

void ld_adam_set_steps(ld_adam_t *self, uint64_t t)
{
    self->t = t;
}

void ld_ema_update(float *ema, const float *params, size_t n, double decay)
{
    const float d = (float)decay, rest = (float)(1.0 - decay);
    for (size_t i = 0; i < n; i++)
        ema[i] = d * ema[i] + rest * params[i];
}
