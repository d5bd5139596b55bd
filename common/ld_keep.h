/* ld_keep: what a sample keeps of its source crop, a request option of the
 * client (ld_client_opts_t.keep) and a setting of the sampler (ld_colour.h
 * parses and applies it). Values are those of the wire enum Keep
 * (proto/langdaug.proto). Part of liblangdaug's installed headers. */
#ifndef LD_KEEP_H
#define LD_KEEP_H

typedef enum {
    LD_KEEP_NONE = 0,     /* the chain's image as it is */
    LD_KEEP_LUMINANCE = 1 /* the source's L*, the chain's a*, b* (3-channel images only) */
} ld_keep_t;

#endif
