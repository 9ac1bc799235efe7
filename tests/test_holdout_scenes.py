"""The holdout renderer: rasterizer geometry, determinism, the written dataset, and training refusing it."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gst_model.data import holdout_scenes as hs
from gst_model.data.cameras import fov_to_K, look_at, project, relative_pose
from gst_model.data.pairs import PairDataset
from gst_model.data.registry import read_split
from gst_model.geometry import rotation_angle_deg

K64 = np.array([[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]])


def _quad(x0, y0, x1, y1, z):
    """Two camera-space triangles of a fronto-parallel rectangle at depth z."""
    return np.array([[[x0, y0, z], [x1, y0, z], [x1, y1, z]], [[x0, y0, z], [x1, y1, z], [x0, y1, z]]])


def test_quad_covers_exactly_its_projected_pixel_rectangle():
    # u = 100 X / 2 + 32: X -0.4 .. 0.3 -> u 12 .. 47; v = 100 Y / 2 + 32: Y -0.2 .. 0.5 -> v 22 .. 57
    index, bary, depth = hs.rasterize(_quad(-0.4, -0.2, 0.3, 0.5, 2.0), K64, 64, 64)
    expected = np.zeros((64, 64), bool)
    expected[22:57, 12:47] = True  # pixel (i, j) is centred at (j + 0.5, i + 0.5)
    assert np.array_equal(index >= 0, expected)
    assert set(np.unique(index[expected])) == {0, 1}
    np.testing.assert_allclose(depth[expected], 2.0, rtol=1e-12)
    assert np.isinf(depth[~expected]).all()
    np.testing.assert_allclose(bary[expected].sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("near_first", [True, False])
def test_depth_test_keeps_the_nearer_triangle_per_pixel(near_first):
    near = np.array([[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]]])
    far = np.array([[[-0.3, -0.6, 3.0], [0.6, -0.6, 3.0], [0.1, 0.6, 3.0]]])
    # a third triangle slanting through the near one's plane: nearer on its left, farther on its right
    slant = np.array([[[-0.6, -0.2, 1.5], [0.6, -0.2, 2.5], [0.0, 0.2, 2.0]]])
    tris = np.concatenate([near, far, slant] if near_first else [slant, far, near])
    ids = {"near": 0, "far": 1, "slant": 2} if near_first else {"slant": 0, "far": 1, "near": 2}
    index, _, depth = hs.rasterize(tris, K64, 64, 64)
    rows, cols = np.mgrid[0:64, 0:64]
    x, y = (cols + 0.5 - 32) / 100, (rows + 0.5 - 32) / 100  # ray directions (x, y, 1)
    # analytic depth of every triangle's plane along each ray, where the pixel lies inside it
    candidates = []
    for tri in tris:
        n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        z = (n @ tri[0]) / (n[0] * x + n[1] * y + n[2])
        uv, _ = project(tri, np.eye(4), K64)
        inside = _inside(uv, cols + 0.5, rows + 0.5)
        candidates.append(np.where(inside, z, np.inf))
    candidates = np.stack(candidates)
    nearest, second = np.sort(candidates, axis=0)[:2]
    both = np.isfinite(second)  # two triangles there, at distinct depths
    both[both] = second[both] - nearest[both] > 1e-6
    assert both.sum() > 200
    assert np.array_equal(index[both], candidates.argmin(axis=0)[both])
    np.testing.assert_allclose(depth[both], candidates.min(axis=0)[both], rtol=1e-9)
    slant_wins = index == ids["slant"]
    assert slant_wins.any() and (index == ids["near"]).any() and (index == ids["far"]).any()


def _inside(uv, px, py, margin=1e-3):
    """Pixels strictly inside a projected triangle (both windings), away from its edges."""
    signs = []
    for k in range(3):
        a, b = uv[k], uv[(k + 1) % 3]
        signs.append((b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]))
    s = np.stack(signs)
    return (s > margin).all(axis=0) | (s < -margin).all(axis=0)


def test_barycentrics_are_perspective_correct_and_survive_near_clipping():
    # strongly slanted (z 0.5 .. 6), and one vertex behind the camera, so it is clipped at the near plane
    tris = np.array([[[-1.0, 0.8, 0.5], [1.5, 0.6, 6.0], [-0.5, -0.5, 4.0]],
                     [[-0.2, -0.2, -1.0], [0.4, -0.1, 3.0], [0.1, 0.3, 2.0]]])
    K = np.array([[80.0, 0.0, 30.0], [0.0, 75.0, 36.0], [0.0, 0.0, 1.0]])  # off-centre, non-square pixels
    index, bary, depth = hs.rasterize(tris, K, 72, 64)
    for t in (0, 1):
        rows, cols = np.nonzero(index == t)
        assert len(rows) > 100
        points = np.einsum("nk,kj->nj", bary[rows, cols], tris[t])  # the surface point each pixel sees
        uv = points @ K.T
        np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], np.column_stack([cols + 0.5, rows + 0.5]), atol=1e-8)
        np.testing.assert_allclose(points[:, 2], depth[rows, cols], rtol=1e-9)
        assert (points[:, 2] >= 0.05 - 1e-12).all() and (bary[rows, cols] >= -1e-6).all()


def _flat_scene(tris_parts, materials):
    tris, uv, normals, ids = hs.assemble_mesh(tris_parts)
    return hs.HoldoutScene(tris, uv, normals, ids, materials, hs.Lighting.flat(), "test", 3.0,
                           np.zeros((0, 4)), np.zeros((0, 2, 2)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((2, 2)))


@pytest.mark.parametrize("supersample", [1, 3])
def test_texture_lands_where_the_camera_model_projects_it(supersample):
    a, b = np.array([0.05, 0.05, 0.05]), np.array([0.9, 0.6, 0.2])
    dots = hs.Material("dots", a, b, a, scale=0.5, seed=0, offset=np.zeros(2))
    wall = np.array([[[-4.0, 3.0, 0.0], [4.0, 3.0, 0.0], [4.0, 3.0, 3.0]], [[-4.0, 3.0, 0.0], [4.0, 3.0, 3.0],
                                                                             [-4.0, 3.0, 3.0]]])
    scene = _flat_scene([(wall, 0)], [dots])
    c2w = look_at(np.array([0.1, 0.0, 1.4]), np.array([0.3, 3.0, 1.5]), roll_deg=8.0)
    K = np.array([[80.0, 0.0, 30.0], [0.0, 75.0, 36.0], [0.0, 0.0, 1.0]])
    image = hs.render(scene, c2w, K, 72, 64, supersample)
    # where each pixel's ray meets the wall (y = 3), from K and the pose alone
    rows, cols = np.mgrid[0:72, 0:64]
    rays = np.stack([cols + 0.5, rows + 0.5, np.ones_like(cols)], axis=-1) @ np.linalg.inv(K).T @ c2w[:3, :3].T
    hit = c2w[:3, 3] + rays * ((3.0 - c2w[1, 3]) / rays[..., 1])[..., None]
    # staggered dots of period 0.5 m and radius 0.28 periods on wall uv (+-x, z); |x| works for both signs
    course = np.floor(hit[..., 2] / 0.5)
    xs = np.abs(hit[..., 0]) / 0.5 + 0.5 * (course % 2)
    d = np.hypot(xs - np.floor(xs) - 0.5, hit[..., 2] / 0.5 - course - 0.5)
    slack = 0.02 * supersample  # sub-samples spread over a pixel
    on_wall = (np.abs(hit[..., 0]) < 4.0 - slack) & (hit[..., 2] > slack) & (hit[..., 2] < 3.0 - slack)
    dot, background = on_wall & (d < 0.28 - slack), on_wall & (d > 0.28 + slack)
    assert dot.sum() > 100 and background.sum() > 1000
    for where, colour in ((dot, b), (background, a)):
        np.testing.assert_allclose(image[where], np.broadcast_to(np.round(255 * colour ** (1 / 2.2)),
                                                                 (where.sum(), 3)), atol=1)


def test_scenes_are_deterministic_closed_and_within_the_rotation_limit():
    cfg = hs.HoldoutConfig("unused", views_per_scene=6, size=32, supersample=1)
    layouts, first_views = set(), []
    for index in range(6, 12):  # seed 0: a corridor, a hall and four L-shaped rooms
        scene, c2w, K = hs.scene_and_cameras(cfg, index)
        again, c2w_again, _ = hs.scene_and_cameras(cfg, index)
        assert np.array_equal(scene.tris, again.tris) and np.array_equal(c2w, c2w_again)
        layouts.add(scene.layout)
        assert rotation_angle_deg(c2w[:, None], c2w[None]).max() <= cfg.max_rot + 1e-9
        for pose in c2w:
            assert hs.is_free(scene, pose[:2, 3], hs.CAMERA_MARGIN)
            image, depth = hs.render(scene, pose, K, 32, 32, supersample=1, return_depth=True)
            assert np.isfinite(depth).all()  # the room is closed: no sample sees nothing
            assert image.std() > 3  # not a blank wall of one colour
        assert np.array_equal(hs.render(again, c2w[0], K, 32, 32, 1), hs.render(scene, c2w[0], K, 32, 32, 1))
        first_views.append(hs.render(scene, c2w[0], K, 32, 32, 1))
    assert layouts == {"l_room", "corridor", "hall"}
    assert len({v.tobytes() for v in first_views}) == len(first_views)


@pytest.fixture(scope="module")
def holdout_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    hs.main(["--out", str(root), "--scenes", "2", "--views-per-scene", "5", "--size", "32", "--supersample", "1",
             "--seed", "3"])
    return root


def test_written_dataset_reads_back_through_the_training_readers(holdout_root, capsys):
    manifest = json.loads((holdout_root / "manifest.json").read_text())
    assert manifest["holdout"] is True and manifest["renderer"] == hs.RENDERER
    assert manifest["config"]["fov"] == 49.0 and manifest["splits"]["test"] == ["holdout0003_000000",
                                                                                "holdout0003_000001"]
    cfg = hs.HoldoutConfig(str(holdout_root), scenes=2, views_per_scene=5, size=32, supersample=1, seed=3)
    scenes = read_split(holdout_root, "test")
    assert [s.name for s in scenes] == manifest["splits"]["test"]
    for index, scene in enumerate(scenes):
        truth, c2w, K = hs.scene_and_cameras(cfg, index)
        assert len(scene.views) == 5
        for view, pose in zip(scene.views, c2w):
            np.testing.assert_allclose(view.c2w, pose, atol=1e-12)
            np.testing.assert_allclose(view.K, fov_to_K(49.0, 32, 32), rtol=1e-12)
        image = np.asarray(Image.open(scene.views[1].image_path))
        assert np.array_equal(image, hs.render(truth, c2w[1], K, 32, 32, 1))
    ds = PairDataset(scenes, size=32, max_rot_deg=45.0, pairs_per_scene=6)
    for i in range(len(ds)):
        item = ds[i]
        s, (obs, target) = item["scene"], item["views"].tolist()
        assert item["obs"].shape == (3, 32, 32) and item["target"].shape == (3, 32, 32)
        poses = [v.c2w for v in scenes[s].views]
        rel = relative_pose(poses[obs], poses[target])
        np.testing.assert_allclose(item["rel_c2w"][:3, :3].numpy(), rel[:3, :3], atol=1e-12)
        assert rotation_angle_deg(poses[obs], poses[target]) <= 45.0


def test_training_refuses_a_holdout_root(holdout_root, tmp_path):
    from training import tokenize_dataset, train_tokenizer

    for spec in (str(holdout_root), f"realestate10k:{holdout_root}"):
        with pytest.raises(ValueError, match="holdout"):
            hs.refuse_holdout(spec)
    with pytest.raises(ValueError, match="holdout"):
        tokenize_dataset.cli([f"data.root={holdout_root}", f"out={tmp_path / 'tokens'}"])
    with pytest.raises(ValueError, match="holdout"):
        train_tokenizer.cli(["--dataset", str(holdout_root), f"out={tmp_path / 'tok'}"])
    (tmp_path / "manifest.json").write_text(json.dumps({"holdout": False}))
    hs.refuse_holdout(tmp_path)  # an ordinary dataset root passes
    assert not (tmp_path / "tokens").exists() and not (tmp_path / "tok").exists()


def test_renderer_shares_no_code_with_the_training_renderer():
    code = "import sys, gst_model.data.holdout_scenes; print(sorted(m for m in sys.modules if 'synthetic' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
