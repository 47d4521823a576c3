"""Units of work, all on the CPU: a unit's outcome depends on its job and position only, a runner takes
finished units from its store, C&W's early stop inside the ball leaves the robust accuracy as it was, and
the constant-predictor check reads class counts."""
import pytest
import torch

import evaluation
from attacks.cw import CarliniWagnerL2
from weights import model_from_file as load_model
from data import load_split

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_digits(checkpoint, data_root):  # noqa: F811
    """The trained MNIST net and 16 test digits in [0, 1], on the CPU."""
    model, _ = load_model(str(checkpoint))
    images, labels = load_split("mnist", str(data_root), train=False)
    return model.to(CPU).eval(), images[:16].to(CPU), labels[:16].to(CPU).long()


def pgd_job(model, indices, seed=0):
    """One short PGD from its random start: what it breaks depends on the stream it draws from."""
    return evaluation.Job("PGD-50", "pgd-linf", {"steps": 2, "rel_stepsize": 0.5}, "linf", 0.1, indices, seed=seed,
                          model=model)


def without_seconds(unit):
    return {key: value for key, value in unit.items() if key != "seconds"}


def test_a_units_outcome_depends_only_on_its_job_and_position(model_and_digits):
    model, images, labels = model_and_digits
    job = pgd_job(model, torch.arange(16))
    whole = [evaluation.run_unit(job, p, images, labels, batch_size=6) for p in range(job.units(6))]
    assert [u["indices"] for u in whole] == [list(range(0, 6)), list(range(6, 12)), list(range(12, 16))]
    torch.rand(1000)  # whatever ran before in this process
    assert without_seconds(evaluation.run_unit(job, 2, images, labels, batch_size=6)) == without_seconds(whole[2])
    streams = [without_seconds(evaluation.run_unit(pgd_job(model, torch.arange(16), seed=s), 0, images, labels, 6))
               for s in range(4)]
    assert any(stream != streams[0] for stream in streams[1:])  # the unit does draw from its own stream
    for unit in whole:
        assert len(unit["sizes"]) == sum(unit["broken"]) and all(size[0] <= 0.1 + 1e-5 for size in unit["sizes"])


def test_a_runner_takes_finished_units_from_its_store_and_keeps_those_it_runs(model_and_digits, tmp_path,
                                                                            monkeypatch):
    model, images, labels = model_and_digits
    job = pgd_job(model, torch.arange(16))
    (first,) = evaluation.Runner(evaluation.UnitStore(tmp_path / "units")).run([job], images, labels, 6)
    assert len(list((tmp_path / "units").glob("*.json"))) == 8  # units of 2: at most a tenth of the job
    assert 0 < int(first.broken.sum()) < 16

    ran = []
    real = evaluation.units.run_unit
    monkeypatch.setattr(evaluation.units, "run_unit", lambda job, p, *a: ran.append(p) or real(job, p, *a))
    store = evaluation.UnitStore(tmp_path / "units")
    (again,) = evaluation.Runner(store).run([job], images, labels, 6)
    assert ran == [] and torch.equal(again.broken, first.broken) and again.size_sums == first.size_sums

    moved = pgd_job(model, torch.arange(1, 17) % 16)  # the same key, other samples: stored units do not fit
    evaluation.Runner(store).run([moved], images, labels, 6)
    assert ran == list(range(8))


