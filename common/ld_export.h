/* ld_export: LD_EXTERN marks what liblangdaug.so exports (as libuv's UV_EXTERN).
 *
 * The shared client library is compiled with -fvisibility=hidden, so only
 * declarations carrying LD_EXTERN are visible to its users; everything else
 * compiled into it (the protobuf-c messages, internal helpers) stays private.
 * The installed headers (ld_client.h, ld_error.h, ld_log.h, ld_keep.h and this
 * one) declare exactly the exported symbols; tests/test_client_abi.py holds
 * the list and fails when the library exports anything else. In the static
 * core library the marker changes nothing. */
#ifndef LD_EXPORT_H
#define LD_EXPORT_H

#if defined(__GNUC__) && __GNUC__ >= 4
#define LD_EXTERN __attribute__((visibility("default")))
#else
#define LD_EXTERN
#endif

#endif
