"""`edgevl distill` on a small CLIP teacher trained on the bundled photos (edgevl.models.tiny):
learning, export with fused attention and parity, the teacher-embedding cache, resume, DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevl.cli import main

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distill_ddp_worker.py"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A small trained CLIP checkpoint with a word-level tokenizer: decisive zero-shot picks, so
    agreement measures the student and not ties."""
    from edgevl.models.tiny import tiny_checkpoint

    return str(tiny_checkpoint(
        "clip", tmp_path_factory.mktemp("teacher") / "tiny-clip", steps=60,
        text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32)))


def _without_key_bias(name: str, value):  # noqa: ANN001, ANN202 - tensor
    """The key projection's bias adds the same q·b to every logit of a row, so softmax ignores it
    and its true gradient is 0: what reaches it is rounding noise, which Adam scales to full
    lr-sized steps. It is left out of cross-process comparisons; every other weight is compared."""
    if name.endswith("attn.qkv.bias"):
        width = value.shape[0] // 3
        return value[[i for i in range(value.shape[0]) if not width <= i < 2 * width]]
    return value


def _config(teacher: str, out: Path, **kw):  # noqa: ANN202 - DistillConfig
    from edgevl.distill import parse_student
    from edgevl.distill.config import DistillConfig

    base = dict(teacher=teacher, student=parse_student("vit-micro,text=inherit,text_layers=0+2"), data="bundled",
                out=out, steps=40, batch=32, text_batch=16, views=1, text_corpus="data", checkpoint_every=0,
                eval_every=0)
    return DistillConfig(**{**base, **kw})


def _weights(student) -> dict:  # noqa: ANN001 - StudentPair
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_inheriting_every_layer_reproduces_the_teacher_text_tower(teacher):
    import torch

    from edgevl.distill import parse_student
    from edgevl.distill.inherit import build_student
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    spec = resolve_model(teacher, LoadOptions())
    student = build_student(parse_student("vit-micro,text=inherit,text_layers=0+1+2"), spec, seed=0).eval()
    feeds = {k: torch.from_numpy(v) for k, v in spec.tokenize(["a photo of a cat.", "a rocket on the pad"]).items()}
    with torch.no_grad():
        torch.testing.assert_close(student.text(**feeds), spec.text.module(**feeds), atol=2e-5, rtol=0)
        fewer = build_student(parse_student("vit-micro,text=inherit,text_layers=0"), spec, seed=0).eval()
        assert not torch.allclose(fewer.text(**feeds), spec.text.module(**feeds), atol=1e-3)
        conv = build_student(parse_student("conv-tiny,resolution=32"), spec, seed=0).eval()
        embeds = conv.image(torch.randn(2, 3, 32, 32))
        width = spec.text.module(**feeds).shape[-1]
        assert embeds.shape == (2, width) and torch.allclose(embeds.norm(dim=-1), torch.ones(2))
        assert conv.text.arch.depth == 3 and not conv.text.arch.causal  # the fresh text transformer


@pytest.mark.slow
def test_distilled_student_learns_and_exports_fused_with_parity(teacher, tmp_path):
    from edgevl.distill.trainer import distill_run

    result = distill_run(_config(teacher, tmp_path / "student", eval_every=20), quiet=True)
    half = len(result.losses) // 2  # stage 1 (features) then stage 2 (joint): compare within each
    features, joint = result.losses[:half], result.losses[half:]
    assert sum(features[-5:]) / 5 < 0.6 * sum(features[:3]) / 3
    assert sum(joint[-5:]) / 5 < sum(joint[:3]) / 3
    untrained, trained = result.metrics[0], result.metrics[-1]
    assert untrained["step"] == 0 and trained["step"] == 40
    assert trained["agreement"] > untrained["agreement"] + 0.2
    assert trained["image_cosine"] > untrained["image_cosine"] + 0.3

    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "student"), "--target", "onnx", "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for artifact in manifest["artifacts"]:
        assert artifact["fused_attention"] == 2 and artifact["unfused_attention"] == 0
        assert artifact["parity"]["passed"] is True


