"""python -m gpt1f.finetune: every task kind learns its synthetic rule and resumes bit for bit;
presets read the public layouts; bad input exits 2 naming file:line, writing nothing."""
import json
import os
import subprocess
import sys

import optree
import pytest
import torch

import gpt1f
from gpt1f import checkpoint, optim
from gpt1f.finetune import cli
from gpt1f.finetune.task import Task
from tests.conftest import ROOT
from tests.test_train_rocstories import dirs, kill_after_first_checkpoint, read_log, without_time

TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "4", "--n_transfer", "-1", "--n_batch", "8",
        "--accum", "2", "--lm_coef", "0", "--embd_pdrop", "0", "--threads", "1"]

# kind -> (learning rate, primary metric, threshold, chance): the threshold is what a 1-block,
# 32-wide model from scratch reaches within 2 epochs of 15 updates, well above chance.
LEARNS = {"classification": ("1e-2", "acc", 80.0, 50.0),
          "entailment": ("1e-2", "acc", 60.0, 100 / 3),
          "similarity": ("1e-2", "pearson", 50.0, 0.0),
          "multiple_choice": ("2e-2", "acc", 60.0, 25.0)}


def run_in_process(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def finetune_process(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "gpt1f.finetune", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def state_template(latest, n_class):
    config = checkpoint.read_meta(latest)["fingerprint"]["config"]
    params = gpt1f.init_params(gpt1f.Config(**config), seed=0, n_class=n_class)
    return {"params": params, "opt_state": optim.openai_adam(t_total=1).init(params)}


@pytest.mark.parametrize("kind", sorted(LEARNS))
def test_each_kind_learns_its_rule_and_resumes_bit_identically_after_sigkill(tmp_path, kind):
    lr, metric, threshold, chance = LEARNS[kind]
    base = ["--task", kind, "--dataset", "synthetic", "--n_synthetic", "240", *TINY, "--lr", lr,
            "--n_iter", "2", "--save_every", "5", *dirs(tmp_path), "--submit"]
    whole = finetune_process([*base, "--desc", "whole"])
    killed = finetune_process([*base, "--desc", "killed"])
    latest = tmp_path / "save" / "killed" / "latest"
    kill_after_first_checkpoint(killed, latest, timeout=240)
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    interrupted_at = checkpoint.latest_step(latest)
    assert 0 < interrupted_at < 30

    _, log = read_log(tmp_path / "log" / "whole.jsonl")
    assert log[-1][f"va_{metric}"] >= threshold > chance, log[-1]

    resumed = finetune_process([*base, "--desc", "killed", "--resume"])
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resumed killed at update {interrupted_at}" in out + err
    n_class = {"classification": 2, "entailment": 3}.get(kind, 1)
    a, meta_a = checkpoint.restore(tmp_path / "save" / "whole" / "latest", state_template(latest, n_class))
    b, meta_b = checkpoint.restore(latest, state_template(latest, n_class))
    assert meta_a["progress"]["n_updates"] == meta_b["progress"]["n_updates"] == 30
    for x, y in zip(optree.tree_leaves(a), optree.tree_leaves(b)):
        assert torch.equal(x, y)
    _, log_b = read_log(tmp_path / "log" / "killed.jsonl")
    assert without_time(log) == without_time(log_b)
    predictions = [(tmp_path / "sub" / d / f"{kind}.tsv").read_text() for d in ("whole", "killed")]
    assert predictions[0] == predictions[1] and predictions[0].startswith("index\tprediction\n")


def write_sst2(folder, train_rows, dev_rows):
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    (folder / "test.tsv").write_text("index\tsentence\n" + "".join(
        f"{i}\t{s}\n" for i, (s, _) in enumerate(dev_rows)))


def test_a_preset_runs_on_its_public_layout_and_names_its_classes(tmp_path, capsys):
    good, bad = "a fine and warm film", "a dull and cold film"
    write_sst2(tmp_path / "glue" / "SST-2", [(good, 1), (bad, 0)] * 8, [(good, 1), (bad, 0)] * 2)
    argv = ["--task", "sst2", "--data_dir", str(tmp_path / "glue"), *TINY, "--lr", "1e-2",
            "--n_iter", "1", *dirs(tmp_path, data="glue"), "--submit"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    header, entries = read_log(tmp_path / "log" / "sst2.jsonl")
    assert header["task"] == "sst2" and list(entries[-1])[:6] == [
        "n_epochs", "n_updates", "tr_cost", "va_cost", "tr_acc", "va_acc"]
    rows = (tmp_path / "sub" / "sst2" / "sst2.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 5
    assert {r.split("\t")[1] for r in rows[1:]} <= {"negative", "positive"}


def test_own_files_with_a_label_map(tmp_path, capsys):
    rows = [("the cat sat", "the cat is sitting", "entails"), ("the cat sat", "a dog ran", "neutral")]
    for name, n in (("train.tsv", 8), ("valid.tsv", 2)):
        (tmp_path / name).write_text("p\th\ty\n" + "".join("\t".join(r) + "\n" for r in rows * n))
    argv = ["--task", "entailment", "--train", str(tmp_path / "train.tsv"), "--valid",
            str(tmp_path / "valid.tsv"), "--text_cols", "p,h", "--label_col", "y", "--label_map",
            "entails,neutral", *TINY, "--n_iter", "1", *dirs(tmp_path), "--desc", "own"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    _, entries = read_log(tmp_path / "log" / "own.jsonl")
    assert entries and "va_acc" in entries[-1]
    assert "4,386" not in out and "parameters" in out


@pytest.mark.parametrize("content, message", [
    ("p\th\ty\na\tb\tentails\nc\td\tmaybe\n", "train.tsv:3"),            # an unknown label
    ("p\th\ty\na\t\tentails\n", "train.tsv:2"),                          # an empty field
    ("p\tq\ty\na\tb\tentails\n", "h"),                                   # a missing column
    (b"p\th\ty\na\tb\xff\tentails\n", "train.tsv:2"),                    # not UTF-8
])
def test_bad_files_exit_2_naming_the_line_and_write_nothing(tmp_path, capsys, content, message):
    path = tmp_path / "train.tsv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "valid.tsv").write_text("p\th\ty\na\tb\tentails\n")
    argv = ["--task", "entailment", "--train", str(path), "--valid", str(tmp_path / "valid.tsv"),
            "--text_cols", "p,h", "--label_col", "y", "--label_map", "entails,neutral", *TINY,
            *dirs(tmp_path)]
    code, _, err = run_in_process(capsys, argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    for name in ("log", "save", "sub"):
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("argv, message", [
    (["--task", "sst2", "--train", "x.tsv"], "is a preset that reads --data_dir"),
    (["--task", "classification"], "needs --train --valid --text_cols"),
    (["--task", "similarity", "--dataset", "synthetic", "--train", "x"], "writes its own files"),
    (["--task", "entailment", "--train", "missing.tsv", "--valid", "missing.tsv", "--text_cols",
      "a,b"], "missing.tsv"),
    (["--task", "stsb"], "expected GLUE's STS-B folder"),
])
def test_bad_task_flags(tmp_path, capsys, argv, message):
    code, _, err = run_in_process(capsys, [*argv, *TINY, *dirs(tmp_path)])
    assert code == 2 and message in err, err


def test_a_similarity_score_outside_its_range_exits_2(tmp_path, capsys):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    row = "{}\tmain-news\tf\t2012\t0\tnone\tnone\ta man sings\ta man is singing\t{}\n"
    (folder / "train.tsv").write_text(header + row.format(0, "4.2") + row.format(1, "7.0"))
    (folder / "dev.tsv").write_text(header + row.format(0, "3.8"))
    argv = ["--task", "stsb", "--data_dir", str(tmp_path / "glue"), *TINY, *dirs(tmp_path, data="glue")]
    code, _, err = run_in_process(capsys, argv)
    assert code == 2 and "train.tsv:3" in err and "7" in err, err
    assert not (tmp_path / "log").exists()


def test_task_of_every_preset_is_consistent():
    for name, preset in cli.presets.PRESETS.items():
        task = preset.task
        assert isinstance(task, Task) and task.name == name
        assert preset.paper is None or preset.paper[0] == task.primary
    assert json.dumps(sorted(cli.TASKS))


def test_the_readme_quick_starts_parse():
    """The README's table of quick-start commands: every row is a valid command line."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Every task of the paper")[1].split("\n## ")[0]
    first = re.search(r"`(python -m gpt1f.finetune --task classification [^`]+)`", section).group(1)
    base = shlex.split(first)[3:]
    for kind in LEARNS:
        args = cli.parse_args([*base, "--task", kind])
        assert args.task == kind and args.dataset == "synthetic" and args.n_transfer == -1
