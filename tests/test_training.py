"""Training end to end at toy scale: data -> tokenizers -> tokens -> GST (+ exact resume, DDP) -> bundle
-> evaluation, through the same `training.build_default` command that builds the shipped model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from gst_model import GSTPipeline
from training import build_default, train_gst
from training.common import OptimConfig, lr_at

REPO = Path(__file__).resolve().parents[1]


def toy_config(tmp: Path) -> dict:
    cfg = yaml.safe_load((REPO / "training/configs/default.yaml").read_text())
    data = str(tmp / "data")
    pairs = {**cfg["pairs"], "root": data, "pairs_per_scene": 4}
    cfg.update(out=str(tmp / "model"), runs=str(tmp / "runs"), threads=1)
    cfg["synthetic"].update(out=data, scenes=6, views_per_scene=4, workers=1, split_fractions=[0.5, 0.25, 0.25])
    short = {"warmup_steps": 1, "max_steps": 2}
    for part in ("camera_tokenizer", "image_tokenizer"):
        cfg[part].update(data=pairs, batch_size=4, eval_every=2, save_every=2)
        cfg[part]["optim"].update(short)
    cfg["tokenize"].update(data=pairs)
    cfg["gst"].update(preset="tiny", batch_size=4, eval_every=2, save_every=2, eval_batches=1)
    cfg["gst"]["optim"].update(short)
    cfg["evaluate"].update(pairs=2, num_samples=2)
    cfg["pairs"] = pairs
    cfg["extra_train_data"] = {"synthetic": {"out": str(tmp / "extra_data"), "scenes": 2, "seed": 99, "workers": 1}}
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    cfg = toy_config(tmp)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    build_default.main(["--config", str(path)])
    return tmp, cfg


def test_build_produces_a_loadable_evaluated_model(built):
    tmp, cfg = built
    model = Path(cfg["out"])
    for name in ("config.json", "transformer.safetensors", "image_tokenizer.safetensors",
                 "camera_tokenizer.safetensors", "evaluation/metrics.json", "evaluation/report.md"):
        assert (model / name).is_file(), name
    pipe = GSTPipeline.from_pretrained(model)
    assert pipe.bundle.metadata["trained"] and pipe.bundle.metadata["training_steps"] == 2
    rng = np.random.default_rng(0)
    est = pipe.estimate_pose(rng.integers(0, 256, (64, 64, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8),
                             num_samples=2)
    assert est.c2w.shape == (4, 4)
    for curves in ("camera_tokenizer", "image_tokenizer", "gst"):
        assert (Path(cfg["runs"]) / curves / "train_curves.png").is_file()


def _gst_config(cfg: dict, out: Path, steps: int) -> train_gst.GSTTrainConfig:
    from training.common import _build

    gst = {**cfg["gst"], "tokens": str(Path(cfg["runs"]) / "tokens"), "out": str(out), "threads": 1}
    gst["optim"] = {**gst["optim"], "max_steps": steps, "warmup_steps": 1}
    return _build(train_gst.GSTTrainConfig, {**gst, "save_every": 2, "eval_every": 100})


def test_resume_is_exact(built, tmp_path):
    _, cfg = built
    straight = _gst_config(cfg, tmp_path / "straight", 4)
    straight.keep_every, straight.save_every = 2, 4  # weights kept at steps 2 and 4
    train_gst.main(straight)
    train_gst.main(_gst_config(cfg, tmp_path / "resumed", 2))
    half = load_file(str(tmp_path / "resumed/last/transformer.safetensors"))
    train_gst.main(_gst_config(cfg, tmp_path / "resumed", 4))  # continues from step 2
    a = load_file(str(tmp_path / "straight/last/transformer.safetensors"))
    b = load_file(str(tmp_path / "resumed/last/transformer.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept = {step: load_file(str(tmp_path / f"straight/step_{step:06d}/transformer.safetensors")) for step in (2, 4)}
    assert all(torch.equal(kept[2][k], half[k]) for k in a) and all(torch.equal(kept[4][k], a[k]) for k in a)
    assert not all(torch.equal(kept[2][k], a[k]) for k in a)


def test_init_from_fine_tunes_existing_weights(built, tmp_path):
    _, cfg = built
    source = train_gst.main(_gst_config(cfg, tmp_path / "source", 2))
    frozen = _gst_config(cfg, tmp_path / "tuned", 1)
    frozen.init_from = str(source)  # a model directory
    frozen.optim.lr = 0.0  # one step that cannot move the weights
    frozen.optim.weight_decay = 0.0
    a = load_file(str(source / "transformer.safetensors"))
    b = load_file(str(train_gst.main(frozen) / "transformer.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    wrong = _gst_config(cfg, tmp_path / "wrong", 1)
    wrong.init_from, wrong.model_overrides = str(source / "transformer.safetensors"), {"n_layer": 1}
    with pytest.raises(ValueError, match="differ from the configured model"):
        train_gst.main(wrong)


def test_alternating_objective_runs(built, tmp_path):
    _, cfg = built
    gst = _gst_config(cfg, tmp_path / "alt", 2)
    gst.objective = "alternating"
    assert (train_gst.main(gst) / "transformer.safetensors").is_file()


def _torchrun_gst(cfg: dict, out: Path, steps: int, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU (gloo) path; on a GPU machine nccl would want a GPU per process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train_gst", f"tokens={Path(cfg['runs']) / 'tokens'}", f"out={out}",
           "preset=tiny", "batch_size=2", f"optim.max_steps={steps}", "optim.warmup_steps=1", "eval_every=2",
           "save_every=2", "eval_batches=1", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from training.common import setup_distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="one GPU per process"):
        setup_distributed()


def test_two_process_ddp_and_fsdp_with_gloo(built, tmp_path):
    _, cfg = built
    _torchrun_gst(cfg, tmp_path / "ddp", 4, "log_every=1")
    _torchrun_gst(cfg, tmp_path / "fsdp", 4, "parallel=fsdp", "log_every=1")
    _torchrun_gst(cfg, tmp_path / "fsdp_resumed", 2, "parallel=fsdp")
    _torchrun_gst(cfg, tmp_path / "fsdp_resumed", 4, "parallel=fsdp")  # continues from step 2
    ddp, fsdp, resumed = (load_file(str(tmp_path / name / "last/transformer.safetensors"))
                          for name in ("ddp", "fsdp", "fsdp_resumed"))
    assert ddp.keys() == fsdp.keys() == resumed.keys()  # gathered FSDP state = plain model keys
    for key in ddp:
        assert torch.equal(fsdp[key], resumed[key]), key  # sharded optimizer state resumes exactly
    # Same maths as DDP: the same first loss and gradient norm (from the same initial weights), then losses
    # that stay close. Not bit-equal: Adam's first steps move parameters with ~0 gradient by +-lr, the sign
    # set by reduction-order noise, so later steps drift apart slightly.
    ddp_log, fsdp_log = (np.genfromtxt(tmp_path / name / "train_log.csv", delimiter=",", names=True)
                         for name in ("ddp", "fsdp"))
    assert len(ddp_log) == len(fsdp_log) == 4
    np.testing.assert_allclose(fsdp_log["loss"][0], ddp_log["loss"][0], rtol=1e-6)
    np.testing.assert_allclose(fsdp_log["grad_norm"][0], ddp_log["grad_norm"][0], rtol=1e-5)
    np.testing.assert_allclose(fsdp_log["loss"], ddp_log["loss"], rtol=1e-3)


def test_lr_schedule_shape():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_config_rejects_unknown_keys(tmp_path):
    from training.common import load_config

    with pytest.raises(ValueError, match="unknown GSTTrainConfig keys"):
        load_config(train_gst.GSTTrainConfig, None, ["not_a_field=1"])
    with pytest.raises(ValueError, match="unknown OptimConfig keys"):
        load_config(train_gst.GSTTrainConfig, None, ["optim.lrr=1"])


def test_config_reads_exponent_numbers(tmp_path):
    """YAML 1.1 parses `1e-3` as a string; number fields still get a number, and bad text a clear error."""
    from training.common import load_config

    (tmp_path / "c.yaml").write_text("optim: {lr: 3e-4}\nbatch_size: 8\n")
    cfg = load_config(train_gst.GSTTrainConfig, tmp_path / "c.yaml", ["optim.weight_decay=1e-2", "optim.max_steps=20"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.weight_decay == 1e-2 and cfg.optim.max_steps == 20
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.optim.max_steps, int)
    with pytest.raises(ValueError, match="OptimConfig.lr must be float"):
        load_config(train_gst.GSTTrainConfig, None, ["optim.lr=fast"])


def test_gst_log_has_the_validation_losses(built):
    _, cfg = built
    import csv
    rows = list(csv.DictReader(open(Path(cfg["runs"]) / "gst" / "train_log.csv")))
    last = rows[-1]
    for key in ("val_view", "val_pose", "val_camera", "val_camera_mismatched"):
        assert np.isfinite(float(last[key])), key


class _ReadsCameraFrom(torch.nn.Module):
    """A stand-in GST for pose sequences [obs T][<EST>][target T][camera T]: it predicts camera token j as
    code j of the target image, of the observation, or (None) knows nothing (uniform logits)."""

    def __init__(self, vocab, source: str | None):
        super().__init__()
        self.vocab, self.source = vocab, source

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        T = self.vocab.tokens_per_view
        logits = torch.zeros(*seq.shape, self.vocab.size)
        rows = torch.nonzero(seq[:, T] == self.vocab.est_token)[:, 0]  # pose sequences; view ones stay uniform
        if self.source is not None and len(rows):
            start = T + 1 if self.source == "target" else 0
            codes = seq[rows, start:start + T] + self.vocab.camera_offset
            logits[rows[:, None], torch.arange(2 * T, 3 * T), codes] = 30.0
        return logits


@pytest.mark.parametrize("source", ["target", "observation", None])
def test_gst_validation_reports_whether_the_pose_reads_the_images(source):
    """val_camera_mismatched gives each pose sequence another pair's target image: the camera loss of a model
    that reads the pose off the target image rises by nats, that of one reading only the observation (or
    nothing) stays exactly the same."""
    from gst_model.data.token_cache import TokenCache
    from gst_model.vocab import Vocabulary

    vocab, T, pairs = Vocabulary(image_codes=16, camera_codes=16, tokens_per_view=4), 4, 8
    image_codes = np.random.default_rng(0).integers(0, 16, (2 * pairs, T)).astype(np.int32)
    pair_rows = np.array([(2 * p, 2 * p + 1) for p in range(pairs)])
    # the pose is a function of the image the model is built to read
    camera_codes = image_codes[pair_rows[:, 0 if source == "observation" else 1]]
    cache = TokenCache(image_codes=image_codes, scene=np.arange(2 * pairs) // 2,
                       view_c2w=np.tile(np.eye(4), (2 * pairs, 1, 1)), view_K=np.tile(np.eye(3), (2 * pairs, 1, 1)),
                       pairs=pair_rows, rel_c2w=np.tile(np.eye(4), (pairs, 1, 1)), camera_codes=camera_codes,
                       scene_names=np.array([f"s{p}" for p in range(pairs)]), view_offsets=np.arange(pairs + 1) * 2)
    cfg = train_gst.GSTTrainConfig(batch_size=16, eval_batches=2)
    losses = train_gst.evaluate(_ReadsCameraFrom(vocab, source), cache, vocab, cfg, "cpu")
    gap = losses["val_camera_mismatched"] - losses["val_camera"]
    if source == "target":
        assert losses["val_camera"] < 1e-6 and gap > 10.0
    else:
        assert gap == 0.0
        assert losses["val_camera"] == pytest.approx(0.0 if source else np.log(vocab.size), abs=1e-6)


def test_camera_loss_weight_touches_only_pose_camera_tokens():
    from gst_model.transformer import GSTConfig, Transformer

    T = 4
    tasks = np.array([0, 1, 1])
    w = train_gst.loss_weights(tasks, T, 5.0)
    assert w.shape == (3, 2 * T)
    assert (w[0] == 1).all() and (w[1:, :T] == 1).all() and (w[1:, T:] == 5).all()
    torch.manual_seed(0)
    model = Transformer(GSTConfig.from_preset("tiny", vocab_size=12, grid_size=2)).eval()
    seq = torch.randint(0, 10, (3, 3 * T + 1))
    with torch.no_grad():
        per_token = train_gst.token_losses(model, seq, T)
        assert train_gst.sequence_loss(model, seq, T) == pytest.approx(per_token.mean().item(), rel=1e-6)
        assert train_gst.sequence_loss(model, seq, T, torch.ones(3, 2 * T)) == pytest.approx(
            per_token.mean().item(), rel=1e-6)
        expected = (per_token * w).sum() / w.sum()
        assert train_gst.sequence_loss(model, seq, T, w) == pytest.approx(expected.item(), rel=1e-6)


def test_dead_code_restart_reseeds_unused_rows_at_current_latents():
    import torch.nn.functional as F
    from gst_model.tokenizer import VQModel
    from training.train_tokenizer import DeadCodeRestarter

    torch.manual_seed(0)
    model = VQModel.from_preset("image-small")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    rec, enc = model(x)
    (F.mse_loss(rec, x) + enc.loss).backward()
    opt.step()
    weight = model.quantize.embedding.weight
    before = weight.detach().clone()
    restarter = DeadCodeRestarter(model, opt, threshold=0.03)
    for _ in range(100):
        restarter.observe(enc)
    live = torch.zeros(len(weight), dtype=torch.bool)
    live[enc.indices.unique()] = True
    restarted = restarter.restart(enc, np.random.default_rng(0))
    assert restarted == int((~live).sum()) > 0
    assert torch.equal(weight[live], before[live])
    latents = F.normalize(enc.prequant.detach().permute(0, 2, 3, 1).reshape(-1, weight.size(1)), dim=-1)
    cosine = F.normalize(weight[~live].detach(), dim=-1) @ latents.T
    assert (cosine.max(dim=1).values > 0.99).all()  # each re-seeded row sits on a latent of the batch
    assert (opt.state[weight]["exp_avg"][~live] == 0).all()
    assert restarter.restart(enc, np.random.default_rng(0)) == 0  # re-seeded rows get a fresh grace period


def test_extra_training_scenes_are_rendered_tokenized_and_trained_on(built):
    from gst_model.data.token_cache import TokenCache

    _, cfg = built
    runs = Path(cfg["runs"])
    main, extra = TokenCache.load(runs / "tokens" / "train.npz"), TokenCache.load(runs / "extra_tokens" / "train.npz")
    assert len(extra.scene_names) == 2 and not set(extra.scene_names) & set(main.scene_names)
    for split in ("val", "test"):  # held-out scenes stay those of the main dataset
        assert not (runs / "extra_tokens" / f"{split}.npz").exists()
    digests = [json.loads((runs / d / "meta.json").read_text())["tokenizers_sha256"] for d in ("tokens", "extra_tokens")]
    assert digests[0] == digests[1]
    state = torch.load(runs / "gst" / "last" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["config"]["extra_train_tokens"] == [str(runs / "extra_tokens")]
    with pytest.raises(ValueError, match="its own seed"):
        build_default.make_extra_tokens(cfg, {"synthetic": {"out": "elsewhere"}}, {})


def test_build_resumes_only_on_outputs_made_from_the_same_inputs(built, tmp_path):
    """Finished steps are skipped, but data or tokens made with other settings are an error, not reused."""
    from gst_model.data.make_synthetic import SyntheticConfig
    from training.common import _build

    _, cfg = built
    extra = _build(SyntheticConfig, {**cfg["synthetic"], **cfg["extra_train_data"]["synthetic"],
                                     "split_fractions": [1.0, 0.0, 0.0], "workers": 3})
    build_default.render_unless_present(extra)  # present and equal (worker count aside): skipped
    extra.scenes += 1
    with pytest.raises(ValueError, match="other settings"):
        build_default.render_unless_present(extra)

    runs, data = Path(cfg["runs"]), Path(cfg["synthetic"]["out"])
    from training import train_tokenizer
    wanted = _build(train_tokenizer.TokenizerTrainConfig, {**cfg["camera_tokenizer"], "threads": 2,
                                                           "out": str(runs / "camera_tokenizer")})
    assert build_default.tokenizer_present(runs / "camera_tokenizer", wanted)  # thread count aside: the same
    wanted.optim.max_steps += 1
    with pytest.raises(ValueError, match="other settings"):
        build_default.tokenizer_present(runs / "camera_tokenizer", wanted)
    assert not build_default.tokenizer_present(tmp_path / "none", wanted)

    assert build_default.tokens_present(runs / "tokens", str(data), ("train", "val", "test"))
    assert not build_default.tokens_present(tmp_path / "none", str(data), ("train",))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"] = manifest["splits"]["train"][1:]  # the data now holds other scenes
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="other scenes"):
        build_default.tokens_present(runs / "tokens", str(tmp_path), ("train",))


def test_extra_token_caches_join_only_with_the_same_tokenizers(built, tmp_path):
    import shutil
    from training.data import load_token_caches, load_tokens

    _, cfg = built
    tokens_dir = Path(cfg["runs"]) / "tokens"
    meta = json.loads((tokens_dir / "meta.json").read_text())
    assert set(meta["tokenizers_sha256"]) == {"image", "camera"}
    one, _ = load_tokens(tokens_dir, "train")
    twice, _ = load_token_caches([tokens_dir, tokens_dir], "train")
    assert twice.num_pairs == 2 * one.num_pairs and twice.num_views == 2 * one.num_views
    other = tmp_path / "other_tokens"
    shutil.copytree(tokens_dir, other)
    meta["tokenizers_sha256"]["camera"] = "0" * 64  # made with another camera tokenizer
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other tokenizers"):
        load_token_caches([tokens_dir, other], "train")


def test_codebook_init_keeps_the_tokenizers_code_similarities(built):
    import torch.nn.functional as F
    from gst_model.transformer import GSTConfig, Transformer
    from training.data import load_tokens
    from training.tokenize_dataset import load_trained_tokenizer

    _, cfg = built
    tokens_dir = Path(cfg["runs"]) / "tokens"
    _, vocab = load_tokens(tokens_dir, "train")
    model = Transformer(GSTConfig.from_preset("tiny", vocab_size=vocab.size, grid_size=int(vocab.tokens_per_view ** 0.5)))
    train_gst.init_embeddings_from_codebooks(model, tokens_dir, vocab, seed=0)
    for kind, offset, count in (("image", 0, vocab.image_codes), ("camera", vocab.camera_offset, vocab.camera_codes)):
        book = F.normalize(load_trained_tokenizer(Path(cfg["runs"]) / f"{kind}_tokenizer", kind).quantize.codebook(),
                           dim=-1)
        # the shipped bundle holds the same tokenizer
        bundled = load_trained_tokenizer(cfg["out"], kind).quantize.codebook()
        torch.testing.assert_close(F.normalize(bundled, dim=-1), book)
        emb = F.normalize(model.tok_embeddings.weight[offset: offset + count].detach(), dim=-1)
        torch.testing.assert_close(emb @ emb.T, book @ book.T, atol=1e-5, rtol=0)
        head = F.normalize(model.output.weight[offset: offset + count].detach(), dim=-1)
        torch.testing.assert_close(head, emb, atol=1e-6, rtol=0)
    special = model.tok_embeddings.weight[vocab.gen_token:]
    assert special.abs().max() < 0.2  # the task tokens keep their default init


def _turn(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return pose


def test_curriculum_draws_small_rotations_first_then_every_pair():
    angles = np.array([50.0, 5.0, 30.0, 10.0, 20.0, 40.0])
    rel = np.stack([_turn(a) for a in angles])
    cfg = train_gst.GSTTrainConfig(curriculum_steps=10, curriculum_start_deg=12.0)
    sampler = train_gst.PairSampler(rel, cfg)
    rng = np.random.default_rng(0)
    assert sampler.limit_deg(0) == pytest.approx(12.0) and sampler.limit_deg(5) == pytest.approx(31.0)
    assert set(angles[sampler(0, 200, rng)]) == {5.0, 10.0}
    assert set(angles[sampler(5, 200, rng)]) == {5.0, 10.0, 20.0, 30.0}
    assert set(angles[sampler(10, 400, rng)]) == set(angles)  # curriculum over: uniform over every pair
    # off: exactly the draws of the uniform sampler, so runs without a curriculum are unchanged
    off = train_gst.PairSampler(rel, train_gst.GSTTrainConfig())
    assert np.array_equal(off(0, 50, np.random.default_rng(3)), np.random.default_rng(3).integers(0, 6, 50))


def test_camera_label_smoothing_spreads_the_target_over_its_nearest_codes_only():
    codebook = torch.tensor([[0.0], [1.0], [2.1], [10.0]])  # camera codes 0..3 at token ids 5..8
    smoothing = train_gst.CameraSmoothing(codebook, camera_offset=5, eps=0.2, neighbours=1)
    assert smoothing.neighbours[:, 0].tolist() == [6, 5, 6, 7]
    logits = torch.randn(2, 3, 10)
    targets = torch.tensor([[0, 5, 8], [7, 4, 6]])  # image ids 0 and 4 are not smoothed
    logp = logits.log_softmax(-1)
    got = smoothing.losses(logits, targets)
    expected = -logp.gather(-1, targets[..., None])[..., 0]
    for b, t, near in ((0, 1, 6), (0, 2, 7), (1, 0, 6), (1, 2, 5)):
        expected[b, t] = -0.8 * logp[b, t, targets[b, t]] - 0.2 * logp[b, t, near]
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="camera_label_smoothing"):
        train_gst.CameraSmoothing(codebook, 5, 1.0, 1)


def test_curriculum_smoothing_and_ema_train_and_load_as_a_model(built, tmp_path):
    from training import generalization_study as g

    _, cfg = built
    gst = _gst_config(cfg, tmp_path / "variant", 2)
    gst.curriculum_steps, gst.camera_label_smoothing, gst.ema_decay = 2, 0.1, 0.5
    run = train_gst.main(gst).parent
    assert (run / "last" / "transformer.ema.safetensors").is_file()
    study = {"base_model": cfg["out"], "finetune": {"steps": 2}}
    model = g.model_at(study, run, 2, ema=True)
    ema = load_file(str(run / "last" / "transformer.ema.safetensors"))
    loaded = GSTPipeline.from_pretrained(model).bundle.transformer.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    with pytest.raises(ValueError, match="only for the last step"):
        g.model_at(study, run, 1, ema=True)


def test_partial_decoder_training_lowers_the_known_row_error_and_installs_into_the_model(built, tmp_path):
    import shutil

    from training import train_partial_decoder

    _, cfg = built
    model = tmp_path / "model"
    shutil.copytree(cfg["out"], model)
    out = tmp_path / "partial"
    assert train_partial_decoder.main(["--model", str(model), "--tokens", str(Path(cfg["runs"]) / "tokens"),
                                       "--steps", "40", "--batch-size", "8", "--out", str(out), "--install"]) == 0
    result = json.loads((out / "partial_decoder.json").read_text())
    before, after = result["val_before"], result["val_after"]
    assert after["partial_k1"] < before["partial_k1"]  # one known row: where the untrained copy is worst
    assert GSTPipeline.from_pretrained(model).bundle.camera_partial_decoder is not None


def test_ray_head_targets_are_the_rays_the_camera_tokens_encode(built):
    """Each camera token's target is its grid cell of the pair's true ray map: re-encoding the reassembled
    targets with the camera tokenizer gives the cached camera codes (so the K scaling matches tokenization)."""
    from training.data import load_tokens
    from training.tokenize_dataset import load_trained_tokenizer

    _, cfg = built
    tokens_dir = Path(cfg["runs"]) / "tokens"
    cache, vocab = load_tokens(tokens_dir, "train")
    grid = int(round(vocab.tokens_per_view ** 0.5))
    head = train_gst.RayHead(16, cache, tokens_dir, grid)
    idx = np.arange(min(4, cache.num_pairs))
    targets = head.targets(idx)  # [B, T, 6 p^2]
    p, R = head.patch, head.ray_size
    rays = targets.reshape(len(idx), grid, grid, 6, p, p).permute(0, 3, 1, 4, 2, 5).reshape(len(idx), 6, R, R)
    camera_vq = load_trained_tokenizer(cfg["out"], "camera")
    np.testing.assert_array_equal(camera_vq.encode_indices(rays).numpy(), cache.camera_codes[idx])
    # token (row 1, column 2) is the ray map's cell of rows p..2p-1, columns 2p..3p-1
    np.testing.assert_array_equal(targets[0, grid + 2].reshape(6, p, p).numpy(), rays[0, :, p:2 * p, 2 * p:3 * p].numpy())


def test_ray_head_reads_the_positions_that_predict_camera_tokens(built):
    from training.data import load_tokens

    _, cfg = built
    tokens_dir = Path(cfg["runs"]) / "tokens"
    cache, vocab = load_tokens(tokens_dir, "train")
    T = vocab.tokens_per_view
    head = train_gst.RayHead(3, cache, tokens_dir, int(round(T ** 0.5)))
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, h):
            seen.append(h)
            return torch.zeros(*h.shape[:2], 6 * head.patch ** 2)

    head.proj = Recorder()
    head.hidden = torch.arange(3 * T, dtype=torch.float32)[None, :, None].expand(2, -1, 3)  # hidden row t holds t
    head(np.array([0, 1]), np.array([0, 0]), T)  # a view sequence, then a pose sequence
    assert seen[0][0, :, 0].tolist() == list(range(T, 2 * T))  # view: camera tokens T+1..2T
    assert seen[0][1, :, 0].tolist() == list(range(2 * T, 3 * T))  # pose: camera tokens 2T+1..3T


def test_ray_loss_trains_resumes_exactly_and_leaves_the_model_format(built, tmp_path):
    _, cfg = built
    straight = _gst_config(cfg, tmp_path / "straight", 4)
    straight.ray_loss_weight, straight.save_every = 1.0, 4
    train_gst.main(straight)
    for steps in (2, 4):
        resumed = _gst_config(cfg, tmp_path / "resumed", steps)
        resumed.ray_loss_weight = 1.0
        train_gst.main(resumed)
    for name in ("transformer", "ray_head"):
        a = load_file(str(tmp_path / f"straight/last/{name}.safetensors"))
        b = load_file(str(tmp_path / f"resumed/last/{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    with_rays = load_file(str(tmp_path / "straight/last/transformer.safetensors"))
    plain = load_file(str(train_gst.main(_gst_config(cfg, tmp_path / "plain", 4)) / "transformer.safetensors"))
    assert plain.keys() == with_rays.keys()  # the head is not part of the model
    assert not all(torch.equal(plain[k], with_rays[k]) for k in plain)  # its gradient reaches the transformer
