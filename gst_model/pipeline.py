"""GSTPipeline: the one entry point the ROS nodes, the demo, the evaluation and the benchmarks call.

    pipe = GSTPipeline.from_pretrained()                      # the shipped default model
    est = pipe.estimate_pose(image_a, image_b, num_samples=16) # where is camera b, seen from a?
    views = pipe.predict_view(image, c2w_rel)                  # what would a camera at c2w_rel see?
    mean = pipe.expected_view(image, c2w_rel, num_samples=8)   # ... as the mean of 8 samples
    cams = pipe.sample_cameras(image, num_samples=8)           # plausible next cameras

Frames: every pose is camera-to-world in the observation's optical frame (OpenCV / REP-103 optical:
x right, y down, z forward); the observation camera is the identity. Translation units are those the
model was trained in (see the checkpoint's metadata: monocular scale is set by training normalisation).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gst_model import classical, geometry
from gst_model.classical import TwoViewResult
from gst_model.checkpoint import BUNDLE_PRESETS, DEFAULT_MODEL_DIR, ModelBundle, build_bundle, load_bundle
from gst_model.drafting import GeometricDrafter, TokenDrafter
from gst_model.image import (implied_intrinsics, resample_to_camera, to_model_input, to_uint8, validate_image,
                             validate_intrinsics)
from gst_model.pose_samples import summarize
from gst_model.generate import DRAFT_LEN, SamplingParams, generate
from gst_model.runtime import make_runtime
from gst_model.vocab import Task

# Generous bound: each sample is one autoregressive sequence in the batch.
MAX_SAMPLES = 256
# Speculative decoding of camera tokens (see __init__ and README "Speculative decoding"); set from bench/results.md.
SPECULATIVE = False
_DEFAULT = SamplingParams()  # the sampling defaults of every method below (defined once, in gst_model.generate)
# How estimate_pose turns its samples into one pose (see estimate_pose).
POSE_SELECTIONS = ("likelihood", "consensus")
# The classical hypothesis of estimate_pose(hybrid=True), chosen on the real sample pairs (README "Hybrid
# hypotheses"): it joins with at least HYBRID_MIN_INLIERS RANSAC inliers (every estimate with >= 50 was within
# 4 deg; with 16-24, 5 of 6 were 130-180 deg off), and its score gets HYBRID_PRIOR_NATS, the log prior odds of
# that geometric support: the 64 px model's likelihood cannot tell a 1 deg pose from its 10-20 deg samples
# on real images (it ranked the correct classical pose below its best sample on 9 of 10 pairs, by 1-20
# nats), but it still vetoes a classical pose it finds far less likely.
HYBRID_MIN_INLIERS = 50
HYBRID_PRIOR_NATS = 20.0


@dataclass
class PoseEstimate:
    c2w: np.ndarray  # (4,4) pose of camera b in camera a's optical frame
    samples: np.ndarray  # (N,4,4) every sampled pose
    covariance: np.ndarray  # (6,6) x,y,z,rx,ry,rz (ROS PoseWithCovariance order)
    # probability that the rotation is within inlier_deg: likelihood-weighted share of the samples there
    # (gst_model.pose_samples; calibrated on held-out synthetic pairs, see README "Uncertainty")
    confidence: float
    consistency: float  # fraction of samples within inlier_deg of the estimate
    rotation_spread_deg: float  # RMS rotation of the samples averaged into the estimate around it
    residual: float  # mean ray-fit residual of the decoded camera maps (lower = cleaner rays)
    sample_residuals: np.ndarray = field(repr=False, default=None)  # (N,)
    intrinsics: np.ndarray = field(repr=False, default=None)  # (N,3,3) at the model's ray-map size
    # (N,) log p(image b | image a, sample's camera) in nats, when selection="likelihood" and N > 1
    sample_log_likelihoods: np.ndarray | None = field(repr=False, default=None)
    source: str = "gst"  # which hypothesis won: "gst" (a sample) or "classical" (hybrid=True)
    classical: TwoViewResult | None = field(repr=False, default=None)  # the classical estimate (hybrid=True)
    classical_log_likelihood: float | None = None  # its log p(image b | image a, camera), when it was scored


class GSTPipeline:
    def __init__(self, bundle: ModelBundle, backend: str = "torch", device: str = "cpu",
                 estimate_intrinsics: bool | None = None, inlier_deg: float = 15.0,
                 speculative: bool = SPECULATIVE, draft_len: int = DRAFT_LEN, **runtime_options):
        """speculative: decode camera tokens with geometric drafts (`gst_model.drafting`), and greedy views with
        the previous greedy view of the same observation as the draft, verifying draft_len - 1 drafted tokens
        per transformer pass; the samples keep their distribution (greedy: the same tokens), only the number of
        sequential passes changes."""
        if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 2:
            raise ValueError(f"draft_len must be an integer >= 2, got {draft_len!r}")
        self.speculative = bool(speculative)
        self.draft_len = draft_len
        self.bundle = bundle.eval()
        self.view = bundle.view
        self.vocab = bundle.vocab
        self.device = torch.device(device)
        self.backend = backend
        self.runtime = make_runtime(bundle, backend=backend, device=device, **runtime_options)
        self.estimate_intrinsics = (bool(bundle.metadata.get("estimate_intrinsics", False))
                                    if estimate_intrinsics is None else estimate_intrinsics)
        self.inlier_deg = inlier_deg
        # Per task, (codes of the image the tokens followed [1,T], tokens [1,T]) of the last greedy decode: the draft
        # of the next greedy decode after the same image (a planner sweeping query poses, a robot localizing
        # consecutive frames against one keyframe); it changes only how fast, never what, is decoded
        self._previous_greedy: dict[Task, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path | None = None, backend: str = "torch",
                        device: str = "cpu", **options) -> "GSTPipeline":
        """A checkpoint directory, a preset name (random weights, for tests), or None = shipped model."""
        if path_or_preset is None:
            path_or_preset = DEFAULT_MODEL_DIR
        if isinstance(path_or_preset, str) and path_or_preset in BUNDLE_PRESETS:
            bundle = build_bundle(path_or_preset, seed=0)  # the same random model every time
        else:
            bundle = load_bundle(path_or_preset, device=device)
        return cls(bundle, backend=backend, device=device, **options)

    def warm_up(self, pose_samples: int = 0, view_samples: int = 0) -> float:
        """Estimate a pose with `pose_samples` and predict a view with `view_samples` (0 = skip) from noise
        images, so the one-time costs of those input shapes (torch.compile compiling, ONNX Runtime sessions,
        TensorRT engines) are paid now instead of on the first real frame. Returns the seconds taken."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        size = self.view.image_size
        noise_a, noise_b = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2))
        if pose_samples:
            self.estimate_pose(noise_a, noise_b, num_samples=pose_samples)
        if view_samples:
            self.predict_view(noise_a, np.eye(4), num_samples=view_samples)
        return time.perf_counter() - start

    # ----------------------------------------------------------------------------------- inputs
    def _check_samples(self, num_samples: int) -> int:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
            raise ValueError(f"num_samples must be an integer, got {num_samples!r}")
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise ValueError(f"num_samples must be in [1, {MAX_SAMPLES}], got {num_samples}")
        return int(num_samples)

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()  # fresh entropy for this generator only; the global RNG is not touched
        else:
            gen.manual_seed(int(seed))
        return gen

    def _generate(self, prompt: torch.Tensor, sampling: SamplingParams, id_range: tuple[int, int],
                  seed: int | None, draft=None) -> torch.Tensor:
        """One segment (T tokens, ids in id_range) after prompt [N, P], on this pipeline's back-end."""
        T = self.vocab.tokens_per_view
        return generate(self.runtime.decoder(), prompt, T, sampling, generator=self._generator(seed),
                        segment_ranges=[(T, id_range)], draft=draft, draft_len=self.draft_len)

    def _camera_drafter(self, prior_c2w: np.ndarray | None) -> GeometricDrafter | None:
        """Geometric drafts for speculative decoding (None when off). A given prior (e.g. a tracked camera's
        previous estimate) is drafted as it is; without one the identity is refitted to every new grid row."""
        if not self.speculative:
            return None
        prior = np.eye(4) if prior_c2w is None else np.asarray(prior_c2w, dtype=np.float64)
        geometry.validate_rigid(torch.as_tensor(prior))
        K_ray = torch.as_tensor(self._ray_pixels(self.default_intrinsics()))
        return GeometricDrafter(self.runtime, self.vocab.camera_offset, self.bundle.transformer.config.grid_size,
                                self.view.ray_size, K_ray, torch.as_tensor(prior),
                                estimate_intrinsics=self.estimate_intrinsics, refit_rows=0 if prior_c2w is not None else 1,
                                partial_decoder=self.bundle.camera_partial_decoder)

    def _previous_greedy_draft(self, task: Task, image_codes: torch.Tensor, sampling: SamplingParams):
        """The last greedy tokens of `task` after the same image as a draft (speculative greedy decoding only;
        sampled drafts of this kind are accepted almost never, docs/speculative), else None."""
        previous = self._previous_greedy.get(task) if self.speculative and sampling.greedy else None
        return TokenDrafter(previous[1]) if previous is not None and torch.equal(previous[0], image_codes) else None

    def _remember_greedy(self, task: Task, image_codes: torch.Tensor, tokens: torch.Tensor,
                         sampling: SamplingParams) -> None:
        if self.speculative and sampling.greedy:
            self._previous_greedy[task] = (image_codes, tokens[:1].clone())

    def _image_codes(self, images: list[np.ndarray], Ks: list | None = None) -> torch.Tensor:
        return self.runtime.encode_images(to_model_input(images, self.view.image_size, Ks,
                                                         self.default_intrinsics()))

    def _real_intrinsics(self, image: np.ndarray, K, name: str) -> np.ndarray | None:
        """Validated pixel intrinsics of a real image, or None (no K: official centre crop)."""
        if K is None:
            return None
        K = validate_intrinsics(K, name)
        if not 0 < K[0, 2] < image.shape[1] or not 0 < K[1, 2] < image.shape[0]:
            raise ValueError(f"{name}'s principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) lies outside the "
                             f"{image.shape[1]}x{image.shape[0]} image: is K for this image size?")
        return K

    def _sampling(self, temperature, top_k, top_p, cfg_scale, greedy) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                              greedy=greedy).validated()

    def default_intrinsics(self) -> np.ndarray:
        """K of the model's square output image for the checkpoint's default field of view."""
        return geometry.intrinsics_from_fov(self.view.fovy_deg, self.view.image_size,
                                            self.view.image_size).numpy()

    # ------------------------------------------------------------------------------ cameras
    def _decode_cameras(self, camera_tokens: torch.Tensor):
        codes = camera_tokens - self.vocab.camera_offset
        rays = self.runtime.decode_rays(codes.clamp(0, self.vocab.camera_codes - 1)).double().cpu()
        fit = geometry.cameras_from_plucker(rays, fovy_deg=self.view.fovy_deg,
                                            estimate_intrinsics=self.estimate_intrinsics, robust="cauchy")
        return fit

    def _camera_codes(self, c2w: np.ndarray, K: np.ndarray | None) -> torch.Tensor:
        K_img = self.default_intrinsics() if K is None else np.asarray(K, dtype=np.float64)
        if K_img.shape != (3, 3) or not np.all(np.isfinite(K_img)) or K_img[0, 0] <= 0 or K_img[1, 1] <= 0:
            raise ValueError(f"K must be a finite 3x3 pinhole matrix with positive focal lengths, got {K_img}")
        return self._encode_cameras(torch.as_tensor(c2w, dtype=torch.float64)[None],
                                    torch.as_tensor(self._ray_pixels(K_img)))

    def _ray_pixels(self, K_img: np.ndarray) -> np.ndarray:
        """Intrinsics in pixels of the model's image -> in pixels of its (smaller) ray map."""
        K_ray = np.array(K_img, dtype=np.float64, copy=True)
        K_ray[:2] *= self.view.ray_size / self.view.image_size
        return K_ray

    def _encode_cameras(self, c2w: torch.Tensor, K_ray: torch.Tensor) -> torch.Tensor:
        """Cameras c2w [N,4,4] with intrinsics K_ray ([3,3] or [N,3,3], ray-map pixels) -> camera token ids [N,T]."""
        R = self.view.ray_size
        rays = geometry.plucker_rays_from_intrinsics(c2w, K_ray, R, R)
        return self.runtime.encode_rays(rays.float()) + self.vocab.camera_offset

    # ------------------------------------------------------------------------------ public API
    def estimate_pose(self, image_a: np.ndarray, image_b: np.ndarray, num_samples: int = 16,
                      seed: int | None = 0, temperature: float = _DEFAULT.temperature, top_k: int | None = _DEFAULT.top_k,
                      top_p: float = _DEFAULT.top_p, cfg_scale: float = _DEFAULT.cfg_scale, greedy: bool = False,
                      selection: str = "likelihood", K_a: np.ndarray | None = None, K_b: np.ndarray | None = None,
                      hybrid: bool = False, hybrid_min_inliers: int = HYBRID_MIN_INLIERS,
                      prior_c2w: np.ndarray | None = None) -> PoseEstimate:
        """Pose of camera b in camera a's optical frame, from N sampled camera-token sequences.

        Layout (our choice; the release has none): [image a][<EST>][image b] -> 256 camera tokens.
        selection: how the N samples become one pose, built from the samples within inlier_deg of
          "likelihood"  the sample under which image b is most probable, log p(b | a, <GEN>, camera): the
                        joint model scores its own pose hypotheses by the view they predict (one more
                        causal pass over N sequences; much more accurate than the consensus, see README);
          "consensus"   the rotation medoid of the samples.
        K_a, K_b: pixel intrinsics of the two images (any size and aspect; zero skew, undistorted). Each
          image is then resampled to the model's own square camera (same centre and orientation, see
          gst_model.image), so the pose is in the real cameras' optical frames; None = the official centre
          crop, i.e. the image is assumed to have the model's field of view across its short side.
        hybrid: also run the classical estimate (gst_model.classical: SIFT + essential matrix on the full
          images); when it has at least `hybrid_min_inliers` RANSAC inliers it joins the samples as one more
          hypothesis (translation direction from the matches, length the median of the samples') and the
          likelihood chooses among all, the classical score raised by HYBRID_PRIOR_NATS (its prior for
          that many inliers). `source` says which won. Needs selection="likelihood" and OpenCV.
        prior_c2w: where camera b probably is (e.g. the previous frame's estimate against the same image a);
          with `speculative` on it is the draft the camera tokens are verified against. It never changes the
          result's distribution, only how many transformer passes it takes. With `speculative` and `greedy`,
          the previous greedy estimate's camera tokens against the same image a are the draft instead (accepted
          far more often on consecutive frames: docs/speculative).
        """
        validate_image(image_a, "image_a")
        validate_image(image_b, "image_b")
        n = self._check_samples(num_samples)
        if selection not in POSE_SELECTIONS:
            raise ValueError(f"selection must be one of {POSE_SELECTIONS}, got {selection!r}")
        if hybrid and selection != "likelihood":
            raise ValueError("hybrid hypotheses are chosen by the likelihood: use selection='likelihood'")
        if hybrid and classical.OPENCV_ERROR:
            raise ValueError(f"hybrid needs the classical estimate: {classical.OPENCV_ERROR}")
        K_a, K_b = self._real_intrinsics(image_a, K_a, "K_a"), self._real_intrinsics(image_b, K_b, "K_b")
        sampling = self._sampling(temperature, top_k, top_p, cfg_scale, greedy)
        codes = self._image_codes([image_a, image_b], [K_a, K_b])
        task = torch.full((1, 1), self.vocab.task_token(Task.POSE), dtype=torch.long, device=codes.device)
        prompt = torch.cat([codes[:1], task, codes[1:]], dim=1).expand(n, -1)
        draft = self._previous_greedy_draft(Task.POSE, codes[:1], sampling)
        if draft is None:
            draft = self._camera_drafter(prior_c2w)
        cams = self._generate(prompt, sampling, self.vocab.camera_range(), seed, draft)
        self._remember_greedy(Task.POSE, codes[:1], cams, sampling)
        fit = self._decode_cameras(cams)
        samples = fit.c2w.numpy()
        hypotheses, K_rays = fit.c2w, fit.K
        two_view = None
        if hybrid:
            two_view = self._classical(image_a, image_b, K_a, K_b, samples, hybrid_min_inliers)
            if two_view.c2w is not None:
                K_ray = torch.as_tensor(self._ray_pixels(self.default_intrinsics()))
                hypotheses = torch.cat([hypotheses, torch.as_tensor(two_view.c2w)[None]])
                K_rays = torch.cat([K_rays, K_ray[None]])
        log_likelihoods = scores = anchor = None
        if selection == "likelihood" and len(hypotheses) > 1:
            log_likelihoods = self._view_log_likelihoods(codes[:1], codes[1:], hypotheses, K_rays)
            scores = log_likelihoods + np.where(np.arange(len(hypotheses)) == n, HYBRID_PRIOR_NATS, 0.0)
            anchor = int(np.argmax(scores))
        source = "classical" if anchor == n else "gst"
        # The classical pose, when it wins, is the estimate as it is (exact two-view geometry: averaging in
        # coarser samples would blur it); the samples still give its covariance and confidence.
        summary = summarize(hypotheses.numpy(), inlier_deg=self.inlier_deg, anchor=anchor,
                            log_likelihoods=scores, exact_anchor=source == "classical")
        return PoseEstimate(c2w=summary.c2w, samples=samples, covariance=summary.covariance,
                            confidence=summary.confidence,
                            consistency=summary.consistency, rotation_spread_deg=summary.rotation_spread_deg,
                            residual=float(fit.residual.mean()), sample_residuals=fit.residual.numpy(),
                            intrinsics=fit.K.numpy(),
                            sample_log_likelihoods=None if log_likelihoods is None else log_likelihoods[:n],
                            source=source, classical=two_view,
                            classical_log_likelihood=(float(log_likelihoods[n]) if log_likelihoods is not None
                                                      and len(log_likelihoods) > n else None))

    def _classical(self, image_a, image_b, K_a, K_b, samples: np.ndarray, min_inliers: int):
        """The two-view estimate on the full images, its translation scaled to the median sample length."""
        size, K_model = self.view.image_size, self.default_intrinsics()
        Ks = [implied_intrinsics(*im.shape[:2], K_model, size) if K is None else K
              for im, K in ((image_a, K_a), (image_b, K_b))]
        result = classical.essential_matrix_pose(image_a, image_b, *Ks, min_inliers=min_inliers)
        if result.c2w is not None:
            result.c2w[:3, 3] *= float(np.median(np.linalg.norm(samples[:, :3, 3], axis=1)))
        return result

    def _view_log_likelihoods(self, codes_a: torch.Tensor, codes_b: torch.Tensor, c2w: torch.Tensor,
                              K_ray: torch.Tensor) -> np.ndarray:
        """log p(image b | image a, <GEN>, camera) for each camera c2w [N,4,4] with intrinsics K_ray [N,3,3]
        (ray-map pixels), re-encoded from its ray map: the score is that of the rigid camera reported, not of
        the raw sampled tokens."""
        return self._segment_log_likelihoods(codes_a, codes_b, c2w, K_ray, Task.VIEW)

    def _segment_log_likelihoods(self, codes_a, codes_b, c2w, K_ray, task: Task) -> np.ndarray:
        """Each camera's log-likelihood of the last segment of its task's layout: image b (VIEW:
        [a][<GEN>][camera][b]) or the camera (POSE: [a][<EST>][b][camera])."""
        cameras = self._encode_cameras(c2w, K_ray).to(codes_a.device)
        n = cameras.shape[0]
        task_ids = torch.full((n, 1), self.vocab.task_token(task), dtype=torch.long, device=codes_a.device)
        middle, last = (cameras, codes_b.expand(n, -1)) if task == Task.VIEW else (codes_b.expand(n, -1), cameras)
        sequences = torch.cat([codes_a.expand(n, -1), task_ids, middle, last], dim=1)
        return self.runtime.segment_log_likelihood(sequences).double().numpy()

    def pose_log_likelihoods(self, image_a: np.ndarray, image_b: np.ndarray, c2w: np.ndarray,
                             intrinsics: np.ndarray, K_a: np.ndarray | None = None,
                             K_b: np.ndarray | None = None) -> np.ndarray:
        """log p(camera | image a, <EST>, image b) of cameras c2w [N,4,4] (camera b in camera a's frame) with
        ray-map intrinsics [N,3,3] (e.g. a PoseEstimate's `samples` and `intrinsics`): the pose layout's own
        score of each hypothesis, re-encoded from its ray map. Images and K_a, K_b as in estimate_pose."""
        K_a, K_b = self._real_intrinsics(image_a, K_a, "K_a"), self._real_intrinsics(image_b, K_b, "K_b")
        codes = self._image_codes([image_a, image_b], [K_a, K_b])
        return self._segment_log_likelihoods(codes[:1], codes[1:], torch.as_tensor(c2w, dtype=torch.float64),
                                             torch.as_tensor(intrinsics, dtype=torch.float64), Task.POSE)

    def predict_view(self, image: np.ndarray, c2w_rel: np.ndarray, num_samples: int = 1, seed: int | None = 0,
                     K: np.ndarray | None = None, temperature: float = _DEFAULT.temperature, top_k: int | None = _DEFAULT.top_k,
                     top_p: float = _DEFAULT.top_p, cfg_scale: float = _DEFAULT.cfg_scale, greedy: bool = False,
                     K_image: np.ndarray | None = None, output_K: np.ndarray | None = None,
                     output_size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Images a camera at `c2w_rel` (in the observation's optical frame) would see.

        `K`: intrinsics of the wanted view in pixels of the model's square output (default: the
        checkpoint's field of view). Returns `num_samples` HxWx3 uint8 images of the model's size, or:
        `K_image`: pixel intrinsics of `image` (any size and aspect): the observation is resampled to the
          model's camera first (as in estimate_pose), so c2w_rel is in the real camera's optical frame;
        `output_K`, `output_size` (width, height; default: the observation's size): the views as that
          camera at c2w_rel sees them, resampled from the model's view; where the model's field of view does
          not cover the camera's, pixels are black.
        Layout (official): [observation][<GEN>][camera tokens] -> 256 image tokens.
        """
        n = self._check_samples(num_samples)
        sampling = self._sampling(temperature, top_k, top_p, cfg_scale, greedy)
        views = to_uint8(self._sample_views(image, c2w_rel, n, seed, K, sampling, K_image))
        return [self._to_output_camera(v, K, output_K, output_size, image) for v in views]

    def expected_view(self, image: np.ndarray, c2w_rel: np.ndarray, num_samples: int = 8, seed: int | None = 0,
                      K: np.ndarray | None = None, temperature: float = _DEFAULT.temperature, top_k: int | None = _DEFAULT.top_k,
                      top_p: float = _DEFAULT.top_p, cfg_scale: float = _DEFAULT.cfg_scale, K_image: np.ndarray | None = None,
                      output_K: np.ndarray | None = None, output_size: tuple[int, int] | None = None) -> np.ndarray:
        """One HxWx3 uint8 image: the pixel mean of `num_samples` sampled views (arguments as predict_view).

        The mean is the least-squares estimate of the view: sharp where the samples agree, blurred where the
        model is unsure. Its squared error is at most the samples' average (convexity), so its PSNR is higher;
        it looks less like a real image (worse LPIPS).
        """
        n = self._check_samples(num_samples)
        sampling = self._sampling(temperature, top_k, top_p, cfg_scale, False)
        # the images predict_view gives, averaged on the model's grid (resampling is linear: same mean)
        views = self._sample_views(image, c2w_rel, n, seed, K, sampling, K_image).clamp(-1, 1)
        return self._to_output_camera(to_uint8(views.mean(0, keepdim=True))[0], K, output_K, output_size, image)

    def _to_output_camera(self, view: np.ndarray, K_view, output_K, output_size, image: np.ndarray) -> np.ndarray:
        """A view of the model's camera (K_view in its pixels, None = default) as the output camera sees it."""
        if output_K is None:
            if output_size is not None:
                raise ValueError("output_size needs output_K (the intrinsics at that size)")
            return view
        width, height = (image.shape[1], image.shape[0]) if output_size is None else output_size
        K_view = self.default_intrinsics() if K_view is None else K_view
        return resample_to_camera(view, K_view, output_K, int(width), int(height))

    def _sample_views(self, image, c2w_rel, n: int, seed, K, sampling: SamplingParams, K_image=None) -> torch.Tensor:
        """Validated inputs -> n decoded views [n, 3, S, S] in [-1, 1]."""
        validate_image(image, "image")
        c2w = np.asarray(c2w_rel, dtype=np.float64)
        geometry.validate_rigid(torch.as_tensor(c2w))
        obs = self._image_codes([image], [self._real_intrinsics(image, K_image, "K_image")])
        task = torch.full((1, 1), self.vocab.task_token(Task.VIEW), dtype=torch.long, device=obs.device)
        prompt = torch.cat([obs, task, self._camera_codes(c2w, K).to(obs.device)], dim=1).expand(n, -1)
        draft = self._previous_greedy_draft(Task.VIEW, obs, sampling)
        tokens = self._generate(prompt, sampling, self.vocab.image_range(), seed, draft)
        self._remember_greedy(Task.VIEW, obs, tokens, sampling)
        return self.runtime.decode_images(tokens.clamp(0, self.vocab.image_codes - 1))

    def sample_cameras(self, image: np.ndarray, num_samples: int = 8, seed: int | None = 0,
                       temperature: float = _DEFAULT.temperature, top_k: int | None = _DEFAULT.top_k, top_p: float = _DEFAULT.top_p,
                       cfg_scale: float = _DEFAULT.cfg_scale, K: np.ndarray | None = None) -> np.ndarray:
        """(N,4,4) cameras the model finds plausible as a next view: [observation][<GEN>] -> camera.
        `K`: pixel intrinsics of `image` (resampled to the model's camera, as in estimate_pose)."""
        validate_image(image, "image")
        n = self._check_samples(num_samples)
        sampling = self._sampling(temperature, top_k, top_p, cfg_scale, False)
        obs = self._image_codes([image], [self._real_intrinsics(image, K, "K")])
        task = torch.full((1, 1), self.vocab.task_token(Task.VIEW), dtype=torch.long, device=obs.device)
        prompt = torch.cat([obs, task], dim=1).expand(n, -1)
        cams = self._generate(prompt, sampling, self.vocab.camera_range(), seed, self._camera_drafter(None))
        return self._decode_cameras(cams).c2w.numpy()
