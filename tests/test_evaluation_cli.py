"""eval.py's entry points end to end on tiny inputs, all on the CPU: transfer attacks, ε sweeps with their
plot, CIFAR-10-C-style corruptions, AutoAttack's version, the JSON file's name and overwrite guard, the data
root, warnings, --help, and every bad input as one line with exit status 2."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

import eval as eval_script
import evaluation
from evaluation.command_line import build_parser, parse_args
from attacks import ATTACKS
from evaluation.inputs import choose_data_root
from checkpoints import checkpoint_meta, save_checkpoint
from data import data_digest, train_val_splits
from weights import build_model, model_from_file
from conftest import assert_one_line_error, run_eval as run, train_on_digits

CPU = torch.device("cpu")
FAST = ("--norms", "linf", "--attacks", "fgsm", "pgd-50", "--n", "16", "-b", "8")


def write(path, model_name, dataset, state_dict=None, training_args=None, digest=None):
    state_dict = state_dict or build_model(model_name, dataset).to(CPU).state_dict()
    save_checkpoint({"model": state_dict, "epoch": 1,
                     "meta": checkpoint_meta(model_name, dataset, training_args or {}, digest)}, path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Another MNIST net, trained from another seed: the source of transfer attacks."""
    torch.manual_seed(1)
    model = train_on_digits(build_model("mnist", "mnist").to(CPU), seed=1)
    return write(tmp_path_factory.mktemp("source") / "source.pt", "mnist", "mnist", model.state_dict())


@pytest.fixture
def own_checkpoint(checkpoint, tmp_path):  # noqa: F811
    """A copy in a fresh folder, so that default JSON names never meet another test's files."""
    return shutil.copy(checkpoint, tmp_path / "last.pt")


# --- transfer attacks ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_transfer_attacks_are_made_on_the_source_and_measured_on_the_target(capsys, checkpoint, source,  # noqa: F811
                                                                           data_root, tmp_path):  # noqa: F811
    code, out, err = run(capsys, checkpoint, "--transfer-from", source, "--data-root", data_root, *FAST,
                         "--json", tmp_path / "transfer.json")
    assert code == 0, err
    assert "| ℓ∞ | Source Nat(%) | Nat(%) | FGSM | PGD-50 | Worst |" in out
    assert f"made on {source} " in out and f"measured on {checkpoint}" in out  # the full paths, once
    assert "Columns: Source Nat(%) is the source's clean accuracy" in out
    assert max(len(line) for line in out.splitlines() if line.startswith("|")) < 100
    report = json.loads((tmp_path / "transfer.json").read_text())
    transfer = report["transfer"]
    assert report["complete"] and transfer["source"]["checkpoint"] == str(source)
    assert report["threat_models"] == [] and report["sanity"] is None  # no white-box figures in this mode
    (table,) = transfer["threat_models"]
    assert all(a["attacked"] == report["clean"]["correct"] for a in table["attacks"])
    assert transfer["target"]["clean_accuracy"] == report["clean"]["accuracy"]

    # a model attacked through itself is a white-box attack: the same samples break
    code, _, err = run(capsys, checkpoint, "--transfer-from", checkpoint, "--data-root", data_root, *FAST,
                       "--json", tmp_path / "self.json")
    assert code == 0, err
    code, _, err = run(capsys, checkpoint, "--data-root", data_root, *FAST, "--json", tmp_path / "white.json")
    assert code == 0, err
    self_table = json.loads((tmp_path / "self.json").read_text())["transfer"]["threat_models"][0]
    white_table = json.loads((tmp_path / "white.json").read_text())["threat_models"][0]
    assert [a["broken"] for a in self_table["attacks"]] == [a["broken"] for a in white_table["attacks"]]
    assert self_table["worst_case"] == white_table["worst_case"]
    # transferred examples are weaker than white-box ones on this pair (same training data, another seed)
    assert table["worst_case"]["robust"] >= white_table["worst_case"]["robust"]


