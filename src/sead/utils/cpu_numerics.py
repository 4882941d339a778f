"""CPU matrix products that round the same whatever the thread count.

torch's x86 wheels do their float32 GEMMs in Intel MKL, and on Intel CPUs MKL splits a product's work differently
with one thread than with two, so the sums round differently. ``sead demo`` gives the teacher's background SFT a
second thread once the main process only waits (:func:`sead.tasks.prepare.lend_core`), at a step that depends on
timing; without more, the cached teacher would then depend on when that happened (measured on an Intel Xeon
(AVX-512): the sums teacher's loss differs in the 7th digit from the step after the switch; on an AMD EPYC the two
were bit-identical). MKL's conditional numerical reproducibility in strict mode (``MKL_CBWR=AUTO,STRICT``) makes
its GEMMs independent of the thread count: the same teacher either way, on both CPUs
(``tests/test_sums.py::test_the_background_teacher_taking_a_second_thread_trains_the_same_model``), at no measured
cost (that SFT's median step 0.26 s with one thread and 0.16 s with two, with and without it, Intel Xeon).

MKL reads the variable at its first GEMM in the process, so :func:`strict_cpu_gemm` runs when ``sead`` is imported;
a process that already ran a matrix product keeps MKL's default. A user who sets ``MKL_CBWR`` keeps their value.
It does nothing on GPUs, and it is the same code path on other CPUs.
"""

from __future__ import annotations

import os

__all__ = ["strict_cpu_gemm"]


def strict_cpu_gemm(environ=None) -> bool:
    """Set ``MKL_CBWR=AUTO,STRICT`` unless ``MKL_CBWR`` is already set; return whether it was set."""
    env = os.environ if environ is None else environ
    if "MKL_CBWR" in env:
        return False
    env["MKL_CBWR"] = "AUTO,STRICT"
    return True
