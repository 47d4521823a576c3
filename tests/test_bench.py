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


def test_an_attack_column_not_in_any_suite_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as refused:
        bench.main(["--skip-training", "--attacks", "pgd-7", "--device", "cpu"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'pgd-7'" in err[-1] and "pgd-10" in err[-1]


def test_compile_on_the_cpu_says_in_one_line_that_nothing_is_compiled(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run_benchmarks", lambda *args: None)
    bench.main(["--compile", "--device", "cpu", "--json", str(tmp_path / "bench.json")])
    lines = [line for line in capsys.readouterr().out.splitlines() if "--compile" in line]
    assert len(lines) == 1 and "usually slower" in lines[0] and "nothing compiled here" in lines[0]


def test_the_compiled_variant_compiles_as_alp_py_does_with_static_shapes(monkeypatch):
    """CPU (the compiler faked): bench.py times what ALP.py runs, a network compiled with dynamic=False."""
    compiled = []

    def fake_compile(model, **options):
        compiled.append(options)
        return model
    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    variant = bench.Variant("compiled", False, False, True, False, False)
    bench.time_training("mnist/mnist b50 PGD-40", bench.torch.device("cpu"), 1, 1, variant, steps=1)
    assert compiled == [{"dynamic": False}]
