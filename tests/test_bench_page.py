"""bench.page's bookkeeping: rounds of a runtime merged into one run, in order."""

from bench.page import merge


def test_rounds_merge_in_order_keeping_the_first_start_time_and_profile():
    runs = {}
    merge(runs, "fast-relaxed", {"initMs": 50.0, "times": [0.3, 0.2], "digits": [7, 2], "profile": None})
    merge(runs, "fast-relaxed", {"initMs": 9.0, "times": [0.4], "digits": [1], "profile": [{"stage": "fc1", "ms": 1}]})
    merge(runs, "fast-relaxed", {"initMs": 8.0, "times": [0.5], "digits": [0], "profile": [{"stage": "fc2", "ms": 2}]})
    merge(runs, "onnxruntime-web", {"initMs": 300.0, "times": [0.6], "digits": [7]})
    run = runs["fast-relaxed"]
    assert run["times"] == [0.3, 0.2, 0.4, 0.5] and run["digits"] == [7, 2, 1, 0]
    assert run["initMs"] == 50.0
    assert run["profile"] == [{"stage": "fc1", "ms": 1}]
    assert runs["onnxruntime-web"]["times"] == [0.6]


def test_merging_copies_the_first_round_instead_of_extending_it():
    first = {"initMs": 1.0, "times": [0.1], "digits": [3]}
    runs = {}
    merge(runs, "page fast-relaxed", first)
    merge(runs, "page fast-relaxed", {"initMs": None, "times": [0.2], "digits": [4]})
    assert first["times"] == [0.1] and first["digits"] == [3]
