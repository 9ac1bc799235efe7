"""A second, independent scene renderer whose images are only ever used to test generalisation.

The model trains on `synthetic.py`'s scenes (a ray caster: boxes, spheres and cylinders in a box room,
HSV colours, point lights with hard shadows). This module shares none of that code. It is a z-buffer
triangle rasterizer over other scenes, with another look:

* geometry: L-shaped rooms, corridors with pilasters, halls with pillars and a partition wall with a
  doorway; tables, staircases, prisms, pyramids, tetrahedra and low-poly rocks, all triangle meshes,
  flat-shaded;
* textures: wood planks, tiles with grout, brick courses, Voronoi cells, plaid and dots, coloured
  from fixed designer palettes (not random hues);
* light: a directional sun without shadows, a hemispherical sky/ground ambient, distance fog and a
  vignette, in linear RGB with a gamma-2.2 encode;
* cameras: orbits looking at an object, or a walk along the room's path turning the head; every
  pair of views of a scene is within `max_rot` degrees of rotation.

Rasterization (`rasterize`) is vectorised over fragments: triangles are clipped at the near plane,
every sample centre in a triangle's bounding box is tested with affine barycentrics, the nearest
fragment per sample wins, and barycentrics are made perspective-correct (weights divided by z).
`render` supersamples and box-filters. Conventions follow `cameras.py` (OpenCV camera-to-world,
K on the continuous pixel plane; world z up, floor at z = 0).

    python -m gst_model.data.holdout_scenes --out data/holdout --scenes 40 --views-per-scene 8 \
        --size 256 --fov 49 --seed 0 --workers 2

writes every scene to split `test` in the RealEstate10K layout, plus `manifest.json` with
`"holdout": true`, which `refuse_holdout` (called by the training entry points) turns away.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gst_model.data.cameras import fov_to_K, look_at
from gst_model.data.formats import write_re10k_sequence
from gst_model.geometry import rotation_angle_deg

RENDERER = "gst_model.data.holdout_scenes: numpy z-buffer triangle rasterizer, sun + sky ambient + fog"
TEXTURES = ("wood", "tiles", "brick", "voronoi", "plaid", "dots")
FRAME_STEP_US = 33_333  # 30 fps timestamps in microseconds, as RealEstate10K
_INSIDE_EPS = 1e-7  # barycentric slack: shared edges are drawn by both triangles, so no cracks
_FRAGMENT_BUDGET = 1 << 20  # fragments tested per chunk (bounds memory at ~100 MB)

# sRGB designer palettes; a scene draws all its colours from one
PALETTES = [
    ["c8553d", "f28f3b", "ffd5c2", "588b8b", "2d3047"],
    ["e5e5e5", "a3b8c2", "5f7a8a", "2e4756", "d9b48f"],
    ["edc9a3", "c48b5c", "8c5a3c", "4f6d7a", "f2e8cf"],
    ["2d6a4f", "52b788", "b7e4c7", "774936", "e9d8a6"],
    ["264653", "2a9d8f", "e9c46a", "f4a261", "e76f51"],
    ["5f0f40", "9a031e", "fb8b24", "e36414", "0f4c5c"],
    ["cdb4db", "ffc8dd", "ffafcc", "bde0fe", "a2d2ff"],
    ["22223b", "4a4e69", "9a8c98", "c9ada7", "f2e9e4"],
    ["606c38", "283618", "fefae0", "dda15e", "bc6c25"],
    ["03045e", "0077b6", "00b4d8", "90e0ef", "caf0f8"],
]
# pattern period in metres (plank width, tile side, brick course, cell, plaid repeat, dot spacing)
_SCALES = {"wood": (0.12, 0.22), "tiles": (0.25, 0.5), "brick": (0.1, 0.15), "voronoi": (0.2, 0.5),
           "plaid": (0.3, 0.6), "dots": (0.15, 0.3)}


def _linear(hex_rgb: str) -> np.ndarray:
    return (np.array([int(hex_rgb[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0) ** 2.2


@dataclass
class Material:
    kind: str  # one of TEXTURES
    color_a: np.ndarray  # linear RGB: main colour
    color_b: np.ndarray  # second colour (other tiles, bricks, dots, plaid bands)
    color_c: np.ndarray  # grout, mortar, seams, cell borders
    scale: float  # pattern period in metres
    seed: int  # decorrelates the per-cell randomness of equal patterns
    offset: np.ndarray  # (2,) uv shift in metres


@dataclass
class Lighting:
    sun_dir: np.ndarray  # unit vector towards the sun
    sun: np.ndarray  # RGB irradiance of the sun
    sky: np.ndarray  # ambient from above (normal +z)
    ground: np.ndarray  # ambient from below (normal -z)
    fog: np.ndarray  # colour distant surfaces fade to (and of empty samples)
    fog_density: float  # per metre
    vignette: float  # brightness lost at the image corners

    @classmethod
    def flat(cls) -> "Lighting":
        """Albedo straight through: no sun, white ambient, no fog or vignette (for tests)."""
        z = np.zeros(3)
        return cls(np.array([0.0, 0.0, 1.0]), z, np.ones(3), np.ones(3), z, 0.0, 0.0)


@dataclass
class HoldoutScene:
    tris: np.ndarray  # [T, 3, 3] world vertices
    uv: np.ndarray  # [T, 3, 2] texture coordinates in metres
    normals: np.ndarray  # [T, 3] unit face normals (either side: shading faces them to the camera)
    material_ids: np.ndarray  # [T] index into materials
    materials: list
    lighting: Lighting
    layout: str  # "l_room" | "corridor" | "hall"
    height: float  # ceiling height
    rects: np.ndarray  # [R, 4] floor rectangles (x0, y0, x1, y1); their union is the room
    segments: np.ndarray  # [S, 2, 2] walls seen from above, cameras keep clear of them
    circles: np.ndarray  # [C, 3] object footprints (x, y, radius)
    focus: np.ndarray  # [F, 4] things worth orbiting: (x, y, z, radius)
    walk: np.ndarray  # [2, 2] start and end of a clear path through the room


# ---------------------------------------------------------------------------------------------
# Rasterizer


def _clip_near(tris: np.ndarray, near: float):
    """Clip camera-space triangles [T, 3, 3] to z >= near (Sutherland-Hodgman against one plane).

    Returns (triangles [M, 3, 3], source triangle [M], barycentrics [M, 3, 3] of each new vertex in
    its source triangle), so attributes can still be interpolated over the original triangle.
    """
    n = len(tris)
    eye = np.eye(3)
    inside = tris[..., 2] >= near
    pts, bar, valid = np.zeros((n, 6, 3)), np.zeros((n, 6, 3)), np.zeros((n, 6), bool)
    for k in range(3):
        k1 = (k + 1) % 3
        a, b = tris[:, k], tris[:, k1]
        crossing = inside[:, k] != inside[:, k1]
        t = (near - a[:, 2]) / np.where(crossing, b[:, 2] - a[:, 2], 1.0)
        pts[:, 2 * k], bar[:, 2 * k], valid[:, 2 * k] = a, eye[k], inside[:, k]
        pts[:, 2 * k + 1] = a + t[:, None] * (b - a)
        bar[:, 2 * k + 1] = (1 - t[:, None]) * eye[k] + t[:, None] * eye[k1]
        valid[:, 2 * k + 1] = crossing
    # 0, 1, 2 or 3 vertices inside give 0, 3, 4 or 3 polygon vertices; move them to the front in order
    order = np.argsort(~valid, axis=1, kind="stable")
    pts = np.take_along_axis(pts, order[..., None], axis=1)
    bar = np.take_along_axis(bar, order[..., None], axis=1)
    count = valid.sum(axis=1)
    first, second = np.flatnonzero(count >= 3), np.flatnonzero(count == 4)  # fan: (0, 1, 2), (0, 2, 3)
    fan = [(first, [0, 1, 2]), (second, [0, 2, 3])]
    return (np.concatenate([pts[i][:, c] for i, c in fan]), np.concatenate([i for i, _ in fan]),
            np.concatenate([bar[i][:, c] for i, c in fan]))


def rasterize(tris_cam: np.ndarray, K: np.ndarray, height: int, width: int, near: float = 0.05):
    """Visibility of camera-space triangles [T, 3, 3] at the pixel centres of a height x width image.

    Returns (index [H, W] of the visible triangle or -1, its perspective-correct barycentrics
    [H, W, 3], z-depth [H, W], inf where nothing is visible).
    """
    tris, source, clip_bary = _clip_near(np.asarray(tris_cam, dtype=np.float64), near)
    inv_z = 1.0 / tris[..., 2]
    xy = (tris @ K.T)[..., :2] * inv_z[..., None]
    # l = E @ (x, y, 1) are the screen-space barycentrics; E is the inverse of the vertex matrix
    M = np.concatenate([xy.transpose(0, 2, 1), np.ones((len(xy), 1, 3))], axis=1)
    area2 = np.abs(np.linalg.det(M))
    # samples (i, j) sit at (j + 0.5, i + 0.5): the bounding box in sample indices
    lo = np.maximum(np.ceil(xy.min(axis=1) - 0.5), 0).astype(np.int64)
    hi = np.minimum(np.floor(xy.max(axis=1) - 0.5), [width - 1, height - 1]).astype(np.int64)
    size = np.maximum(hi - lo + 1, 0)
    keep = np.flatnonzero((area2 > 1e-12) & (size[:, 0] > 0) & (size[:, 1] > 0))
    source, clip_bary, inv_z = source[keep], clip_bary[keep], inv_z[keep]
    lo, nx = lo[keep], size[keep, 0]
    count = size[keep, 0] * size[keep, 1]
    # rows of E map (x, y, 1) to barycentrics; 1/z is affine in screen space too: inv_z @ E
    E = np.linalg.inv(M[keep])
    affine = np.concatenate([E[:, :2], (inv_z[:, None] @ E)], axis=1)  # [M, 3, 3]: l0, l1, 1/z
    # their values at the first sample of the bounding box and their steps per sample in x and y
    origin = affine @ np.column_stack([lo + 0.5, np.ones(len(lo))])[..., None]
    coeffs = np.concatenate([origin[..., 0], affine[..., 0], affine[..., 1]], axis=1).T.copy()  # [9, M]

    zbuf = np.full(height * width, np.inf)
    winner = np.full(height * width, -1, dtype=np.int64)
    ends = np.cumsum(count)
    start = 0
    while start < len(count):  # chunks of whole triangles, about _FRAGMENT_BUDGET fragments each
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _FRAGMENT_BUDGET, side="right")))
        n = count[start:stop]
        local = np.arange(int(n.sum())) - np.repeat(ends[start:stop] - n - base, n)
        width_rep = np.repeat(nx[start:stop], n)
        dy = local // width_rep
        dx = local - dy * width_rep
        c = [np.repeat(row[start:stop], n) for row in coeffs]  # per-fragment copies: contiguous, no gather
        l0, l1 = c[0] + c[3] * dx + c[6] * dy, c[1] + c[4] * dx + c[7] * dy
        inside = (l0 >= -_INSIDE_EPS) & (l1 >= -_INSIDE_EPS) & (1.0 - l0 - l1 >= -_INSIDE_EPS)
        ids = np.repeat(np.arange(start, stop), n)[inside]
        dx, dy = dx[inside], dy[inside]
        depth = 1.0 / (c[2][inside] + c[5][inside] * dx + c[8][inside] * dy)
        pix = (lo[ids, 1] + dy) * width + lo[ids, 0] + dx
        np.minimum.at(zbuf, pix, depth)
        # later chunks overwrite only where they are nearer still, so the last write is the nearest
        win = depth <= zbuf[pix]
        winner[pix[win]] = ids[win]
        start = stop
    index = np.full(height * width, -1, dtype=np.int64)
    weights = np.zeros((height * width, 3))
    hit = np.flatnonzero(winner >= 0)
    ids = winner[hit]
    lam = E[ids] @ np.column_stack([hit % width + 0.5, hit // width + 0.5, np.ones(len(hit))])[..., None]
    q = lam[..., 0] * inv_z[ids]  # perspective-correct barycentrics in the clipped triangle
    q /= q.sum(axis=1, keepdims=True)
    weights[hit] = np.einsum("nk,nkj->nj", q, clip_bary[ids])
    index[hit] = source[ids]
    return index.reshape(height, width), weights.reshape(height, width, 3), zbuf.reshape(height, width)


# ---------------------------------------------------------------------------------------------
# Textures: uv [N, 2] in metres -> linear RGB albedo [N, 3]


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A float in [0, 1) per integer cell (ix, iy): integer mixing, the same on every machine."""
    h = (ix.astype(np.int64) * 0x27D4EB2D + iy.astype(np.int64) * 0x165667B1 + seed * 0x9E3779B1) & 0xFFFFFFFF
    for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39), (15, 1)):
        h = ((h ^ (h >> shift)) * mult) & 0xFFFFFFFF
    return h / 2.0 ** 32


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a + (b - a) * w[:, None]


