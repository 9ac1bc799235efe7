"""Procedural scenes and the ray caster: determinism, projection geometry, occlusion, cameras."""
import math

import numpy as np
import pytest

from gst_model.data import synthetic as syn
from gst_model.data.cameras import fov_to_K, look_at, project
from gst_model.geometry import rotation_angle_deg


def _grey_room(objects, lights=()):
    grey = syn.Material("solid", np.full(3, 0.5), np.full(3, 0.5))
    room = syn.Room(np.array([8.0, 8.0, 3.0]), grey, grey, grey)
    return syn.SceneSpec(room, list(objects), list(lights), ambient=1.0, center=np.array([0.0, 0.0, 1.0]))


def _solid(rgb):
    return syn.Material("solid", np.array(rgb, dtype=float), np.array(rgb, dtype=float))


def test_render_is_deterministic_from_seed():
    out = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        scene = syn.random_scene(rng)
        c2w, fov = syn.sample_cameras(scene, rng, 2)
        out.append([syn.render(scene, c2w[i], fov_to_K(fov[i], 48, 64), 48, 64) for i in range(2)])
    assert out[0][0].shape == (48, 64, 3) and out[0][0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(out[0], out[1]))
    assert not np.array_equal(out[0][0], out[0][1])


def test_sphere_centre_projects_where_the_camera_model_says():
    centre = np.array([0.7, -0.4, 1.3])
    scene = _grey_room([syn.Sphere(centre, 0.08, _solid([1.0, 0.0, 0.0]))])
    c2w = look_at(np.array([-2.5, 0.6, 1.6]), np.array([0.0, 0.0, 1.0]), roll_deg=10.0)
    K = np.array([[150.0, 0.0, 70.0], [0.0, 140.0, 52.0], [0.0, 0.0, 1.0]])  # off-centre, non-square
    image = syn.render(scene, c2w, K, 100, 140, supersample=1)
    rows, cols = np.nonzero(image[..., 0].astype(int) - image[..., 1] > 60)
    assert len(rows) > 20
    uv, _ = project(centre[None], c2w, K)
    # pixel (i, j) has its centre at (j + 0.5, i + 0.5) on the continuous image plane
    assert abs(cols.mean() + 0.5 - uv[0, 0]) < 0.3
    assert abs(rows.mean() + 0.5 - uv[0, 1]) < 0.3


def test_depth_matches_ray_plane_intersection():
    scene = _grey_room([])
    c2w = look_at(np.array([1.0, -2.0, 1.5]), np.array([0.0, 1.0, 0.2]))
    K = fov_to_K(60.0, 40, 50)
    _, depth = syn.render(scene, c2w, K, 40, 50, supersample=1, return_depth=True)
    for i, j in [(39, 25), (35, 3), (30, 45)]:
        ray_cam = np.linalg.solve(K, [j + 0.5, i + 0.5, 1.0])  # z component 1: t is the z-depth
        ray = c2w[:3, :3] @ ray_cam
        t_floor = -c2w[2, 3] / ray[2]
        assert ray[2] < 0 and depth[i, j] == pytest.approx(t_floor, rel=1e-4)


@pytest.mark.parametrize("red_first", [True, False])
def test_nearer_object_wins(red_first):
    eye, target = np.array([-3.0, 0.0, 1.2]), np.array([0.0, 0.0, 1.2])
    near, far = np.array([-1.0, 0.0, 1.2]), np.array([1.5, 0.0, 1.2])
    red = syn.Sphere(near if red_first else far, 0.3, _solid([1.0, 0.0, 0.0]))
    blue = syn.Box(far if red_first else near, np.array([0.35, 0.35, 0.35]), np.eye(3), _solid([0.0, 0.0, 1.0]))
    scene = _grey_room([red, blue] if red_first else [blue, red])
    image, depth = syn.render(scene, look_at(eye, target), fov_to_K(50.0, 32, 32), 32, 32, return_depth=True)
    centre = image[15:17, 15:17].reshape(-1, 3).astype(int)
    if red_first:
        assert (centre[:, 0] > 200).all() and (centre[:, 2] < 30).all()
        assert depth[15:17, 15:17] == pytest.approx(2.0 - 0.3, abs=5e-3)  # curved: samples are off-axis
    else:
        assert (centre[:, 2] > 200).all() and (centre[:, 0] < 30).all()
        assert depth[15:17, 15:17] == pytest.approx(2.0 - 0.35, abs=1e-3)