def test_a_transfer_from_a_source_that_barely_learnt_is_cautioned_in_one_line(capsys, checkpoint, source,  # noqa: F811
                                                                               data_root, tmp_path):  # noqa: F811
    """CPU. An untrained MNIST net (its last layer starts at zero) gives class 0 to every image."""
    untrained = write(tmp_path / "untrained.pt", "mnist", "mnist")
    argv = ("--data-root", data_root, "--norms", "linf", "--attacks", "fgsm", "--n", "16", "-b", "8")
    code, _, err = run(capsys, checkpoint, "--transfer-from", untrained, *argv, "--json", tmp_path / "a.json")
    assert code == 0, err
    (caution,) = [line for line in err.splitlines() if "barely learnt" in line]
    assert f"the source {untrained} has barely learnt" in caution and "no sign of robustness" in caution
    assert caution.split("warning: ", 1)[1] in json.loads((tmp_path / "a.json").read_text())["warnings"]
    code, _, err = run(capsys, checkpoint, "--transfer-from", source, *argv, "--json", tmp_path / "b.json")
    assert code == 0 and "barely learnt" not in err, err


def test_transfer_needs_both_checkpoints_for_the_same_data_set(capsys, checkpoint, data_root, tmp_path):  # noqa: F811
    cifar = write(tmp_path / "cifar.pt", "resnet20", "cifar10")
    code, _, err = run(capsys, checkpoint, "--transfer-from", cifar, "--data-root", data_root, *FAST)
    assert_one_line_error(code, err, "a transfer attack needs both models for the same data set")


def test_transfers_from_two_runs_best_checkpoints_get_their_own_json_files():
    def name(source):
        requested = {"n": None, "norms": None, "attacks": None, "epsilons": None, "seed": 0,
                     "worst_case_only": False, "aa_version": "standard", "transfer_from": source,
                     "sweep": None, "corruptions": None}
        return evaluation.default_json_path("/runs/target/best_robust.pt", requested)
    assert name("/runs/a/best_robust.pt") == "/runs/target/best_robust.eval.from-a-best_robust.json"
    assert name("/runs/b/best_robust.pt") != name("/runs/a/best_robust.pt")


def test_the_sweep_plot_keeps_the_grey_image_bound_visible_where_it_meets_the_clean_line():
    report = {"model": "m", "dataset": "mnist", "evaluation": {"n": 8},
              "sweep": {"norm": "linf", "epsilons": [0, 0.1, 0.5], "clean_accuracy": 0.9,
                        "grey_image_bound": [0.9, 0.9, 0.1], "curves": [{"label": "PGD-50",
                                                                         "robust_accuracy": [0.9, 0.5, 0.0]}]}}
    import matplotlib.pyplot as plt
    from evaluation import sweep_figure
    fig = sweep_figure(report)
    lines = {line.get_label().split()[0]: line for line in fig.axes[0].get_lines()}
    plt.close(fig)
    grey, clean = lines["grey-image"], lines["clean"]
    assert grey.get_marker() not in (None, "None", "") and grey.get_linestyle() != clean.get_linestyle()
    assert grey.get_zorder() > clean.get_zorder()


@pytest.mark.parametrize("bound, shown", [([0.9, 0.9, 0.9], False), ([0.9, 0.9, 0.1], True)])
def test_the_grey_image_bound_is_shown_only_where_it_falls_below_the_clean_accuracy_on_cpu(bound, shown):
    """MNIST up to ℓ∞ 0.3 has no image within ε of grey: the bound is the clean accuracy, a row of nothing."""
    import matplotlib.pyplot as plt
    from evaluation import sweep_figure
    from evaluation.report import format_sweep
    sweep = {"norm": "linf", "epsilons": [0, 0.1, 0.3], "epsilon_labels": ["0", "0.1", "0.3"],
             "clean_accuracy": 0.9, "grey_image_bound": bound,
             "curves": [{"label": "PGD-50", "robust_accuracy": [0.9, 0.5, 0.0]}]}
    text = format_sweep(sweep)
    assert ("| grey-image bound |" in text) == shown
    assert ("not shown" in text) == (not shown)
    fig = sweep_figure({"model": "m", "dataset": "mnist", "evaluation": {"n": 8}, "sweep": sweep})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    plt.close(fig)
    assert ("grey-image bound" in labels) == shown


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_run_folder_given_for_a_checkpoint_lists_its_checkpoints_with_or_without_the_slash(capsys, tmp_path,
                                                                                             slash):
    folder = tmp_path / "mnist-mnist-ALP-ep30"
    folder.mkdir()
    for name in ("best_clean.pt", "best_robust.pt", "epoch_005.pt", "last.pt"):
        (folder / name).write_bytes(b"")
    code, _, err = run(capsys, f"{folder}{slash}")
    assert_one_line_error(code, err, "it holds best_clean.pt, best_robust.pt, epoch_005.pt, last.pt")
    assert f"e.g. {folder}/best_robust.pt" in err


