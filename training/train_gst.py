"""Train the GST transformer on pre-tokenised pairs (see training.tokenize_dataset).

Each training pair (observation o, target view with image i and relative camera c) becomes one or
both sequences, each 3T+1 tokens:
    view generation  [o][<GEN>][c][i]   learns p(c | o) and p(i | o, c)     (official layout)
    pose estimation  [o][<EST>][i][c]   learns p(i | o) and p(c | o, i)     (the paper's other factorisation)
The loss is next-token cross-entropy on every token after the observation. With probability
`cond_dropout` the conditioning prefix is replaced by zeros, which is exactly the unconditional prompt
classifier-free guidance uses at inference.

    python -m training.train_gst --config training/configs/gst_small.yaml [key=value ...]
    torchrun --nproc_per_node 2 -m training.train_gst --config ...     # DDP (gloo on CPU)
    torchrun --nproc_per_node 8 -m training.train_gst --config ... parallel=fsdp  # sharded, large presets
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from gst_model.checkpoint import load_weights
from gst_model.geometry import rotation_angle
from gst_model.data.token_cache import TokenCache
from gst_model.transformer import GSTConfig, Transformer
from gst_model.vocab import Task, Vocabulary
from training.common import (config_cli, EMA, CsvLog, OptimConfig, all_reduce_mean, autocast_context, cleanup_distributed,
                             config_to_dict, full_state, load_training_state, lr_at, pick_device,
                             plot_curves, save_training_state, seed_everything, setup_distributed,
                             setup_logging, unwrap)
from training.data import load_token_caches, load_tokens

log = logging.getLogger("gst.train_gst")


@dataclass
class GSTTrainConfig:
    tokens: str = "runs/tokens"  # directory written by training.tokenize_dataset
    # More token caches (same tokenizers) whose train splits are added, e.g. a user's own data next to the
    # synthetic set; validation stays on `tokens`.
    extra_train_tokens: list[str] = field(default_factory=list)
    out: str = "runs/gst"
    preset: str = "small"
    model_overrides: dict = field(default_factory=dict)  # e.g. {n_layer: 4}
    objective: str = "joint"  # joint: both layouts in every batch; alternating: one layout per step
    pose_fraction: float = 0.5  # share of pose-estimation sequences in a joint batch
    cond_dropout: float = 0.05
    # Loss weight of the camera tokens of pose-estimation sequences (1 = plain mean over tokens). The
    # relative pose is decided by the first few camera tokens; the rest follow from them and from the
    # smooth ray map, so without extra weight the pose signal is a small share of the loss.
    camera_loss_weight: float = 1.0
    # Curriculum: for the first curriculum_steps steps, pairs are drawn only among those turned by at most
    # an angle growing linearly from curriculum_start_deg to the largest rotation in the data (0 = off).
    curriculum_steps: int = 0
    curriculum_start_deg: float = 15.0
    # Label smoothing of camera tokens over each code's nearest codes in the camera tokenizer's codebook:
    # the target keeps 1 - eps, its neighbours share eps (codes that decode to similar rays). 0 = off.
    camera_label_smoothing: float = 0.0
    camera_smoothing_neighbours: int = 4
    # Auxiliary ray-map loss: a linear head (training only; not part of the saved model) reads the final hidden
    # state at every position that predicts a camera token and regresses the Plücker rays of that token's patch
    # of the true camera's ray map, a dense geometric target next to the code id. Weight of its mean squared
    # error in the loss; 0 = off.
    ray_loss_weight: float = 0.0
    # Start code embeddings (and head rows) at the tokenizers' codebook vectors instead of at random.
    init_from_codebooks: bool = False
    # Fine-tuning: start from these transformer weights (a model directory or a .safetensors file;
    # shapes must match the preset) instead of a fresh init. A resumable state in `out` takes precedence.
    init_from: str | None = None
    batch_size: int = 32  # sequences per micro-batch per process
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.0  # 0 disables EMA
    # Under torchrun: ddp replicates the model; fsdp shards parameters, gradients and optimizer state
    # (FSDP2, per transformer block) for presets whose training state does not fit one device.
    parallel: str = "ddp"
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 500
    # Also keep the weights of every keep_every-th step in out/step_NNNNNN (accuracy-vs-training curves; 0 = off)
    keep_every: int = 0
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    resume: bool = True  # continue from `out` if it holds a training state
    threads: int = 0  # torch intra-op threads on CPU (0 = torch default)


def build_sequences(tokens: TokenCache, pair_idx: np.ndarray, tasks: np.ndarray, vocab: Vocabulary,
                    cond_dropout: float, rng: np.random.Generator) -> torch.Tensor:
    """[B, 3T+1] sequences for the given pairs, each in the layout of its task."""
    obs = tokens.image_codes[tokens.pairs[pair_idx, 0]]
    target = tokens.image_codes[tokens.pairs[pair_idx, 1]]
    camera = tokens.camera_codes[pair_idx] + vocab.camera_offset
    is_pose = tasks == 1
    task_tok = np.where(is_pose, vocab.est_token, vocab.gen_token)[:, None]
    second = np.where(is_pose[:, None], target, camera)
    third = np.where(is_pose[:, None], camera, target)
    seq = np.concatenate([obs, task_tok, second, third], axis=1).astype(np.int64)
    # Guidance dropout: the unconditional prompt is all zeros up to where generation starts.
    drop = rng.random(len(seq)) < cond_dropout
    seq[drop, : vocab.tokens_per_view + 1] = 0
    return torch.from_numpy(seq)


def token_losses(model: torch.nn.Module, seq: torch.Tensor, tokens_per_view: int,
                 smoothing: "CameraSmoothing | None" = None) -> torch.Tensor:
    """[B, 2T] next-token cross-entropy of every token after the observation and task token."""
    logits = model(seq[:, :-1])
    first = tokens_per_view  # logits at the task-token slot predict the first generated token
    if smoothing is not None:
        return smoothing.losses(logits[:, first:], seq[:, 1 + first:])
    return F.cross_entropy(logits[:, first:].float().transpose(1, 2), seq[:, 1 + first:], reduction="none")


class CameraSmoothing:
    """Cross-entropy whose camera-token targets are smoothed over their nearest codebook neighbours."""

    def __init__(self, codebook: torch.Tensor, camera_offset: int, eps: float, neighbours: int):
        if not 0.0 < eps < 1.0 or neighbours < 1:
            raise ValueError(f"camera_label_smoothing must be in (0, 1) and neighbours >= 1, got {eps}, {neighbours}")
        dist = torch.cdist(codebook.float(), codebook.float())
        dist.fill_diagonal_(float("inf"))
        self.neighbours = dist.topk(neighbours, largest=False).indices + camera_offset  # [codes, k] token ids
        self.offset, self.count, self.eps = camera_offset, codebook.shape[0], eps

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        nll = -logp.gather(-1, targets[..., None])[..., 0]
        code = targets - self.offset
        is_camera = (code >= 0) & (code < self.count)
        near = self.neighbours.to(targets.device)[code.clamp(0, self.count - 1)]  # [B, L, k]
        smooth = -logp.gather(-1, near).mean(-1)
        return torch.where(is_camera, (1 - self.eps) * nll + self.eps * smooth, nll)


class RayHead(torch.nn.Module):
    """The auxiliary ray-map head: final hidden state at the position predicting a camera token -> the rays of
    that token's patch (6 x patch x patch values, the tokenizer's grid cell of the ray map)."""

    def __init__(self, dim: int, tokens: TokenCache, tokens_dir: str | Path, grid: int):
        super().__init__()
        meta = json.loads((Path(tokens_dir) / "meta.json").read_text())
        self.ray_size, self.grid = int(meta["ray_size"]), grid
        self.patch = self.ray_size // grid
        self.image_size = int(meta["config"]["data"]["image_size"])  # view_K is at the cached image size
        self.tokens = tokens
        self.proj = torch.nn.Linear(dim, 6 * self.patch ** 2)
        self.hidden: torch.Tensor | None = None

    def capture(self, model: Transformer) -> None:
        """Keep the final normed hidden states of every forward pass of `model` (for `loss`)."""
        def keep(_module, _inputs, output):
            self.hidden = output
        model.norm.register_forward_hook(keep)

    def targets(self, pair_idx: np.ndarray) -> torch.Tensor:
        """[B, T, 6 p^2]: each camera token's patch of its pair's true ray map, in the grid's row-major order."""
        from training.tokenize_dataset import camera_rays

        rays = camera_rays(self.tokens.rel_c2w[pair_idx], self.tokens.view_K[self.tokens.pairs[pair_idx, 1]],
                           self.image_size, self.ray_size)  # [B, 6, R, R], as tokenization made them
        g, p = self.grid, self.patch
        return rays.reshape(len(pair_idx), 6, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(len(pair_idx), g * g, -1)

    def forward(self, tasks: np.ndarray, pair_idx: np.ndarray, tokens_per_view: int) -> torch.Tensor:
        """Mean squared error of the rays predicted from the captured hidden states of the last forward pass
        over `build_sequences` rows (pose: camera third, view: camera second)."""
        T = tokens_per_view
        # hidden row t predicts token t + 1; the camera segment starts at token T + 1 (view) or 2T + 1 (pose)
        first = torch.from_numpy(T + T * (tasks == 1)).to(self.hidden.device)
        index = (first[:, None] + torch.arange(T, device=first.device))[:, :, None].expand(-1, -1, self.hidden.shape[-1])
        predicted = self.proj(self.hidden.gather(1, index).float())
        return F.mse_loss(predicted, self.targets(pair_idx).to(predicted.device))


def camera_smoothing(cfg: "GSTTrainConfig", vocab: Vocabulary) -> CameraSmoothing | None:
    if cfg.camera_label_smoothing <= 0:
        return None
    from training.tokenize_dataset import load_trained_tokenizer

    meta = json.loads((Path(cfg.tokens) / "meta.json").read_text())
    codebook = load_trained_tokenizer(meta["config"]["camera"], "camera").quantize.codebook().detach()
    if codebook.shape[0] != vocab.camera_codes:
        raise ValueError(f"camera tokenizer has {codebook.shape[0]} codes, the token cache {vocab.camera_codes}")
    return CameraSmoothing(codebook, vocab.camera_offset, cfg.camera_label_smoothing, cfg.camera_smoothing_neighbours)


class PairSampler:
    """Training pair indices for a step: uniform, or under a curriculum only among the pairs turned by at
    most an angle that grows with the step (so early steps see small, easy rotations)."""

    def __init__(self, rel_c2w: np.ndarray, cfg: "GSTTrainConfig"):
        self.num_pairs, self.cfg = len(rel_c2w), cfg
        if cfg.curriculum_steps > 0:
            angles = np.rad2deg(rotation_angle(rel_c2w))
            self.order = np.argsort(angles, kind="stable")
            self.sorted_angles = angles[self.order]

    def limit_deg(self, step: int) -> float | None:
        cfg = self.cfg
        if cfg.curriculum_steps <= 0 or step >= cfg.curriculum_steps:
            return None
        top = float(self.sorted_angles[-1])
        return min(top, cfg.curriculum_start_deg + (top - cfg.curriculum_start_deg) * step / cfg.curriculum_steps)

    def __call__(self, step: int, n: int, rng: np.random.Generator) -> np.ndarray:
        limit = self.limit_deg(step)
        if limit is None:
            return rng.integers(0, self.num_pairs, n)
        allowed = max(1, int(np.searchsorted(self.sorted_angles, limit, side="right")))
        return self.order[rng.integers(0, allowed, n)]


def loss_weights(tasks: np.ndarray, tokens_per_view: int, camera_loss_weight: float) -> torch.Tensor:
    """[B, 2T] weights: `camera_loss_weight` on the camera segment of pose sequences, 1 elsewhere."""
    weights = np.ones((len(tasks), 2 * tokens_per_view), np.float32)
    weights[tasks == 1, tokens_per_view:] = camera_loss_weight
    return torch.from_numpy(weights)


def sequence_loss(model: torch.nn.Module, seq: torch.Tensor, tokens_per_view: int,
                  weights: torch.Tensor | None = None, smoothing: CameraSmoothing | None = None) -> torch.Tensor:
    """Mean (or weighted mean) next-token cross-entropy over every token after the prompt."""
    losses = token_losses(model, seq, tokens_per_view, smoothing)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


@torch.no_grad()
def init_embeddings_from_codebooks(model: Transformer, tokens_dir: str | Path, vocab: Vocabulary, seed: int,
                                   head_scale: float = 0.25) -> None:
    """Each code's embedding starts at its tokenizer codebook vector, lifted to the model width by a random
    orthonormal map (norm kept at that of the default init). Codes the tokenizer finds alike then start
    alike, so attention can match content across the two views from the first step instead of first
    learning the similarity of ~1500 ids from co-occurrence. The head rows get the same vectors, scaled
    down, so predicting "a code like the one attended to" is easy from the start."""
    from training.tokenize_dataset import load_trained_tokenizer

    meta = json.loads((Path(tokens_dir) / "meta.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    row_norm = model.config.initializer_range * model.config.dim ** 0.5
    for key, offset, count in (("image", 0, vocab.image_codes), ("camera", vocab.camera_offset, vocab.camera_codes)):
        codebook = F.normalize(load_trained_tokenizer(meta["config"][key], key).quantize.codebook().float(), dim=-1)
        if codebook.shape[0] != count:
            raise ValueError(f"{key} tokenizer has {codebook.shape[0]} codes, the token cache {count}")
        lift = torch.linalg.qr(torch.randn(model.config.dim, codebook.shape[1], generator=gen))[0].T  # [D_code, dim]
        vectors = codebook @ lift * row_norm
        model.tok_embeddings.weight[offset: offset + count] = vectors
        model.output.weight[offset: offset + count] = head_scale * vectors


def sample_tasks(cfg: GSTTrainConfig, step: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if cfg.objective == "alternating":
        return np.full(n, step % 2)
    if cfg.objective == "joint":
        return (rng.random(n) < cfg.pose_fraction).astype(np.int64)
    raise ValueError(f"objective must be joint or alternating, got {cfg.objective!r}")


@torch.no_grad()
def evaluate(model, tokens: TokenCache, vocab: Vocabulary, cfg: GSTTrainConfig, device) -> dict[str, float]:
    """Validation losses on a fixed set of pairs (same pairs every time).

    val_view / val_pose: mean loss per layout. val_camera: loss of the camera tokens of pose sequences;
    val_camera_mismatched: the same with the target image taken from another pair. Their gap is what the
    model reads from the image pair: zero while it only knows the marginal distribution of poses.
    """
    model.eval()
    rng = np.random.default_rng(1234)
    T = vocab.tokens_per_view
    sums = {"val_view": [], "val_pose": [], "val_camera": [], "val_camera_mismatched": []}
    for _ in range(cfg.eval_batches):
        idx = rng.integers(0, len(tokens.pairs), cfg.batch_size)
        for task in (Task.VIEW, Task.POSE):
            tasks = np.full(len(idx), 1 if task is Task.POSE else 0)
            seq = build_sequences(tokens, idx, tasks, vocab, 0.0, rng).to(device)
            losses = token_losses(model, seq, T)
            sums[f"val_{task.value}"].append(losses.mean().item())
            if task is Task.POSE:
                sums["val_camera"].append(losses[:, T:].mean().item())
                seq[:, T + 1: 2 * T + 1] = seq[:, T + 1: 2 * T + 1].roll(1, dims=0)  # another pair's target
                sums["val_camera_mismatched"].append(token_losses(model, seq, T)[:, T:].mean().item())
    model.train()
    return {k: float(np.mean(v)) for k, v in sums.items()}


def main(cfg: GSTTrainConfig) -> Path:
    dist_info = setup_distributed()
    setup_logging(dist_info.is_main)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP, unlike DDP, does not broadcast them)
    train, vocab = load_token_caches([cfg.tokens, *cfg.extra_train_tokens], "train")
    val, _ = load_tokens(cfg.tokens, "val")
    grid = int(round(vocab.tokens_per_view ** 0.5))
    model_cfg = GSTConfig.from_preset(cfg.preset, vocab_size=vocab.size, grid_size=grid, **cfg.model_overrides)
    model = Transformer(model_cfg).to(device)
    if cfg.init_from:
        load_transformer_weights(model, cfg.init_from)
    elif cfg.init_from_codebooks:
        init_embeddings_from_codebooks(model, cfg.tokens, vocab, cfg.seed)
    n_params = model.num_parameters()
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be ddp or fsdp, got {cfg.parallel!r}")
    sharded = cfg.parallel == "fsdp" and dist_info.world_size > 1
    if sharded:
        if cfg.ema_decay > 0:
            raise ValueError("ema_decay > 0 needs the whole model on each rank: use parallel=ddp for EMA")
        shard_model(model)
    optimizer = model.configure_optimizers(cfg.optim.weight_decay, cfg.optim.lr, cfg.optim.betas)
    ray_head = None
    if cfg.ray_loss_weight > 0:
        if sharded:
            raise ValueError("ray_loss_weight > 0 is not supported with parallel=fsdp: use parallel=ddp")
        if cfg.extra_train_tokens:
            raise ValueError("ray_loss_weight > 0 reads the ray-map size of `tokens` alone: no extra_train_tokens")
        ray_head = RayHead(model_cfg.dim, train, cfg.tokens, grid).to(device)
        ray_head.capture(model)
        optimizer.add_param_group({"params": list(ray_head.parameters()), "weight_decay": 0.0})
    trained = {"transformer": model, **({"ray_head": ray_head} if ray_head is not None else {})}
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    sample_pairs = PairSampler(train.rel_c2w, cfg)
    smoothing = camera_smoothing(cfg, vocab)
    out = Path(cfg.out)
    start = 0
    if cfg.resume and (out / "last" / "trainer_state.pt").exists():
        start, _ = load_training_state(out / "last", trained, optimizer)
        if ema is not None and (out / "last" / "transformer.ema.safetensors").exists():
            from safetensors.torch import load_file
            ema.shadow = {k: v.float() for k, v in load_file(str(out / "last" / "transformer.ema.safetensors")).items()}
        log.info("resumed from %s at step %d", out / "last", start)
    ddp_model = DDP(model) if dist_info.world_size > 1 and not sharded else model
    ray_loss_head = DDP(ray_head) if ray_head is not None and dist_info.world_size > 1 else ray_head
    csv = CsvLog(out / "train_log.csv", ["loss", "grad_norm", "lr", "val_view", "val_pose", "val_camera",
                                         "val_camera_mismatched"]) if dist_info.is_main else None
    # Per-step generator: a resumed run draws exactly the batches the uninterrupted run would have.
    log.info("model %s: %.2fM parameters; %d train pairs, %d val pairs", cfg.preset,
             n_params / 1e6, len(train.pairs), len(val.pairs))
    bar = tqdm(range(start, cfg.optim.max_steps), initial=start, total=cfg.optim.max_steps,
               disable=not dist_info.is_main, desc="gst")
    t0 = time.time()
    for step in bar:
        # Dropout masks come from (seed, rank, step) too: a resumed run continues exactly on every rank.
        torch.manual_seed((cfg.seed * 1_000_003 + dist_info.rank) * 1_000_003 + step)
        lr = lr_at(step, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(cfg.optim.grad_accum):
            rng = np.random.default_rng([cfg.seed, dist_info.rank, step, micro])
            idx = sample_pairs(step, cfg.batch_size, rng)
            tasks = sample_tasks(cfg, step, len(idx), rng)
            seq = build_sequences(train, idx, tasks, vocab, cfg.cond_dropout, rng).to(device)
            weights = loss_weights(tasks, vocab.tokens_per_view, cfg.camera_loss_weight).to(device)
            with autocast_context(device):
                loss = sequence_loss(ddp_model, seq, vocab.tokens_per_view, weights, smoothing)
                if ray_head is not None:
                    loss = loss + cfg.ray_loss_weight * ray_loss_head(tasks, idx, vocab.tokens_per_view)
                loss = loss / cfg.optim.grad_accum
            loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        done = step + 1
        mean_loss = all_reduce_mean(torch.tensor(total)).item()
        last = done == cfg.optim.max_steps
        # Under FSDP evaluating and gathering the state are collectives that every rank joins; under DDP
        # only the main rank evaluates (gathering is then just a reference to the local state).
        evaluating = (done % cfg.eval_every == 0 or last) and (sharded or dist_info.is_main)
        metrics = evaluate(model, val, vocab, cfg, device) if evaluating else {}
        keeping = cfg.keep_every > 0 and done % cfg.keep_every == 0
        saving = done % cfg.save_every == 0 or last or keeping
        weights, optim_state = full_state(model, optimizer) if saving else (None, None)
        if dist_info.is_main:
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
            if metrics:
                log.info("step %d loss %.4f val %s (%.0f s)", done, mean_loss, metrics, time.time() - t0)
            if done % cfg.log_every == 0 or metrics:
                csv.write(done, loss=mean_loss, grad_norm=float(grad_norm), lr=lr, **metrics)
            if saving:
                save_training_state(out / "last", {**trained, "transformer": weights}, optim_state, done, config_to_dict(cfg),
                                    ema={"transformer": _ema_module(model, ema)} if ema else None)
                if keeping:
                    kept = out / f"step_{done:06d}"
                    kept.mkdir(exist_ok=True)
                    shutil.copyfile(out / "last" / "transformer.safetensors", kept / "transformer.safetensors")
    if dist_info.is_main:
        plot_curves(csv, out / "train_curves.png", f"GST {cfg.preset} ({cfg.objective})")
    cleanup_distributed()
    return out / "last"


def load_transformer_weights(model: Transformer, source: str | Path) -> None:
    """Load transformer weights for fine-tuning from a model directory or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        path = path / "transformer.safetensors"
    try:
        load_weights(model, path, model.tok_embeddings.weight.device)
    except ValueError as exc:
        raise ValueError(f"init_from {path}: parameters differ from the configured model (preset, vocabulary, "
                         f"grid): {exc}") from exc
    log.info("initialised the transformer from %s", path)


def shard_model(model: Transformer) -> None:
    """FSDP2: each transformer block is one all-gather unit, the embeddings and head the root's."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)


def _ema_module(model: Transformer, ema: EMA) -> Transformer:
    shadow = Transformer(model.config)
    shadow.load_state_dict(unwrap(model).state_dict())
    ema.copy_to(shadow)
    return shadow


def cli(argv: list[str] | None = None) -> None:
    main(config_cli(GSTTrainConfig, __doc__, argv,
                    {"objective": dict(choices=["joint", "alternating"], help="overrides the config")}))

if __name__ == "__main__":
    cli()