def texture(mat: Material, uv: np.ndarray) -> np.ndarray:
    x, y = ((uv + mat.offset) / mat.scale).T
    s = mat.seed
    if mat.kind == "wood":  # planks along u, staggered; wavy grain lines; dark seams
        plank_len = 5.0
        row = np.floor(y)
        xs = (x + _hash(row, row, s) * plank_len) / plank_len
        col = np.floor(xs)
        tone = _hash(row, col, s + 1)
        fx, fy = xs - col, y - row
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (4 * fy + 0.6 * np.sin(2 * np.pi * (1.3 * fx + tone))
                                                + 0.15 * np.sin(9.0 * fx) + 3 * tone))
        out = _mix(mat.color_a, mat.color_b, 0.3 * grain ** 3 + 0.5 * tone)
        seam = np.minimum(np.minimum(fy, 1 - fy), np.minimum(fx, 1 - fx) * plank_len) < 0.04
        return np.where(seam[:, None], mat.color_c, out)
    if mat.kind == "tiles":  # two-tone checker of tiles with slightly varied glaze; grout lines
        ix, iy = np.floor(x), np.floor(y)
        base = np.where(((ix + iy) % 2 == 0)[:, None], mat.color_a, mat.color_b)
        out = base * (0.88 + 0.24 * _hash(ix, iy, s))[:, None]
        fx, fy = x - ix, y - iy
        grout = np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy)) < 0.04
        return np.where(grout[:, None], mat.color_c, out)
    if mat.kind == "brick":  # running bond: courses of bricks 2.2 courses long, half-offset rows
        brick_len = 2.2
        row = np.floor(y)
        xs = x / brick_len + 0.5 * (row % 2)
        col = np.floor(xs)
        out = _mix(mat.color_a, mat.color_b, _hash(row, col, s) ** 2) * (0.85 + 0.3 * _hash(col, row, s + 7))[:, None]
        fx, fy = xs - col, y - row
        mortar = (np.minimum(fy, 1 - fy) < 0.08) | (np.minimum(fx, 1 - fx) * brick_len < 0.08)
        return np.where(mortar[:, None], mat.color_c, out)
    if mat.kind == "voronoi":  # cells around one jittered point per grid cell; dark borders
        ix, iy = np.floor(x), np.floor(y)
        d1, d2 = np.full(len(x), np.inf), np.full(len(x), np.inf)
        tone = np.zeros(len(x))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                cx, cy = ix + dx, iy + dy
                d = np.hypot(cx + 0.1 + 0.8 * _hash(cx, cy, s) - x, cy + 0.1 + 0.8 * _hash(cx, cy, s + 1) - y)
                nearer = d < d1
                d2 = np.where(nearer, d1, np.minimum(d2, d))
                tone = np.where(nearer, _hash(cx, cy, s + 2), tone)
                d1 = np.where(nearer, d, d1)
        out = _mix(mat.color_a, mat.color_b, tone)
        return np.where((d2 - d1 < 0.07)[:, None], mat.color_c, out)
    if mat.kind == "plaid":  # a wide and a thin band each way; where bands cross they darken
        def bands(t):
            f = t - np.floor(t)
            return 0.6 * (f < 0.3) + 0.4 * ((f > 0.55) & (f < 0.62))
        w = bands(x) + bands(y)
        out = _mix(mat.color_a, mat.color_b, np.minimum(w, 1.0))
        return _mix(out, mat.color_c, 0.5 * np.maximum(w - 1.0, 0.0))
    if mat.kind == "dots":  # staggered polka dots
        row = np.floor(y)
        xs = x + 0.5 * (row % 2)
        dot = np.hypot(xs - np.floor(xs) - 0.5, y - row - 0.5) < 0.28
        return np.where(dot[:, None], mat.color_b, mat.color_a)
    raise ValueError(f"unknown texture {mat.kind!r}; known: {TEXTURES}")


