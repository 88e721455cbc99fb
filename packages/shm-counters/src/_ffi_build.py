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


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "shm_counters._ffi",
    '#include "shm_counters.h"',
    sources=[str((_CSRC / "shm_counters.c").relative_to(_HERE.parent))],
    include_dirs=[str(_CSRC.relative_to(_HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
