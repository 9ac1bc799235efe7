"""Domain-randomised synthetic data: the plain look unchanged, photo textures, camera effects, cameras."""
import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gst_model.data import make_synthetic, real_samples, textures
from gst_model.data import synthetic as syn
from gst_model.data.cameras import fov_to_K, look_at
from gst_model.data.formats import read_re10k_sequence
from gst_model.data.make_synthetic import SyntheticConfig, render_scene
from gst_model.geometry import rotation_angle_deg

# sha256 of one plain scene (sequence file and pixels), computed with the renderer before domain
# randomisation was added: the plain look must stay byte-identical
PLAIN_DIGESTS = {"random": "e5963926324c6d3acbe3f14bb3be2343fa6592ac9f6954acec38f05947d90dfa",
                 "walk": "8244590a5ce71d8066f890fb99aa72f3735e6c73e85a77ed5bc421c276894b99"}


def _scene_files(root: Path, seq: str) -> tuple[bytes, list[np.ndarray]]:
    txt = (root / "train" / f"{seq}.txt").read_bytes()
    return txt, [np.asarray(Image.open(p)) for p in sorted((root / "train" / seq).glob("*.png"))]


@pytest.fixture
def fake_photo_cache(tmp_path, monkeypatch):
    """A real-data cache whose texture photos are small smooth random images (holdout ones pure red),
    made the default cache; yields the names of the photos read."""
    folder = tmp_path / "cache" / "scikit-image"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in real_samples.TEXTURE_PHOTOS:
        if Path(name).stem in textures.HOLDOUT_TEXTURES:
            pixels = np.zeros((40, 48, 3), dtype=np.uint8)
            pixels[..., 0] = 255
        else:
            pixels = np.kron(rng.integers(0, 256, (10, 12, 3)), np.ones((4, 4, 1))).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)
    monkeypatch.setenv(real_samples.CACHE_ENV, str(tmp_path / "cache"))
    read = []
    original = textures._read_photo
    monkeypatch.setattr(textures, "_read_photo", lambda path: read.append(Path(path).stem) or original(path))
    return read


@pytest.mark.parametrize("cameras", sorted(PLAIN_DIGESTS))
def test_plain_scenes_are_unchanged(tmp_path, cameras):
    seq = render_scene(SyntheticConfig(str(tmp_path), views_per_scene=3, size=24, seed=11, cameras=cameras), 5, "train")
    txt, images = _scene_files(tmp_path, seq)
    digest = hashlib.sha256(txt)
    for image in images:
        digest.update(image.tobytes())
    assert digest.hexdigest() == PLAIN_DIGESTS[cameras]


def test_randomized_scenes_are_deterministic_per_seed_and_differ_across_seeds(tmp_path, fake_photo_cache):
    cfg = SyntheticConfig(str(tmp_path / "a"), views_per_scene=3, size=32, seed=3, randomize=True)
    again = SyntheticConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    other_seed = SyntheticConfig(**{**cfg.__dict__, "out": str(tmp_path / "c"), "seed": 4})
    first, second, third = (_scene_files(Path(c.out), render_scene(c, 0, "train")) for c in (cfg, again, other_seed))
    assert first[0] == second[0] and all(np.array_equal(a, b) for a, b in zip(first[1], second[1]))
    assert first[0].splitlines()[1:] != third[0].splitlines()[1:]
    assert not any(np.array_equal(a, b) for a, b in zip(first[1], third[1]))
    assert b"randomized=1" in first[0].splitlines()[0]


def test_camera_effects_are_applied_to_the_written_frames(tmp_path, fake_photo_cache, monkeypatch):
    seen = []
    monkeypatch.setattr(make_synthetic, "camera_effects", lambda image, rng: seen.append(image) or 255 - image)
    cfg = SyntheticConfig(str(tmp_path), views_per_scene=3, size=16, seed=0, randomize=True)
    _, written = _scene_files(tmp_path, render_scene(cfg, 0, "train"))
    assert len(seen) == 3 and all(np.array_equal(w, 255 - r) for w, r in zip(written, seen))


