"""Dataset readers on tiny fixtures written in each real on-disk format from known OpenCV cameras."""
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transforms3d.quaternions import mat2quat

from gst_model.data import colmap, formats, registry
from gst_model.data.cameras import fov_to_K, look_at, project, relative_pose
from gst_model.data.make_synthetic import SyntheticConfig, assign_splits, make_dataset, sequence_id
from gst_model.data.pairs import PairDataset, center_crop_resize, to_tensor
from gst_model.data.synthetic import random_scene, render, sample_cameras
from gst_model.data.token_cache import TokenCache
from gst_model.geometry import rotation_angle_deg

FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def _ground_truth(n, seed=0):
    """n OpenCV c2w poses around the origin and distinct pixel intrinsics for a 48x80 image."""
    rng = np.random.default_rng(seed)
    poses, Ks = [], []
    for i in range(n):
        eye = np.array([3 * math.cos(0.4 * i), 3 * math.sin(0.4 * i), 0.5 + 0.1 * i])
        poses.append(look_at(eye, rng.normal(0, 0.2, 3), roll_deg=5.0 * i))
        Ks.append(np.array([[70.0 + i, 0.0, 41.3 - i], [0.0, 66.5 + 2 * i, 23.1 + 0.5 * i], [0.0, 0.0, 1.0]]))
    return np.stack(poses), np.stack(Ks)


def _write_png(path, h, w, value=(10, 20, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, len(mode)), value, dtype=np.uint8), mode).save(path)


# ---------------------------------------------------------------------------------------------
# RealEstate10K


def test_re10k_reads_exact_poses_and_intrinsics(tmp_path):
    h, w = 48, 80
    c2w, K = _ground_truth(4)
    lines = ["https://www.youtube.com/watch?v=abc"]
    for i in range(4):
        w2c = np.linalg.inv(c2w[i])[:3, :4]
        intr = [K[i, 0, 0] / w, K[i, 1, 1] / h, K[i, 0, 2] / w, K[i, 1, 2] / h, 0.0, 0.0]
        lines.append(" ".join([str(1000 * (i + 1))] + [repr(float(x)) for x in intr + list(w2c.ravel())]))
        _write_png(tmp_path / "test" / "seq0" / f"{1000 * (i + 1)}.png", h, w)
    (tmp_path / "test" / "seq0.txt").write_text("\n".join(lines) + "\n")

    scenes = formats.read_re10k_split(tmp_path, "test")
    assert len(scenes) == 1 and scenes[0].name == "seq0" and len(scenes[0].views) == 4
    for i, view in enumerate(scenes[0].views):
        assert view.size == (h, w) and view.meta["timestamp"] == 1000 * (i + 1)
        np.testing.assert_allclose(view.c2w, c2w[i], atol=1e-9)
        np.testing.assert_allclose(view.K, K[i], rtol=1e-12)
        image, K_loaded = view.load()
        assert image.shape == (h, w, 3) and (image == (10, 20, 30)).all()
        np.testing.assert_allclose(K_loaded, K[i], rtol=1e-12)
    # frames elsewhere and an explicit size: normalised intrinsics scale with the given size
    other = formats.read_re10k_sequence(tmp_path / "test" / "seq0.txt", frames_dir=tmp_path / "none", size=(96, 160))
    np.testing.assert_allclose(other.views[0].K[:2], 2 * K[0][:2], rtol=1e-12)


def test_synthetic_to_disk_round_trip_is_exact(tmp_path):
    cfg = SyntheticConfig(str(tmp_path), scenes=3, views_per_scene=3, size=24, width=32, seed=5,
                          split_fractions=(0.34, 0.33, 0.33), supersample=1)
    splits = make_dataset(cfg, progress=False)
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"] == splits
    names = assign_splits(3, cfg.split_fractions, cfg.seed)
    for index in range(3):
        # regenerate scene `index` exactly as the writer did
        rng = np.random.default_rng([cfg.seed, index])
        scene = random_scene(rng)
        c2w, fov = sample_cameras(scene, rng, 3, fov_deg=(cfg.fov_min, cfg.fov_max),
                                  azimuth_spread_deg=cfg.azimuth_spread)
        seq = formats.read_re10k_sequence(tmp_path / names[index] / f"{sequence_id(cfg.seed, index)}.txt")
        for i, view in enumerate(seq.views):
            K = fov_to_K(fov[i], 24, 32)
            np.testing.assert_allclose(view.c2w, c2w[i], atol=1e-12)
            np.testing.assert_allclose(view.K, K, rtol=1e-14)
            image, _ = view.load()
            assert np.array_equal(image, render(scene, c2w[i], K, 24, 32, supersample=1))


