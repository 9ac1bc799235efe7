"""Procedural indoor scenes and a vectorised numpy ray caster, for training GST on CPU.

A scene is a closed room (floor, four walls, ceiling; world z up, floor at z = 0, the room centred
on the z axis) holding a few spheres, boxes and cylinders. Every surface has a procedural texture
(solid, checker, stripes, value noise, gradient, marble) and is shaded with ambient light plus one or
two point lights with hard shadows. Rendering casts one ray per sample from the camera centre, keeps
the nearest hit over all primitives (so occlusion is exact) and box-averages a supersampled image.

Domain randomisation (`randomized_scene`, `sample_mixed_cameras`, `camera_effects`) widens this: corridors,
open halls and cluttered rooms, photo textures (`textures.py`), random lights, ambient, colour temperature
and exposure, walking as well as orbiting cameras, and lens/motion blur, sensor noise, tone curves and JPEG
on the rendered images. `random_scene` and `render` of plain scenes are unchanged by it.

Everything is deterministic given a `numpy.random.Generator`; cameras follow `cameras.py`
(OpenCV camera-to-world, K on the continuous pixel plane).
"""
from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gst_model.data.cameras import look_at
from gst_model.data.textures import photo_tile, random_tint
from gst_model.geometry import rotation_angle_deg

TEXTURES = ("solid", "checker", "stripes", "noise", "gradient", "marble", "photo")
_EPS = 1e-4


@dataclass
class Material:
    kind: str  # one of TEXTURES
    color_a: np.ndarray  # RGB in [0, 1]
    color_b: np.ndarray
    scale: float = 0.5  # texture period in metres
    axis: int = 0  # direction of stripes / gradient / marble in texture space
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))  # decorrelates equal textures
    image: np.ndarray | None = None  # "photo": float32 [h, w, 3] tile, modulated by color_a


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    material: Material


@dataclass
class Box:
    center: np.ndarray
    half: np.ndarray  # half extents along the local axes
    rotation: np.ndarray  # 3x3 local-to-world
    material: Material


@dataclass
class Cylinder:
    center: np.ndarray
    radius: float
    half_height: float  # along the local z axis
    rotation: np.ndarray  # 3x3 local-to-world
    material: Material


@dataclass
class Room:
    size: np.ndarray  # (x, y, z) extents; spans [-x/2, x/2] x [-y/2, y/2] x [0, z]
    floor: Material
    walls: Material
    ceiling: Material


@dataclass
class PointLight:
    position: np.ndarray
    intensity: float


@dataclass
class SceneSpec:
    room: Room
    objects: list  # Sphere | Box | Cylinder
    lights: list  # PointLight
    ambient: float
    center: np.ndarray  # where cameras look by default
    light_rgb: np.ndarray | None = None  # per-channel gain of all light: colour temperature and exposure


