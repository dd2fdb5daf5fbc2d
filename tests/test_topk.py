"""The top-k answer the service and the bare reference share: a softmax, best first."""

import numpy as np

from slimserve.topk import top_k

CLASSES = ["a", "b", "c", "d"]


def test_top_k_is_the_softmax_best_first_and_capped_at_the_class_count():
    logits = np.array([1.0, 3.0, 0.5, 2.0], dtype=np.float32)
    expected = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    answer = top_k(logits, 2, CLASSES)
    assert [p["label"] for p in answer] == ["b", "d"] and [p["index"] for p in answer] == [1, 3]
    assert np.allclose([p["probability"] for p in answer], expected[[1, 3]], rtol=1e-12, atol=0)
    everything = top_k(logits, 50, CLASSES)
    assert [p["index"] for p in everything] == [1, 3, 0, 2]
    assert abs(sum(p["probability"] for p in everything) - 1.0) < 1e-12


def test_top_k_is_stable_on_ties_and_finite_on_large_logits():
    answer = top_k(np.array([1000.0, 1000.0, -1000.0, 1000.0], dtype=np.float32), 3, CLASSES)
    assert [p["index"] for p in answer] == [0, 1, 3]  # ties keep class order
    assert all(abs(p["probability"] - 1 / 3) < 1e-12 for p in answer)