# ---------------------------------------------------------------------------------------------
# Rendering


def render(scene: HoldoutScene, c2w: np.ndarray, K: np.ndarray, height: int, width: int,
           supersample: int = 2, return_depth: bool = False):
    """uint8 RGB image [H, W, 3] (and the z-depth of the samples, inf where empty, at H*s x W*s)."""
    s = supersample
    R, t = c2w[:3, :3], c2w[:3, 3]
    Ks = K.copy()
    Ks[:2] *= s  # the supersampled plane: sample (i, j) centred at ((j + 0.5) / s, (i + 0.5) / s)
    index, bary, depth = rasterize((scene.tris - t) @ R, Ks, height * s, width * s)
    light = scene.lighting
    image = np.broadcast_to(light.fog, (height * s, width * s, 3)).copy()
    hit = index >= 0
    tri, w = index[hit], bary[hit]
    world = np.einsum("nk,nkj->nj", w, scene.tris[tri])
    uv = np.einsum("nk,nkj->nj", w, scene.uv[tri])
    albedo = np.zeros((len(tri), 3))
    mat_of = scene.material_ids[tri]
    for m in np.unique(mat_of):
        sel = mat_of == m
        albedo[sel] = texture(scene.materials[m], uv[sel])
    to_cam = t - world
    dist = np.linalg.norm(to_cam, axis=1)
    n = scene.normals[tri]
    n = n * np.where((n * to_cam).sum(axis=1) < 0, -1.0, 1.0)[:, None]  # the side the camera sees
    up = 0.5 + 0.5 * n[:, 2:3]
    irradiance = (light.sky * up + light.ground * (1 - up)
                  + light.sun * np.maximum(n @ light.sun_dir, 0.0)[:, None])
    fog = (1.0 - np.exp(-light.fog_density * dist))[:, None]
    image[hit] = albedo * irradiance * (1 - fog) + light.fog * fog
    image = image.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((xx + 0.5) / width - 0.5) ** 2 + ((yy + 0.5) / height - 0.5) ** 2
    image *= (1.0 - light.vignette * r2 / 0.5)[..., None]  # r2 / 0.5: 1 at the corners
    out = np.round(255.0 * np.clip(image, 0.0, 1.0) ** (1 / 2.2)).astype(np.uint8)
    return (out, depth) if return_depth else out


