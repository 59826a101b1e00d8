"""``python -m gpt1f.generate`` on a synthetic release: tiny shards written by save_openai and the
stand-in vocabulary of tests/test_text.py, both under the release's file names."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import gpt1f
from gpt1f import generation_cli
from gpt1f.download import git_blob_sha1, read_manifest, write_manifest
from tests.conftest import ROOT
from tests.test_text import write_vocabulary


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(folder, params, cfg): vocabulary files plus a 2-block, 32-wide release of as many token
    rows as the vocabulary has pieces."""
    folder = tmp_path_factory.mktemp("release")
    encoder_path, _ = write_vocabulary(folder)
    n_vocab = len(json.loads(encoder_path.read_text(encoding="utf-8")))
    cfg = gpt1f.Config(n_vocab=n_vocab, n_special=0, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
    params = gpt1f.init_params(cfg, seed=9)
    gpt1f.save_openai(params, folder, cfg=cfg)
    # The stand-in vocabulary is not the release's: the folder's manifest vouches for it.
    files = {**read_manifest(folder), **{name: git_blob_sha1(folder / name)
                                         for name in gpt1f.download.VOCAB_NAMES}}
    write_manifest(folder, files)
    return folder, params, cfg


def run(capsys, release, *args):
    folder = release[0]
    code = generation_cli.main(["the cat sat", "--weights_dir", str(folder), "--n_head", "4",
                                "--offline", *args])
    out, err = capsys.readouterr()
    return code, out, err


def samples_of(out: str) -> list[str]:
    """The texts after each "=== sample n ===" line, numbered 1, 2, ... in order."""
    parts = re.split(r"^=== sample (\d+) ===\n", out, flags=re.M)
    assert [int(n) for n in parts[1::2]] == list(range(1, len(parts) // 2 + 1))
    return [text.removesuffix("\n") for text in parts[2::2]]


def test_samples_are_printed_under_headers_and_follow_the_seed(capsys, release):
    code, out, err = run(capsys, release, "--max_new_tokens", "12", "--top_k", "40",
                         "--seed", "0", "--n_samples", "4")
    assert code == 0, err
    assert out.startswith("prompt: the cat sat\n")
    samples = samples_of(out)
    assert len(samples) == 4 and len(set(samples)) == 4              # four keys, four texts
    assert run(capsys, release, "--max_new_tokens", "12", "--top_k", "40", "--seed", "0",
               "--n_samples", "4")[1] == out
    assert run(capsys, release, "--max_new_tokens", "12", "--top_k", "40", "--seed", "1",
               "--n_samples", "4")[1] != out


def test_samples_are_what_generate_gives_on_the_loaded_weights(capsys, release):
    folder, params, cfg = release
    code, out, _ = run(capsys, release, "--max_new_tokens", "8", "--greedy")
    assert code == 0
    encoder = gpt1f.TextEncoder(folder / "encoder_bpe_40000.json", folder / "vocab_40000.bpe",
                                special_tokens=())
    ids = encoder.encode_one("the cat sat")
    new = gpt1f.generate(params, [ids], cfg=cfg, max_new_tokens=8, greedy=True)[0]
    assert samples_of(out) == [encoder.decode(new)]


def test_score_prints_each_tokens_log_probability(capsys, release):
    folder, params, cfg = release
    code, out, err = run(capsys, release, "--score")
    assert code == 0, err
    encoder = gpt1f.TextEncoder(folder / "encoder_bpe_40000.json", folder / "vocab_40000.bpe",
                                special_tokens=())
    ids = encoder.encode_one("the cat sat")
    token_lp, total = gpt1f.score(params, torch.tensor([ids]), torch.ones(1, len(ids)), cfg=cfg)
    lines = out.splitlines()
    assert len(lines) == 1 + len(ids) + 1
    printed = [float(line.split()[-1]) for line in lines[2:-1]]
    assert printed == pytest.approx(token_lp[0].tolist(), abs=1e-4)
    assert lines[-1].startswith(f"total {total.item():.4f} over {len(ids) - 1} tokens")


def test_errors_exit_2_with_a_message(capsys, release, tmp_path):
    code, _, err = run(capsys, release, "--max_new_tokens", "70")
    assert code == 2 and "new tokens fit" in err
    code, _, err = run(capsys, release, "--temperature", "0")
    assert code == 2 and "temperature=0.0 must be > 0" in err
    code = generation_cli.main(["hi", "--weights_dir", str(tmp_path), "--offline"])
    _, err = capsys.readouterr()
    assert code == 2 and "missing" in err and "params_shapes.json" in err


def test_module_command_runs_without_runpy_warnings_and_import_stays_light():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "gpt1f.generate",
                           "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--max_new_tokens" in proc.stdout and "--score" in proc.stdout
    assert "Warning" not in proc.stderr
    check = ("import sys, gpt1f; assert callable(gpt1f.generate); "
             "print(sorted(m for m in ('transformers', 'spacy', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
