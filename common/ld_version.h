/* ld_version: the one version number of langdaug. The Makefile reads it from
 * here (pkg-config file, install), the programs print it, and the Python
 * package's __version__ must equal it (tests/test_client_py.py checks). */
#ifndef LD_VERSION_H
#define LD_VERSION_H

#define LD_VERSION "0.1.0"

#endif