# ---------------------------------------------------------------------------------------------
# Meshes: each builder returns triangles [n, 3, 3]; winding is free (shading is two-sided)


def _quad(p0, p1, p2, p3) -> np.ndarray:
    return np.array([[p0, p1, p2], [p0, p2, p3]], dtype=np.float64)


def _prism(poly: np.ndarray, z0: float, z1: float) -> np.ndarray:
    """A vertical prism over a convex polygon [n, 2]: sides and both caps."""
    lo = np.column_stack([poly, np.full(len(poly), z0)])
    hi = np.column_stack([poly, np.full(len(poly), z1)])
    nxt = np.roll(np.arange(len(poly)), -1)
    sides = [_quad(lo[i], lo[j], hi[j], hi[i]) for i, j in enumerate(nxt)]
    caps = [np.array([[c[0], c[i], c[i + 1]] for i in range(1, len(poly) - 1)]) for c in (lo, hi)]
    return np.concatenate(sides + caps)


def _rect(cx: float, cy: float, hx: float, hy: float, yaw: float = 0.0) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _triangle(cx: float, cy: float, r: float, yaw: float) -> np.ndarray:
    """An equilateral triangle [3, 2] of circumradius r."""
    a = yaw + np.arange(3) * 2 * np.pi / 3
    return np.column_stack([cx + r * np.cos(a), cy + r * np.sin(a)])


def _box(x0, y0, z0, x1, y1, z1) -> np.ndarray:
    return _prism(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), z0, z1)


def _pyramid(poly: np.ndarray, apex: np.ndarray) -> np.ndarray:
    base = np.column_stack([poly, np.zeros(len(poly))])
    sides = [[base[i], base[(i + 1) % len(poly)], apex] for i in range(len(poly))]
    return np.concatenate([np.array(sides), np.array([[base[0], base[i], base[i + 1]]
                                                      for i in range(1, len(poly) - 1)])])