@pytest.mark.parametrize("argv, says", [
    (["--transfer-from", "{tmp}/nowhere.pt"], "no checkpoint at"),
    (["--transfer-from", "{checkpoint}", "--attacks", "aa"], "AutoAttack is not offered as a transfer attack"),
    (["--source-model", "mnist"], "--source-model needs --transfer-from"),
    (["--transfer-from", "{checkpoint}", "--aa-version", "rand"], "a transfer evaluation runs no AutoAttack"),
    (["--attacks", "fgsm", "pgd-50", "--aa-version", "plus"], "the attacks selected run no AutoAttack"),
    (["--sweep", "linf", "0:0.3:4", "--aa-version", "plus"], "the attacks selected run no AutoAttack"),
    (["--sweep", "linf", "0:0.3:4", "--epsilon", "0.1"], "--sweep takes its norm and epsilons itself"),
    (["--norms", "linf", "--epsilon", "76"], "linf epsilon 76 is above the largest distance between two images"),
    (["--norms", "l2", "--epsilon", "510"], "0-255 units? Images here are in [0, 1], so write 8/255"),
    (["--corruptions", "{tmp}", "--attacks", "fgsm"], "--corruptions runs no attacks: drop --attacks"),
    (["--corruptions", "{tmp}", "--seed", "3"], "--corruptions runs no attacks: drop --seed"),
    (["--corruptions", "{tmp}", "--aa-version", "rand", "--norms", "l2"],
     "--corruptions runs no attacks: drop --norms and --aa-version"),
])
def test_bad_combinations_exit_2_in_one_line(argv, says, capsys, checkpoint, data_root, tmp_path):  # noqa: F811
    argv = [a.format(tmp=tmp_path, checkpoint=checkpoint) for a in argv]
    code, _, err = run(capsys, checkpoint, "--data-root", data_root, "--n", 8, *argv)
    assert_one_line_error(code, err, says)


def test_a_device_out_of_memory_while_the_width_is_measured_ends_in_one_line(capsys, checkpoint, data_root,
                                                                            monkeypatch):  # noqa: F811
    """CPU, with the probe of a full GPU faked: the line names -b, which skips the probe."""
    def full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(eval_script, "default_batch_size", full)
    code, _, err = run(capsys, checkpoint, "--data-root", data_root, "--n", 8, "--attacks", "fgsm")
    assert_one_line_error(code, err, "ran out of memory measuring the model's memory per image")
    assert "-b" in err


def test_a_device_out_of_memory_inside_an_attack_ends_in_one_line_that_names_b(capsys, checkpoint, data_root,
                                                                               monkeypatch):  # noqa: F811
    """CPU, with an attack that runs out of memory as on a full GPU: one line naming -b, no traceback."""
    class Full:
        def __init__(self, epsilon, **options):
            pass

        def __call__(self, model, x, y):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(ATTACKS, "fgsm", Full)
    code, _, err = run(capsys, checkpoint, "--data-root", data_root, "--n", 8, "--attacks", "fgsm", "-b", "4")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "ran out of memory in an attack at 4 images per attack call" in err and "-b 2" in err


