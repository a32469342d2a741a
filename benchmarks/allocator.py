"""Pick the memory allocator before JAX loads: tcmalloc, else a tuned glibc.

XLA's CPU runtime allocates and frees buffers on every step. glibc's malloc
returns large blocks to the OS (``mmap``/``munmap``, heap trimming) and
pays page faults to get them back; tcmalloc keeps them. The allocator is
chosen at process start, so the benchmark re-executes itself once with the
right environment:

- ``LD_PRELOAD`` already names tcmalloc: keep it;
- ``libtcmalloc_minimal.so.4`` exists under ``/usr/lib``: preload it
  (Debian/Ubuntu: ``apt-get install libtcmalloc-minimal4``);
- otherwise keep glibc but stop it from giving memory back
  (``MALLOC_MMAP_MAX_=0``, a huge ``MALLOC_TRIM_THRESHOLD_``).

Only the standard library is imported here: this runs before ``import jax``.
"""

from __future__ import annotations

import glob
import os
import sys

# Set in the re-executed process; says which allocator it runs with.
MARKER = "FNN_BENCH_ALLOCATOR"
TRIM_THRESHOLD = str(2**62)


def _tcmalloc_library() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4"))
    candidates += glob.glob("/usr/lib/libtcmalloc_minimal.so.4")
    return candidates[0] if candidates else None


def ensure(mode: str = "auto") -> None:
    """Re-executes this process under the chosen allocator, once.

    ``mode="system"`` leaves the allocator alone (and never re-executes).
    """
    if MARKER in os.environ:
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if mode == "system":
        os.environ[MARKER] = f"system default (LD_PRELOAD={preload or 'unset'})"
        return
    if "tcmalloc" in preload:
        os.environ[MARKER] = f"tcmalloc (LD_PRELOAD={preload})"
        return
    env = dict(os.environ)
    library = _tcmalloc_library()
    if library:
        env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
        env[MARKER] = f"tcmalloc (LD_PRELOAD={library})"
    else:
        env["MALLOC_MMAP_MAX_"] = "0"
        env["MALLOC_TRIM_THRESHOLD_"] = TRIM_THRESHOLD
        env[MARKER] = (
            "glibc malloc, tuned: MALLOC_MMAP_MAX_=0 "
            f"MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD} (no tcmalloc found)"
        )
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def describe() -> str:
    return os.environ.get(MARKER, "unknown (allocator.ensure was not called)")