def _rock(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """A subdivided octahedron with bumps, squashed and cut flat at the floor."""
    axes = np.eye(3)
    faces = [np.array([sx * axes[0], sy * axes[1], sz * axes[2]]) for sx in (-1, 1) for sy in (-1, 1)
             for sz in (-1, 1)]
    for _ in range(2):  # each triangle -> four, midpoints pushed out to the sphere
        split = []
        for a, b, c in faces:
            ab, bc, ca = (v / np.linalg.norm(v) for v in (a + b, b + c, c + a))
            split += [np.array(f) for f in ([a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca])]
        faces = split
    tris = np.array(faces)
    # bumps are a function of direction, so a vertex shared by several faces moves the same way
    lobes, phase = rng.normal(size=(4, 3)) * 2.0, rng.uniform(0, 2 * np.pi, 4)
    bump = 1.0 + 0.12 * np.cos(tris @ lobes.T + phase).sum(axis=-1)
    tris = tris * bump[..., None] * rng.uniform([0.8, 0.8, 0.5], [1.2, 1.2, 0.9]) * radius
    tris[..., 2] = np.maximum(tris[..., 2] + 0.25 * radius, 0.0)
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    return tris @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]) + [cx, cy, 0.0]


def _object(rng: np.random.Generator, kind: str, cx: float, cy: float, yaw: float):
    """(list of (triangles, part), footprint radius, height); part 0 or 1 picks one of two materials."""
    if kind == "table":
        hx, hy, h = rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.5), rng.uniform(0.68, 0.8)
        legs = [(_prism(_rect(x, y, 0.03, 0.03, yaw), 0.0, h - 0.05), 1)
                for x, y in _rect(cx, cy, hx - 0.07, hy - 0.07, yaw)]
        return [(_prism(_rect(cx, cy, hx, hy, yaw), h - 0.05, h), 0)] + legs, math.hypot(hx, hy), h
    if kind == "stairs":
        steps, rise = int(rng.integers(4, 8)), rng.uniform(0.16, 0.2)
        run, half_w = rng.uniform(0.25, 0.32), rng.uniform(0.4, 0.6)
        along = (np.arange(steps) + 0.5 - steps / 2) * run  # step centres along the climbing direction
        parts = [(_prism(_rect(cx + a * math.cos(yaw), cy + a * math.sin(yaw), run / 2, half_w, yaw),
                         0.0, (k + 1) * rise), 0) for k, a in enumerate(along)]
        return parts, math.hypot(steps * run / 2, half_w), steps * rise
    if kind == "prism":
        r, h = rng.uniform(0.25, 0.5), rng.uniform(0.3, 1.2)
        return [(_prism(_triangle(cx, cy, r, yaw), 0.0, h), 0)], r, h
    if kind == "pyramid":
        half, h = rng.uniform(0.25, 0.45), rng.uniform(0.4, 1.1)
        return [(_pyramid(_rect(cx, cy, half, half, yaw), np.array([cx, cy, h])), 0)], half * math.sqrt(2), h
    if kind == "tetrahedron":
        r = rng.uniform(0.25, 0.4)
        h = r * math.sqrt(2.0)  # regular: edge r * sqrt(3)
        return [(_pyramid(_triangle(cx, cy, r, yaw), np.array([cx, cy, h])), 0)], r, h
    if kind == "rock":
        r = rng.uniform(0.25, 0.5)
        tris = _rock(rng, cx, cy, r)
        return [(tris, 0)], 1.25 * r, float(tris[..., 2].max())
    raise ValueError(f"unknown object {kind!r}")


# ---------------------------------------------------------------------------------------------
# Scene generation


def _material(rng: np.random.Generator, palette: list, kinds, scale_factor: float = 1.0) -> Material:
    kind = str(rng.choice(kinds))
    i, j = rng.choice(len(palette), size=2, replace=False)
    a, b = (np.clip(palette[k] * rng.uniform(0.8, 1.15), 0.0, 1.0) for k in (i, j))
    # separators contrast with the tiles: light grout on dark, dark on light
    c = np.full(3, 0.6 if a.mean() < 0.25 else 0.03) if kind in ("tiles", "brick", "voronoi") else \
        np.clip(0.4 * (a + b), 0.0, 1.0)
    return Material(kind, a, b, c, float(rng.uniform(*_SCALES[kind]) * scale_factor),
                    int(rng.integers(0, 2 ** 31)), rng.uniform(-5.0, 5.0, 2))


def _lighting(rng: np.random.Generator, palette: list) -> Lighting:
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(25), np.radians(70))
    sun_dir = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    sky = np.array([0.62, 0.7, 0.85]) * rng.uniform(0.7, 1.0)
    ground = np.array([0.4, 0.33, 0.27]) * rng.uniform(0.6, 0.9)
    fog = np.clip(0.5 * (sky + palette[int(rng.integers(len(palette)))]) * rng.uniform(0.4, 0.8), 0, 1)
    return Lighting(sun_dir, np.array([1.0, 0.9, 0.75]) * rng.uniform(0.5, 0.9), sky, ground, fog,
                    float(rng.uniform(0.03, 0.09)), float(rng.uniform(0.15, 0.35)))


