/* ld_model: langdaug model files (safetensors with langdaug metadata).
 *
 * A model file is a safetensors file whose __metadata__ holds at least
 *   format=langdaug-ebm, version=1, arch=resdown, image_channels, mask_classes,
 *   size, widths (comma-separated w0..wL), domains (comma-separated, index
 *   order = target index), colour_space (rgb or lab: the space of the
 *   image input, see ld_colour.h; always written, absent = rgb for files
 *   written before the key existed, any other value is refused)
 * and optional keys (maskmap, normalization, provenance: created, command,
 * iterations, the train.* settings, ...) that are kept and handed back; of
 * these, train.step-size, train.noise and train.pairs (the domain pairs the
 * model was trained for) mean something to the sampler, which reads them
 * with ld_model_train_number / ld_model_train_pairs. Tensors are float32 with
 * the names and shapes of ld_ebm.h. The loader validates everything and
 * rejects a bad file with LD_EFORMAT and a detail naming the problem; it
 * never reads outside the file. Saving is atomic (ld_afile). */
#ifndef LD_MODEL_H
#define LD_MODEL_H

#include "ld_ebm.h"
#include "ld_safetensors.h"

/* Loads a model. *ebm_out: caller owns. meta_out (may be NULL): the whole
 * __metadata__, caller owns. hash_out (may be NULL): lowercase hex SHA-256
 * of the file's bytes, the model's identity in logs and messages. */
int ld_model_load(const char *path, ld_ebm_t **ebm_out, ld_meta_t **meta_out, char hash_out[65]);

/* A setting the model was trained with: metadata "train.<name>" as
 * `langdaug train` writes it (name "step-size", "noise", ...). Returns 0 and
 * *out; LD_ENOENT when the file has no such key (files from `langdaug
 * init-model` or exported from PyTorch); LD_EFORMAT naming path and key when
 * the value is not a number in [min, max]. path is only for the detail. */
int ld_model_train_number(const char *path, const ld_meta_t *meta, const char *name, double min, double max,
                          double *out);

/* The ordered domain pairs the model was trained for: metadata
 * "train.pairs" ("A:B,C:D" over the model's domains, as `langdaug train
 * --pairs` writes it) parsed into pairs (LD_EBM_MAX_PAIRS) and *n; an empty
 * value gives *n = 0, i.e. every ordered pair of its domains. LD_ENOENT
 * when the key is absent (models from before it, init-model, PyTorch: also
 * every pair); LD_EFORMAT naming path, key and pair when a pair is
 * malformed, names an unknown domain, has source == target or repeats. */
int ld_model_train_pairs(const char *path, const ld_meta_t *meta, const ld_ebm_arch_t *arch, ld_ebm_pair_t *pairs,
                         int *n);

/* Writes the model atomically; the architecture keys are generated, and the
 * keys of `extra` (may be NULL) are added (an extra key that collides with a
 * generated one is an error). hash_out (may be NULL) as for load. */
int ld_model_save(const char *path, const ld_ebm_t *ebm, const ld_meta_t *extra, char hash_out[65]);

#endif
