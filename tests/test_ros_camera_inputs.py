"""gst_ros camera inputs without DDS: 16-bit image encodings and CameraInfo intrinsics."""
from __future__ import annotations

import numpy as np
import pytest

try:
    from sensor_msgs.msg import CameraInfo, Image
except ImportError as exc:
    pytest.skip(f"rclpy not importable ({exc}); run `bash scripts/setup_ros.sh`", allow_module_level=True)

from gst_ros import conversions as conv  # noqa: E402

pytestmark = pytest.mark.ros
RNG = np.random.default_rng(0)


def _wide_msg(values: np.ndarray, encoding: str, bigendian: bool, pad: int = 0) -> Image:
    """A 16-bit Image written by hand (the byte layout a driver publishes), rows padded by `pad` bytes."""
    h, w = values.shape[:2]
    rows = values.astype(">u2" if bigendian else "<u2").reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding, order", [("rgb16", [0, 1, 2]), ("bgr16", [2, 1, 0]), ("rgba16", [0, 1, 2, 3]),
                                             ("bgra16", [2, 1, 0, 3])])
def test_16_bit_colour_is_scaled_to_8_bits(encoding, order, bigendian):
    values = RNG.integers(0, 65536, (5, 7, len(order)), dtype=np.uint16)
    values[0, 0, :] = [0, 65535, 257, 32896][:len(order)]  # exact 8-bit values: 0, 255, 1, 128
    out = conv.image_to_numpy(_wide_msg(values, encoding, bigendian, pad=3))
    expected = np.round(values[:, :, order].astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0, 0], np.array([0, 255, 1, 128][:len(order)])[order])


def test_mono16_becomes_grey_rgb():
    values = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    out = conv.image_to_numpy(_wide_msg(values, "mono16", bigendian=False))
    grey = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert out.shape == (4, 6, 3) and all(np.array_equal(out[:, :, c], grey) for c in range(3))


def test_16_bit_layout_errors_name_the_bytes():
    msg = _wide_msg(np.zeros((4, 6, 3), np.uint16), "rgb16", bigendian=False)
    msg.step = 6 * 3  # the 8-bit step: too short for 16-bit data
    with pytest.raises(ValueError, match=r"width\*channels = 6\*3\*2 bytes"):
        conv.image_to_numpy(msg)
    with pytest.raises(ValueError, match="unsupported image encoding 'rgb16'"):  # outputs are 8-bit
        conv.numpy_to_image(np.zeros((4, 6, 3), np.uint8), "rgb16")


def _info(K, P=None, D=(), size=(640, 480)) -> CameraInfo:
    info = CameraInfo(width=size[0], height=size[1])
    info.k = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
    info.p = [float(v) for v in (np.zeros(12) if P is None else np.asarray(P, dtype=np.float64).ravel())]
    info.d = [float(v) for v in D]
    return info


def test_camera_intrinsics_prefer_the_rectified_camera_matrix():
    K = [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]
    P = [[500.0, 0, 322.0, 0], [0, 500.0, 241.0, 0], [0, 0, 1, 0]]
    K_used, size, distorted = conv.camera_intrinsics(_info(K, P, D=[0.1, -0.2, 0, 0, 0]))
    np.testing.assert_array_equal(K_used, np.array(P)[:, :3])
    assert size == (640, 480) and distorted
    K_used, _, distorted = conv.camera_intrinsics(_info(K, D=[0.0] * 5))  # no P: K
    np.testing.assert_array_equal(K_used, K)
    assert not distorted


@pytest.mark.parametrize("K, size, message", [
    ([[0.0, 0, 320], [0, 500, 240], [0, 0, 1]], (640, 480), "positive focal"),
    ([[500.0, 2, 320], [0, 500, 240], [0, 0, 1]], (640, 480), "zero-skew"),
    ([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], (0, 480), "empty image size"),
])
def test_bad_camera_info_is_rejected(K, size, message):
    with pytest.raises(ValueError, match=message):
        conv.camera_intrinsics(_info(K, size=size))
