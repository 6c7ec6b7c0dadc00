"""Training recipe: configs, schedule, exact resume, vocabulary extension, the embedded recipe."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spiritlm.data.synthetic import toy_token_dirs
from spiritlm.train import load_train_config, train
from spiritlm.train.recipe import lr_factor
from spiritlm.trainer import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.overrides={model_dim: 64, num_layers: 2, num_attn_heads: 4, num_key_value_heads: 2, ffn_inner_dim: 128}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tok, train_dir, val_dir = toy_token_dirs(root, num_train=120, num_val=20)
    return tok, train_dir, val_dir


def cfg(data, out, *extra):
    _, train_dir, val_dir = data
    return load_train_config(
        None,
        SMALL
        + [
            f"data.data_dir={train_dir}", f"data.val_dir={val_dir}", "data.seq_len=64", "data.batch_size=4",
            "data.val_batches=2", f"train.output_dir={out}", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "optim.lr=2e-3", "optim.warmup_steps=2", "train.num_threads=1",
            *extra,
        ],
    )


def ckpt_weights(ckpt):
    """The model weights of a (sharded) training checkpoint, read in this process."""
    from spiritlm.model.sharded import iter_model_tensors

    return dict(iter_model_tensors(ckpt))


def read_train(out):
    return {int(k): v for k, v in json.loads((Path(out) / "metrics.json").read_text())["train"].items()}


def test_resume_reproduces_the_uninterrupted_run_exactly(data, tmp_path):
    extra = ["train.max_steps=6", "train.save_every=3", "train.val_every=3", "optim.grad_accum=2", "train.export_hf=false"]
    full = train(cfg(data, tmp_path / "full", *extra))
    part = train(cfg(data, tmp_path / "part", *extra, "train.stop_after=3"))
    assert part["final_step"] == 3 and set(part["train_loss"]) == {1, 2, 3}
    assert not (tmp_path / "part" / "checkpoints" / "step_6").exists()
    rest = train(cfg(data, tmp_path / "part", *extra))
    assert rest["final_step"] == 6 and set(rest["train_loss"]) == {4, 5, 6}
    a, b = read_train(tmp_path / "full"), read_train(tmp_path / "part")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step]["loss"] == b[step]["loss"], step  # bit-exact
        assert a[step]["lr"] == b[step]["lr"]
    assert full["val"][6] == rest["val"][6]
    wa = ckpt_weights(tmp_path / "full/checkpoints/step_6")
    wb = ckpt_weights(tmp_path / "part/checkpoints/step_6")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # every checkpoint file loads without unpickling arbitrary objects
    for f in (tmp_path / "part/checkpoints/step_6").glob("*.pt"):
        torch.load(f, weights_only=True)
    # losses do fall
    assert a[6]["loss"] < a[1]["loss"]


def test_text_stage_then_extended_vocabulary(data, tmp_path):
    tok = data[0]
    text = train(cfg(data, tmp_path / "text", "model.vocab_size=text", "data.subset_weights={text: 1.0}",
                     "data.val_subsets=[text]", "train.max_steps=20", "train.val_every=20"))
    assert text["val"][20]["text"] < text["val"][0]["text"]
    from spiritlm.model import load_hf_model

    m, c = load_hf_model(tmp_path / "text" / "hf")
    assert c.vocab_size == tok.num_text_pieces + 2 < tok.vocab_size
    assert set(text["val"][20]) == {"text"}
    mixed = train(cfg(data, tmp_path / "mixed", f"model.init_from={tmp_path / 'text'}", "train.max_steps=30",
                      "train.val_every=30"))
    m2, c2 = load_hf_model(tmp_path / "mixed" / "hf")
    assert c2.vocab_size == tok.vocab_size
    # the embedded recipe in miniature: continued pretraining lowers the loss of every subset
    assert set(mixed["val"][30]) == {"speech", "text", "interleaved"}
    for subset in ("speech", "text", "interleaved"):
        assert mixed["val"][30][subset] < mixed["val"][0][subset], subset
    # the run directory generates directly (its hf/ export + tokenizer.model)
    from spiritlm.generation import SpiritLM

    lm = SpiritLM.from_pretrained(tmp_path / "mixed")
    ids = lm.generate_with_details("the cat", output_modality="speech", max_new_tokens=10, do_sample=False)["ids"]
    assert ids and all(tok.is_speech_id(i) or i == tok.eos_id for i in ids)


def test_text_only_model_rejects_speech_data(data, tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        train(cfg(data, tmp_path / "bad", "model.vocab_size=text", "train.max_steps=2", "data.val_subsets=[text]"))


def test_lr_schedule():
    kw = dict(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [lr_factor(s, schedule="constant", **kw) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, schedule="cosine", **kw) for s in range(15)]
    assert cos[4] == 1.0 and abs(cos[9] - 0.55) < 1e-9 and abs(cos[14] - 0.1) < 1e-9
    assert all(x >= y for x, y in zip(cos[4:], cos[5:]))


def test_recipe_files_parse_and_errors_name_the_file(tmp_path):
    names = sorted(p.name for p in (REPO / "recipes/configs").glob("*.yaml"))
    assert {"tiny-text.yaml", "tiny-interleaved.yaml", "base-7b.yaml", "expressive-7b.yaml"} <= set(names)
    for name in names:  # the LM's: recipes of no other trainer's family (vocoder-*, tokenizer-*, judges-*)
        if not name.startswith(tuple(f"{f}-" for f in FAMILIES)):
            load_train_config(REPO / "recipes/configs" / name)
    with pytest.raises(ValueError, match=r"vocoder-tiny: no such recipe file \(--config\).*tiny-text"):
        load_train_config("vocoder-tiny")  # another trainer's recipe is not taken by name
    base = load_train_config(REPO / "recipes/configs/base-7b.yaml", ["optim.lr=1e-5"])
    assert base.optim.lr == 1e-5 and base.optim.schedule == "constant"
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*lrr"):
        load_train_config(bad)
    with pytest.raises(ValueError, match="schedule"):
        load_train_config(None, ["optim.schedule=linear"])


def test_train_cli(data, tmp_path):
    _, train_dir, val_dir = data
    out = tmp_path / "cli"
    from spiritlm.cli import main

    main([  # in process, as the console script runs it (test_cli.py::test_console_script_runs covers the launch)
        "train", "--config", str(REPO / "recipes/configs/tiny-interleaved.yaml"),
        "--model.init_from", "null", "--model.overrides", "{num_layers: 1, model_dim: 64}",
        "--data.data_dir", str(train_dir), "--data.val_dir", str(val_dir), "--data.seq_len", "32",
        "--data.batch_size", "2", "--train.output_dir", str(out), "--train.max_steps", "2", "--train.progress", "false",
        "--optim.warmup_steps", "1",
    ])
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "tokenizer.model").is_file()
    assert (out / "checkpoints" / "step_2" / "COMPLETE").is_file()
    assert list((out / "tb").iterdir())
    assert json.loads((out / "metrics.json").read_text())["final_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "fsdp-async"])
def test_torchrun_two_processes_resume_exactly(data, tmp_path, parallel):
    """2 CPU processes (gloo): a stopped and resumed run equals the uninterrupted one (also with
    checkpoints written in the background)."""
    _, train_dir, val_dir = data
    parallel, *mode = parallel.split("-")
    async_flags = ["--train.async_save", "true"] if mode else []

    def run(out, *extra):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "spiritlm.cli",
            "train", "--data.data_dir", str(train_dir), "--data.val_dir", str(val_dir), "--data.seq_len", "32",
            "--data.batch_size", "2", "--train.output_dir", str(out), "--train.max_steps", "4", "--train.log_every", "1",
            "--train.save_every", "2", "--train.parallel", parallel, "--train.progress", "false", "--train.num_threads", "1",
            "--model.overrides", "{num_layers: 2, model_dim: 64}", "--train.activation_checkpointing", "true", *async_flags, *extra,
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)

    run(tmp_path / "full")
    run(tmp_path / "part", "--train.stop_after", "2")
    run(tmp_path / "part")
    a, b = read_train(tmp_path / "full"), read_train(tmp_path / "part")
    assert sorted(a) == [1, 2, 3, 4]
    for step in a:
        drop = {"tokens_per_s"}
        assert {k: v for k, v in a[step].items() if k not in drop} == {k: v for k, v in b[step].items() if k not in drop}


def _worker(nproc, out, train_dir, max_steps, stop_after=None):
    """tests/train_worker.py on ``nproc`` processes: under torchrun for 2, in this process for 1
    (a world of one builds no process group, so it is the same run without a launch)."""
    if nproc == 1:
        import train_worker

        assert "WORLD_SIZE" not in os.environ
        return train_worker.main(str(out), str(train_dir), str(max_steps), None if stop_after is None else str(stop_after))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "tests" / "train_worker.py"), str(out), str(train_dir), str(max_steps)] + ([str(stop_after)] if stop_after else [])
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("first,then", [(2, 1), pytest.param(1, 2, marks=pytest.mark.slow)])
def test_resume_with_another_number_of_processes(data, tmp_path, first, then):
    """Issue 10: a checkpoint written by FSDP on 2 processes resumes on 1 process (and the other
    way): the weights and the AdamW state are resharded exactly, so with the same global batches
    the resumed run takes the same steps as an uninterrupted single-process run."""
    _, train_dir, _ = data
    _worker(1, tmp_path / "ref", train_dir, 4)
    _worker(first, tmp_path / "run", train_dir, 4, stop_after=2)
    _worker(then, tmp_path / "run", train_dir, 4)
    a, b = read_train(tmp_path / "ref"), read_train(tmp_path / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:  # float summation order differs between 1 and 2 processes, nothing else
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
    wa, wb = ckpt_weights(tmp_path / "ref/checkpoints/step_4"), ckpt_weights(tmp_path / "run/checkpoints/step_4")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    # the comparison is not vacuous: the steps after the resume moved the weights
    w2 = ckpt_weights(tmp_path / "ref/checkpoints/step_2")
    assert any((wa[k] - w2[k]).abs().max() > 1e-3 for k in wa)


def test_subset_losses_use_token_level_subsets():
    from spiritlm.train.recipe import subset_losses

    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    labels = torch.tensor([[7, 7, -100], [7, 7, 7]])
    batch = {"subset_ids": torch.tensor([[0, 1, 1], [1, 1, 2]]), "subsets": ["speech", "text", "interleaved"],
             "subset": ["speech", "text"]}
    assert subset_losses(batch, losses, labels) == {"speech": (1.0, 1.0), "text": (11.0, 3.0), "interleaved": (6.0, 1.0)}
    del batch["subset_ids"]
    assert subset_losses(batch, losses, labels) == {"speech": (3.0, 2.0), "text": (15.0, 3.0)}


def test_continued_pretraining_from_a_hf_llama(data, tmp_path):
    """base-7b.yaml's path in miniature: HF LLaMA (text vocabulary, theta 1e4) -> extended, theta 1e5."""
    from spiritlm.model import load_hf_model
    from fixtures import tiny_hf_llama

    tok = data[0]
    hf = tiny_hf_llama(tmp_path / "llama", vocab_size=tok.num_text_pieces, rope_theta=1e4, logit_scale=1.0)
    _, train_dir, val_dir = data
    config = load_train_config(None, [
        f"model.init_from={hf}", "model.overrides={rope_theta: 100000.0}", f"data.data_dir={train_dir}",
        f"data.val_dir={val_dir}", "data.seq_len=64", "data.batch_size=2", f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2", "train.progress=false", "train.tensorboard=false", "optim.lr=1e-3",
    ])
    train(config)
    model, cfg = load_hf_model(tmp_path / "run" / "hf")
    assert cfg.vocab_size == tok.vocab_size and cfg.rope_theta == 1e5 and cfg.model_dim == 64
    orig, _ = load_hf_model(hf)
    # the text rows moved by 2 AdamW steps only; the new rows exist and differ from each other
    emb = model.state_dict()["decoder_frontend.embed.weight"]
    assert emb.shape[0] == tok.vocab_size
    assert (emb[: tok.num_text_pieces] - orig.state_dict()["decoder_frontend.embed.weight"]).abs().max() < 0.01


