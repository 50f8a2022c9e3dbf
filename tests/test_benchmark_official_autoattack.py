"""tools/benchmark_official_autoattack.py refuses a --official_dir that is no checkout of fra31/auto-attack with one
line on stderr and exit status 2, at flag parsing (before torch, a model or an image is touched). CI has no official
checkout: the comparison itself runs by hand (docs/benchmarks.md)."""

import pytest
from binaries import run_script

TOOL = "tools/benchmark_official_autoattack.py"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing", "is not a folder"),
        (lambda tmp: (tmp / "autoattack").mkdir() or tmp, "is not a checkout of fra31/auto-attack"),
    ],
    ids=["missing", "not_a_checkout"],
)
def test_a_bad_official_dir_is_one_line_and_exit_2(tmp_path, make, message):
    folder = make(tmp_path)
    result = run_script(TOOL, f"--official_dir={folder}", "--budget=cut", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and str(folder) in result.stderr
    assert result.stdout == ""
