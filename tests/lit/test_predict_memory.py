"""``predict`` streams: its peak memory does not grow with the number of input rows (the benchmark,
``benchmarks/predict_memory.py``, measures 10k to 1M rows)."""

from __future__ import annotations

from tests.scripts import load_script

predict_memory = load_script("benchmarks/predict_memory.py")
MODEL = "matbench_perovskites/member_0"  # one model: the shipped ensemble would triple the time, not the memory


def test_peak_memory_is_flat_in_the_number_of_rows(tmp_path):
    """300 against 3,000 rows: the non-streaming predict grew ~15 KB per row (~40 MB here); streaming stays within
    the allocator's noise."""
    small = predict_memory.write_inputs(tmp_path / "small.csv", 300)
    large = predict_memory.write_inputs(tmp_path / "large.csv", 3000)
    rss_small, _, done_small = predict_memory.measure(small, tmp_path / "small_out.csv", None, MODEL)
    rss_large, _, done_large = predict_memory.measure(large, tmp_path / "large_out.csv", None, MODEL)
    assert (done_small, done_large) == (300, 3000)
    assert rss_large - rss_small < 15, (rss_small, rss_large)