def test_second_run_reads_cached_teacher_embeddings_without_running_the_teacher(teacher, tmp_path):
    from edgevl.distill.data import build_data
    from edgevl.distill.sources import load_heldout, load_source
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    spec = resolve_model(teacher, LoadOptions())
    calls = []
    for tower in (spec.image.module, spec.text.module):
        tower.register_forward_hook(lambda *_: calls.append(1))
    source, heldout = load_source("bundled"), load_heldout(None, "bundled")
    first = build_data(spec, source, heldout, 32, 1, 0, "data", tmp_path)
    assert not first.cache_hit and calls
    calls.clear()
    second = build_data(spec, source, heldout, 32, 1, 0, "data", tmp_path)
    assert second.cache_hit and not calls and second.cache_path == first.cache_path
    assert (second.teacher_image == first.teacher_image).all() and (second.teacher_text == first.teacher_text).all()
    other = build_data(spec, source, heldout, 32, 2, 0, "data", tmp_path)  # more views: other content
    assert not other.cache_hit and other.cache_path != first.cache_path and calls


@pytest.mark.slow
def test_resume_after_interrupt_reaches_the_uninterrupted_weights(teacher, tmp_path):
    import torch

    from edgevl.distill.checkpoint import latest_checkpoint
    from edgevl.distill.trainer import distill_run

    kw = dict(steps=12, batch=8, text_batch=4, checkpoint_every=4)
    whole = distill_run(_config(teacher, tmp_path / "whole", **kw), quiet=True)

    def interrupt(message: str) -> None:
        if "step 6/12" in message:
            raise KeyboardInterrupt

    cfg = _config(teacher, tmp_path / "cut", **kw)
    with pytest.raises(KeyboardInterrupt):
        distill_run(cfg, log=interrupt)
    assert latest_checkpoint(cfg.out).name == "step-000004"
    assert not (cfg.out / "student.json").exists()
    with pytest.raises(Exception, match="--resume"):
        distill_run(cfg, quiet=True)
    resumed = distill_run(cfg, resume=True, quiet=True)
    for name, value in _weights(whole.student).items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, atol=0, rtol=0)


