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

/* ---- Files of any of the engine's networks (ld_model_load/save and ld_ae
 * are built on these) ---- */

/* Called by ld_model_read once format, version and arch are checked: reads
 * and validates the network's architecture keys (failing with LD_EFORMAT
 * naming path and key), makes the network (ctx keeps it) and sets *ps to
 * its parameters, which the file's tensors then fill. */
typedef int (*ld_model_make_fn)(void *ctx, const char *path, const ld_meta_t *meta, ld_cn_params_t **ps);

/* Reads a network's file in the load order above: metadata format,
 * version and arch must equal the given values; then make(); then every
 * tensor of the table (F32, exact shape, finite) and no other. meta_out and
 * hash_out (may be NULL) as for ld_model_load. On a failure after make(),
 * unmake(ctx) destroys what it made. */
int ld_model_read(const char *path, const char *format, const char *version, const char *arch, ld_model_make_fn make,
                  void (*unmake)(void *ctx), void *ctx, ld_meta_t **meta_out, char hash_out[65]);

/* Sets the keys a network's file generates from its architecture (format,
 * version and arch first). */
typedef int (*ld_model_meta_fn)(ld_meta_t *meta, const void *arch);

/* Writes a network's file atomically: the keys generate() sets (in their
 * order), then the keys of extra (may be NULL; a key generate() sets:
 * LD_EINVAL), then the tensors of ps (a non-finite value: LD_ENUMERIC naming
 * tensor and element, nothing written). hash_out as for ld_model_save. */
int ld_model_write(const char *path, ld_model_meta_fn generate, const void *arch, const ld_meta_t *extra,
                   const ld_cn_params_t *ps, char hash_out[65]);

/* For make(): metadata key as a string / as an integer; LD_EFORMAT naming
 * path and key when it is missing or not an integer. */
int ld_model_meta_string(const char *path, const ld_meta_t *m, const char *key, const char **out);
int ld_model_meta_int(const char *path, const ld_meta_t *m, const char *key, int *out);
/* Returns LD_EFORMAT with the detail "<path>: <what>: <the current detail>". */
int ld_model_bad(const char *path, const char *what);
/* For generated keys: key = the decimal v; "32,64,128" from v[0..n) into buf
 * (LD_ERANGE when it does not fit in cap). */
int ld_model_set_int(ld_meta_t *m, const char *key, int v);
int ld_model_join_ints(char *buf, size_t cap, const int *v, int n);

#endif
