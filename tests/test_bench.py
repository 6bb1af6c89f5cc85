"""mokit.bench: the table's build (resumable, parallel), its checks on load, lookups and the simulated comparison."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from mokit import bench, search

GRID = {"lr": [1e-3, 0.1], "batch_size": [64], "weight_decay": [1e-4], "optimizer": ["sgd", "adam"],
        "schedule": ["cosine"]}
SIZES = {"grid": GRID, "seeds": 2, "epochs": 3, "train_size": 300, "val_size": 100}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 4-config x 2-seed x 3-epoch table on the stand-in, built in two sessions (the first stops after 3
    runs and its last line is torn, as a kill mid-append leaves it), the second on two workers."""
    out = tmp_path_factory.mktemp("bench") / "t.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOKIT_STANDIN", "1")
        assert bench.build(out, **SIZES, workers=1, max_runs=3, progress=False) is None
        partial = out.with_name(out.name + ".partial.jsonl")
        first = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
        with open(partial, "a") as f:
            f.write('{"config": {"lr": 0.1')                     # a torn append
        assert bench.build(out, **SIZES, workers=2, progress=False) == out
    return out, first, partial


def test_build_resumes_and_writes_a_checked_table(built):
    out, first, partial = built
    table = bench.load_bench(out)
    assert table.val_acc.shape == table.seconds.shape == (4, 2, 3) and len(first) == 3
    assert not partial.exists() and out.stat().st_size < 5e6
    for row in first:                                             # the first session's runs were kept, not re-run
        i, s = table.row(row["config"]), table.seeds.index(row["seed"])
        assert np.allclose(table.seconds[i, s], row["seconds"]) and np.allclose(table.val_acc[i, s], row["val_acc"])
    assert (np.diff(table.seconds, axis=2) >= 0).all() and table.meta["real_data"] is False
    assert bench.build(out, **SIZES, workers=1, progress=False) == out     # finished: nothing to do


def test_a_partial_build_with_other_settings_is_refused(tmp_path, standin):
    out = tmp_path / "t.npz"
    assert bench.build(out, **SIZES, workers=1, max_runs=1, progress=False) is None
    with pytest.raises(ValueError, match=r"partial benchmark .*other settings"):
        bench.build(out, **{**SIZES, "epochs": 2}, workers=1, max_runs=1, progress=False)


def test_build_arguments_are_checked_before_any_run(tmp_path):
    for bad, match in [({"seeds": 0}, "seeds"), ({"workers": 0}, "workers"), ({"dataset": "nope"}, "dataset"),
                       ({"grid": {"lr": []}}, "grid"), ({"grid": {"nope": [1]}}, "grid knob")]:
        with pytest.raises(ValueError, match=match):
            bench.build(tmp_path / "t.npz", **{**SIZES, **bad}, progress=False)
    assert not list(tmp_path.iterdir())


def _rewrite(src, dst, **change):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v for k, v in arrays.items() if v is not None})
    dst.write_bytes(buf.getvalue())
    return dst


def test_a_missing_or_corrupt_table_names_the_file_and_the_build_command(built, tmp_path):
    out = built[0]
    with pytest.raises(FileNotFoundError, match=r"nope\.npz does not exist.*python -m mokit\.bench build"):
        bench.load_bench(tmp_path / "nope.npz")
    torn = tmp_path / "torn.npz"
    torn.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a table")
    meta = json.loads(str(np.load(out)["meta"]))
    nan = np.load(out)["val_acc"].copy()
    nan[1, 0, 2] = np.nan
    cases = [(torn, "cannot read"), (garbage, "cannot read"),
             (_rewrite(out, tmp_path / "schema.npz", meta=np.array(json.dumps({**meta, "schema": "x/0"}))), "schema"),
             (_rewrite(out, tmp_path / "nan.npz", val_acc=nan), "val_acc must be finite"),
             (_rewrite(out, tmp_path / "shape.npz", seconds=np.ones((4, 2, 2), np.float32)), "seconds must be"),
             (_rewrite(out, tmp_path / "lack.npz", diverged=None), "lacks diverged"),
             (_rewrite(out, tmp_path / "configs.npz",
                       meta=np.array(json.dumps({**meta, "configs": meta["configs"][:3]}))), "not the product"),
             (_rewrite(out, tmp_path / "meta.npz", meta=np.array("{")), "cannot read")]
    for path, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            bench.load_bench(path)
        assert str(path) in str(e.value) and "python -m mokit.bench build" in str(e.value)
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as z:                      # an object array needs pickle: refused
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(ValueError, match=r"cannot read .*pickled"):
        bench.load_bench(pickled)