def _layout(rng: np.random.Generator, kind: str):
    """(floor rectangles, outline polygon [n, 2], walk path [2, 2]) of a room, not yet centred."""
    if kind == "l_room":
        w, d1 = rng.uniform(6.0, 9.0), rng.uniform(4.0, 6.0)
        w2, d2 = rng.uniform(2.4, w - 2.5), rng.uniform(3.0, 5.0)
        rects = np.array([[0, 0, w, d1], [0, d1, w2, d1 + d2]])
        outline = np.array([[0, 0], [w, 0], [w, d1], [w2, d1], [w2, d1 + d2], [0, d1 + d2]])
        walk = np.array([[w2 / 2, d1 + d2 - 0.6], [w2 / 2, 0.6]])  # down the arm into the main room
    else:
        length, width = (rng.uniform(10.0, 16.0), rng.uniform(2.2, 3.2)) if kind == "corridor" else \
            (rng.uniform(7.0, 11.0), rng.uniform(6.0, 9.0))
        rects = np.array([[0, 0, length, width]])
        outline = rects[0, [[0, 1], [2, 1], [2, 3], [0, 3]]]
        walk = np.array([[0.6, width / 2], [length - 0.6, width / 2]])
    return rects.astype(np.float64), outline.astype(np.float64), walk


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from 2-D points to segments a-b (broadcast over both)."""
    ab = b - a
    t = np.clip(((p - a) * ab).sum(axis=-1) / np.maximum((ab * ab).sum(axis=-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(a + t[..., None] * ab - p, axis=-1)


def is_free(scene: HoldoutScene, xy: np.ndarray, margin: float) -> bool:
    """Whether a point (seen from above) is in the room, `margin` from walls and object footprints."""
    x, y = xy
    r = scene.rects
    return bool(((r[:, 0] <= x) & (x <= r[:, 2]) & (r[:, 1] <= y) & (y <= r[:, 3])).any()
                and (_segment_distance(xy, scene.segments[:, 0], scene.segments[:, 1]) >= margin).all()
                and (np.hypot(*(scene.circles[:, :2] - xy).T) >= scene.circles[:, 2] + margin).all())


def assemble_mesh(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(triangles, uv, normals, material ids) of a list of (triangles [n, 3, 3], material index).

    uv is a planar projection in metres: floors and tops use (x, y); other faces use (the horizontal
    direction along the face, z), so bricks and planks run level on walls and sides.
    """
    tris = np.concatenate([p for p, _ in parts])
    material_ids = np.concatenate([np.full(len(p), m) for p, m in parts])
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    tangent = np.column_stack([-normals[:, 1], normals[:, 0], np.zeros(len(normals))])
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    flat = np.abs(normals[:, 2]) > 0.7
    u = np.where(flat[:, None], tris[..., 0], np.einsum("tkj,tj->tk", tris, tangent))
    v = np.where(flat[:, None], tris[..., 1], tris[..., 2])
    return tris, np.stack([u, v], axis=-1), normals, material_ids


def random_scene(rng: np.random.Generator) -> HoldoutScene:
    """A random room (L-shaped, corridor or hall) with fixtures and objects, lit and textured."""
    layout = str(rng.choice(["l_room", "corridor", "hall"]))
    palette = [_linear(c) for c in PALETTES[int(rng.integers(len(PALETTES)))]]
    height = rng.uniform(2.6, 3.2) if layout != "hall" else rng.uniform(3.0, 4.0)
    rects, outline, walk = _layout(rng, layout)
    centre = outline.mean(axis=0)
    rects, outline, walk = rects - np.tile(centre, 2), outline - centre, walk - centre
    materials: list = []
    parts: list = []  # (triangles, material index)

    def material(kinds, scale_factor=1.0) -> int:
        materials.append(_material(rng, palette, kinds, scale_factor))
        return len(materials) - 1

    floor, walls = material(("wood", "tiles", "voronoi")), material(("brick", "tiles", "plaid", "dots", "voronoi"))
    ceiling = material(("tiles", "dots", "plaid"))
    for x0, y0, x1, y1 in rects:
        parts.append((_quad([x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]), floor))
        parts.append((_quad([x0, y0, height], [x1, y0, height], [x1, y1, height], [x0, y1, height]), ceiling))
    segments = [np.array([a, b]) for a, b in zip(outline, np.roll(outline, -1, axis=0))]
    for a, b in segments:
        parts.append((_quad([*a, 0], [*b, 0], [*b, height], [*a, height]), walls))
    circles: list = []
    x_min, y_min, x_max, y_max = rects[0]
    if layout == "corridor":  # pilasters on both long walls
        stone = material(("brick", "voronoi", "tiles"))
        half = rng.uniform(0.15, 0.22)
        for x in np.arange(x_min + rng.uniform(1.0, 2.0), x_max - 0.5, rng.uniform(1.8, 3.0)):
            for y in (y_min, y_max):
                parts.append((_box(x - half, y - half, 0.0, x + half, y + half, height), stone))
                circles.append([x, y, half * 1.5])
    if layout == "hall":  # two rows of octagonal pillars, off the walk path
        stone = material(("brick", "voronoi", "tiles"))
        radius = rng.uniform(0.2, 0.3)
        octagon = np.array([[math.cos(a), math.sin(a)] for a in np.arange(8) * np.pi / 4 + np.pi / 8]) * radius
        cols = int(rng.integers(2, 4))
        for x in np.linspace(x_min, x_max, cols + 2)[1:-1]:
            for y in (y_min + (y_max - y_min) / 4, y_max - (y_max - y_min) / 4):
                parts.append((_prism(octagon + [x, y], 0.0, height), stone))
                circles.append([x, y, radius])
    if layout != "l_room" and rng.random() < 0.6:  # a partition across the path with a doorway on it
        wall_mat = material(("brick", "tiles", "plaid", "voronoi"))
        xp, half_t = x_min + (x_max - x_min) * rng.uniform(0.4, 0.6), 0.08
        door, door_h, yc = rng.uniform(0.55, 0.75), rng.uniform(2.0, 2.3), walk[0, 1]
        parts += [(_box(xp - half_t, y_min, 0.0, xp + half_t, yc - door, height), wall_mat),
                  (_box(xp - half_t, yc + door, 0.0, xp + half_t, y_max, height), wall_mat),
                  (_box(xp - half_t, yc - door, door_h, xp + half_t, yc + door, height), wall_mat)]
        segments += [np.array([[xp, y_min], [xp, yc - door]]), np.array([[xp, yc + door], [xp, y_max]])]
    segments = np.array(segments)
    focus: list = []
    kinds = ["table", "stairs", "prism", "pyramid", "tetrahedron", "rock", "rock", "table"]
    target = int(rng.integers(3, 7 if layout == "corridor" else 10))
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    for _ in range(100):  # rejection sampling: inside, off the walls, off the walk path, apart
        if len(focus) == target:
            break
        kind = str(rng.choice(kinds))
        x0, y0, x1, y1 = rects[rng.choice(len(rects), p=area / area.sum())]
        xy = rng.uniform([x0, y0], [x1, y1])
        obj, radius, top = _object(rng, kind, *xy, rng.uniform(0, 2 * np.pi))
        clear = (_segment_distance(xy, segments[:, 0], segments[:, 1]) >= radius + 0.1).all() \
            and _segment_distance(xy, walk[0], walk[1]) >= radius + 0.7 \
            and all(math.hypot(*(xy - c[:2])) >= radius + c[2] + 0.2 for c in circles)
        if not clear:
            continue
        mats = [material(TEXTURES, 0.5) for _ in range(1 + max(part for _, part in obj))]
        parts += [(tris, mats[part]) for tris, part in obj]
        circles.append([*xy, radius])
        focus.append([*xy, 0.5 * top, radius])
    if not focus:  # nothing fitted: orbit the room's middle instead
        focus.append([*((walk[0] + walk[1]) / 2), 1.0, 0.3])
    return HoldoutScene(*assemble_mesh(parts), materials, _lighting(rng, palette), layout, float(height), rects,
                        segments, np.array(circles, dtype=np.float64).reshape(-1, 3), np.array(focus), walk)


