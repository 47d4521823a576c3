"""ALP.py's defaults by data set (training/hyp.py): the reference's MNIST settings for MNIST-type
data, its CIFAR settings for the others, explicit flags winning, args.json recording what ran, and runs
started when every data set had CIFAR's defaults still resuming. Everything runs on the CPU."""
import json
import os
import shlex

import pytest

import ALP
from reference import TABLES
from training.flags import parse_args
from conftest import ROOT

DEVICE = "cpu"


def readme_command(model, dataset):
    """The flags of the README's reference command for `dataset` (Train section: the one that sets -lp), as a
    list."""
    start = f".venv/bin/python ALP.py {model} {dataset} -lp="
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.strip().startswith(start):
            start = start[:-len("-lp=")]
            return shlex.split(line.strip()[len(start):])
    raise AssertionError(f"no reference command for {model} {dataset} in the README")


def parsed(*argv):
    return vars(parse_args([*argv, f"--device={DEVICE}"]))


@pytest.mark.parametrize("model, dataset", [("mnist", "mnist"), ("mnist", "fashionmnist"),
                                            ("resnet32", "cifar10"), ("resnet32", "cifar100")])
def test_without_flags_a_data_set_trains_with_the_readmes_reference_command(model, dataset):
    assert parsed(model, dataset) == parsed(model, dataset, *readme_command(model, dataset))


def test_mnist_defaults_are_the_reference_mnist_settings_not_cifars():
    args = parse_args(["mnist", "mnist", f"--device={DEVICE}"])
    assert (args.epsilon, args.stepsize, args.steps) == (0.3, 0.01, 40)
    assert (args.optimizer, args.lr, args.weight_decay, args.learning_policy) == ("adam", 1e-4, 0, "null")
    assert (args.batch_size, args.epochs, args.leverage) == (50, 84, 0.5)


def test_svhn_gets_cifars_defaults():
    assert parsed("resnet20", "svhn") == parsed("resnet20", "svhn", *readme_command("resnet32", "cifar10"))


def test_explicit_flags_win_over_the_data_sets_defaults():
    args = parse_args(["mnist", "mnist", "--epsilon=8/255", "-lr=0.01", "--optimizer=sgd", "-b=64",
                           f"--device={DEVICE}"])
    assert (args.epsilon, args.lr, args.optimizer, args.batch_size) == (pytest.approx(8 / 255), 0.01, "sgd", 64)
    assert (args.steps, args.stepsize, args.epochs) == (40, 0.01, 84)  # the flags not given: MNIST's


def test_a_bad_default_free_flag_is_still_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["mnist", "mnist", "--epsilon=inf"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "finite" in err


# What ALP.py's defaults were for every data set before they depended on it: CIFAR's.
FORMER_FLAGS = ["-lp=AT", "--epochs=200", "-wd=0.0002", "--leverage=0.5", "--optimizer=sgd", "-lr=0.1",
                "-mom=0.9", "-b=128", "--epsilon=8/255", "--steps=10", "--stepsize=2/255"]


def test_a_run_of_the_former_defaults_resumes_with_its_values_given_and_says_which(synthetic_mnist_root, tmp_path,
                                                                                  capsys, cheap_validation):
    """CPU. A run started as `ALP.py mnist mnist --epochs=1 --subset=200` before this change trained with
    CIFAR's values; the same command with --resume names the flags that find it, and with them it resumes."""
    command = ["mnist", "mnist", "--epochs=1", "--subset=200", "--steps=1", "--device=cpu",
               "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)]
    former = [flag for flag in FORMER_FLAGS if not flag.startswith(("--epochs=", "--steps="))]
    ALP.main([*command, *former])  # what the command ran as before
    (folder,) = os.listdir(tmp_path)
    assert "-eps0.03137-" in folder and "-sgd-lr0.1-" in folder
    capsys.readouterr()

    with pytest.raises(SystemExit) as stop:
        ALP.main([*command, "--resume"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert folder in err and "were CIFAR's" in err
    given = err.split("add ", 1)[1].split()
    assert ALP.main([*command, "--resume", *given]) is None  # found, and finished
    assert "is finished" in capsys.readouterr().out


def test_args_json_records_the_defaults_that_ran_and_the_log_names_them(synthetic_mnist_root, tmp_path, capsys,
                                                                       cheap_validation):
    """CPU."""
    ALP.main(["mnist", "mnist", "--epochs=1", "--subset=100", "--steps=2", "--device=cpu",
              "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    (record,) = tmp_path.glob("*/args.json")
    args = json.loads(record.read_text())["runs"][0]["args"]
    assert (args["epsilon"], args["stepsize"], args["optimizer"], args["lr"], args["batch_size"]) == (
        0.3, 0.01, "adam", 1e-4, 50)
    assert args["steps"] == 2  # given
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mnist's defaults:")]
    assert "--learning_policy null" in line and "--epsilon 0.3" in line and "--steps " not in line


@pytest.mark.parametrize("name", TABLES)
def test_each_reference_table_trains_with_our_defaults_but_its_network_and_leverage(name):
    """reproduce.py runs the reference's commands as written (reference.py); ALP.py without flags must train
    what they train, so that the README's short commands reproduce the same tables."""
    table = TABLES[name]
    model, dataset = table.training[:2]
    assert parsed(*table.training) == parsed(model, dataset, f"--leverage={table.leverage}")