# ---------------------------------------------------------------------------------------------
# CO3D v2


def _co3d_viewpoint(c2w, K, size, fmt):
    """PyTorch3D R, T and NDC intrinsics for an OpenCV camera (the inverse of what the reader does)."""
    w2c = np.linalg.inv(c2w)
    R = (FLIP_XY @ w2c[:3, :3]).T  # X_cam = X_world @ R + T, axes +X left, +Y up
    T = FLIP_XY @ w2c[:3, 3]
    h, w = size
    rescale = np.array([w / 2, h / 2]) if fmt == "ndc_norm_image_bounds" else np.full(2, min(h, w) / 2)
    focal = np.array([K[0, 0], K[1, 1]]) / rescale
    principal = (np.array([w / 2, h / 2]) - K[:2, 2]) / rescale
    return {"R": R.tolist(), "T": T.tolist(), "focal_length": focal.tolist(),
            "principal_point": principal.tolist(), "intrinsics_format": fmt}


@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_co3d_converts_pytorch3d_cameras_exactly(tmp_path, fmt):
    h, w = 48, 80
    c2w, K = _ground_truth(5)
    frames = []
    for i in [3, 0, 4, 1, 2]:  # out of order on purpose
        seq = "seq_a" if i < 3 else "seq_b"
        path = f"chair/{seq}/images/frame{i:06d}.jpg"
        frames.append({"sequence_name": seq, "frame_number": i, "frame_timestamp": 0.1 * i,
                       "image": {"path": path, "size": [h, w]}, "viewpoint": _co3d_viewpoint(c2w[i], K[i], (h, w), fmt),
                       "meta": {"frame_type": "test_known"}})
        _write_png(tmp_path / path, h, w)
    (tmp_path / "chair").mkdir(exist_ok=True)
    with gzip.open(tmp_path / "chair" / "frame_annotations.jgz", "wt", encoding="utf-8") as f:
        json.dump(frames, f)

    scenes = formats.read_co3d_category(tmp_path / "chair")
    assert [s.name for s in scenes] == ["seq_a", "seq_b"]
    assert [v.meta["frame_number"] for v in scenes[0].views] == [0, 1, 2]
    views = scenes[0].views + scenes[1].views
    for i, view in enumerate(views):
        np.testing.assert_allclose(view.c2w, c2w[i], atol=1e-9)
        np.testing.assert_allclose(view.K, K[i], atol=1e-9)
        assert view.image_path == tmp_path / f"chair/{'seq_a' if i < 3 else 'seq_b'}/images/frame{i:06d}.jpg"

    # independent check: project with PyTorch3D's own conventions and compare with OpenCV pixels
    X = np.array([[0.3, -0.2, 0.4], [-0.5, 0.1, 0.2]])
    vp = frames[1]["viewpoint"]  # frame 0
    cam = X @ np.array(vp["R"]) + np.array(vp["T"])
    ndc = np.array(vp["focal_length"]) * cam[:, :2] / cam[:, 2:] + np.array(vp["principal_point"])
    rescale = np.array([w / 2, h / 2]) if fmt == "ndc_norm_image_bounds" else min(h, w) / 2
    pixels_p3d = np.array([w / 2, h / 2]) - ndc * rescale  # NDC +x left, +y up
    pixels_cv, _ = project(X, views[0].c2w, views[0].K)
    np.testing.assert_allclose(pixels_cv, pixels_p3d, atol=1e-9)

    set_lists = {"train": [["seq_a", 0, "x"], ["seq_a", 2, "x"]], "val": [], "test": [["seq_b", 4, "x"]]}
    (tmp_path / "chair" / "set_lists").mkdir()
    (tmp_path / "chair" / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps(set_lists))
    train = formats.read_co3d_category(tmp_path / "chair", set_list=("fewview_dev", "train"))
    assert [(s.name, [v.meta["frame_number"] for v in s.views]) for s in train] == [("seq_a", [0, 2])]


# ---------------------------------------------------------------------------------------------
# COLMAP (MVImgNet)

