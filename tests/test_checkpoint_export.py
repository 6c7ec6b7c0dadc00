"""Sharded checkpoints (issue 10): the streamed Hugging Face export, `spiritlm checkpoint`,
asynchronous saves, and single-process reading of the shards."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch

from spiritlm.data.synthetic import toy_token_dirs
from spiritlm.train import load_train_config, train

SMALL = "model.overrides={model_dim: 64, num_layers: 2, num_attn_heads: 4, num_key_value_heads: 2, ffn_inner_dim: 128}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return toy_token_dirs(tmp_path_factory.mktemp("data"), num_train=60, num_val=10)


def cfg(data, out, *extra):
    _, train_dir, _ = data
    return load_train_config(None, [
        SMALL, f"data.data_dir={train_dir}", "data.seq_len=32", "data.batch_size=2", f"train.output_dir={out}",
        "train.log_every=1", "train.progress=false", "train.tensorboard=false", "optim.lr=2e-3", "optim.warmup_steps=1",
        "train.num_threads=1", *extra,
    ])


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(cfg(data, out, "train.max_steps=4", "train.save_every=2"))
    return out


def test_streamed_export_equals_the_in_memory_export(run, tmp_path):
    """The recipe's hf/ (streamed from the shards) holds the same tensors and config as the
    in-memory exporter (fairseq2's converter) applied to the same weights."""
    from safetensors.torch import load_file

    from spiritlm.model import export_step, load_model, save_hf_model

    model, config = load_model(run / "checkpoints" / "step_4")
    ref = save_hf_model(model, config, tmp_path / "ref", tokenizer_model=run / "tokenizer.model")
    a, b = load_file(str(run / "hf" / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.loads((run / "hf" / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    assert (run / "hf" / "tokenizer.model").read_bytes() == (ref / "tokenizer.model").read_bytes()
    assert export_step(run / "hf") == 4


def test_transformers_reads_the_streamed_export(run):
    transformers = pytest.importorskip("transformers")
    from fairseq2.nn import BatchLayout

    from spiritlm.model import load_model

    model, _ = load_model(run / "checkpoints" / "step_4")
    hf = transformers.LlamaForCausalLM.from_pretrained(run / "hf").eval()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model.eval()(ids, BatchLayout.of(ids)), rtol=1e-4, atol=1e-4)


def test_streamed_writer_holds_one_tensor_at_a_time(tmp_path):
    """Each tensor is released before the next one is requested, and the file reads back."""
    from safetensors.torch import load_file

    from spiritlm.model.hf import write_streamed_safetensors

    shapes = {f"w{i}": ((3, 5 + i), torch.float32) for i in range(4)} | {"b": ((7,), torch.bfloat16)}
    alive: list[weakref.ref] = []
    expected = {}

    def tensors():
        for name in ["b", "w2", "w0", "w3", "w1"]:  # any order
            gc.collect()
            assert all(r() is None for r in alive), "a tensor already written is still held"
            t = torch.randn(shapes[name][0]).to(shapes[name][1])
            expected[name] = t.clone()
            alive.append(weakref.ref(t))
            yield name, t
            del t

    write_streamed_safetensors(tmp_path / "m.safetensors", shapes, tensors())
    back = load_file(str(tmp_path / "m.safetensors"))
    assert sorted(back) == sorted(expected) and all(torch.equal(back[k], expected[k]) for k in back)
    with pytest.raises(ValueError, match="not written"):
        write_streamed_safetensors(tmp_path / "x.safetensors", shapes, iter([("b", expected["b"])]))
    with pytest.raises(ValueError, match="w0 is"):
        write_streamed_safetensors(tmp_path / "y.safetensors", shapes, iter([("w0", torch.zeros(2, 2))]))


def test_checkpoint_commands(run, tmp_path, capsys):
    from safetensors.torch import load_file

    from spiritlm.cli import main

    ckpt = run / "checkpoints" / "step_2"
    main(["checkpoint", "info", "--checkpoint", str(ckpt)])
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 2 and info["world_size"] == 1 and info["complete"] and 0 <= info["optimizer_bytes"] - 2 * info["model_bytes"] < 1000  # exp_avg, exp_avg_sq + step counters

    main(["checkpoint", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    w = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in w.values())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"

    def error(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code not in (0, None)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    assert "--out" in error(["checkpoint", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "bf16")])
    assert "--checkpoint" in error(["checkpoint", "export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(ckpt, broken)
    shard = next((broken / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    msg = error(["checkpoint", "export", "--checkpoint", str(broken), "--out", str(tmp_path / "o")])
    assert str(shard) in msg and "truncated" in msg
    assert not (tmp_path / "o").exists()
    (broken / "COMPLETE").unlink()
    assert "COMPLETE" in error(["checkpoint", "export", "--checkpoint", str(broken), "--out", str(tmp_path / "o")])


def test_async_save_writes_the_same_checkpoints(data, run, tmp_path):
    """--train.async_save: same losses, same weights in every checkpoint, each marked COMPLETE."""
    from spiritlm.model.sharded import iter_model_tensors

    out = tmp_path / "async"
    train(cfg(data, out, "train.max_steps=4", "train.save_every=2", "train.async_save=true", "train.keep_checkpoints=0"))
    for step in (2, 4):
        a = dict(iter_model_tensors(run / "checkpoints" / f"step_{step}"))
        b = dict(iter_model_tensors(out / "checkpoints" / f"step_{step}"))
        assert all(torch.equal(a[k], b[k]) for k in a), step
        assert (out / "checkpoints" / f"step_{step}" / "COMPLETE").read_text() == f"{step}\n"
    la = json.loads((run / "metrics.json").read_text())["train"]
    lb = json.loads((out / "metrics.json").read_text())["train"]
    assert {k: v["loss"] for k, v in la.items()} == {k: v["loss"] for k, v in lb.items()}
    # and it resumes like a synchronous run
    rest = train(cfg(data, out, "train.max_steps=6", "train.save_every=2", "train.async_save=true"))
    assert set(rest["train_loss"]) == {5, 6}


def test_a_checkpoint_without_complete_marker_is_never_resumed(data, run, tmp_path):
    """A save killed before COMPLETE (the marker comes after every rank's shards) is ignored."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "checkpoints" / "step_4" / "COMPLETE").unlink()
    shutil.rmtree(out / "hf")
    rest = train(cfg(data, out, "train.max_steps=4", "train.save_every=2"))
    assert set(rest["train_loss"]) == {3, 4}  # resumed from step 2, redid 3 and 4
    assert (out / "checkpoints" / "step_4" / "COMPLETE").is_file()


class _Payload:
    """Pickles to a call of ``exec`` that would write a marker file (a hostile ``.metadata``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_hostile_dcp_metadata_runs_no_code(data, run, tmp_path, capsys):
    """Issue 18 item 1: a checkpoint whose dcp/.metadata unpickles to a code call is refused by
    `checkpoint info`, `checkpoint export`, loading (generate's path) and a training resume, in
    one line naming the file, and the code never runs (DCP's reader is a plain pickle.load)."""
    import pickle
    import shutil

    from spiritlm.cli import main
    from spiritlm.model import load_any_model
    from spiritlm.model.sharded import MetadataError, read_metadata

    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.rmtree(out / "hf")
    hostile = out / "checkpoints" / "step_4" / "dcp" / ".metadata"
    hostile.write_bytes(pickle.dumps(_Payload(marker)))
    # the genuine metadata still reads (the allow-list covers what DCP writes)
    assert read_metadata(run / "checkpoints" / "step_4").state_dict_metadata

    def error(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    ckpt = out / "checkpoints" / "step_4"
    assert str(hostile) in error(["checkpoint", "info", "--checkpoint", str(ckpt)])
    assert not marker.exists()
    assert str(hostile) in error(["checkpoint", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")])
    with pytest.raises(MetadataError, match=str(hostile)):
        load_any_model(out)
    assert not marker.exists()
    # resuming: the hostile checkpoint is set aside with a warning naming the file, step 2 is used
    rest = train(cfg(data, out, "train.max_steps=4", "train.save_every=2"))
    assert not marker.exists()
    assert set(rest["train_loss"]) == {3, 4}
    assert str(hostile) in capsys.readouterr().err
    assert (out / "checkpoints" / "step_4.bad" / "dcp" / ".metadata").is_file()
