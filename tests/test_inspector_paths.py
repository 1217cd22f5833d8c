"""Inspector.inspect_paths: the same verdicts, in input order, whatever the batch size or number of workers."""
import numpy as np
import pytest

from linewatch.runtime.inspector import Inspector
from linewatch.runtime.preprocess import preprocess, read_image


@pytest.fixture(scope="module")
def paths_with_bad_files(small_category, tmp_path_factory):
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty.png").write_bytes(b"")
    (bad / "garbage.png").write_bytes(b"not a png")
    good = sorted((small_category / "test").rglob("*.png"))
    return good[:5] + [bad / "empty.png"] + good[5:11] + [bad / "garbage.png", bad / "missing.png"] + good[11:14]


@pytest.mark.parametrize("threads, batch_size, workers", [(1, 8, 1), (2, 3, 1), (1, 1, 2), (2, 3, 2), (1, 4, 3)])
def test_same_verdicts_in_input_order(small_bundle, paths_with_bad_files, threads, batch_size, workers):
    ins = Inspector(small_bundle, threads=threads)
    ref = list(Inspector(small_bundle, threads=1).inspect_paths(paths_with_bad_files, batch_size=1))
    got = list(ins.inspect_paths(iter(paths_with_bad_files), batch_size=batch_size, workers=workers))
    assert [v.source for v, _, _ in got] == [str(p) for p in paths_with_bad_files]
    for (v, img, mp), (rv, rimg, rmp) in zip(got, ref):
        assert (v.error is None) == (rv.error is None) and (img is None) == (rimg is None)
        if v.error is None:
            assert v.score == pytest.approx(rv.score, abs=1e-3) and v.anomalous == rv.anomalous
            np.testing.assert_allclose(mp, rmp, atol=1e-3)
            assert v.latency_ms > 0
    assert sum(v.error is not None for v, _, _ in got) == 3


def test_scores_match_a_direct_session_run(small_bundle, small_category):
    ins = Inspector(small_bundle, threads=1)
    paths = sorted((small_category / "test").rglob("*.png"))[:6]
    x = np.stack([preprocess(read_image(p), ins.spec) for p in paths])
    want, _ = ins.score_batch(x)
    got = [v.score for v, _, _ in ins.inspect_paths(paths, batch_size=4, workers=2)]
    np.testing.assert_allclose(got, want, atol=1e-4)