CAMERAS = [  # (id, model, params) of 80x48 cameras
    (1, "PINHOLE", [70.0, 66.5, 41.3, 23.1]),
    (2, "SIMPLE_PINHOLE", [71.0, 40.3, 23.6]),
    (3, "SIMPLE_RADIAL", [72.0, 39.3, 24.1, 0.01]),
    (4, "OPENCV", [73.0, 72.5, 38.3, 24.6, 0.01, -0.02, 0.001, 0.002]),
]


def _expected_K(model, p):
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if model.startswith("SIMPLE") else p[:4]
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def _colmap_fixture(model_dir, binary, c2w):
    model_dir.mkdir(parents=True)
    qt = []
    for pose in c2w:
        w2c = np.linalg.inv(pose)
        qt.append((mat2quat(w2c[:3, :3]), w2c[:3, 3]))  # transforms3d: (w, x, y, z)
    ids = {0: 1, 1: 2, 2: 3, 3: 4}
    names = [f"{i:03d}.jpg" for i in range(4)]
    kp = [np.array([[10.5, 20.25, 7], [1.0, 2.0, -1]]), np.zeros((0, 3)), np.array([[3.0, 4.0, 7]]), np.zeros((0, 3))]
    point = (7, np.array([0.1, 0.2, 0.3]), (255, 128, 0), 0.5, [(1, 0), (3, 0)])
    models = {m: i for i, (m, _) in colmap.CAMERA_MODELS.items()}
    if binary:
        data = struct.pack("<Q", len(CAMERAS))
        for cid, model, params in CAMERAS:
            data += struct.pack("<iiQQ", cid, models[model], 80, 48) + struct.pack(f"<{len(params)}d", *params)
        (model_dir / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", 4)
        for i in [2, 0, 3, 1]:
            (q, t) = qt[i]
            data += struct.pack("<i4d3di", i + 1, *q, *t, ids[i]) + names[i].encode() + b"\0"
            data += struct.pack("<Q", len(kp[i])) + b"".join(struct.pack("<ddq", x, y, int(p)) for x, y, p in kp[i])
        (model_dir / "images.bin").write_bytes(data)
        pid, xyz, rgb, err, track = point
        data = struct.pack("<QQ3d3Bd", 1, pid, *xyz, *rgb, err) + struct.pack("<Q", len(track))
        data += b"".join(struct.pack("<ii", a, b) for a, b in track)
        (model_dir / "points3D.bin").write_bytes(data)
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{cid} {model} 80 48 " + " ".join(repr(p) for p in params) for cid, model, params in CAMERAS]
        (model_dir / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:", "# Number of images: 4"]
        for i in [2, 0, 3, 1]:
            (q, t) = qt[i]
            lines.append(" ".join([str(i + 1)] + [repr(float(x)) for x in (*q, *t)] + [str(ids[i]), names[i]]))
            lines.append(" ".join(f"{float(x)!r} {float(y)!r} {int(p)}" for x, y, p in kp[i]))
        (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
        pid, xyz, rgb, err, track = point
        (model_dir / "points3D.txt").write_text(
            "# 3D point list\n" + " ".join(map(str, [pid, *xyz, *rgb, err] + [v for ab in track for v in ab])) + "\n")
    return names, kp


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_models_read_exactly(tmp_path, binary):
    c2w, _ = _ground_truth(4, seed=1)
    scene_dir = tmp_path / "bottle" / "obj1"
    names, kp = _colmap_fixture(scene_dir / "sparse" / "0", binary, c2w)
    for n in names:
        _write_png(scene_dir / "images" / n, 24, 40)  # stored at half the model's resolution

    cameras, images, points = colmap.read_model(scene_dir / "sparse" / "0", with_points=True)
    assert {c.model for c in cameras.values()} == {"PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "OPENCV"}
    np.testing.assert_allclose(cameras[4].distortion, [0.01, -0.02, 0.001, 0.002])
    for i in range(4):
        rec = images[i + 1]
        assert rec.name == names[i] and rec.camera_id == i + 1
        np.testing.assert_allclose(rec.c2w, c2w[i], atol=1e-9)
        np.testing.assert_allclose(np.c_[rec.xys, rec.point3D_ids].reshape(-1, 3), kp[i])
    p = points[7]
    np.testing.assert_allclose(p.xyz, [0.1, 0.2, 0.3])
    assert tuple(p.rgb) == (255, 128, 0) and p.error == 0.5 and list(p.image_ids) == [1, 3]

    scenes = colmap.read_mvimgnet_root(tmp_path)
    assert [s.name for s in scenes] == ["bottle/obj1"]
    for i, view in enumerate(scenes[0].views):
        cid, model, params = CAMERAS[i]
        np.testing.assert_allclose(view.c2w, c2w[i], atol=1e-9)
        np.testing.assert_allclose(view.K, _expected_K(model, params), atol=1e-12)
        image, K_loaded = view.load()
        assert image.shape == (24, 40, 3)
        np.testing.assert_allclose(K_loaded[:2], _expected_K(model, params)[:2] / 2, atol=1e-12)


def test_colmap_quaternion_convention():
    # 90 degrees about z: (w, x, y, z) = (cos 45, 0, 0, sin 45)
    R = colmap.qvec_to_rotmat([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Objaverse / Zero-1-to-3


def test_zero123_blender_cameras_and_rgba(tmp_path):
    obj = tmp_path / "0a1b2c"
    obj.mkdir()
    c2w, _ = _ground_truth(3, seed=2)
    for i in range(3):
        RT = np.diag([1.0, -1.0, -1.0]) @ np.linalg.inv(c2w[i])[:3, :4]  # OpenCV -> Blender camera axes
        np.save(obj / f"{i:03d}.npy", RT.astype(np.float32) if i == 2 else RT)
        rgba = np.zeros((32, 32, 4), dtype=np.uint8)
        rgba[..., :3] = (200, 100, 50)
        rgba[:, 16:, 3] = 255
        rgba[:8, :16, 3] = 128
        Image.fromarray(rgba, "RGBA").save(obj / f"{i:03d}.png")
    (tmp_path / "not_an_object").mkdir()

    scenes = formats.read_zero123_root(tmp_path)
    assert [s.name for s in scenes] == ["0a1b2c"]
    views = scenes[0].views
    for i in range(2):
        np.testing.assert_allclose(views[i].c2w, c2w[i], atol=1e-9)
    np.testing.assert_allclose(views[2].c2w, c2w[2], atol=1e-5)  # stored as float32
    f = 16.0 / math.tan(math.radians(49.1 / 2))
    np.testing.assert_allclose(views[0].K, [[f, 0, 16], [0, f, 16], [0, 0, 1]], rtol=1e-12)
    image, _ = views[0].load()
    assert (image[:, 16:] == (200, 100, 50)).all() and (image[8:, :16] == 255).all()
    a = 128 / 255
    expected = np.floor((np.array([200, 100, 50]) / 255 * a + (1 - a)) * 255)
    assert np.abs(image[0, 0].astype(float) - expected).max() <= 1

    # a Blender camera at +z with identity rotation looks down -z with world +y up
    blender = np.hstack([np.eye(3), [[0.0], [0.0], [-2.0]]])
    pose = formats.blender_w2c_to_opencv_c2w(blender)
    np.testing.assert_allclose(pose[:3, 3], [0, 0, 2])
    np.testing.assert_allclose(pose[:3, 2], [0, 0, -1])  # OpenCV forward
    np.testing.assert_allclose(pose[:3, 1], [0, -1, 0])  # OpenCV down = world -y


# ---------------------------------------------------------------------------------------------
# Pairs and preprocessing


def test_center_crop_resize_tracks_intrinsics():
    c2w = look_at(np.array([0.0, -3.0, 0.0]), np.zeros(3))
    K = np.array([[50.0, 0.0, 33.0], [0.0, 52.0, 19.0], [0.0, 0.0, 1.0]])
    X = np.array([[0.1, 0.0, 0.05], [-0.3, 0.2, 0.1]])
    for h, w in [(40, 60), (60, 40), (40, 40)]:
        image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        out, K2 = center_crop_resize(image, K, 24)
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        uv, _ = project(X, c2w, K)
        uv2, _ = project(X, c2w, K2)
        np.testing.assert_allclose(uv2, (uv - [left, top]) * 24 / side, atol=1e-12)
        assert out.shape == (24, 24, 3)


def _synthetic_scenes(tmp_path, scenes=2, views=6):
    make_dataset(SyntheticConfig(str(tmp_path), scenes=scenes, views_per_scene=views, size=20, width=28, seed=1,
                                 split_fractions=(1.0, 0.0, 0.0), supersample=1, azimuth_spread=150.0),
                 progress=False)
    return formats.read_re10k_split(tmp_path, "train")


def test_pair_dataset_rotation_range_scale_and_tensors(tmp_path):
    scenes = _synthetic_scenes(tmp_path)
    ds = PairDataset(scenes, size=16, min_rot_deg=10.0, max_rot_deg=60.0, pairs_per_scene=5, seed=3)
    assert len(ds) == 10
    for i in range(len(ds)):
        s, o, t, rel, scale = ds.pair_pose(i)
        poses = np.stack([v.c2w for v in ds.scenes[s].views])
        angle = rotation_angle_deg(poses[o], poses[t])
        assert o != t and 10.0 <= angle <= 60.0
        raw = relative_pose(poses[o], poses[t])
        np.testing.assert_allclose(rel[:3, :3], raw[:3, :3], atol=1e-12)
        np.testing.assert_allclose(rel[:3, 3] * formats.scene_scale(ds.scenes[s]), raw[:3, 3], atol=1e-12)
        assert scale == formats.scene_scale(ds.scenes[s])
    item = ds[4]
    assert item["obs"].shape == (3, 16, 16) and item["obs"].dtype == torch.float32
    assert -1.0 <= item["obs"].min() and item["obs"].max() <= 1.0
    assert item["rel_c2w"].dtype == torch.float64
    np.testing.assert_allclose(item["K_target"].numpy(), center_crop_resize(
        np.zeros((20, 28, 3), np.uint8), ds.scenes[item["scene"]].views[int(item["views"][1])].K, 16)[1])
    assert torch.equal(ds[4]["target"], item["target"])  # deterministic per item
    ds.set_epoch(1)
    assert any(ds.pair_indices(i) != PairDataset(scenes, 16, 10.0, 60.0, 5, seed=3).pair_indices(i) for i in range(10))

    unit = PairDataset(scenes, size=16, max_rot_deg=60.0, scale_mode="pair")
    assert np.linalg.norm(unit.sample(0).rel_c2w[:3, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        PairDataset(scenes, scale_mode="metric")


def test_token_cache_build_and_load(tmp_path):
    scenes = _synthetic_scenes(tmp_path / "data", scenes=2, views=4)
    ds = PairDataset(scenes, size=8, max_rot_deg=180.0, pairs_per_scene=3)

    def encode_image(x):  # 4 "tokens": quantised mean of each quadrant
        q = x.reshape(len(x), 3, 2, 4, 2, 4).mean(dim=(1, 3, 5))
        return ((q + 1) * 50).long().reshape(len(x), 4)

    def encode_camera(rel, K):
        return torch.stack([(rel[:, i, 3] * 10).round().long() + 100 for i in range(3)] + [K[:, 0, 0].long()], 1)

    out = tmp_path / "tokens" / "train.npz"
    built = TokenCache.build(ds, encode_image, encode_camera, out, batch_size=3, meta={"grid_size": 2},
                             progress=False)
    cache = TokenCache.load(out)
    assert json.loads((out.parent / "meta.json").read_text()) == {"grid_size": 2}
    assert cache.num_views == 8 and cache.num_pairs == 6 and cache.image_codes.shape == (8, 4)
    for k in ("image_codes", "pairs", "camera_codes", "rel_c2w", "scene", "view_c2w"):
        assert np.array_equal(getattr(cache, k), getattr(built, k))
    assert list(cache.views_of(scenes[1].name)) == [4, 5, 6, 7] and list(cache.scene) == [0] * 4 + [1] * 4
    for p in range(cache.num_pairs):
        s, o, t, rel, _ = ds.pair_pose(p)
        assert tuple(cache.pairs[p]) == (4 * s + o, 4 * s + t)
        np.testing.assert_array_equal(cache.rel_c2w[p], rel)
        np.testing.assert_array_equal(cache.camera_codes[p], encode_camera(torch.from_numpy(rel[None]),
                                                                          torch.from_numpy(cache.view_K[[4 * s + t]]))[0])
    image, _ = ds.view(1, 2)
    np.testing.assert_array_equal(cache.image_codes[6], encode_image(to_tensor(image)[None])[0])
    np.testing.assert_allclose(cache.view_c2w[6], scenes[1].views[2].c2w)


def test_token_cache_concatenate_renumbers_rows(tmp_path):
    """Pairs of the second cache still point at their own views' codes, scenes keep their view ranges."""
    def cache(name_prefix, views_per_scene, n_scenes, code_base):
        v = views_per_scene * n_scenes
        pairs = np.array([(s * views_per_scene, s * views_per_scene + 1) for s in range(n_scenes)])
        return TokenCache(image_codes=code_base + np.arange(v * 2, dtype=np.int32).reshape(v, 2),
                          scene=np.repeat(np.arange(n_scenes), views_per_scene), view_c2w=np.tile(np.eye(4), (v, 1, 1)),
                          view_K=np.tile(np.eye(3), (v, 1, 1)), pairs=pairs,
                          rel_c2w=np.tile(np.eye(4), (len(pairs), 1, 1)),
                          camera_codes=code_base + np.arange(len(pairs) * 2, dtype=np.int32).reshape(-1, 2),
                          scene_names=np.array([f"{name_prefix}{s}" for s in range(n_scenes)]),
                          view_offsets=np.arange(n_scenes + 1) * views_per_scene)

    a, b = cache("a", 3, 2, 0), cache("b", 4, 3, 1000)
    both = TokenCache.concatenate([a, b])
    both.save(tmp_path / "train.npz")
    both = TokenCache.load(tmp_path / "train.npz")  # load checks every pair names a cached view
    assert both.num_views == 6 + 12 and both.num_pairs == 2 + 3
    for src, base_pair, base_view in ((a, 0, 0), (b, 2, 6)):
        for p in range(src.num_pairs):
            np.testing.assert_array_equal(both.image_codes[both.pairs[base_pair + p]], src.image_codes[src.pairs[p]])
            np.testing.assert_array_equal(both.camera_codes[base_pair + p], src.camera_codes[p])
        for name in src.scene_names:
            assert [r - base_view for r in both.views_of(name)] == list(src.views_of(name))
    assert list(both.scene) == [0] * 3 + [1] * 3 + [2] * 4 + [3] * 4 + [4] * 4


# ---------------------------------------------------------------------------------------------
# Dataset registry: every format through `NAME:PATH` into the training data path


def _write_co3d(root, names, c2w, K):
    """CO3D v2: category `chair`, one sequence per name (4 frames each), NDC-isotropic cameras."""
    frames = []
    for s, seq in enumerate(names):
        for i in range(4):
            path = f"chair/{seq}/images/frame{i:06d}.jpg"
            frames.append({"sequence_name": seq, "frame_number": i, "image": {"path": path, "size": [48, 80]},
                           "viewpoint": _co3d_viewpoint(c2w[s, i], K[i], (48, 80), "ndc_isotropic")})
            _write_png(root / path, 48, 80)
    with gzip.open(root / "chair" / "frame_annotations.jgz", "wt", encoding="utf-8") as f:
        json.dump(frames, f)
    return [f"chair/{n}" for n in names]


def _write_mvimgnet(root, names, c2w, K):
    for s, obj in enumerate(names):
        scene_dir = root / "bottle" / obj
        image_names, _ = _colmap_fixture(scene_dir / "sparse" / "0", s % 2 == 0, c2w[s])
        for n in image_names:
            _write_png(scene_dir / "images" / n, 48, 80)
    return [f"bottle/{n}" for n in names]


def _write_objaverse(root, names, c2w, K):
    for s, uid in enumerate(names):
        for i in range(4):
            (root / uid).mkdir(parents=True, exist_ok=True)
            np.save(root / uid / f"{i:03d}.npy", np.diag([1.0, -1.0, -1.0]) @ np.linalg.inv(c2w[s, i])[:3, :4])
            _write_png(root / uid / f"{i:03d}.png", 32, 32, (200, 100, 50, 255), "RGBA")
    return list(names)


def _write_re10k(root, names, c2w, K):
    for s, seq in enumerate(names):
        images = [np.full((48, 80, 3), 40 * i, np.uint8) for i in range(4)]
        formats.write_re10k_sequence(root, registry.name_split(seq), seq, [1000 * (i + 1) for i in range(4)],
                                     c2w[s], K[:4], (48, 80), images)
    return list(names)


# name -> (fixture writer, the prefix the reader puts before each scene's own name)
REGISTRY_FORMATS = {"co3d": (_write_co3d, "chair/"), "mvimgnet": (_write_mvimgnet, "bottle/"),
                    "objaverse": (_write_objaverse, ""), "realestate10k": (_write_re10k, "")}


def _names_by_split(prefix: str) -> list[str]:
    """Four scene names: two that `registry.name_split` puts in train (with the prefix), one in val, one in test."""
    picked = {"train": [], "val": [], "test": []}
    wanted = {"train": 2, "val": 1, "test": 1}
    i = 0
    while any(len(picked[s]) < n for s, n in wanted.items()):
        split = registry.name_split(f"{prefix}obj{i}")
        if len(picked[split]) < wanted[split]:
            picked[split].append(f"obj{i}")
        i += 1
    return picked["train"] + picked["val"] + picked["test"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from gst_model.checkpoint import build_bundle, save_bundle
    return save_bundle(build_bundle("tiny", seed=0), tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("name", sorted(REGISTRY_FORMATS))
def test_each_format_goes_through_the_registry_into_tokenized_training_pairs(tmp_path, tiny_model_dir, name):
    """A tiny dataset in the format's real layout, named by `NAME:PATH` as on the command line, is read,
    split by scene, paired and tokenized by `training.tokenize_dataset` with exactly the known cameras."""
    from training.data import PairConfig, pair_cameras, pair_dataset
    from training.tokenize_dataset import TokenizeConfig, cli as tokenize_cli

    write, prefix = REGISTRY_FORMATS[name]
    names = _names_by_split(prefix)  # RealEstate10K's fixture writes each to that split's directory
    c2w = np.stack([_ground_truth(4, seed=s)[0] for s in range(len(names))])
    K = _ground_truth(4)[1]
    root = tmp_path / name
    (root / "chair").mkdir(parents=True)
    scene_names = write(root, names, c2w, K)
    spec = f"{name}:{root}" if name != "realestate10k" else str(root)  # a bare path is RealEstate10K

    truth = dict(zip(scene_names, c2w))
    for split, expected in (("train", scene_names[:2]), ("val", scene_names[2:3]), ("test", scene_names[3:])):
        assert [s.name for s in registry.read_split(spec, split)] == expected, split
    ds = pair_dataset(PairConfig(root=spec, image_size=16, pairs_per_scene=3, max_rot_deg=180.0), "train")
    rel, _ = pair_cameras(ds, 8)
    for p in range(len(ds)):
        s, o, t, _, scale = ds.pair_pose(p)
        poses = truth[ds.scenes[s].name]
        expected_rel = relative_pose(poses[o], poses[t])
        expected_rel[:3, 3] /= scale
        np.testing.assert_allclose(rel[p], expected_rel, atol=1e-9)

    out = tmp_path / "tokens"
    tokenize_cli(["--dataset", spec, f"camera={tiny_model_dir}", f"image={tiny_model_dir}", f"out={out}",
                  "data.image_size=64", "data.pairs_per_scene=3", "data.max_rot_deg=180", "ray_size=32",
                  "splits=[train]"])
    cache = TokenCache.load(out / "train.npz")
    assert list(cache.scene_names) == scene_names[:2] and cache.num_pairs == 6
    assert json.loads((out / "meta.json").read_text())["config"]["data"]["root"] == spec
    for p in range(cache.num_pairs):
        np.testing.assert_array_equal(cache.rel_c2w[p], ds.pair_pose(p)[3])
    for v, pose in enumerate(np.concatenate([truth[n] for n in scene_names[:2]])):
        np.testing.assert_allclose(cache.view_c2w[v], pose, atol=1e-9)


def test_dataset_specs_and_name_splits():
    assert registry.parse_spec("data/synthetic") == ("realestate10k", Path("data/synthetic"))
    assert registry.parse_spec("co3d:/d/co3d") == ("co3d", Path("/d/co3d"))
    assert registry.parse_spec("C:/data") == ("realestate10k", Path("C:/data"))  # a drive letter is a path
    with pytest.raises(ValueError, match="unknown dataset 'co3'.*known: .*co3d, .*mvimgnet"):
        registry.parse_spec("co3:/d")
    with pytest.raises(ValueError, match="no path"):
        registry.parse_spec("co3d:")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        registry.read_split("mvimgnet:/nonexistent/mvimgnet", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        registry.read_split("data/synthetic", "training")
    splits = [registry.name_split(f"scene_{i}") for i in range(20000)]
    shares = [splits.count(s) / len(splits) for s in ("train", "val", "test")]
    np.testing.assert_allclose(shares, registry.SPLIT_FRACTIONS, atol=0.01)
    assert splits == [registry.name_split(f"scene_{i}") for i in range(20000)]  # stable