def _worker():  # noqa: ANN202 - the worker module
    spec = importlib.util.spec_from_file_location("distill_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


def _reports(weights: Path, world: int) -> list[dict]:
    return [json.loads((weights / f"rank{r}.json").read_text()) for r in range(world)]


def _matches_one_process(teacher: str, tmp_path: Path, weights: Path, cache: Path, world: int) -> None:
    """Every rank's final weights are the same tensors, equal to one process's run with the same
    global batch (reading the cache the ranks filled)."""
    import torch
    from safetensors.torch import load_file

    from edgevl.distill.trainer import distill_run

    replicas = [load_file(str(weights / f"rank{r}.safetensors")) for r in range(world)]
    for name in replicas[0]:
        for r in range(1, world):
            assert torch.equal(replicas[0][name], replicas[r][name]), f"replicas 0 and {r} differ at {name}"
    single = distill_run(_worker().ddp_config(teacher, tmp_path / "single", cache), quiet=True)
    assert single.cache_hit
    state = single.student.state_dict()
    for name, value in replicas[0].items():
        torch.testing.assert_close(_without_key_bias(name, value), _without_key_bias(name, state[name]),
                                   atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert json.loads((tmp_path / "ddp" / "student.json").read_text())["world_size"] == world


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_and_rank_1_never_runs_the_teacher(teacher, tmp_path):
    cache, weights = tmp_path / "cache", tmp_path / "weights"
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), teacher, str(tmp_path / "ddp"), str(cache), str(weights)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _reports(weights, 2)
    assert rank0["teacher_calls"] > 0 and not rank0["cache_hit"]  # the empty cache: local rank 0 fills it
    assert rank1["local_rank"] == 1 and rank1["teacher_calls"] == 0 and rank1["cache_hit"]
    _matches_one_process(teacher, tmp_path, weights, cache, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_loopback_env() -> dict:
    """Gloo binds to the interface its host name resolves to unless told: keep it on loopback."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return {"GLOO_SOCKET_IFNAME": names[0]} if names else {}


@pytest.mark.slow
def test_two_nodes_on_localhost_each_fill_their_own_cache_and_match_one_process(teacher, tmp_path):
    """Two torchrun agents, one per "node", meet through a c10d rendezvous on 127.0.0.1; each node
    has its own cache folder, as machines without a shared file system would."""
    import torch

    if importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_gloo_available():
        pytest.skip("torchrun with the gloo backend is not in this torch build")
    weights, logs = tmp_path / "weights", []
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **_gloo_loopback_env()}
    endpoint, procs = f"127.0.0.1:{_free_port()}", []
    try:
        for node in (0, 1):
            logs.append(tmp_path / f"node{node}.log")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                   "--rdzv-id", "edgevl-distill-test", "--rdzv-conf", f"is_host={int(node == 0)},join_timeout=60",
                   "--local-addr", "127.0.0.1", "--max-restarts", "0",
                   str(WORKER), teacher, str(tmp_path / "ddp"), str(tmp_path / f"cache-node{node}"), str(weights)]
            with open(logs[-1], "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))
        deadline = time.monotonic() + 120
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("the two-node run took over 120 s: " + " | ".join(p.read_text()[-1500:] for p in logs))
    finally:
        for proc in procs:  # each agent leads its own session: its workers go with it
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    failed = [f"node {n} exit {proc.returncode}: {log.read_text()[-2000:]}"
              for n, (proc, log) in enumerate(zip(procs, logs)) if proc.returncode]
    assert not failed, "\n".join(failed)
    reports = _reports(weights, 2)
    assert sorted(r["cache"] for r in reports) == [str(tmp_path / "cache-node0"), str(tmp_path / "cache-node1")]
    for report in reports:  # one process per node: each is its node's local rank 0 and fills its cache
        assert report["local_rank"] == 0 and report["teacher_calls"] > 0 and not report["cache_hit"]
    files = [sorted(p.name for p in (tmp_path / f"cache-node{n}" / "distill").iterdir()) for n in (0, 1)]
    assert files[0] == files[1] and len(files[0]) == 1 and files[0][0].endswith(".safetensors")  # no temp left
    from safetensors.torch import load_file

    node0, node1 = (load_file(str(tmp_path / f"cache-node{n}" / "distill" / files[0][0])) for n in (0, 1))
    assert all(torch.equal(node0[k], node1[k]) for k in node0)  # same key, same teacher embeddings
    _matches_one_process(teacher, tmp_path, weights, tmp_path / "cache-node0", 2)


@pytest.mark.parametrize("argv, message", [
    (["--student", "vit-huge"], "preset 'vit-huge' is unknown"),
    (["--student", "vit-tiny,width=100"], "multiple of heads"),
    (["--student", "vit-tiny,depth=x"], "needs an integer"),
    (["--steps", "0"], "--steps 0 must be a positive integer"),
    (["--data", "/nonexistent/folder"], "--data /nonexistent/folder"),
])
def test_bad_distill_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["distill", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_distill_help_does_not_import_torch():
    probe = ("import sys\nfrom edgevl.cli import main\n"
             "try:\n    main(['distill', '--help'])\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--teacher" in proc.stdout


def test_learning_rate_defaults_by_how_the_student_starts():
    """2e-3 for students trained from scratch, 1e-4 for an image tower inherited from the teacher
    (docs/distillation.md: 2e-3 pulled the inherited tower away from the teacher in 20 steps);
    an explicit --lr wins."""
    from edgevl.cli import build_parser
    from edgevl.distill.command import INHERITED_LR, SCRATCH_LR, config_from_args

    def lr(*argv: str) -> float:
        return config_from_args(build_parser().parse_args(["distill", "--out", "o", *argv])).optim.lr

    assert lr("--student", "vit-tiny") == SCRATCH_LR == 2e-3
    assert lr("--student", "effnet-lite0") == INHERITED_LR == 1e-4
    assert lr("--student", "effnet-lite0", "--lr", "5e-4") == 5e-4
