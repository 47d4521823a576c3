"""The first hour of a new user, training side: --help, quick trials that flag a one-class model,
curves.png for runs of any length. CPU only."""
import matplotlib
import pytest
import torch

import ALP
from data import DATASETS
from models import MODELS
from training.flags import build_parser, parse_args
from training.records import curves_figure, plot_curves

matplotlib.use("Agg")
DEVICE = "cpu"


def test_help_shows_every_flag_with_a_help_line_and_its_default(capsys):
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings or action.dest
    with pytest.raises(SystemExit) as stop:
        ALP.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    usage = out.split("\n\n")[0]
    assert usage.split()[-2:] == ["MODEL", "DATASET"]  # metavars, not bare {...} lists
    assert "(default: True)" not in out and "(default: False)" not in out  # on/off switches show no default
    assert all(name in out for name in MODELS) and all(name in out for name in DATASETS)
    for default in ("(default: ./data)", "(default: ./runs)", "(default: 0.9)"):
        assert default in out, default
    assert "One process:  python ALP.py" in out  # the description keeps its own line breaks


def test_unknown_model_still_lists_the_choices_with_a_metavar(capsys):
    with pytest.raises(SystemExit):
        parse_args(["nonet", "mnist"])
    err = capsys.readouterr().err
    assert all(name in err for name in MODELS)


@pytest.mark.parametrize("misspelt, meant", [("--optimiser", "--optimizer"), ("--levrage", "--leverage"),
                                              ("-optimizer", "--optimizer")])
def test_a_misspelt_option_is_answered_with_the_option_it_most_likely_meant_on_cpu(capsys, misspelt, meant):
    with pytest.raises(SystemExit) as stop:
        parse_args(["mnist", "mnist", f"{misspelt}=adam"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{misspelt}: did you mean {meant}?" in err


def test_an_option_close_to_none_of_ours_gets_no_guess_on_cpu(capsys):
    with pytest.raises(SystemExit):
        parse_args(["mnist", "mnist", "--colour", "red"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --colour red" in err and "did you mean" not in err


class ConstantModel(torch.nn.Module):
    def __init__(self, label, num_classes=10):
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.label, device=x.device), self.num_classes).float()


def test_validation_counts_the_classes_it_predicts_and_a_one_class_model_is_flagged(capsys):
    from data import DeviceLoader
    from evaluation import constant_predictor_check
    from training.validation import validate
    images = torch.zeros(30, 1, 4, 4, dtype=torch.uint8, device=DEVICE)
    loader = DeviceLoader(images, torch.arange(30, device=DEVICE) % 10, batch_size=7, device=DEVICE)
    clean, robust, counts = validate(ConstantModel(3), loader, lambda model, x, y: x, 10, progress=True,
                                     desc="validating epoch 2")
    assert (clean, robust) == (0.1, 0.1) and counts.tolist() == [0, 0, 0, 30, 0, 0, 0, 0, 0, 0]
    assert "validating epoch 2" in capsys.readouterr().err  # the progress bar, 5 batches
    check = constant_predictor_check(counts)
    assert check.flagged and "predicts class 3 for 100" in check.message
    assert not constant_predictor_check(torch.tensor([5, 5, 4, 6, 5, 5, 5, 5, 5, 5])).flagged


def rows(n, validated_every=1):
    return [{"epoch": e, "train_loss": 2.0 - e / 1000, "train_adv_accuracy": 0.1 + e / 1000,
             "clean_accuracy": 0.5 + e / 1000 if e % validated_every == 0 else None,
             "robust_accuracy": 0.2 if e % validated_every == 0 else None} for e in range(1, n + 1)]


LONG_TITLE = ("mnist-mnist-ALP-lev0.5-pgd-linf-eps0.3-steps40-step0.01-adam-lr0.0001-wd0-null-ep84-b50-seed1"
              "-ratio0.1-subset500")


def plotted(ax):
    """{legend label: number of points} of an axis's lines."""
    return {line.get_label(): len(line.get_xdata()) for line in ax.lines}


@pytest.mark.parametrize("n, validated_every", [(1, 1), (2, 5), (3, 1), (30, 30), (200, 1)])
def test_curves_show_training_every_epoch_and_validation_where_it_ran_on_cpu(n, validated_every, tmp_path):
    fig = curves_figure(rows(n, validated_every), LONG_TITLE, robust_label="PGD-100 (ℓ∞ 0.3)")
    accuracy, loss = fig.axes
    assert loss.get_xlabel() == "epoch" and "accuracy" in accuracy.get_ylabel() and "loss" in loss.get_ylabel()
    assert accuracy.get_title().replace("\n", "") == LONG_TITLE  # all of it, wrapped
    fig.canvas.draw()
    title_box, figure_box = accuracy.title.get_window_extent(), fig.bbox
    assert title_box.x0 >= 0 and title_box.x1 <= figure_box.x1 and title_box.y1 <= figure_box.y1
    validated = sum(1 for r in rows(n, validated_every) if r["clean_accuracy"] is not None)
    assert plotted(accuracy) == {"training (adversarial half)": n, "validation, clean": validated,
                                 "validation, PGD-100 (ℓ∞ 0.3)": validated}
    assert plotted(loss) == {"training loss": n}  # every epoch, however rarely it validated
    if validated == 0:
        assert any("no validated epoch" in t.get_text() for t in accuracy.texts)
    for line in accuracy.lines + loss.lines:
        assert (line.get_marker() not in (None, "None", "")) == (len(line.get_xdata()) <= 40)
    plot_curves(rows(n, validated_every), str(tmp_path / "curves.png"), LONG_TITLE)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_shows_no_default_for_flags_whose_default_is_none(capsys):
    with pytest.raises(SystemExit):
        ALP.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "(default: cuda if present, else cpu)" in " ".join(out.split())


def test_help_says_which_defaults_depend_on_the_data_set_and_where_their_table_is(capsys):
    with pytest.raises(SystemExit):
        ALP.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 8/255 for cifar10, cifar100, svhn; 0.3 for mnist, fashionmnist)",  # as papers write ε
                    "(default: 0.1 for cifar10, cifar100, svhn; 0.0001 for mnist, fashionmnist)",
                    "(default: sgd for cifar10, cifar100, svhn; adam for mnist, fashionmnist)",
                    "(default: 200 for cifar10, cifar100, svhn; 84 for mnist, fashionmnist)",
                    "(default: 0.5)"):  # --leverage: the same for every data set
        assert default in out, default
    assert "Defaults that depend on the data set are the reference implementation's settings" in out
    assert "TRAINING_DEFAULTS in training/hyp.py" in out