# --- issue 12 (reliability) and issue 10 item 3 (one recipe parser) -----------------------------


@pytest.fixture(scope="module")
def six_step_run(data, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6 (the reference for resumes)."""
    out = tmp_path_factory.mktemp("six") / "run"
    extra = ["train.max_steps=6", "train.save_every=3", "train.keep_checkpoints=2", "train.export_hf=false"]
    train(cfg(data, out, *extra))
    return out, extra


@pytest.mark.parametrize("bad_file", ["dcp/__0_0.distcp", "dcp/.metadata", "trainer_state_rank0.pt"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(data, six_step_run, tmp_path, capsys, bad_file):
    """Issue 12 case 3: a truncated file in the newest checkpoint -> one-line warning naming it,
    resume from the previous complete checkpoint, same weights as the uninterrupted run; the
    resumed run's metrics.jsonl holds each step once (case 16)."""
    import shutil

    ref, extra = six_step_run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    victim = run / "checkpoints" / "step_6" / bad_file
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    capsys.readouterr()
    rest = train(cfg(data, run, *extra))
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(victim) in warnings[0], err
    assert "Traceback" not in err
    assert rest["final_step"] == 6 and set(rest["train_loss"]) == {4, 5, 6}
    assert (run / "checkpoints" / "step_6.bad" / bad_file).is_file()  # kept for inspection, never resumed from
    wa = ckpt_weights(ref / "checkpoints/step_6")
    wb = ckpt_weights(run / "checkpoints/step_6")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    assert [s for k, s in keys if k == "train"] == [1, 2, 3, 4, 5, 6]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    """Issue 12 case 3: keep_checkpoints counts complete checkpoints up to the one just written;
    a stale step_N with a larger N (a set-aside or abandoned timeline) cannot push it out."""
    from spiritlm.train.checkpoint import prune_checkpoints

    for step in (2, 3, 6, 4):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_{step}" / "COMPLETE").write_text(f"{step}\n")
    prune_checkpoints(tmp_path, newest=4, keep=1)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_4", "step_6"]
    prune_checkpoints(tmp_path, newest=4, keep=0)  # 0 keeps all
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4", "step_6"]


def test_export_is_atomic_and_load_any_model_takes_the_newest(data, tmp_path, caplog):
    """Issue 12 case 4 (hf part), case 9 (a changed --optim.lr is refused) and case 16 (loss lines
    without a progress bar)."""

    from spiritlm.model import export_step, load_any_model, load_hf_model, save_hf_model
    from spiritlm.train import RecipeError

    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="spiritlm")
    train(cfg(data, run, "train.max_steps=4", "train.save_every=2"))
    lines = [r.getMessage() for r in caplog.records]
    assert [ln for ln in lines if ln.startswith("[spiritlm train] step 4/4: loss ")], lines  # progress=false still logs the loss
    assert export_step(run / "hf") == 4
    # continue the run (a longer schedule) without reaching the end: no new export
    train(cfg(data, run, "train.max_steps=8", "train.stop_after=6", "train.save_every=2"))
    model, _, _ = load_any_model(run)
    newest = ckpt_weights(run / "checkpoints/step_6")
    assert torch.equal(model.state_dict()["decoder_frontend.embed.weight"], newest["decoder_frontend.embed.weight"])

    # a resume with another learning rate is refused, naming the flag; config.yaml is unchanged
    before = (run / "config.yaml").read_text()
    with pytest.raises(RecipeError, match=r"config.yaml.*--optim.lr"):
        train(cfg(data, run, "train.max_steps=8", "optim.lr=5e-3"))
    assert (run / "config.yaml").read_text() == before

    # an export that fails half-way leaves the previous one whole, and no temporary directory
    old = (run / "hf" / "model.safetensors").read_bytes()
    hf_model, hf_cfg = load_hf_model(run / "hf")
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(1.0)
    with pytest.raises(FileNotFoundError):
        save_hf_model(hf_model, hf_cfg, run / "hf", tokenizer_model=tmp_path / "missing.model", step=9)
    assert (run / "hf" / "model.safetensors").read_bytes() == old and export_step(run / "hf") == 4
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_recipe_values_are_checked_with_flag_names():
    """Issue 12 case 12: warmup longer than the run, negative or zero learning rates, and
    negative numbers written as separate arguments."""
    from spiritlm.train import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match=r"--optim.warmup_steps 50 .*--train.max_steps 10"):
        load_train_config(None, ["optim.warmup_steps=50", "train.max_steps=10"])
    with pytest.raises(RecipeError, match=r"--optim.lr must be positive, got -0.001"):
        parse_recipe(["--optim.lr", "-1e-3"])  # argparse alone reads -1e-3 as an option
    with pytest.raises(RecipeError, match=r"--optim.lr must be positive"):
        load_train_config(None, ["optim.lr=0"])
    assert parse_recipe(["--optim.min_lr_ratio", "-0"]).optim.min_lr_ratio == 0.0