@pytest.mark.slow
def test_cw_stops_searching_samples_inside_the_ball_and_keeps_the_robust_accuracy(model_and_digits):
    """Fewer images pass through the model, and the same samples survive: on the trained net at l2 2.0,
    with a short search that breaks some samples and not others."""
    model, images, labels = model_and_digits
    x, labels = images[:12].float() / 255, labels[:12]
    outcomes = {}
    for stop in (False, True):
        forwarded = []
        hook = model.register_forward_hook(lambda module, inputs, output: forwarded.append(len(inputs[0])))
        attack = CarliniWagnerL2(2.0, binary_search_steps=3, steps=40, stepsize=0.05, initial_const=1.0,
                                 stop_inside_ball=stop)
        x_adv = attack(model, x, labels)
        hook.remove()
        with torch.no_grad():
            outcomes[stop] = (model(x_adv).argmax(1) == labels, sum(forwarded))
    (survived, work), (survived_with_stop, work_with_stop) = outcomes[False], outcomes[True]
    assert 0 < int(survived.sum()) < len(labels)
    assert torch.equal(survived_with_stop, survived)
    assert work_with_stop < 0.9 * work


def test_cw_stops_each_samples_search_step_once_its_own_loss_stalls(model_and_digits):
    """Each sample of a batch gets what a batch of it alone gets (foolbox's early abort, which watches the
    batch's summed loss, is the same for one image), and the batch does less work than with one abort for
    all, which keeps stalled samples stepping while any other improves."""
    model, images, labels = model_and_digits
    x, y = images[:8].float() / 255, labels[:8]
    attack = CarliniWagnerL2(2.0, binary_search_steps=2, steps=100, stepsize=0.05, initial_const=1.0)
    forwarded = []
    hook = model.register_forward_hook(lambda module, inputs, output: forwarded.append(len(inputs[0])))
    together = attack.minimize(model, x, y)
    work = sum(forwarded)
    hook.remove()
    alone = torch.cat([attack.minimize(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert work < 0.9 * len(x) * attack.binary_search_steps * attack.steps


def test_the_suites_cw_stops_inside_the_ball():
    for family in evaluation.SUITES.values():
        (cw,) = [a for a in family["l2"]["attacks"] if a[1] == "cw-l2"]
        assert cw[2]["stop_inside_ball"]


@pytest.mark.parametrize("counts, flagged", [([0, 95, 5], True), ([30, 40, 30], False), ([0, 90, 10], False)])
def test_the_constant_predictor_check_reads_class_counts(counts, flagged):
    check = evaluation.constant_predictor_check(torch.tensor(counts, device=CPU))
    assert check.flagged == flagged and "class 1" in check.message
    assert check.as_json()["check"] == "constant-predictor" and "smaller_epsilon" not in check.as_json()


def test_the_estimate_is_each_jobs_measured_seconds_per_sample_times_its_samples_left(model_and_digits,
                                                                                     monkeypatch):
    """Two jobs whose units take 1 s and 0.1 s per sample (a stand-in for run_unit): once the first unit of
    each has run, the rest should take 14 x 1 + 14 x 0.1 seconds, and the estimate says so before it runs."""
    model, images, labels = model_and_digits
    per_sample = {"slow": 1.0, "fast": 0.1}
    ran, estimates = [], []

    def run_unit(job, position, images, labels, batch_size):
        index = job.samples(batch_size, position).tolist()
        ran.append((job.label, position))
        return {"indices": index, "broken": [False] * len(index), "sizes": [],
                "seconds": per_sample[job.label] * len(index)}
    monkeypatch.setattr(evaluation.units, "run_unit", run_unit)
    jobs = [evaluation.Job(label, "fgsm", {}, "linf", 0.1, torch.arange(16), seed=0, model=model)
            for label in per_sample]
    runner = evaluation.Runner(on_estimate=lambda seconds: estimates.append((seconds, len(ran))))
    runner.run(jobs, images, labels, batch_size=6)  # units of 2 samples: at most a tenth of each job
    assert ran[:2] == [("slow", 0), ("fast", 0)]  # the first unit of every job first
    (seconds, after), = estimates
    assert after == 2 and seconds == pytest.approx(14 * 1.0 + 14 * 0.1)


@pytest.mark.parametrize("seconds_per_unit, early", [(40, True), (5, False)])
def test_first_units_still_running_after_half_a_minute_give_an_early_upper_bound(model_and_digits, monkeypatch,
                                                                                  seconds_per_unit, early):
    """CPU, fake clock: FGSM (1 gradient step) takes 0.1 s per sample and PGD-100 5 s (it stops on what it
    breaks, say). Half a minute into the round, with PGD not yet timed, the early estimate counts PGD at its
    full 100 steps at FGSM's 0.1 s per image and step: an upper bound, above what the measured estimate then
    says; a round whose first units end sooner gets the measured estimate alone."""
    model, images, labels = model_and_digits
    per_sample = {"FGSM": 0.1, "PGD-100": 5.0}
    estimates, now = [], [0.0]

    def run_unit(job, position, images, labels, batch_size):
        index = job.samples(batch_size, position).tolist()
        now[0] += seconds_per_unit
        return {"indices": index, "broken": [False] * len(index), "sizes": [],
                "seconds": per_sample[job.label] * len(index)}
    monkeypatch.setattr(evaluation.units, "run_unit", run_unit)
    jobs = [evaluation.Job("FGSM", "fgsm", {}, "linf", 0.1, torch.arange(16), seed=0, model=model),
            evaluation.Job("PGD-100", "pgd-linf", {"steps": 100, "rel_stepsize": 0.03}, "linf", 0.1,
                           torch.arange(16), seed=0, model=model)]
    runner = evaluation.Runner(on_estimate=lambda seconds, upper_bound=False: estimates.append(
        (round(seconds, 6), upper_bound)), clock=lambda: now[0])
    runner.run(jobs, images, labels, batch_size=6)  # units of 2: FGSM's first, then PGD's first
    measured = (round(14 * 0.1 + 14 * 5.0, 6), False)
    assert estimates == ([(round(14 * 0.1 + 16 * 100 * 0.1, 6), True), measured] if early else [measured])


def test_the_early_estimate_is_printed_as_an_upper_bound_and_the_measured_one_from_half_a_minute(capsys):
    """CPU: eval.py's printer of the Runner's estimates."""
    from evaluation.console import estimate_printer
    on_estimate = estimate_printer()
    on_estimate(20, upper_bound=True)
    on_estimate(20)  # the measured estimate of a round that is nearly over: not worth a line
    on_estimate(600)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("estimated: at most 20 s more") and "closer estimate" in lines[0]
    assert lines[1].startswith("estimated: 10 min more") and "at most" not in lines[1]


def test_a_job_as_wide_as_the_split_still_estimates_and_moves_within_its_first_tenth(model_and_digits,
                                                                                     monkeypatch):
    """A width that holds the whole split (CUDA's memory-sized width): the estimate comes once a tenth of the
    job has run, the progress bar moves ten times, and no unit (what a kill loses) is over a tenth. The units
    do not depend on the number of processes, whose figures are one process's."""
    model, _, _ = model_and_digits
    ran, estimates, moves = [], [], []

    def run_unit(job, position, images, labels, batch_size):
        index = job.samples(batch_size, position).tolist()
        ran.append(len(index))
        return {"indices": index, "broken": [False] * len(index), "sizes": [], "seconds": 0.01 * len(index)}
    monkeypatch.setattr(evaluation.units, "run_unit", run_unit)
    monkeypatch.setattr(evaluation.units.JobBar, "update", lambda bar, broken: moves.append(len(broken)))
    samples = 1000
    job = evaluation.Job("PGD-50", "pgd-linf", {}, "linf", 0.1, torch.arange(samples), seed=0, model=model)
    evaluation.Runner(on_estimate=estimates.append).run(
        [job], torch.zeros(samples, 1), torch.zeros(samples, dtype=torch.long), batch_size=samples)
    assert len(estimates) == 1 and ran[0] <= samples // 10
    assert len(moves) >= 10 and max(ran) <= samples // 10
    assert evaluation.units.unit_size(samples, samples) == samples // 10
    assert evaluation.units.unit_size(16, samples) == 16 and evaluation.units.unit_size(16, 7) == 1