def test_training_renders_read_only_training_photos(tmp_path, fake_photo_cache):
    assert not set(textures.TRAIN_TEXTURES) & set(textures.HOLDOUT_TEXTURES)
    names = {Path(n).stem for n in real_samples.TEXTURE_PHOTOS}
    assert names == set(textures.TRAIN_TEXTURES + textures.HOLDOUT_TEXTURES)
    cfg = SyntheticConfig(str(tmp_path / "out"), views_per_scene=2, size=16, seed=1, randomize=True)
    for index in range(3):
        render_scene(cfg, index, "train")
    assert sorted(fake_photo_cache) == sorted(textures.TRAIN_TEXTURES)  # read once, holdout never
    bank = textures.load_texture_bank("train")
    assert len(bank) == len(textures.TRAIN_TEXTURES)
    assert not any((image[..., 0] > 0.99).all() and (image[..., 1:] < 0.01).all() for image in bank)  # no red
    assert len(textures.load_texture_bank("holdout")) == len(textures.HOLDOUT_TEXTURES)


def test_missing_photos_name_make_real_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="make real-data"):
        textures.load_texture_bank("train", root=tmp_path)
    with pytest.raises(ValueError):
        textures.load_texture_bank("test", root=tmp_path)


def _photo_room(material, on_box: bool):
    """A 4 m cube room: its walls, or else one box in it, photo textured."""
    grey = syn.Material("solid", np.full(3, 0.5), np.full(3, 0.5))
    room = syn.Room(np.array([4.0, 4.0, 4.0]), grey, grey if on_box else material, grey)
    objects = [syn.Box(np.array([1.5, 0.0, 2.0]), np.array([0.5, 1.5, 1.5]), np.eye(3), material)] if on_box else []
    return syn.SceneSpec(room, objects, [], ambient=1.0, center=np.zeros(3))


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("on_box", [False, True])
def test_a_photo_material_shows_the_photo(on_box):
    """A wall (or a box face) filling the view, lit by ambient light only, shows the tile: the camera
    looks along +x, so image right is world -y and image down is world -z, the tile turned by 180 degrees."""
    rng = np.random.default_rng(5)
    tile = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))).astype(np.float32)
    # one tile spans 2 m; the offset puts its corner at the corner of the 2 m x 2 m patch in view
    offset = np.array([1.0, 1.0 if on_box else -1.0, 0.0])
    material = syn.Material("photo", np.ones(3), np.ones(3), 2.0, 0, offset, tile)
    eye = np.array([-1.0, 0.0, 2.0]) if on_box else np.array([0.0, 0.0, 2.0])  # 2 m from the surface
    fov = math.degrees(2 * math.atan(0.5))
    image = syn.render(_photo_room(material, on_box), look_at(eye, eye + [1.0, 0.0, 0.0]), fov_to_K(fov, 32, 32),
                       32, 32).astype(np.float32) / 255.0
    expected = np.asarray(Image.fromarray((tile[::-1, ::-1] * 255).astype(np.uint8)).resize((32, 32), Image.BOX))
    assert _correlation(image, expected / 255.0) > 0.9
    assert _correlation(image, tile[::8, ::8].repeat(4, 0).repeat(4, 1)) < 0.5  # not the unturned tile


def test_the_real_photo_bank_textures_randomized_scenes():
    reason = real_samples.missing_reason(names=("scikit-image",))
    if reason:
        pytest.skip(reason)
    bank = textures.load_texture_bank("train")
    assert len(bank) == len(textures.TRAIN_TEXTURES)
    assert all(b.dtype == np.float32 and b.shape[2] == 3 and max(b.shape[:2]) <= textures.MAX_SIDE
               and 0.0 <= b.min() and b.max() <= 1.0 and b.std() > 0.1 for b in bank)
    rng = np.random.default_rng(0)
    scene = syn.randomized_scene(rng, bank, layout="room")
    photos = [m for m in (scene.room.floor, scene.room.walls, scene.room.ceiling, *(o.material for o in scene.objects))
              if m.kind == "photo"]
    assert photos and all(m.image.shape == (textures.TILE_TEXELS, textures.TILE_TEXELS, 3) for m in photos)
    assert all(m.image.std() > 0.02 for m in photos)  # a crop of a photo, not a flat colour


def _high_frequency_energy(image):
    return float((np.diff(image, axis=0) ** 2).mean() + (np.diff(image, axis=1) ** 2).mean())