# ---------------------------------------------------------------------------------------------
# Cameras

CAMERA_MARGIN = 0.35  # metres kept between a camera and any wall or object footprint


def _sees(scene: HoldoutScene, eye: np.ndarray, target: np.ndarray) -> bool:
    """Whether the sight line eye -> target (seen from above) passes no wall and no other footprint."""
    a, b = scene.segments[:, 0], scene.segments[:, 1]

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    walls = (cross(b - a, eye - a) * cross(b - a, target - a) < 0) & \
        (cross(target - eye, a - eye) * cross(target - eye, b - eye) < 0)
    centres, radii = scene.circles[:, :2], scene.circles[:, 2]
    others = np.linalg.norm(centres - target, axis=1) > 1e-9  # the target's own footprint does not count
    d = _segment_distance(centres, eye, target)
    return not walls.any() and bool((d[others] >= radii[others]).all())


def _within(poses: list, pose: np.ndarray, max_rot: float) -> bool:
    return not poses or float(rotation_angle_deg(pose, np.stack(poses)).max()) <= max_rot


def _orbit_cameras(scene: HoldoutScene, rng: np.random.Generator, n: int, max_rot: float):
    """Look-at views on an arc around one object, or None when no object leaves room for the arc."""
    for f in rng.permutation(len(scene.focus))[:4]:
        focus, radius = scene.focus[f, :3], scene.focus[f, 3]
        base, spread = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(30.0, 50.0))
        r_min = max(1.5, radius + 0.9)
        poses: list = []
        for _ in range(40 * n):
            az, r = base + spread * rng.uniform(-0.5, 0.5), rng.uniform(r_min, r_min + 1.8)
            eye = np.array([focus[0] + r * math.cos(az), focus[1] + r * math.sin(az),
                            rng.uniform(1.0, min(1.9, scene.height - 0.4))])
            if not (is_free(scene, eye[:2], CAMERA_MARGIN) and _sees(scene, eye[:2], focus[:2])):
                continue
            pose = look_at(eye, focus + rng.normal(0.0, 0.15, 3), roll_deg=rng.uniform(-4.0, 4.0))
            if _within(poses, pose, max_rot):
                poses.append(pose)
                if len(poses) == n:
                    return np.stack(poses)
    return None


