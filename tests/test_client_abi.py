"""The boundary of liblangdaug.so, so that it cannot erode: the shared client
library exports exactly the documented API (API below, which must also be
what the installed headers mark LD_EXTERN), links only ZeroMQ, protobuf-c and
the C runtime (never OpenBLAS, libpng, libuv...), carries the soname of the
major version in common/ld_version.h, and `make install` installs only its
public headers, a pkg-config file a program builds and links with, and the
library under its real version with the soname and development links.

Invariant: adding a function to the client API means adding it here, to a
public header with LD_EXTERN, and to nothing else.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from ldtest import BUILD, ROOT

# The documented API of liblangdaug (client/ld_client.h, common/ld_error.h, common/ld_log.h).
API = {
    "ld_client_opts_init", "ld_client_new", "ld_client_destroy", "ld_client_next", "ld_client_set_cancel",
    "ld_client_endpoints", "ld_client_stats", "ld_client_session_seed",
    "ld_batch_destroy", "ld_batch_image_float",
    "ld_encoding_size", "ld_encoding_name", "ld_encoding_parse", "ld_half_to_float",
    "ld_strerror", "ld_seterr", "ld_errdetail", "ld_clearerr",
    "ld_log_set", "ld_log_emit", "ld_log_level", "ld_log_level_name", "ld_log_level_parse",
}
PUBLIC_HEADERS = ["client/ld_client.h", "common/ld_error.h", "common/ld_log.h", "common/ld_keep.h",
                  "common/ld_export.h"]
# NEEDED entries allowed: the client's two libraries, the C runtime, and the sanitizer runtimes of
# SANITIZE= builds.
ALLOWED_NEEDED = re.compile(r"^(libzmq\.so\.5|libprotobuf-c\.so\.1|libc\.so\.6|libm\.so\.6|ld-linux[-\w.]*\.so\.2"
                            r"|lib(a|ub)san\.so\.\d+)$")
REQUIRED_NEEDED = {"libzmq.so.5", "libprotobuf-c.so.1"}

# A user's program: includes only ld_client.h, uses the error and log API through it.
PROGRAM = r"""
#include <stdio.h>
#include <ld_client.h>

static void sink(int level, const char *msg, void *user) { (void)user; printf("log %s %s\n", ld_log_level_name(level), msg); }

int main(void)
{
    ld_log_set(sink, NULL, LD_LOG_INFO);
    ld_client_opts_t o;
    ld_client_opts_init(&o);
    ld_client_t *c;
    int rc = ld_client_new(&o, &c);
    printf("%d %s: %s\n", rc == LD_EINVAL, ld_strerror(rc), ld_errdetail());
    return 0;
}
"""


def version():
    with open(os.path.join(ROOT, "common", "ld_version.h")) as f:
        return re.search(r'^#define LD_VERSION "([^"]+)"$', f.read(), re.M).group(1)


def run(*args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r.stdout


# What a sanitizer build adds to every shared object (ODR indicators, instrumentation): not API.
SANITIZER_SYMBOL = re.compile(r"^__(odr_asan|asan|ubsan|sancov|lsan)")


def exported(lib):
    """Defined dynamic symbols of a shared library, a sanitizer build's own symbols left out."""
    names = (line.split()[-1] for line in run("nm", "-D", "--defined-only", lib).splitlines() if line.strip())
    return {n for n in names if not SANITIZER_SYMBOL.match(n)}


def sanitizer_flags(lib):
    """-fsanitize=... a program linking lib needs when lib was built with sanitizers (CI's build)."""
    needed = dynamic_entries(lib, "NEEDED")
    kinds = [k for k, so in (("address", "libasan"), ("undefined", "libubsan")) if any(n.startswith(so) for n in needed)]
    return ["-fsanitize=" + ",".join(kinds)] if kinds else []


def dynamic_entries(lib, tag):
    return re.findall(r"\(%s\)\s+[^[]*\[([^\]]+)\]" % tag, run("readelf", "-d", lib))


def header_externs():
    """Names declared with LD_EXTERN in the public headers."""
    names = set()
    for h in PUBLIC_HEADERS:
        with open(os.path.join(ROOT, h)) as f:
            for decl in re.findall(r"^LD_EXTERN ([^;(]+)", f.read(), re.M):
                names.add(re.search(r"(\w+)\s*$", decl).group(1))
    return names


class ClientAbiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.version = version()
        cls.lib = os.path.join(BUILD, "liblangdaug.so." + cls.version)
        if not os.path.exists(cls.lib):
            raise unittest.SkipTest("%s is not built" % cls.lib)
        for tool in ("nm", "readelf", "pkg-config", "cc", "make"):
            if not shutil.which(tool):
                raise AssertionError("%s is needed (binutils, pkg-config, gcc, make are build dependencies)" % tool)

    def test_exports_exactly_the_documented_api(self):
        got = exported(self.lib)
        self.assertEqual(sorted(got - API), [], "exported but not part of the client API (engine symbols?)")
        self.assertEqual(sorted(API - got), [], "part of the client API but not exported")

    def test_public_headers_mark_exactly_the_api(self):
        self.assertEqual(header_externs(), API)

    def test_links_only_zeromq_protobuf_c_and_the_c_runtime(self):
        needed = set(dynamic_entries(self.lib, "NEEDED"))
        self.assertEqual(sorted(n for n in needed if not ALLOWED_NEEDED.match(n)), [],
                         "liblangdaug links libraries the client does not need")
        self.assertLessEqual(REQUIRED_NEEDED, needed)

    def test_soname_is_the_major_version(self):
        major = self.version.split(".")[0]
        self.assertEqual(dynamic_entries(self.lib, "SONAME"), ["liblangdaug.so." + major])
        self.assertEqual(os.readlink(os.path.join(BUILD, "liblangdaug.so." + major)), "liblangdaug.so." + self.version)
        self.assertEqual(os.readlink(os.path.join(BUILD, "liblangdaug.so")), "liblangdaug.so." + major)


class InstallTest(unittest.TestCase):
    """`make install` into a temporary DESTDIR (the tree is already built: `all` is not remade)."""

    @classmethod
    def setUpClass(cls):
        cls.version = version()
        if not os.path.exists(os.path.join(BUILD, "liblangdaug.so." + cls.version)):
            raise unittest.SkipTest("liblangdaug.so.%s is not built" % cls.version)
        cls.tmp = tempfile.mkdtemp(prefix="langdaug-abi-")
        cls.dest = os.path.join(cls.tmp, "root")
        run("make", "-s", "-C", ROOT, "-o", "all", "install", "B=" + BUILD, "DESTDIR=" + cls.dest, "PREFIX=/usr",
            "SYSCONFDIR=/etc")
        cls.libdir = cls.dest + "/usr/lib"

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_installs_only_the_public_headers(self):
        self.assertEqual(sorted(os.listdir(self.dest + "/usr/include/langdaug")),
                         sorted(os.path.basename(h) for h in PUBLIC_HEADERS))

    def test_library_files_and_links(self):
        major = self.version.split(".")[0]
        self.assertTrue(os.path.isfile(os.path.join(self.libdir, "liblangdaug.so." + self.version)))
        self.assertEqual(os.readlink(os.path.join(self.libdir, "liblangdaug.so." + major)),
                         "liblangdaug.so." + self.version)
        self.assertEqual(os.readlink(os.path.join(self.libdir, "liblangdaug.so")), "liblangdaug.so." + major)
        self.assertTrue(os.path.isfile(os.path.join(self.libdir, "liblangdaug.a")))

    def test_pkg_config_file(self):
        env = dict(os.environ, PKG_CONFIG_PATH=self.libdir + "/pkgconfig", PKG_CONFIG_SYSROOT_DIR=self.dest)
        pc = lambda *a: run("pkg-config", *a, "langdaug", env=env).split()
        self.assertEqual(pc("--modversion"), [self.version])
        self.assertEqual(pc("--libs"), ["-L%s" % self.libdir, "-llangdaug"])  # nothing private leaks
        static = pc("--static", "--libs")
        for lib in ("-lzmq", "-lprotobuf-c", "-lm"):
            self.assertIn(lib, static)
        self.assertNotIn("-lopenblas", static)

    def test_a_program_builds_with_pkg_config_and_runs(self):
        env = dict(os.environ, PKG_CONFIG_PATH=self.libdir + "/pkgconfig", PKG_CONFIG_SYSROOT_DIR=self.dest)
        flags = run("pkg-config", "--cflags", "--libs", "langdaug", env=env).split()
        src, exe = os.path.join(self.tmp, "prog.c"), os.path.join(self.tmp, "prog")
        with open(src, "w") as f:
            f.write(PROGRAM)
        lib = os.path.join(self.libdir, "liblangdaug.so." + self.version)
        run("cc", "-std=c11", "-Wall", "-Werror", *sanitizer_flags(lib), "-o", exe, src, *flags,
            "-Wl,-rpath," + self.libdir)
        out = run(exe)
        self.assertRegex(out, r"^1 invalid argument: endpoints: ")
        self.assertIn("liblangdaug.so." + self.version.split(".")[0], dynamic_entries(exe, "NEEDED"))


if __name__ == "__main__":
    unittest.main()