def test_camera_effects_change_images_in_the_expected_direction():
    rng = np.random.default_rng(0)
    image = rng.random((48, 48, 3)).astype(np.float32)
    sharp = _high_frequency_energy(image)
    assert _high_frequency_energy(syn.defocus_blur(image, 1.5)) < 0.3 * sharp
    streaked = syn.motion_blur(image, 5.0, 0.0)  # along x: rows are smoothed, columns are not
    assert (np.diff(streaked, axis=1) ** 2).mean() < 0.2 * (np.diff(streaked, axis=0) ** 2).mean()

    flat = np.concatenate([np.full((32, 32, 3), 0.1), np.full((32, 32, 3), 0.9)], axis=1).astype(np.float32)
    noisy = syn.sensor_noise(flat, rng, read_std=0.0, shot=0.01) - flat
    dark, bright = noisy[:, :32].std(), noisy[:, 32:].std()
    assert dark == pytest.approx(math.sqrt(0.001), rel=0.15) and bright == pytest.approx(math.sqrt(0.009), rel=0.15)
    assert syn.sensor_noise(flat, rng, read_std=0.05, shot=0.0)[:, :32].std() == pytest.approx(0.05, rel=0.15)

    photo = (np.kron(rng.random((12, 12, 3)), np.ones((4, 4, 1))) * 255).astype(np.uint8)
    errors = [np.abs(syn.jpeg_roundtrip(photo, q).astype(float) - photo).mean() for q in (30, 60, 90)]
    assert errors[0] > errors[1] > errors[2] > 0.0

    render = (image * 255).astype(np.uint8)
    runs = [syn.camera_effects(render, np.random.default_rng(s)) for s in (1, 1, 2)]
    assert runs[0].dtype == np.uint8 and runs[0].shape == render.shape
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_randomized_fields_of_view_and_rotations(tmp_path, fake_photo_cache):
    cfg = SyntheticConfig(str(tmp_path), views_per_scene=8, size=16, seed=2, randomize=True)
    assert (cfg.fov_min, cfg.fov_max, cfg.cameras) == (40.0, 100.0, "mixed")  # the randomised defaults
    fovs, angles = [], []
    for index in range(3):
        scene = read_re10k_sequence(tmp_path / "train" / f"{render_scene(cfg, index, 'train')}.txt")
        fovs += [math.degrees(2 * math.atan(v.size[0] / (2 * v.K[1, 1]))) for v in scene.views]
        angles += [rotation_angle_deg(a.c2w, b.c2w) for a, b in itertools.combinations(scene.views, 2)]
    assert 40.0 <= min(fovs) < 55.0 and 85.0 < max(fovs) <= 100.0
    assert any(45.0 <= a <= 60.0 for a in angles) and any(a < 20.0 for a in angles)


def test_randomized_layouts_and_lighting():
    rng = np.random.default_rng(0)
    corridor = syn.randomized_scene(rng, layout="corridor")
    assert max(corridor.room.size[:2]) > 2.5 * min(corridor.room.size[:2])
    assert np.prod(syn.randomized_scene(rng, layout="open").room.size[:2]) >= 100.0
    clutter = syn.randomized_scene(rng, layout="clutter")
    plain = syn.random_scene(rng)
    assert len(clutter.objects) > len(plain.objects)
    assert np.median([syn.bounding_radius(o) for o in clutter.objects]) < np.median(
        [syn.bounding_radius(o) for o in plain.objects])
    scenes = [syn.randomized_scene(np.random.default_rng(s)) for s in range(12)]
    assert len({len(s.lights) for s in scenes}) > 1 and len({round(s.ambient, 3) for s in scenes}) == 12
    tints = np.array([s.light_rgb for s in scenes])
    assert (tints[:, 0] > tints[:, 2]).any() and (tints[:, 0] < tints[:, 2]).any()  # warm and cool light
    assert tints.mean(axis=1).min() < 0.9 and tints.mean(axis=1).max() > 1.1  # under and over exposed


def test_mixed_cameras_orbit_in_some_scenes_and_walk_in_others():
    """Walking views stand within 0.6 m of one spot; look-at orbits spread over metres."""
    spreads = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        scene = syn.random_scene(rng)
        c2w, _ = syn.sample_mixed_cameras(scene, rng, 6)
        eyes = c2w[:, :2, 3]
        spreads.append(max(np.linalg.norm(a - b) for a, b in itertools.combinations(eyes, 2)))
    assert min(spreads) <= 1.2 and max(spreads) > 2.0