# --- ε sweeps -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_writes_each_epsilons_accuracy_to_json_and_draws_it(capsys, own_checkpoint, data_root):  # noqa: F811
    code, out, err = run(capsys, own_checkpoint, "--sweep", "linf", "0:0.5:3", "--attacks", "fgsm", "pgd-50",
                         "--n", 16, "-b", 8, "--data-root", data_root)
    assert code == 0, err
    json_path = own_checkpoint.with_name("last.eval.n16_fgsm+pgd-50_sweep-linf-0_0.5_3.json")
    report = json.loads(json_path.read_text())
    sweep = report["sweep"]
    assert sweep["epsilons"] == [0, 0.25, 0.5] and sweep["epsilon_labels"] == ["0", "0.25", "0.5"]
    clean = report["clean"]["accuracy"]
    for curve in sweep["curves"]:
        assert curve["robust_accuracy"][0] == clean  # at ε 0 the ball is the image
        assert curve["robust_accuracy"][-1] < clean
    assert sweep["grey_image_bound"][0] == clean and sweep["grey_image_bound"][-1] < 0.3
    checks = {(c["check"], c["where"].split()[0]) for c in report["masking_checks"]}
    assert {("sweep-accuracy-rises", "PGD-50"), ("sweep-above-grey-bound", "FGSM")} <= checks
    plot = own_checkpoint.with_name("last.eval.n16_fgsm+pgd-50_sweep-linf-0_0.5_3.png")
    assert sweep["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ℓ∞ ε | 0 | 0.25 | 0.5 |" in out and "grey-image bound" in out


@pytest.mark.slow
def test_sweep_of_fractions_keeps_their_denominator_and_defaults_to_the_pgds(capsys, own_checkpoint,
                                                                           data_root, tmp_path):  # noqa: F811
    code, out, err = run(capsys, own_checkpoint, "--sweep", "linf", "0:16/255:3", "--n", 8, "-b", 8,
                         "--data-root", data_root, "--json", tmp_path / "sweep.json")
    assert code == 0, err
    sweep = json.loads((tmp_path / "sweep.json").read_text())["sweep"]
    assert sweep["epsilon_labels"] == ["0/255", "8/255", "16/255"]
    assert [c["label"] for c in sweep["curves"]] == ["PGD-50", "PGD-100"]
    assert (tmp_path / "sweep.png").is_file()


@pytest.mark.parametrize("norm, epsilons, says", [
    ("linf", "0:0.5:1", "COUNT must be at least 2"),
    ("linf", "0.3,0.1", "strictly increasing"),
    ("linf", "0.1,0.1", "strictly increasing"),
    ("linf", ",", "needs at least two epsilons"),
    ("linf", "0.1", "needs at least two epsilons"),
    ("linf", "0,inf", "finite"),
    ("linf", "a:b:c", "not a number"),
    ("linf", "0:1", "START:STOP:COUNT"),
    ("l3", "0:1:3", "sweep norm must be one of"),
])
def test_bad_sweeps_exit_2_in_one_line(norm, epsilons, says, capsys, checkpoint, data_root):  # noqa: F811
    code, _, err = run(capsys, checkpoint, "--sweep", norm, epsilons, "--data-root", data_root)
    assert_one_line_error(code, err, says)


# --- corruptions ---------------------------------------------------------------------------------------------

PER_SEVERITY = 4


def write_corruptions(folder, names=("fog", "gaussian_noise"), shape=(32, 32, 3), labels=None):
    """CIFAR-10-C's layout in miniature: <name>.npy of 5 x 4 uint8 HWC images, severity 1 first, and
    labels.npy of the 20 labels (the same 4 per severity)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = 5 * PER_SEVERITY
    np.save(folder / "labels.npy", np.tile(rng.integers(0, 10, PER_SEVERITY), 5) if labels is None else labels)
    for name in names:
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (count, *shape), dtype=np.uint8))
    return folder


@pytest.fixture
def cifar_checkpoint(tmp_path):
    torch.manual_seed(0)
    return write(tmp_path / "cifar.pt", "resnet20", "cifar10")


def test_corruptions_give_accuracy_per_corruption_and_severity(capsys, cifar_checkpoint, tmp_path):
    folder = write_corruptions(tmp_path / "CIFAR-10-C")
    code, out, err = run(capsys, cifar_checkpoint, "--corruptions", folder, "--n", 3, "--json", tmp_path / "c.json")
    assert code == 0, err
    report = json.loads((tmp_path / "c.json").read_text())
    corruptions = report["corruptions"]
    assert corruptions["images_per_severity"] == 3 and corruptions["available_per_severity"] == PER_SEVERITY
    model, _ = model_from_file(str(cifar_checkpoint))
    labels = np.load(folder / "labels.npy")
    for row in corruptions["per_corruption"]:
        images = np.load(folder / f"{row['corruption']}.npy")
        for severity in range(5):
            rows = slice(severity * PER_SEVERITY, severity * PER_SEVERITY + 3)  # the first 3 of each block
            x = torch.as_tensor(images[rows]).permute(0, 3, 1, 2).float().to(CPU) / 255
            with torch.no_grad():
                predicted = model(x).argmax(1).numpy()
            assert row["accuracy"][severity] == pytest.approx((predicted == labels[rows]).mean())
        assert row["mean"] == pytest.approx(sum(row["accuracy"]) / 5)
    assert [r["corruption"] for r in corruptions["per_corruption"]] == ["fog", "gaussian_noise"]
    assert corruptions["mean"] == pytest.approx(sum(r["mean"] for r in corruptions["per_corruption"]) / 2)
    assert "| corruption | severity 1 | severity 2 | severity 3 | severity 4 | severity 5 | mean |" in out
    assert "| fog |" in out and "| **mean** |" in out


@pytest.mark.parametrize("damage, says", [
    ("no folder", "no such folder"),
    ("no labels", "has no labels.npy"),
    ("grey images", "must hold 20 x 32 x 32 x 3 uint8 images"),
    ("labels not 5 x M", "must hold 5 x M integer labels"),
    ("4 severities of 5", "labels.npy holds 20 labels that are not 5 repeats of one block of 4"),
    ("labels of another data set", "labels outside 0..9"),
    ("not npy", "is not a readable .npy file"),
    ("no corruptions", "holds no <corruption>.npy files"),
])
def test_unusable_corruption_folders_exit_2_in_one_line(damage, says, capsys, cifar_checkpoint, tmp_path):
    folder = tmp_path / "C"
    if damage == "no labels":
        write_corruptions(folder).joinpath("labels.npy").unlink()
    elif damage == "grey images":
        write_corruptions(folder, shape=(28, 28, 1))
    elif damage == "labels not 5 x M":
        write_corruptions(folder, labels=np.zeros(19, dtype=np.int64))
    elif damage == "4 severities of 5":  # 20 images, as 5 severities of 4 would have
        write_corruptions(folder, labels=np.tile(np.arange(5), 4))
    elif damage == "labels of another data set":
        write_corruptions(folder, labels=np.full(20, 57))
    elif damage == "not npy":
        write_corruptions(folder).joinpath("fog.npy").write_bytes(b"not an array")
    elif damage == "no corruptions":
        write_corruptions(folder, names=())
    code, _, err = run(capsys, cifar_checkpoint, "--corruptions", folder, "--json", tmp_path / "c.json")
    assert_one_line_error(code, err, says)


def test_corruptions_of_a_data_set_without_a_published_set_are_refused(capsys, own_checkpoint, tmp_path):  # noqa: F811
    folder = write_corruptions(tmp_path / "CIFAR-10-C")
    code, _, err = run(capsys, own_checkpoint, "--corruptions", folder, "--json", tmp_path / "c.json")
    assert_one_line_error(code, err, "--corruptions reads CIFAR-10-C / CIFAR-100-C folders, for cifar10 and "
                                     "cifar100 models; this one is for mnist")


# --- AutoAttack version, JSON file, data root, warnings, help ------------------------------------------------

def test_aa_version_is_recorded_and_named_in_the_json(capsys, own_checkpoint, data_root,  # noqa: F811
                                                      monkeypatch):
    """CPU, AutoAttack stood in for by a cheap attack that takes the version (the real one's cost is beside the
    point here)."""
    versions = []

    def stand_in(epsilon, version, seed):
        versions.append(version)
        return lambda model, x, y: x
    monkeypatch.setitem(ATTACKS, "aa-linf", stand_in)
    code, out, err = run(capsys, own_checkpoint, "--norms", "linf", "--attacks", "fgsm", "aa", "--n", "8", "-b", "8",
                         "--aa-version", "rand", "--data-root", data_root)
    assert code == 0, err
    report = json.loads(own_checkpoint.with_name("last.eval.n8_linf_fgsm+aa_aa-rand.json").read_text())
    assert report["aa_version"] == "rand" and "pyautoattack's rand version" in out
    assert versions and set(versions) == {"rand"}


def test_a_different_evaluation_never_overwrites_the_json_silently(capsys, own_checkpoint, data_root):  # noqa: F811
    base = ("--data-root", data_root, "--norms", "linf", "--attacks", "fgsm", "-b", 8)
    assert run(capsys, own_checkpoint, *base, "--n", 8)[0] == 0
    assert run(capsys, own_checkpoint, *base, "--n", 12)[0] == 0  # another name: both kept
    small, larger = (own_checkpoint.with_name(f"last.eval.n{n}_linf_fgsm.json") for n in (8, 12))
    assert json.loads(small.read_text())["evaluation"]["n"] == 8
    assert json.loads(larger.read_text())["evaluation"]["n"] == 12

    code, _, err = run(capsys, own_checkpoint, *base, "--n", 12, "--json", small)
    assert_one_line_error(code, err, "holds a different evaluation; pass --force")
    assert json.loads(small.read_text())["evaluation"]["n"] == 8
    assert run(capsys, own_checkpoint, *base, "--n", 8, "--json", small)[0] == 0  # the same one again: fine
    assert run(capsys, own_checkpoint, *base, "--n", 12, "--json", small, "--force")[0] == 0
    assert json.loads(small.read_text())["evaluation"]["n"] == 12


@pytest.mark.parametrize("where, says", [("parent is a file", "cannot be written"), ("a folder", "is a folder")])
def test_json_that_cannot_be_written_exits_2_before_any_work(where, says, capsys, checkpoint, data_root,  # noqa: F811
                                                              tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "out.json" if where == "parent is a file" else tmp_path
    code, out, err = run(capsys, checkpoint, "--data-root", data_root, *FAST, "--json", target)
    assert_one_line_error(code, err, says)
    assert "clean accuracy" not in out


@pytest.mark.slow
def test_the_checkpoints_data_root_is_used_when_none_is_given(capsys, checkpoint, data_root, tmp_path):  # noqa: F811
    state = torch.load(checkpoint, weights_only=True)
    for name, stored in (("here.pt", str(data_root)), ("gone.pt", str(tmp_path / "moved"))):
        write(tmp_path / name, "mnist", "mnist", state["model"], {"data_root": stored})
    code, _, err = run(capsys, tmp_path / "here.pt", *FAST)
    assert code == 0, err
    report = json.loads((tmp_path / "here.eval.n16_linf_fgsm+pgd-50.json").read_text())
    assert report["evaluation"]["data_root"] == str(data_root)
    assert choose_data_root(None, {"data_root": str(tmp_path / "moved")}) == "./data"
    assert choose_data_root("given", {"data_root": str(data_root)}) == "given"


def test_data_other_than_the_checkpoints_training_data_is_warned_about(capsys, checkpoint, data_root,  # noqa: F811
                                                                       synthetic_mnist_root, tmp_path):
    training = {"ratio": 0.0, "subset": None, "seed": 1, "data_root": str(data_root)}
    train, val = train_val_splits("mnist", str(data_root), 0.0, None, 1)
    trained = write(tmp_path / "trained.pt", "mnist", "mnist", torch.load(checkpoint, weights_only=True)["model"],
                    training, data_digest(*train, *val))
    for root, warns in ((data_root, False), (synthetic_mnist_root, True)):
        out_json = tmp_path / f"warns-{warns}.json"
        code, _, err = run(capsys, trained, "--data-root", root, "--norms", "linf", "--attacks", "fgsm", "--n", 8,
                           "--json", out_json)
        assert code == 0, err
        says = "is not the data the checkpoint was trained and validated on"
        assert (says in err) == warns and len(err.strip().splitlines()) == warns
        assert any(says in w for w in json.loads(out_json.read_text())["warnings"]) == warns


@pytest.mark.parametrize("flag, terminal, shown", [(None, True, True), (None, False, False),
                                                   ("--progress", False, True), ("--no-progress", True, False)])
def test_progress_bars_show_on_a_terminal_unless_told_otherwise(flag, terminal, shown, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert parse_args(["ckpt.pt", *([flag] if flag else [])]).progress is shown


def test_a_progress_bar_gives_its_rate_and_time_left(capsys):
    from evaluation import Job
    from evaluation.units import JobBar
    job = Job("PGD-50", "pgd-linf", {}, "linf", 0.3, torch.arange(8), seed=0, model=torch.nn.Identity())
    bar = JobBar(job, [4, 4], 8, enabled=True)
    bar.update([True, False, False, False])
    bar.close()
    err = capsys.readouterr().err
    assert "img/s" in err and "<" in err and "robust=" in err  # rate, elapsed<left, running accuracy


@pytest.mark.slow
def test_epsilons_too_large_for_images_and_n_beyond_the_test_set_are_warned_about(capsys, own_checkpoint,
                                                                                  data_root):  # noqa: F811
    code, _, err = run(capsys, own_checkpoint, "--data-root", data_root, "--norms", "linf", "--attacks", "fgsm",
                       "--epsilon", "1", "--n", 100000)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 2
    assert "--n 100000 exceeds the 200 test images" in warnings[0]
    assert "linf epsilon 1 is at least the image diameter" in warnings[1]
    report = json.loads(own_checkpoint.with_name("last.eval.n100000_linf_fgsm_eps1.json").read_text())
    assert report["evaluation"]["n"] == 200 and len(report["warnings"]) == 2


def test_help_shows_defaults_every_flag_and_the_suite_per_family(capsys):
    parser = build_parser()
    assert all(action.help for action in parser._actions)
    with pytest.raises(SystemExit) as exit_info:
        eval_script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: 0)" in text and "(default: standard)" in text and "CHECKPOINT" in text
    assert "Robust accuracy of a checkpoint" in text  # eval.py's own docstring
    assert "mnist (mnist, fashionmnist):" in text and "linf 0.3: fgsm, pgd-50, pgd-100, deepfool, aa" in text
    assert "cifar (cifar10, cifar100, svhn):" in text and "l1 12: pgd-50, slide, aa" in text


@pytest.mark.slow
def test_a_reference_paras_pt_evaluates_to_the_figures_of_the_same_weights_in_our_checkpoint(
        capsys, checkpoint, data_root, tmp_path):
    """CPU. The reference's bare state_dict, told what it is by --model/--dataset, is the same network."""
    from weights import to_reference_state_dict
    model, _ = model_from_file(str(checkpoint))
    paras = tmp_path / "paras.pt"
    torch.save(to_reference_state_dict(model), paras)
    reports = []
    for path, extra in ((checkpoint, ()), (paras, ("--model", "mnist", "--dataset", "mnist"))):
        out_json = tmp_path / f"{path.stem}.json"
        code, _, err = run(capsys, path, *extra, *FAST, "--data-root", data_root, "--json", out_json)
        assert code == 0, err
        reports.append(json.loads(out_json.read_text()))
    ours, reference = reports
    assert reference["clean"] == ours["clean"]
    assert ([a["broken"] for t in reference["threat_models"] for a in t["attacks"]]
            == [a["broken"] for t in ours["threat_models"] for a in t["attacks"]])
    code, _, err = run(capsys, paras, *FAST, "--data-root", data_root, "--json", tmp_path / "x.json")
    assert_one_line_error(code, err, "--model and --dataset")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_weights_saved_from_a_ddp_or_compile_wrapper_are_refused_saying_how_to_strip_the_prefix(
        prefix, capsys, checkpoint, data_root, tmp_path):
    """CPU. A bare state_dict and one of our checkpoints whose weights carry the wrapper's prefix."""
    from weights import to_reference_state_dict
    model, meta = model_from_file(str(checkpoint))
    bare = tmp_path / "paras.pt"
    torch.save({prefix + k: v for k, v in to_reference_state_dict(model).items()}, bare)
    ours = write(tmp_path / "ours.pt", "mnist", "mnist", {prefix + k: v for k, v in model.state_dict().items()})
    for path, extra in ((bare, ("--model", "mnist", "--dataset", "mnist")), (ours, ())):
        code, _, err = run(capsys, path, *extra, *FAST, "--data-root", data_root, "--json", tmp_path / "x.json")
        assert_one_line_error(code, err, f"every key starts with '{prefix}'")
        assert f"k.removeprefix('{prefix}')" in err