def _walk_cameras(scene: HoldoutScene, rng: np.random.Generator, n: int, max_rot: float) -> np.ndarray:
    """A camera walking along the scene's path, turning its head left and right as it goes.

    Yaw, pitch and roll swing over ranges summing to under `max_rot`: the geodesic distance between
    rotations is bi-invariant, so the angle between two views is at most the sum of the three changes.
    """
    start, end = scene.walk if rng.random() < 0.5 else scene.walk[::-1]
    length = float(np.linalg.norm(end - start))
    direction = (end - start) / length
    side = np.array([-direction[1], direction[0]])
    # stop 4 m short of the far end (4.6 m from its wall): nearer, the wall fills the view
    travel = min(length - 4.0, rng.uniform(2.0, 5.0))
    along = rng.uniform(0.0, length - 4.0 - travel) + travel * np.linspace(0.0, 1.0, n)
    heading = math.atan2(direction[1], direction[0])
    yaw_amp, pitch_amp, roll_amp = (np.radians(max_rot) * f for f in (rng.uniform(0.2, 0.4), 0.06, 0.03))
    yaw = heading + yaw_amp * np.sin(rng.uniform(0, 2 * np.pi) + rng.uniform(0.5, 1.2) * np.arange(n))
    pitch = rng.uniform(-0.15, 0.0) + pitch_amp * np.sin(rng.uniform(0, 2 * np.pi) + 0.7 * np.arange(n))
    roll = np.degrees(roll_amp) * rng.uniform(-1.0, 1.0, n)
    height = rng.uniform(1.45, min(1.7, scene.height - 0.4))
    poses = []
    for k in range(n):
        eye = np.array([*(start + along[k] * direction + rng.uniform(-0.1, 0.1) * side),
                        height + 0.02 * math.sin(2.0 * k)])  # a little bob per step
        forward = np.array([math.cos(pitch[k]) * math.cos(yaw[k]), math.cos(pitch[k]) * math.sin(yaw[k]),
                            math.sin(pitch[k])])
        poses.append(look_at(eye, eye + forward, roll_deg=roll[k]))
    return np.stack(poses)


def sample_cameras(scene: HoldoutScene, rng: np.random.Generator, n: int, max_rot: float = 45.0) -> np.ndarray:
    """n camera-to-world poses [n, 4, 4]: an orbit around an object or a walk (mostly in corridors)."""
    if rng.random() < (0.2 if scene.layout == "corridor" else 0.6):
        poses = _orbit_cameras(scene, rng, n, max_rot)
        if poses is not None:
            return poses
    return _walk_cameras(scene, rng, n, max_rot)


# ---------------------------------------------------------------------------------------------
# Dataset


@dataclass
class HoldoutConfig:
    out: str
    scenes: int = 40
    views_per_scene: int = 8
    size: int = 256
    fov: float = 49.0  # vertical field of view, degrees
    max_rot: float = 45.0  # largest rotation between two views of a scene, degrees
    supersample: int = 2
    seed: int = 0
    workers: int = 1


def sequence_id(seed: int, index: int) -> str:
    return f"holdout{seed:04d}_{index:06d}"


def scene_and_cameras(cfg: HoldoutConfig, index: int):
    """(scene, c2w [V, 4, 4], K) of scene `index`: from the seed pair (seed, index) alone."""
    rng = np.random.default_rng([cfg.seed, index])
    scene = random_scene(rng)
    return scene, sample_cameras(scene, rng, cfg.views_per_scene, cfg.max_rot), fov_to_K(cfg.fov, cfg.size, cfg.size)


def render_scene(cfg: HoldoutConfig, index: int) -> str:
    """Generate, render and write scene `index` to split `test`; returns its sequence id."""
    scene, c2w, K = scene_and_cameras(cfg, index)
    images = [render(scene, pose, K, cfg.size, cfg.size, cfg.supersample) for pose in c2w]
    seq = sequence_id(cfg.seed, index)
    write_re10k_sequence(cfg.out, "test", seq, [(i + 1) * FRAME_STEP_US for i in range(len(c2w))], c2w, K,
                         (cfg.size, cfg.size), images,
                         url=f"holdout://gst_model.data.holdout_scenes?seed={cfg.seed}&scene={index}")
    return seq


def _render_job(job) -> str:
    return render_scene(*job)


def make_dataset(cfg: HoldoutConfig) -> list[str]:
    """Write every scene and manifest.json; returns the sequence ids."""
    jobs = [(cfg, i) for i in range(cfg.scenes)]
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            seqs = sorted(pool.imap_unordered(_render_job, jobs))
    else:
        seqs = [_render_job(job) for job in jobs]
    manifest = {"holdout": True, "renderer": RENDERER, "config": asdict(cfg),
                "format": "RealEstate10K (see gst_model/data/formats.py)", "splits": {"test": seqs},
                "note": "generalisation test set from a renderer the model never trains on; never train on it"}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return seqs


def refuse_holdout(root) -> None:
    """Raise ValueError if a dataset root (or `NAME:PATH` spec) is a holdout set: training must not see it."""
    spec = str(root)
    _, colon, path = spec.partition(":")
    for candidate in [Path(spec)] + ([Path(path)] if colon and path else []):
        manifest = candidate / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("holdout") is True:
            raise ValueError(f"{spec} is a holdout test set ({manifest} says \"holdout\": true): it measures "
                             "generalisation to an unseen renderer and must never be used for training")


def parse_args(argv=None) -> HoldoutConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scenes", type=int, default=40)
    p.add_argument("--views-per-scene", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (square)")
    p.add_argument("--fov", type=float, default=49.0, help="vertical field of view in degrees")
    p.add_argument("--max-rot", type=float, default=45.0, help="largest rotation between views of a scene")
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    return HoldoutConfig(a.out, a.scenes, a.views_per_scene, a.size, a.fov, a.max_rot, a.supersample, a.seed,
                         a.workers)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    seqs = make_dataset(cfg)
    elapsed = time.perf_counter() - t0
    print(f"{len(seqs)} holdout scenes ({cfg.views_per_scene} views, {cfg.size}px) written to {cfg.out}/test "
          f"in {elapsed:.1f} s: {len(seqs) / elapsed:.2f} scenes/s with {cfg.workers} worker(s)")


if __name__ == "__main__":
    main()
