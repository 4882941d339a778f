"""sead.utils.cpu_numerics: CPU matrix products that round the same with one or two threads once sead is imported."""

import subprocess
import sys

from _tiny import REPO, subprocess_env
from sead.utils.cpu_numerics import strict_cpu_gemm

# Products whose K is long enough for MKL to split it across threads: on an Intel Xeon (AVX-512) all three rounded
# differently with two threads than with one before sead set MKL_CBWR; on an AMD EPYC they did not (there this test
# passes either way).
_PRODUCTS = """
import sys, torch
{first}
g = torch.Generator().manual_seed(0)
same = []
for m, k, n in [(64, 4096, 64), (512, 2048, 128), (8, 8192, 8)]:
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    torch.set_num_threads(1); one = a @ b
    torch.set_num_threads(2); two = a @ b
    same.append(torch.equal(one, two))
print(all(same))
"""


def test_strict_cpu_gemm_sets_mkl_strict_mode_and_keeps_a_users_choice():
    env = {}
    assert strict_cpu_gemm(env) and env == {"MKL_CBWR": "AUTO,STRICT"}
    mine = {"MKL_CBWR": "COMPATIBLE"}
    assert not strict_cpu_gemm(mine) and mine == {"MKL_CBWR": "COMPATIBLE"}


def test_after_import_sead_a_product_rounds_the_same_with_one_or_two_threads():
    env = {k: v for k, v in subprocess_env().items() if k != "MKL_CBWR"}
    code = _PRODUCTS.format(first="import sead")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "True"