def test_one_parser_with_typed_overrides(tmp_path):
    """Issue 10 item 3: the API and the CLI parse recipes the same way, typed by field."""
    from spiritlm.train import RecipeError, parse_recipe

    for path in sorted((REPO / "recipes/configs").glob("*.yaml")):
        if path.name.startswith(tuple(f"{f}-" for f in FAMILIES)):  # other trainers' recipes
            continue
        api = load_train_config(path, ["optim.lr=2e-5", "data.data_dir=1e5", "model.overrides={num_layers: 2}"])
        cli = parse_recipe(["--config", str(path), "--optim.lr", "2e-5", "--data.data_dir", "1e5",
                            "--model.overrides", "{num_layers: 2}"])
        assert api == cli, path
        assert api.data.data_dir == "1e5"  # a path that looks like a number stays a path
        assert api.optim.lr == 2e-5 and api.model.overrides == {"num_layers": 2}
    with pytest.raises(RecipeError, match=r"optim.lr"):
        load_train_config(None, ["optim.lr=abc"])
    with pytest.raises(RecipeError, match=r"missing.yaml: no such recipe file \(--config\)"):
        load_train_config(tmp_path / "missing.yaml")


def test_train_command_checks_paths_before_importing_torch(tmp_path):
    """Issue 12 case 12: a wrong --data.data_dir fails in one line before torch is imported."""
    code = (
        "import sys\n"
        "from spiritlm.cli import main\n"
        "try:\n"
        f"    main(['train', '--config', {str(REPO / 'recipes/configs/tiny-text.yaml')!r}, '--data.data_dir', {str(tmp_path / 'nope')!r}])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "exit 1 False", (out.stdout, out.stderr)
    assert out.stderr.strip() == f"spiritlm train: error: {tmp_path / 'nope'}: no such directory (--data.data_dir)"


# --- issue 18 items 9, 10, 13 (resume) -----------------------------------------------------------


@pytest.mark.parametrize("change", ["optim.warmup_steps=3", "optim.schedule=constant", "data.seed=1", "optim.grad_clip=0.5"])
def test_resume_refuses_settings_the_run_already_used(data, six_step_run, tmp_path, change):
    """Item 9: a resume with another schedule (or any setting the checkpoint overrides or the steps
    taken used) is refused naming the flag, and config.yaml still describes the run."""
    import shutil

    from spiritlm.train import RecipeError

    ref, extra = six_step_run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = (run / "config.yaml").read_text()
    key = change.split("=")[0]
    with pytest.raises(RecipeError, match=rf"config.yaml: this run was started with {key} .*--{key} "):
        train(cfg(data, run, *extra, change))
    assert (run / "config.yaml").read_text() == before
    # what only changes how the run goes on is accepted (and recorded)
    train(cfg(data, run, *extra, "train.log_every=2", "train.keep_checkpoints=1"))
    assert "log_every: 2" in (run / "config.yaml").read_text()


def test_first_loss_after_resume_equals_the_uninterrupted_run(data, tmp_path):
    """Item 10: save_every=3 is not a multiple of log_every=2: the checkpoint carries the partial
    log window, so the resumed run logs the same losses at the same steps."""
    extra = ["train.max_steps=6", "train.save_every=3", "train.log_every=2", "train.export_hf=false"]
    full = train(cfg(data, tmp_path / "full", *extra))
    part = train(cfg(data, tmp_path / "part", *extra, "train.stop_after=3"))
    assert set(part["train_loss"]) == {2}  # no partial window logged at the interruption
    rest = train(cfg(data, tmp_path / "part", *extra))
    assert set(full["train_loss"]) == {2, 4, 6} and set(rest["train_loss"]) == {4, 6}
    assert rest["train_loss"][4] == full["train_loss"][4] and rest["train_loss"][6] == full["train_loss"][6]
    assert {k: v["loss"] for k, v in read_train(tmp_path / "part").items()} == {k: v["loss"] for k, v in read_train(tmp_path / "full").items()}


def test_resume_on_rebuilt_data_is_one_line_naming_the_data_dir(tmp_path, capsys):
    """Item 13: a run resumed after its token directory was rebuilt with other documents ends in one
    line naming the checkpoint, the data directory and the flag (not `PackedLoader: state from a
    different loader`)."""
    import shutil

    from spiritlm.data.synthetic import toy_token_dirs
    from spiritlm.train import RecipeError

    d = toy_token_dirs(tmp_path / "data", num_train=40, num_val=8)
    extra = ["train.max_steps=4", "train.save_every=2", "train.export_hf=false"]
    train(cfg(d, tmp_path / "run", *extra, "train.stop_after=2"))
    other = toy_token_dirs(tmp_path / "other", num_train=60, num_val=8)
    shutil.rmtree(d[1])
    shutil.copytree(other[1], d[1])
    with pytest.raises(RecipeError, match=rf"step_2: its data position does not fit --data.data_dir {d[1]} .*num_docs"):
        train(cfg(d, tmp_path / "run", *extra))
