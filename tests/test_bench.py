"""bench.py on the CPU (every machine): a stopped benchmark keeps its figures and ends in one line."""
import json

import pytest

import bench


def test_a_benchmark_stopped_by_ctrl_c_keeps_its_figures_and_ends_in_one_line(tmp_path, monkeypatch, capsys):
    timed = []

    def time_then_stop(config, *args):
        if timed:
            raise KeyboardInterrupt  # as Ctrl-C arrives in the middle of the second figure
        timed.append(config)
        return 0.5, None, None  # seconds, no recording failure, no compile failure
    monkeypatch.setattr(bench, "time_training", time_then_stop)
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--skip-attacks", "--configs", "mnist/mnist b50 PGD-40", "--device", "cpu", "--json", str(out)])
    assert stopped.value.code == 130
    assert capsys.readouterr().out.splitlines()[-1] == f"stopped by Ctrl-C; the figures measured so far are in {out}"
    (row,) = json.loads(out.read_text())["training"]
    assert row["config"] == "mnist/mnist b50 PGD-40" and row["seconds_per_iteration"] == 0.5