# ---------------------------------------------------------------------------------------------
# Scene generation


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _rotation_zyx(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    cz, sz = math.cos(yaw), math.sin(yaw)
    cy, sy = math.cos(pitch), math.sin(pitch)
    cx, sx = math.cos(roll), math.sin(roll)
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    Ry = np.array([[cy, 0, sy], [0, 1.0, 0], [-sy, 0, cy]])
    Rx = np.array([[1.0, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return Rz @ Ry @ Rx


def _material(rng: np.random.Generator, kinds, sat, val, contrast, scale, hue_jump: float = 0.3) -> Material:
    kind = str(rng.choice(kinds))
    h = rng.random()
    a = _hsv(h, rng.uniform(*sat), rng.uniform(*val))
    # the second colour is a nearby hue (sometimes the complement) and darker, so patterns read
    b = _hsv(h + rng.uniform(-0.1, 0.1) + (0.5 if rng.random() < hue_jump else 0.0),
             rng.uniform(*sat), np.clip(rng.uniform(*val) - rng.uniform(*contrast), 0.05, 1.0))
    return Material(kind, a, b, float(rng.uniform(*scale)), int(rng.integers(0, 2)),
                    rng.uniform(-10.0, 10.0, size=3))


def _object_material(rng: np.random.Generator) -> Material:
    return _material(rng, ["solid", "solid", "checker", "stripes", "noise", "gradient", "marble"],
                     sat=(0.35, 0.9), val=(0.45, 0.95), contrast=(0.2, 0.5), scale=(0.08, 0.35))


def bounding_radius(obj) -> float:
    if isinstance(obj, Sphere):
        return obj.radius
    if isinstance(obj, Box):
        return float(np.linalg.norm(obj.half))
    return math.hypot(obj.radius, obj.half_height)


def _floor_offset(obj) -> float:
    """Height of the centre above the lowest point, for resting an object on the floor."""
    if isinstance(obj, Sphere):
        return obj.radius
    if isinstance(obj, Box):
        return float(np.abs(obj.rotation[2]) @ obj.half)
    cz = abs(obj.rotation[2, 2])
    return obj.half_height * cz + obj.radius * math.sqrt(max(0.0, 1.0 - cz * cz))


def _floor_material(rng: np.random.Generator) -> Material:
    return _material(rng, ["checker", "noise", "marble", "stripes", "checker"], sat=(0.1, 0.5),
                     val=(0.35, 0.8), contrast=(0.1, 0.35), scale=(0.3, 0.9), hue_jump=0.1)


def _wall_material(rng: np.random.Generator) -> Material:
    return _material(rng, ["solid", "stripes", "noise", "gradient", "checker"], sat=(0.05, 0.4),
                     val=(0.65, 0.95), contrast=(0.05, 0.25), scale=(0.15, 1.5), hue_jump=0.0)


def _ceiling_material(rng: np.random.Generator) -> Material:
    return _material(rng, ["solid", "noise"], sat=(0.0, 0.1), val=(0.8, 0.97),
                     contrast=(0.02, 0.1), scale=(0.5, 2.0), hue_jump=0.0)


def _place_objects(rng: np.random.Generator, size: np.ndarray, target: int, material, scale: float = 1.0) -> list:
    """Up to `target` objects (dimensions times `scale`) on non-overlapping footprints inside the room;
    some tilted, some spheres floating. `material(rng)` draws each object's material."""
    half_xy = size[:2] / 2 - 0.4
    objects: list = []
    for _ in range(200):  # rejection sampling of non-overlapping footprints
        if len(objects) == target:
            break
        kind = rng.choice(["sphere", "box", "box", "cylinder"])
        mat = material(rng)
        if kind == "sphere":
            obj = Sphere(np.zeros(3), float(rng.uniform(0.15, 0.55)) * scale, mat)
        elif kind == "box":
            tilt = rng.random() < 0.25
            R = _rotation_zyx(rng.uniform(0, 2 * np.pi), *(rng.uniform(-0.6, 0.6, 2) if tilt else (0, 0)))
            half = rng.uniform([0.15, 0.15, 0.15], [0.6, 0.6, 0.9]) * scale
            obj = Box(np.zeros(3), half, R, mat)
        else:
            tilt = rng.random() < 0.2
            R = _rotation_zyx(rng.uniform(0, 2 * np.pi), *(rng.uniform(-0.5, 0.5, 2) if tilt else (0, 0)))
            obj = Cylinder(np.zeros(3), float(rng.uniform(0.1, 0.4)) * scale, float(rng.uniform(0.2, 0.9)) * scale,
                           R, mat)
        r = bounding_radius(obj)
        xy = rng.uniform(-half_xy + min(r, 1.0), half_xy - min(r, 1.0))
        lift = rng.uniform(0.3, 1.2) if isinstance(obj, Sphere) and rng.random() < 0.2 else 0.0
        obj.center = np.array([xy[0], xy[1], _floor_offset(obj) + lift])
        if obj.center[2] + r > size[2] - 0.6:
            continue
        if all(np.linalg.norm(obj.center[:2] - o.center[:2]) > 0.8 * (r + bounding_radius(o)) for o in objects):
            objects.append(obj)
    return objects


def _scene_centre(objects: list) -> np.ndarray:
    return np.array([*np.mean([o.center[:2] for o in objects], axis=0), 0.6]) if objects \
        else np.array([0.0, 0.0, 0.6])


def random_scene(rng: np.random.Generator, n_objects: tuple[int, int] = (4, 8),
                 room_xy: tuple[float, float] = (4.5, 8.0), room_height: tuple[float, float] = (2.6, 3.4),
                 n_lights: tuple[int, int] = (1, 2)) -> SceneSpec:
    """A random furnished room. Objects rest on the floor (some tilted, some spheres floating)."""
    size = np.array([rng.uniform(*room_xy), rng.uniform(*room_xy), rng.uniform(*room_height)])
    room = Room(size=size, floor=_floor_material(rng), walls=_wall_material(rng), ceiling=_ceiling_material(rng))
    objects = _place_objects(rng, size, int(rng.integers(n_objects[0], n_objects[1] + 1)), _object_material)
    lights = [PointLight(np.array([*rng.uniform(-size[:2] / 2 + 0.5, size[:2] / 2 - 0.5), size[2] - 0.25]),
                         float(rng.uniform(0.9, 1.3)))
              for _ in range(int(rng.integers(n_lights[0], n_lights[1] + 1)))]
    for light in lights[1:]:
        light.intensity *= 0.5  # a weaker fill light
    return SceneSpec(room, objects, lights, float(rng.uniform(0.25, 0.4)), _scene_centre(objects))


# ---------------------------------------------------------------------------------------------
# Domain randomisation: wider geometry, photo textures, lighting and exposure (camera effects below)

# room extents x, y, height (metres), object count, object size factor
LAYOUTS = {
    "room": ((3.5, 9.0), (3.5, 9.0), (2.4, 3.8), (3, 9), 1.0),
    "corridor": ((2.4, 3.2), (8.0, 16.0), (2.4, 3.2), (2, 6), 0.6),
    "open": ((10.0, 18.0), (10.0, 18.0), (3.5, 6.0), (6, 14), 1.3),
    "clutter": ((4.0, 8.0), (4.0, 8.0), (2.5, 3.4), (12, 20), 0.5),
}


def _maybe_photo(material, bank, p: float, scale: tuple[float, float]):
    """A material sampler: `material`, or with probability p a tile of a random bank photo repeating every
    `scale` metres."""
    def draw(rng: np.random.Generator) -> Material:
        if not bank or rng.random() >= p:
            return material(rng)
        tint = random_tint(rng)
        tile = photo_tile(bank[int(rng.integers(len(bank)))], rng)
        return Material("photo", tint, tint, float(rng.uniform(*scale)), 0, rng.uniform(-10.0, 10.0, size=3), tile)
    return draw


def blackbody_rgb(kelvin: float) -> np.ndarray:
    """Approximate sRGB colour of a black body at `kelvin` (Tanner Helland's fit), scaled to mean 1."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    b = 255.0 if t >= 66 else 0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307
    rgb = np.clip([r, g, b], 0.0, 255.0)
    return rgb / rgb.mean()


def randomized_scene(rng: np.random.Generator, bank=(), layout: str | None = None) -> SceneSpec:
    """A scene of a random (or the given) LAYOUT: a room, a corridor, an open hall or a cluttered room.

    With a `bank` of photos (float RGB images, see textures.load_texture_bank) about half the floors and
    walls, a fifth of the ceilings and a third of the objects are photo textured. 1-3 lights of random
    strength hang at random heights; ambient light, colour temperature (partly white-balanced, as a camera
    would) and exposure are random too.
    """
    xs, ys, zs, count, scale = LAYOUTS[layout or str(rng.choice(list(LAYOUTS)))]
    size = np.array([rng.uniform(*xs), rng.uniform(*ys), rng.uniform(*zs)])
    room = Room(size=size, floor=_maybe_photo(_floor_material, bank, 0.5, (0.8, 3.0))(rng),
                walls=_maybe_photo(_wall_material, bank, 0.5, (0.8, 3.0))(rng),
                ceiling=_maybe_photo(_ceiling_material, bank, 0.2, (0.8, 3.0))(rng))
    objects = _place_objects(rng, size, int(rng.integers(count[0], count[1] + 1)),
                             _maybe_photo(_object_material, bank, 0.3, (0.3, 1.0)), scale)
    lights = [PointLight(np.array([*rng.uniform(-size[:2] / 2 + 0.5, size[:2] / 2 - 0.5),
                                   rng.uniform(1.8, size[2] - 0.25)]), float(rng.uniform(0.3, 1.6)))
              for _ in range(int(rng.integers(1, 4)))]
    white = 1.0 + rng.uniform(0.2, 0.7) * (blackbody_rgb(rng.uniform(2700.0, 9000.0)) - 1.0)
    gain = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    return SceneSpec(room, objects, lights, float(rng.uniform(0.1, 0.5)), _scene_centre(objects), white * gain)


# ---------------------------------------------------------------------------------------------
# Ray-primitive intersection, structure-of-arrays: o [3] is the origin shared by all rays (the
# camera centre, or a light for shadow rays), D [3, N] float32 unit directions. Each returns
# t [N] float32, inf where there is no hit with t > _EPS.


def _safe_inv(x: np.ndarray) -> np.ndarray:
    return 1.0 / np.where(x == 0.0, np.float32(1e-20), x)


def _hit_sphere(obj: Sphere, o, D):
    oc = (o - obj.center).astype(np.float32)
    b = oc[0] * D[0] + oc[1] * D[1] + oc[2] * D[2]
    disc = b * b - np.float32(oc @ oc - obj.radius ** 2)
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = np.where(-b - sq > _EPS, -b - sq, -b + sq)
    return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def _slabs(ol, Dl, half):
    """Entry and exit distances of the rays through an axis-aligned box centred at the origin."""
    tmin = tmax = None
    for i in range(3):
        inv = _safe_inv(Dl[i])
        t1 = (-half[i] - ol[i]) * inv
        t2 = (half[i] - ol[i]) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = lo if tmin is None else np.maximum(tmin, lo)
        tmax = hi if tmax is None else np.minimum(tmax, hi)
    return tmin, tmax


def _rotate(R: np.ndarray, V: np.ndarray) -> np.ndarray:
    """R @ V for a 3x3 R and V [3, N], elementwise (avoids threaded BLAS on a busy machine)."""
    R = R.astype(V.dtype)
    return np.stack([R[i, 0] * V[0] + R[i, 1] * V[1] + R[i, 2] * V[2] for i in range(3)])


def _to_local(obj, o, D):
    return ((o - obj.center) @ obj.rotation).astype(np.float32), _rotate(obj.rotation.T, D)


def _hit_box(obj: Box, o, D):
    ol, Dl = _to_local(obj, o, D)
    tmin, tmax = _slabs(ol, Dl, obj.half.astype(np.float32))
    t = np.where(tmin > _EPS, tmin, tmax)
    return np.where((tmax >= tmin) & (t > _EPS), t, np.float32(np.inf))


def _hit_cylinder(obj: Cylinder, o, D):
    ol, Dl = _to_local(obj, o, D)
    r, hh = np.float32(obj.radius), np.float32(obj.half_height)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = Dl[0] * Dl[0] + Dl[1] * Dl[1]
        b = Dl[0] * ol[0] + Dl[1] * ol[1]
        disc = b * b - a * (ol[0] ** 2 + ol[1] ** 2 - r * r)
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a  # nearer root: rays start outside
        z = ol[2] + t_side * Dl[2]
        best = np.where((disc >= 0) & (np.abs(z) <= hh) & (t_side > _EPS), t_side, np.float32(np.inf))
        inv_z = _safe_inv(Dl[2])
        for zc in (-hh, hh):
            tc = (zc - ol[2]) * inv_z
            x = ol[0] + tc * Dl[0]
            y = ol[1] + tc * Dl[1]
            best = np.minimum(best, np.where((x * x + y * y <= r * r) & (tc > _EPS), tc, np.float32(np.inf)))
    return np.nan_to_num(best, nan=np.inf)


_HIT = {Sphere: _hit_sphere, Box: _hit_box, Cylinder: _hit_cylinder}


def _intersect(obj, o, D):
    """Nearest hit of one object; non-spheres are first culled by their bounding sphere."""
    if isinstance(obj, Sphere):
        return _hit_sphere(obj, o, D)
    bound = _hit_sphere(Sphere(obj.center, bounding_radius(obj) * 1.001, obj.material), o, D)
    idx = np.flatnonzero(bound < np.inf)
    t = np.full(D.shape[1], np.inf, dtype=np.float32)
    if len(idx):
        t[idx] = _HIT[type(obj)](obj, o, _take(D, idx))
    return t


def _room_exit(room: Room, o, D):
    centre = np.array([0.0, 0.0, room.size[2] / 2])
    return _slabs((o - centre).astype(np.float32), D, (room.size / 2).astype(np.float32))[1]


# ---------------------------------------------------------------------------------------------
# Surface normals and texture coordinates at hit points P [3, M] (float32).


def _dominant_axis(q: np.ndarray) -> list[np.ndarray]:
    """One-hot float32 masks [3][M] of the axis with the largest q (the face a box point lies on)."""
    on_x = (q[0] >= q[1]) & (q[0] >= q[2])
    on_z = ~on_x & (q[2] >= q[1])
    return [m.astype(np.float32) for m in (on_x, ~on_x & ~on_z, on_z)]


def _normal_coords(obj, P):
    c = obj.center.astype(np.float32)[:, None]
    if isinstance(obj, Sphere):
        return (P - c) / np.float32(obj.radius), P - c
    Pl = _rotate(obj.rotation.T, P - c)
    if isinstance(obj, Box):
        face = _dominant_axis(np.abs(Pl / obj.half.astype(np.float32)[:, None]))
        Nl = np.stack([face[i] * np.sign(Pl[i]) for i in range(3)])
        # face coordinates: a constant along the normal avoids texture flicker at the face plane
        coords = np.stack([Pl[i] + face[i] * (0.5 - Pl[i]) for i in range(3)])
    else:
        rad = np.sqrt(Pl[0] ** 2 + Pl[1] ** 2)
        cap = np.abs(Pl[2]) / obj.half_height > rad / obj.radius
        side = (~cap).astype(np.float32)
        Nl = np.stack([side * Pl[0] / np.maximum(rad, 1e-6), side * Pl[1] / np.maximum(rad, 1e-6),
                       (1.0 - side) * np.sign(Pl[2])])
        around = np.arctan2(Pl[1], Pl[0]) * obj.radius  # unrolled side surface
        coords = np.where(cap, np.stack([Pl[0], Pl[1], np.full_like(rad, 7.5)]),
                          np.stack([around, Pl[2], np.full_like(rad, 0.5)]))
    return _rotate(obj.rotation, Nl), coords


def _room_surfaces(room: Room, P):
    """Inward normals, 2-D surface coordinates and surface masks (floor, walls, ceiling)."""
    half = (room.size / 2).astype(np.float32)
    rel = P - np.array([0.0, 0.0, room.size[2] / 2], dtype=np.float32)[:, None]
    face = _dominant_axis(np.abs(rel / half[:, None]))
    N = np.stack([-face[i] * np.sign(rel[i]) for i in range(3)])
    # floor/ceiling use (x, y); walls use (along-wall, height) so stripes run vertically
    u = P[0] + face[0] * (P[1] - P[0])
    v = P[2] + face[2] * (P[1] - P[2])
    coords = np.stack([u, v, np.full_like(u, 0.5)])
    on_z = face[2] > 0
    return N, coords, (on_z & (rel[2] < 0), ~on_z, on_z & (rel[2] > 0))


# ---------------------------------------------------------------------------------------------
# Procedural textures on coordinates [3, M]


_NOISE_TABLE = np.random.default_rng(20250101).random(1 << 16).astype(np.float32)


def _value_noise(p: np.ndarray) -> np.ndarray:
    """Trilinearly interpolated lattice noise in [0, 1] (smoothstep weights, hashed lattice)."""
    i = np.floor(p)
    f = p - i
    i = i.astype(np.int64)
    w = f * f * (3.0 - 2.0 * f)
    hx = (i[0] * 73856093, (i[0] + 1) * 73856093)
    hy = (i[1] * 19349663, (i[1] + 1) * 19349663)
    hz = (i[2] * 83492791, (i[2] + 1) * 83492791)
    out = np.zeros(p.shape[1], dtype=np.float32)
    for dx in (0, 1):
        wx = w[0] if dx else 1.0 - w[0]
        for dy in (0, 1):
            wxy = wx * (w[1] if dy else 1.0 - w[1])
            hxy = hx[dx] ^ hy[dy]
            for dz in (0, 1):
                out += wxy * (w[2] if dz else 1.0 - w[2]) * _NOISE_TABLE[(hxy ^ hz[dz]) & 0xFFFF]
    return out


def _fbm(p: np.ndarray, octaves: int = 3) -> np.ndarray:
    total, amp, norm = 0.0, 1.0, 0.0
    for k in range(octaves):
        total = total + amp * _value_noise(p * np.float32(2.0 ** k) + np.float32(17.0 * k))
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)


def _albedo(m: Material, coords: np.ndarray) -> np.ndarray:
    a, b = m.color_a.astype(np.float32)[:, None], m.color_b.astype(np.float32)[:, None]
    if m.kind == "solid":
        return np.broadcast_to(a, coords.shape)
    if m.kind == "photo":  # 2-D: the surface's own parametrisation comes first in coords
        return _photo(m.image, (coords[:2] + m.offset[:2].astype(np.float32)[:, None]) / np.float32(m.scale)) * a
    q = (coords + m.offset.astype(np.float32)[:, None]) / np.float32(m.scale)
    if m.kind == "checker":
        mix = (np.floor(q).astype(np.int64).sum(axis=0) & 1).astype(np.float32)
    elif m.kind == "stripes":
        mix = (np.floor(q[m.axis]).astype(np.int64) & 1).astype(np.float32)
    elif m.kind == "noise":
        mix = _fbm(q)
    elif m.kind == "gradient":
        mix = 0.5 + 0.5 * np.cos(q[m.axis] * np.float32(math.pi / 4))  # a slow ramp across metres
    elif m.kind == "marble":
        mix = 0.5 + 0.5 * np.sin(np.float32(2 * math.pi) * (q[m.axis] + 1.5 * _fbm(q * np.float32(0.5))))
    else:
        raise ValueError(f"unknown texture {m.kind!r}")
    return a + mix * (b - a)


def _photo(image: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Bilinear lookup of image [h, w, 3] at tile coordinates q [2, M] (u across, v down; one tile per
    unit), mirrored every other tile so neighbouring tiles meet without a seam. Returns [3, M]."""
    h, w = image.shape[:2]
    t = np.float32(1.0) - np.abs(q % np.float32(2.0) - np.float32(1.0))  # triangle wave in [0, 1]
    x, y = t[0] * np.float32(w - 1), t[1] * np.float32(h - 1)
    x0, y0 = np.minimum(x.astype(np.int64), w - 2), np.minimum(y.astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat, i = image.reshape(-1, 3), y0 * w + x0
    top = flat[i] * (1.0 - fx) + flat[i + 1] * fx
    bottom = flat[i + w] * (1.0 - fx) + flat[i + w + 1] * fx
    return (top * (1.0 - fy) + bottom * fy).T


def _surface_uv(obj, normal: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """2-D texture coordinates (metres) on an object's surface, for photos: cylinders have them first in
    coords already (as room surfaces do); box faces drop the axis along their normal; spheres unroll
    around z."""
    if isinstance(obj, Box):
        face = _dominant_axis(np.abs(_rotate(obj.rotation.T, normal)))
        return np.stack([coords[0] + face[0] * (coords[1] - coords[0]), coords[2] + face[2] * (coords[1] - coords[2])])
    if isinstance(obj, Sphere):
        return np.stack([np.arctan2(coords[1], coords[0]) * np.float32(obj.radius), coords[2]])
    return coords[:2]


# ---------------------------------------------------------------------------------------------
# Rendering


@functools.lru_cache(maxsize=16)
def _camera_frame_rays(K: tuple, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit camera-frame directions [3, H*W] through pixel centres and their z components (cached)."""
    fx, skew, cx, _, fy, cy = K[:6]
    y = np.repeat((np.arange(height) + 0.5 - cy) / fy, width)
    x = np.tile((np.arange(width) + 0.5 - cx) / fx, height) - skew / fx * y
    z = 1.0 / np.sqrt(x * x + y * y + 1.0)
    dirs, z = np.stack([x * z, y * z, z]).astype(np.float32), z.astype(np.float32)
    dirs.flags.writeable = z.flags.writeable = False
    return dirs, z


def _take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X[:, idx] for X [3, N]; np.take is several times faster than 2-D fancy indexing."""
    return np.take(X, idx, axis=1)


def _put(X: np.ndarray, idx: np.ndarray, Y: np.ndarray) -> None:
    """X[:, idx] = Y, row by row (several times faster than 2-D fancy assignment)."""
    for i in range(len(X)):
        X[i][idx] = Y[i]


def _occluded(scene: SceneSpec, light: PointLight, P: np.ndarray) -> np.ndarray:
    """Hard shadows: cast from the light towards each point (all rays share the light's origin)."""
    to_p = P - light.position.astype(np.float32)[:, None]
    dist = np.sqrt((to_p * to_p).sum(axis=0))
    D = to_p / np.maximum(dist, 1e-6)
    limit = dist * np.float32(1.0 - 1e-3) - np.float32(2e-3)  # ignore the point's own surface
    blocked = np.zeros(P.shape[1], dtype=bool)
    for obj in scene.objects:
        rel = obj.center - light.position
        dc, r = float(np.linalg.norm(rel)), bounding_radius(obj)
        cand = ~blocked
        if dc > r:  # only rays inside the cone the bounding sphere subtends, ending beyond its front
            u = (rel / dc).astype(np.float32)
            cone = u[0] * D[0] + u[1] * D[1] + u[2] * D[2] >= np.float32(math.sqrt(1.0 - (r / dc) ** 2))
            cand &= cone & (dist > np.float32(dc - r))
        idx = np.flatnonzero(cand)
        if len(idx):
            blocked[idx] = _intersect(obj, light.position, _take(D, idx)) < limit[idx]
    return blocked


def _screen_window(obj, c2w: np.ndarray, K: np.ndarray, height: int, width: int):
    """Conservative pixel window (r0, r1, c0, c1) covering the object's bounding sphere, or None.

    The sphere lies in the axis-aligned camera-space cube around it; in front of the camera the
    projection of that cube is bounded by its projected corners.
    """
    X, Y, Z = (obj.center - c2w[:3, 3]) @ c2w[:3, :3]
    r = bounding_radius(obj)
    if Z + r <= 0.0:
        return None
    if Z - r <= 1e-3:
        return 0, height, 0, width
    x = np.array([X - r, X + r])[:, None, None] / np.array([Z - r, Z + r])[None, None, :]
    y = np.array([Y - r, Y + r])[None, :, None] / np.array([Z - r, Z + r])[None, None, :]
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = np.broadcast_to(K[1, 1] * y + K[1, 2], u.shape)
    c0, c1 = max(0, int(math.floor(u.min())) - 1), min(width, int(math.ceil(u.max())) + 1)
    r0, r1 = max(0, int(math.floor(v.min())) - 1), min(height, int(math.ceil(v.max())) + 1)
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def _downsample(x: np.ndarray, ss: int) -> np.ndarray:
    """Box filter over ss x ss blocks of the last two axes (strided sums are faster than reshape-mean)."""
    if ss == 1:
        return x
    return sum(x[..., i::ss, j::ss] for i in range(ss) for j in range(ss)) / np.float32(ss * ss)


def render(scene: SceneSpec, c2w: np.ndarray, K: np.ndarray, height: int, width: int, *,
           supersample: int = 2, shadows: bool = True, return_depth: bool = False):
    """Render an HxWx3 uint8 image from an OpenCV camera-to-world pose and pixel intrinsics K.

    With `return_depth`, also returns the float32 z-depth (distance along the optical axis) per
    pixel, averaged over the supersamples like the colour.
    """
    ss = int(supersample)
    c2w = np.asarray(c2w, dtype=np.float64)
    Ks = np.asarray(K, dtype=np.float64).copy()
    Ks[:2] *= ss  # exact on the continuous pixel plane
    hs, ws = height * ss, width * ss
    dirs_cam, z_of_ray = _camera_frame_rays(tuple(Ks.ravel().tolist()), hs, ws)
    D = _rotate(c2w[:3, :3], dirs_cam)
    o = c2w[:3, 3]

    # nearest hit: the room's far wall, then every object inside its conservative screen window
    t_best = _room_exit(scene.room, o, D)
    hit_id = np.full(D.shape[1], -1, dtype=np.int16)  # -1 = room
    t_grid, id_grid, D_grid = t_best.reshape(hs, ws), hit_id.reshape(hs, ws), D.reshape(3, hs, ws)
    for k, obj in enumerate(scene.objects):
        window = _screen_window(obj, c2w, Ks, hs, ws)
        if window is None:
            continue
        r0, r1, c0, c1 = window
        t = _intersect(obj, o, D_grid[:, r0:r1, c0:c1].reshape(3, -1)).reshape(r1 - r0, c1 - c0)
        t_win, id_win = t_grid[r0:r1, c0:c1], id_grid[r0:r1, c0:c1]  # views: updated in place
        nearer = t < t_win
        t_win[nearer] = t[nearer]
        id_win[nearer] = k
    P = o.astype(np.float32)[:, None] + t_best * D

    # surfaces: the room everywhere first (cheap, no gathers), then objects overwrite their pixels
    normal, coords, surfaces = _room_surfaces(scene.room, P)
    albedo = np.empty_like(P)
    is_room = hit_id < 0
    for mask, mat in zip(surfaces, (scene.room.floor, scene.room.walls, scene.room.ceiling)):
        idx = np.flatnonzero(mask & is_room)
        if len(idx):
            _put(albedo, idx, _albedo(mat, _take(coords, idx)))
    for k, obj in enumerate(scene.objects):
        idx = np.flatnonzero(hit_id == k)
        if len(idx):
            n, obj_coords = _normal_coords(obj, _take(P, idx))
            _put(normal, idx, n)
            if obj.material.kind == "photo":
                obj_coords = _surface_uv(obj, n, obj_coords)
            _put(albedo, idx, _albedo(obj.material, obj_coords))

    shade = np.full(P.shape[1], scene.ambient, dtype=np.float32)
    for light in scene.lights:
        to_l = light.position.astype(np.float32)[:, None] - P
        dist = np.sqrt((to_l * to_l).sum(axis=0))
        lambert = np.maximum((normal * to_l).sum(axis=0) / np.maximum(dist, 1e-6), 0.0)
        contrib = np.float32(light.intensity) * lambert / (1.0 + (dist / np.float32(4.0)) ** 2)  # soft falloff
        if shadows:
            lit = np.flatnonzero(contrib > 0)  # back-facing points need no shadow ray
            contrib[lit[_occluded(scene, light, _take(P, lit))]] = 0.0
        shade += contrib
    radiance = albedo * shade
    if scene.light_rgb is not None:
        radiance *= scene.light_rgb.astype(np.float32)[:, None]
    rgb = _downsample(radiance.reshape(3, hs, ws), ss)
    image = np.ascontiguousarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    if not return_depth:
        return image
    return image, _downsample((t_best * z_of_ray).reshape(hs, ws), ss)


# ---------------------------------------------------------------------------------------------
# Camera effects on rendered images (domain randomisation): lens and motion blur, sensor noise, tone
# curve, JPEG. Float images are [H, W, C] in [0, 1].


def shift_average(image: np.ndarray, offsets) -> np.ndarray:
    """Mean of copies of `image` shifted by integer (dy, dx) offsets, edges replicated: a box blur over
    the offsets' footprint."""
    r = int(np.abs(np.asarray(offsets)).max())
    h, w = image.shape[:2]
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="edge")
    return sum(padded[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets) / np.float32(len(offsets))


def defocus_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """A box blur over a disc of `radius` pixels (a lens out of focus)."""
    k = int(radius)
    return shift_average(image, [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
                                 if dy * dy + dx * dx <= radius * radius])


def motion_blur(image: np.ndarray, length: float, angle: float) -> np.ndarray:
    """A box blur along a `length`-pixel segment at `angle` radians from the x axis (the camera moving
    while the shutter is open)."""
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, round(length)))  # about a pixel apart
    return shift_average(image, np.floor(np.stack([t * math.sin(angle), t * math.cos(angle)], 1) + 0.5)
                         .astype(int).tolist())


def sensor_noise(image: np.ndarray, rng: np.random.Generator, read_std: float, shot: float) -> np.ndarray:
    """Gaussian read noise plus shot noise whose variance grows with the signal (`shot` x intensity), the
    Gaussian approximation of Poisson photon counts."""
    std = np.sqrt(np.float32(read_std ** 2) + np.float32(shot) * np.clip(image, 0.0, 1.0))
    return image + std * rng.standard_normal(image.shape, dtype=np.float32)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 RGB image encoded as JPEG at `quality` and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def camera_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rendered uint8 image as a random camera might record it: a quarter each defocus or motion blur,
    read and shot noise, a tone curve (gamma 0.8-1.25) and, four times in five, JPEG at quality 30-90.
    Blur sizes are set for 64 px images and scale with the height."""
    x = image.astype(np.float32) / np.float32(255.0)
    px = image.shape[0] / 64.0
    blur = rng.random()
    if blur < 0.25:
        x = defocus_blur(x, rng.uniform(1.0, 2.0) * px)
    elif blur < 0.5:
        x = motion_blur(x, rng.uniform(2.0, 6.0) * px, rng.uniform(0.0, math.pi))
    x = sensor_noise(x, rng, rng.uniform(0.002, 0.025), rng.uniform(0.0, 0.004))
    x = np.clip(x, 0.0, 1.0) ** np.float32(math.exp(rng.uniform(math.log(0.8), math.log(1.25))))
    out = (x * 255.0 + 0.5).astype(np.uint8)
    return jpeg_roundtrip(out, int(rng.integers(30, 91))) if rng.random() < 0.8 else out


# ---------------------------------------------------------------------------------------------
# Cameras


def _inside_room(scene: SceneSpec, eye: np.ndarray, margin: float) -> np.ndarray:
    lo = np.array([-scene.room.size[0] / 2 + margin, -scene.room.size[1] / 2 + margin, margin])
    hi = np.array([scene.room.size[0] / 2 - margin, scene.room.size[1] / 2 - margin, scene.room.size[2] - margin])
    return np.clip(eye, lo, hi)


def _clear_of_objects(scene: SceneSpec, eye: np.ndarray, clearance: float) -> bool:
    return all(np.linalg.norm(eye - obj.center) > bounding_radius(obj) + clearance for obj in scene.objects)


def _blocks_view(scene: SceneSpec, eye: np.ndarray, target: np.ndarray, near_fraction: float = 0.4) -> bool:
    """Whether an object's bounding sphere cuts the sight line within its first near_fraction."""
    seg = target - eye
    length2 = float(seg @ seg)
    for obj in scene.objects:
        s = float(np.clip((obj.center - eye) @ seg / length2, 0.0, 1.0))
        if s < near_fraction and np.linalg.norm(eye + s * seg - obj.center) < bounding_radius(obj):
            return True
    return False


def _uniform(rng: np.random.Generator, value) -> float:
    """A fixed number, or uniform in a (low, high) range."""
    return float(rng.uniform(*value)) if np.ndim(value) else float(value)


def sample_cameras(scene: SceneSpec, rng: np.random.Generator, n: int, *,
                   fov_deg=(45.0, 70.0), azimuth_spread_deg: float = 120.0, radius=(1.5, 3.2),
                   height=(0.6, 1.8), target_jitter: float = 0.35, roll_deg: float = 3.0,
                   base_azimuth_deg: float | None = None, clearance: float = 0.35,
                   max_tries: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """n look-at cameras around the scene centre, returned as (c2w [n, 4, 4], fovy_deg [n]).

    All cameras share a base azimuth (random unless given) and spread uniformly within
    +-azimuth_spread_deg/2 of it, so the relative yaw of any pair is at most the spread plus the
    jitter of targets, heights and roll. `fov_deg`, `radius`, `height` are a number or (low, high).
    Eyes stay inside the room, at least `clearance` away from every object's bounding sphere, and
    no object sits on the near part of the line of sight (so no view is a close-up of one object).
    """
    base = math.radians(base_azimuth_deg) if base_azimuth_deg is not None else rng.uniform(0, 2 * math.pi)
    poses, fovs = [], []
    for _ in range(max_tries):
        if len(poses) == n:
            break
        az = base + math.radians(rng.uniform(-0.5, 0.5) * azimuth_spread_deg)
        target = scene.center + rng.uniform(-target_jitter, target_jitter, 3) * np.array([1.0, 1.0, 0.5])
        r = _uniform(rng, radius)
        eye = _inside_room(scene, np.array([target[0] + r * math.cos(az), target[1] + r * math.sin(az),
                                            _uniform(rng, height)]), margin=0.2)
        fov = _uniform(rng, fov_deg)
        roll = rng.uniform(-roll_deg, roll_deg)
        if (np.linalg.norm((eye - target)[:2]) < 0.5 or not _clear_of_objects(scene, eye, clearance)
                or _blocks_view(scene, eye, target)):
            continue
        poses.append(look_at(eye, target, roll_deg=roll))
        fovs.append(fov)
    if len(poses) < n:
        raise RuntimeError(f"could only place {len(poses)} of {n} cameras in {max_tries} tries")
    return np.stack(poses), np.array(fovs)


def sample_walk_cameras(scene: SceneSpec, rng: np.random.Generator, n: int, *,
                        fov_deg=(45.0, 70.0), yaw_spread_deg: float = 120.0, stand_distance=(1.8, 3.0),
                        step_radius: float = 0.6, height=(0.9, 1.5), pitch_deg=(-20.0, 5.0),
                        roll_deg: float = 3.0, clearance: float = 0.35,
                        max_tries: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """n cameras of a robot that stands near one spot and looks around, as (c2w [n, 4, 4], fovy_deg [n]).

    The spot lies `stand_distance` from the scene centre; each view steps up to `step_radius` from it,
    turns to a heading within +-yaw_spread_deg/2 of the direction to the centre, and tilts by
    `pitch_deg`. Relative rotations are mostly the camera turning (the image content shifts), unlike
    `sample_cameras`, whose look-at orbits keep the centre in view (content rotates in depth).
    """
    for _ in range(max_tries // 200):  # a crowded spot may not fit n views: try another one
        az, r = rng.uniform(0, 2 * math.pi), _uniform(rng, stand_distance)
        spot = _inside_room(scene, scene.center + np.array([r * math.cos(az), r * math.sin(az), 0.0]), margin=0.4)
        if np.linalg.norm((scene.center - spot)[:2]) < 1.0:
            continue
        base_yaw = math.atan2(*(scene.center - spot)[1::-1])
        poses, fovs = [], []
        for _ in range(200):
            if len(poses) == n:
                return np.stack(poses), np.array(fovs)
            step, heading = step_radius * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            eye = np.array([spot[0] + step * math.cos(heading), spot[1] + step * math.sin(heading),
                            _uniform(rng, height)])
            eye = _inside_room(scene, eye, margin=0.2)
            yaw = base_yaw + math.radians(rng.uniform(-0.5, 0.5) * yaw_spread_deg)
            pitch = math.radians(_uniform(rng, pitch_deg))
            forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
            if not _clear_of_objects(scene, eye, clearance) or _blocks_view(scene, eye, eye + 1.5 * forward):
                continue
            poses.append(look_at(eye, eye + forward, roll_deg=rng.uniform(-roll_deg, roll_deg)))
            fovs.append(_uniform(rng, fov_deg))
        if len(poses) == n:
            return np.stack(poses), np.array(fovs)
    raise RuntimeError(f"could not place {n} walking views in this scene after {max_tries} tries")


def sample_mixed_cameras(scene: SceneSpec, rng: np.random.Generator, n: int, *, fov_deg=(45.0, 70.0),
                         spread_deg: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """Per scene, at even odds, look-at orbits (`sample_cameras`, azimuth spread `spread_deg`) or a robot
    walking and turning its head (`sample_walk_cameras`, heading spread `spread_deg`). In rooms wider than
    about 9 m the cameras stand further back, up to 0.35 of the shorter side from the scene centre."""
    far = max(3.2, 0.35 * float(min(scene.room.size[:2])))
    if rng.random() < 0.5:
        return sample_walk_cameras(scene, rng, n, fov_deg=fov_deg, yaw_spread_deg=spread_deg,
                                   stand_distance=(1.8, far - 0.2))
    return sample_cameras(scene, rng, n, fov_deg=fov_deg, azimuth_spread_deg=spread_deg, radius=(1.5, far))


def sample_pair(scene: SceneSpec, rng: np.random.Generator, rot_range_deg=(0.0, 60.0),
                max_tries: int = 500, **camera_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Two cameras whose relative rotation angle lies in rot_range_deg (rejection sampling)."""
    lo, hi = rot_range_deg
    camera_kwargs.setdefault("azimuth_spread_deg", min(360.0, 1.2 * hi + 10.0))
    for _ in range(max_tries):
        c2w, fov = sample_cameras(scene, rng, 2, **camera_kwargs)
        if lo <= rotation_angle_deg(c2w[0], c2w[1]) <= hi:
            return c2w, fov
    raise RuntimeError(f"no camera pair with relative rotation in {rot_range_deg} after {max_tries} tries")


def smooth_trajectory(scene: SceneSpec, n: int, *, arc_deg: float = 120.0, start_azimuth_deg: float = 0.0,
                      radius: float = 2.4, radius_wobble: float = 0.4, height: float = 1.3,
                      height_wobble: float = 0.3) -> np.ndarray:
    """A smooth camera path (c2w [n, 4, 4]) sweeping an arc around the scene centre.

    Radius and height vary sinusoidally and the look-at target drifts slowly, so consecutive frames
    differ by a small, smooth motion. Eyes are clamped inside the room (no object clearance check).
    """
    poses = []
    for s in np.linspace(0.0, 1.0, n):
        az = math.radians(start_azimuth_deg + arc_deg * s)
        r = radius + radius_wobble * math.sin(2 * math.pi * s)
        eye = np.array([scene.center[0] + r * math.cos(az), scene.center[1] + r * math.sin(az),
                        height + height_wobble * math.sin(math.pi * s)])
        target = scene.center + np.array([0.2 * math.sin(2 * math.pi * s), 0.2 * math.cos(2 * math.pi * s), 0.0])
        poses.append(look_at(_inside_room(scene, eye, margin=0.2), target))
    return np.stack(poses)