def test_culling_matches_brute_force(monkeypatch):
    """Screen windows and shadow cones only skip rays that cannot hit: compare with no culling."""
    rng = np.random.default_rng(3)
    scene = syn.random_scene(rng, n_objects=(7, 8))
    c2w, fov = syn.sample_cameras(scene, rng, 3)
    fast = [syn.render(scene, c2w[i], fov_to_K(fov[i], 40, 40), 40, 40) for i in range(3)]

    def brute_occluded(scene, light, P):
        to_p = P - light.position.astype(np.float32)[:, None]
        dist = np.sqrt((to_p * to_p).sum(axis=0))
        D = to_p / dist
        limit = dist * np.float32(1.0 - 1e-3) - np.float32(2e-3)
        return np.any([syn._HIT[type(o)](o, light.position, D) < limit for o in scene.objects], axis=0)

    monkeypatch.setattr(syn, "_screen_window", lambda obj, c2w, K, h, w: (0, h, 0, w))
    monkeypatch.setattr(syn, "_occluded", brute_occluded)
    slow = [syn.render(scene, c2w[i], fov_to_K(fov[i], 40, 40), 40, 40) for i in range(3)]
    for a, b in zip(fast, slow):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_shadows_darken_the_floor_under_an_object():
    box = syn.Box(np.array([0.0, 0.0, 0.5]), np.array([0.5, 0.5, 0.5]), np.eye(3), _solid([0.8, 0.8, 0.8]))
    scene = _grey_room([box], [syn.PointLight(np.array([0.0, 0.0, 2.9]), 1.0)])
    scene.ambient = 0.2
    c2w = look_at(np.array([2.5, 0.1, 1.0]), np.array([0.0, 0.0, 0.0]))
    K = fov_to_K(70.0, 48, 48)
    lit = syn.render(scene, c2w, K, 48, 48, shadows=False).astype(int)
    shadowed = syn.render(scene, c2w, K, 48, 48, shadows=True).astype(int)
    assert (shadowed <= lit).all() and (lit - shadowed).max() > 30


def test_sampled_pairs_respect_rotation_range():
    rng = np.random.default_rng(0)
    scene = syn.random_scene(rng)
    angles = []
    for lo, hi in [(0.0, 15.0), (20.0, 45.0), (45.0, 60.0)]:
        for _ in range(6):
            c2w, fov = syn.sample_pair(scene, rng, (lo, hi), fov_deg=(40.0, 60.0))
            angle = rotation_angle_deg(c2w[0], c2w[1])
            assert lo <= angle <= hi and ((40.0 <= fov) & (fov <= 60.0)).all()
            for pose in c2w:
                assert np.allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-9)
                assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
                assert (np.abs(pose[:2, 3]) < scene.room.size[:2] / 2).all() and 0 < pose[2, 3] < scene.room.size[2]
            angles.append(angle)
    assert max(angles) > 45.0


def test_cameras_look_at_the_scene_and_stay_clear_of_objects():
    rng = np.random.default_rng(1)
    scene = syn.random_scene(rng)
    c2w, _ = syn.sample_cameras(scene, rng, 20, target_jitter=0.0, roll_deg=0.0)
    for pose in c2w:
        _, z = project(scene.center[None], pose, fov_to_K(50, 10, 10))
        forward = pose[:3, 2]
        to_centre = (scene.center - pose[:3, 3]) / np.linalg.norm(scene.center - pose[:3, 3])
        assert z[0] > 0 and forward @ to_centre == pytest.approx(1.0)
        assert syn._clear_of_objects(scene, pose[:3, 3], 0.3)


def test_smooth_trajectory_moves_in_small_steps():
    scene = syn.random_scene(np.random.default_rng(2))
    path = syn.smooth_trajectory(scene, 30, arc_deg=90.0)
    steps = [rotation_angle_deg(a, b) for a, b in zip(path[:-1], path[1:])]
    moves = [np.linalg.norm(a[:3, 3] - b[:3, 3]) for a, b in zip(path[:-1], path[1:])]
    assert path.shape == (30, 4, 4) and max(steps) < 6.0 and max(moves) < 0.4
    assert rotation_angle_deg(path[0], path[-1]) > 45.0
    assert math.isclose(np.linalg.det(path[10][:3, :3]), 1.0)


def test_walk_cameras_turn_around_one_spot():
    """Walking views: eyes near one spot, headings spread as asked, pitch and roll within bounds."""
    rng = np.random.default_rng(3)
    scene = syn.random_scene(rng)
    c2w, fov = syn.sample_walk_cameras(scene, rng, 24, yaw_spread_deg=90.0, step_radius=0.5,
                                       pitch_deg=(-10.0, 0.0), roll_deg=0.0, fov_deg=(50.0, 60.0))
    eyes = c2w[:, :3, 3]
    assert np.linalg.norm(eyes[:, :2] - eyes[:, :2].mean(0), axis=1).max() <= 1.0  # within one step disc
    forward = c2w[:, :3, 2]
    pitch = np.degrees(np.arcsin(forward[:, 2]))
    assert (pitch >= -10.0 - 1e-9).all() and (pitch <= 1e-9).all()
    assert np.allclose(c2w[:, :3, 0] @ np.array([0.0, 0.0, 1.0]), 0.0)  # no roll: the x axis stays level
    yaw = np.degrees(np.arctan2(forward[:, 1], forward[:, 0]))
    spread = np.ptp(np.degrees(np.unwrap(np.radians(yaw))))
    assert 45.0 < spread <= 90.0 + 1e-6
    assert ((fov >= 50.0) & (fov <= 60.0)).all()
    assert all(syn._clear_of_objects(scene, e, 0.3) for e in eyes)
    assert all(math.isclose(np.linalg.det(p[:3, :3]), 1.0) for p in c2w)
