"""jax_namnmt.malloc: freed memory is reused, not faulted in afresh (a process per setting, since
the settings are process-wide and must come before other threads allocate)."""
import json
import os
import subprocess
import sys

import pytest

# touch 256 MB, free it, touch 256 MB again: page faults of the second round
PROBE = """
import json, resource
import jax_namnmt  # applies the settings (unless JAX_NAMNMT_MALLOC=system)
import numpy as np
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _set_madvise_hugepage
_set_madvise_hugepage(False)  # 4 KB pages, as XLA's buffers get: one fault a page
from jax_namnmt.malloc import reuse_freed_memory
a = np.ones(256 << 18, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(256 << 18, np.float32); b.sum()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "applies": reuse_freed_memory()}))
"""


def probe(setting):
    env = {k: v for k, v in os.environ.items() if k != "JAX_NAMNMT_MALLOC"}
    if setting is not None:
        env["JAX_NAMNMT_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_unless_the_system_allocator_is_asked_for():
    kept, system = probe(None), probe("system")
    if not kept["applies"]:
        pytest.skip("not glibc: nothing to tune")
    pages = (256 << 20) // 4096
    assert system["applies"] is False
    assert system["faults"] > pages // 2  # glibc's default: a fresh mmap, every page faulted in again
    assert kept["faults"] < pages // 20  # the heap's pages are reused