def test_the_objective_looks_up_the_table(built):
    table = bench.load_bench(built[0])
    space = bench.bench_space(table)
    assert search.grid(space) == table.configs
    objective = bench.bench_objective(table, seed=1)
    config = table.configs[2]
    assert objective(config, 2) == {"val_acc": float(table.val_acc[2, 1, 1]), "seconds": float(table.seconds[2, 1, 1])}
    for bad_config, budget, match in [({**config, "lr": 0.5}, 1, "not in the benchmark table"),
                                      ({**config, "momentum": 0.9}, 1, "not in the benchmark table"),
                                      (config, 4, "budget"), (config, 0, "budget")]:
        with pytest.raises(ValueError, match=match):
            objective(bad_config, budget)
    with pytest.raises(ValueError, match="seed"):
        bench.bench_objective(table, seed=5)
    with pytest.raises(ValueError, match="Bench from load_bench"):
        bench.bench_objective("t.npz")


def test_the_clock_sums_looked_up_seconds_and_keeps_the_best_full_budget_value():
    trials = [search.Trial({"x": i}, b, {"val_acc": v, "seconds": s}, 0.0)
              for i, (b, v, s) in enumerate([(1, 99.0, 1.0), (3, 50.0, 2.0), (3, 60.0, 2.5), (3, 55.0, 3.0)])]
    xs, ys = bench.clock(search.SearchResult("t", trials, "val_acc"), 3)
    assert xs.tolist() == [1.0, 3.0, 5.5, 8.5]
    assert np.isnan(ys[0]) and ys[1:].tolist() == [50.0, 60.0, 60.0]


def test_compare_runs_every_strategy_on_the_table(built):
    table = bench.load_bench(built[0])
    out = bench.compare(table, repetitions=3, n_trials=2)
    assert list(out.curves) == list(bench.STRATEGIES) and out.repetitions == 3
    for name, runs in out.curves.items():
        finals = out.final(name)
        assert len(runs) == 3 and ((finals >= 0) & (finals <= 100)).all()
        assert all((np.diff(xs) >= 0).all() and (np.diff(ys[~np.isnan(ys)]) >= 0).all() for xs, ys in runs)
        assert max(out.compute[name]) <= (12 if name == "hyperband" else 2 * table.epochs)   # one bracket set at least
        mean, std = out.stats(name)
        assert mean == pytest.approx(finals.mean()) and std >= 0
    assert out.winner in bench.STRATEGIES and len(out.summary()) == len(bench.STRATEGIES)
    x, mean, low, high = out.bands(points=50)["random"]
    last = np.flatnonzero(~np.isnan(mean))[-1]                   # where random search's last repetition ended
    assert x[last] == max(xs[-1] for xs, _ in out.curves["random"])
    assert mean[last] == pytest.approx(out.stats("random")[0]) and low[last] <= mean[last] <= high[last]
    for bad, match in [({"strategies": ["nope"], "n_trials": 2}, "strategy"), ({"repetitions": 0}, "repetitions"),
                       ({"n_trials": 5}, "n_trials")]:
        with pytest.raises(ValueError, match=match):
            bench.compare(table, **bad)


def test_t_quantile():
    assert bench.t975(19) == pytest.approx(2.093, abs=2e-3) and bench.t975(2) == pytest.approx(4.303, abs=0.15)


def test_info_and_the_cli(built, capsys):
    bench.main(["info", str(built[0])])
    assert "4 configs x 2 seeds x 3 epochs" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"python -m mokit\.bench build"):
        bench.main(["info", str(built[0].with_name("missing.npz"))])


def test_the_shipped_table():
    """The table notebook 07 compares the strategies on: in the repo, compressed, at least 200 configs x 3 seeds x
    9 epochs of 07's space on real MNIST."""
    table = bench.load_bench()
    assert bench.DEFAULT_PATH.stat().st_size <= 5e6 and table.meta["real_data"] is True
    assert len(table.configs) >= 200 and len(table.seeds) >= 3 and table.epochs == 9
    assert set(table.grid) <= set(bench.KNOBS) and table.meta["train_size"] == 5000
