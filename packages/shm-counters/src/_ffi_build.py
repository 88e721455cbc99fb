"""cffi out-of-line API-mode builder for ``shm_counters._ffi``.

Lives outside the import package: setup.py names it in ``cffi_modules`` and
setuptools compiles ``_csrc/shm_counters.c`` into the extension at build time.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

_HERE = Path(__file__).resolve().parent
_CSRC = _HERE / "_csrc"


def _cdef() -> str:
    """Return the header's declarations in the subset of C that cffi parses."""
    text = (_CSRC / "shm_counters.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#define SHMC_"):
            # cffi accepts integer constants as "#define NAME ..."
            name = stripped.split()[1]
            lines.append(f"#define {name} ...")
        elif stripped.startswith("#"):
            continue
        else:
            lines.append(line)
    return "\n".join(lines)


# Every function here is a handful of instructions on memory already
# mapped: it never blocks, so releasing the GIL around it (what cffi's
# wrappers do for every call: Py_BEGIN/END_ALLOW_THREADS, plus saving errno
# for ffi.errno) is pure cost, about half of a call. The wrappers this
# module generates follow the preamble below, so redefining those macros
# there keeps the GIL held and errno untouched for every call into this
# module, and nothing else. shmc_gil_held() lets the tests check that the
# redefinition still takes effect with the installed cffi: if a cffi version
# stopped using these macros, calls would merely be slower again.
_PREAMBLE = """
#include "shm_counters.h"
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#define _cffi_restore_errno() ((void)0)
#undef _cffi_save_errno
#define _cffi_save_errno() ((void)0)
static int shmc_gil_held(void) { return PyGILState_Check(); }
"""

ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.cdef("int shmc_gil_held(void);")
ffibuilder.set_source(
    "shm_counters._ffi",
    _PREAMBLE,
    sources=[str((_CSRC / "shm_counters.c").relative_to(_HERE.parent))],
    include_dirs=[str(_CSRC.relative_to(_HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
