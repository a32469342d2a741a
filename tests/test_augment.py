"""fnn.augment: exact values on small images, one draw per example, per key."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import augment as A
from fnn.protocol import ShapeError

KEY = jax.random.key(0)


def images(n=8, h=6, w=6, c=1, dtype=jnp.float32):
    """Distinct, asymmetric images: every pixel value differs."""
    x = np.arange(n * h * w * c).reshape(n, h, w, c) % 251 + 1
    return jnp.asarray(x, dtype=dtype)


def shifted(image, dy, dx, mode="constant"):
    """NumPy reference for translate: pad by the image size, then slice."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((h, h), (w, w), (0, 0)), mode=mode)
    return padded[h - dy : 2 * h - dy, w - dx : 2 * w - dx]


def matching_shifts(out, image, m, mode="constant"):
    """Every (dy, dx) within m that turns ``image`` into ``out``."""
    return [
        (dy, dx)
        for dy, dx in itertools.product(range(-m, m + 1), repeat=2)
        if np.array_equal(out, shifted(image, dy, dx, mode))
    ]


# ---------------------------------------------------------------- translate


def test_translate_moves_a_pixel_where_expected():
    x = np.zeros((2, 6, 6, 1), np.float32)
    x[:, 3, 3, 0] = 1.0
    out = np.asarray(A.translate(x, jnp.array([[1, -2], [-3, 2]])))
    assert out[0, 4, 1, 0] == 1.0 and out[0].sum() == 1.0  # down 1, left 2
    assert out[1, 0, 5, 0] == 1.0 and out[1].sum() == 1.0  # up 3, right 2


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_translate_matches_numpy_padding(mode):
    x = images(n=3, h=5, w=4)
    offsets = np.array([[2, -1], [-4, 3], [0, 0]])
    out = np.asarray(A.translate(x, offsets, mode=mode))
    for n, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(out[n], shifted(np.asarray(x[n]), dy, dx, mode))


def shifted_far(image, dy, dx, mode):
    """NumPy reference for shifts of any length: pad by the shift itself."""
    h, w = image.shape[:2]
    py, px = abs(dy) + h, abs(dx) + w
    padded = np.pad(image, ((py, py), (px, px), (0, 0)), mode=mode)
    return padded[py - dy : py - dy + h, px - dx : px - dx + w]


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_translate_by_more_than_the_image_size_matches_numpy(mode):
    # Reflection is periodic (period 2 (size - 1)): a shift by 7 of a width-5
    # image is not the shift by 5 that clipping to the size would give.
    x = images(n=4, h=4, w=5)
    offsets = np.array([[0, 7], [-9, 0], [5, -13], [4, 4]])
    out = np.asarray(A.translate(x, offsets, mode=mode))
    for n, (dy, dx) in enumerate(offsets):
        expected = shifted_far(np.asarray(x[n]), dy, dx, mode)
        np.testing.assert_array_equal(out[n], expected, err_msg=f"{mode} {dy, dx}")
    # A size-1 axis reflects onto itself: any shift along it is the identity.
    line = images(n=1, h=1, w=3)
    np.testing.assert_array_equal(
        A.translate(line, np.array([[3, 0]]), mode="reflect"), line
    )


def test_translate_refuses_fractional_offsets():
    # Cast to int, 0.7 became 0 and -1.6 became -1: a silent wrong shift.
    with pytest.raises(TypeError, match="offsets must be integers .* float32"):
        A.translate(images(n=2), jnp.array([[0.7, 0.0], [0.0, -1.6]]))


# ---------------------------------------------------------------- rotate


def test_rotate_by_90_degrees_is_rot90():
    x = images(n=3, h=5, w=5, c=2)
    out = np.asarray(A.rotate(x, jnp.array([90.0, -90.0, 180.0])))
    ref = np.asarray(x)
    # np.rot90 turns the first two axes of each (H, W, C) image counter-clockwise.
    np.testing.assert_allclose(out[0], np.rot90(ref[0], 1), atol=1e-3)
    np.testing.assert_allclose(out[1], np.rot90(ref[1], -1), atol=1e-3)
    np.testing.assert_allclose(out[2], np.rot90(ref[2], 2), atol=1e-3)


def test_rotate_non_square_by_180_and_fills_with_zeros():
    x = images(n=1, h=4, w=6)
    out = np.asarray(A.rotate(x, jnp.array([180.0])))
    np.testing.assert_allclose(out[0], np.asarray(x[0])[::-1, ::-1], atol=1e-3)
    # 90 degrees turns a 4x6 image's long side out of its frame: corners go to 0.
    turned = np.asarray(A.rotate(x, jnp.array([90.0])))
    assert np.abs(turned[0, :, [0, -1]]).max() < 1e-4 < turned[0, :, 1:-1].min()


def test_rotate_matches_scipy_ndimage_rotate():
    # An independent reference: SciPy turns counter-clockwise as displayed,
    # bilinear (order=1), zeros beyond the edge (grid-constant), same frame.
    from scipy import ndimage

    x = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    angles = [17.0, -33.0, 123.0]
    out = np.asarray(A.rotate(jnp.broadcast_to(x[..., None], (3, 7, 9, 1)), angles))
    for n, angle in enumerate(angles):
        ref = ndimage.rotate(x, angle, reshape=False, order=1, mode="grid-constant")
        np.testing.assert_allclose(out[n, ..., 0], ref, atol=1e-5, err_msg=angle)


def test_rotate_small_angle_interpolates_bilinearly():
    # A linear ramp along the columns, turned by a small angle: away from the
    # border bilinear interpolation of a linear function is exact.
    h = w = 9
    ramp = np.tile(np.arange(w, dtype=np.float32), (h, 1))[None, ..., None]
    theta = 10.0
    out = np.asarray(A.rotate(jnp.asarray(ramp), jnp.array([theta])))[0, ..., 0]
    i, j = np.meshgrid(np.arange(h) - 4.0, np.arange(w) - 4.0, indexing="ij")
    rad = np.deg2rad(theta)
    expected = 4.0 - np.sin(rad) * i + np.cos(rad) * j
    np.testing.assert_allclose(out[2:7, 2:7], expected[2:7, 2:7], atol=1e-4)


# ---------------------------------------------------------------- random ones


def test_random_shift_is_a_shift_within_range_different_per_example():
    x = jnp.broadcast_to(images(n=1), (16, 6, 6, 1))  # 16 copies of one image
    out = np.asarray(A.random_shift(2)(KEY, x))
    found = [matching_shifts(out[n], np.asarray(x[0]), 2) for n in range(16)]
    assert all(found), "an output is not a shift of at most 2 pixels"
    assert len({tuple(f[0]) for f in found}) > 4  # independent draws


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_random_crop_is_a_crop_of_the_padded_image(mode):
    x = jnp.broadcast_to(images(n=1, h=5, w=5), (12, 5, 5, 1))
    out = np.asarray(A.random_crop(2, mode=mode)(KEY, x))
    ref = np.asarray(x[0])
    found = [matching_shifts(out[n], ref, 2, mode) for n in range(12)]
    assert all(found), f"an output is not a crop of the {mode}-padded image"
    assert len({tuple(f[0]) for f in found}) > 3
    if mode == "edge":  # no zeros come in, only border values
        assert out.min() >= ref.min()


def test_random_flip_is_exact_and_draws_both_ways():
    x = jnp.broadcast_to(images(n=1), (16, 6, 6, 1))
    ref = np.asarray(x[0])
    out = np.asarray(A.random_flip()(KEY, x))
    kinds = []
    for o in out:
        kinds.append(
            "same" if np.array_equal(o, ref) else
            "lr" if np.array_equal(o, ref[:, ::-1]) else "other"
        )  # fmt: skip
    assert "other" not in kinds and {"same", "lr"} <= set(kinds)
    both = np.asarray(A.random_flip(horizontal=True, vertical=True)(KEY, x))
    candidates = [ref, ref[:, ::-1], ref[::-1], ref[::-1, ::-1]]
    seen = {
        next(k for k, c in enumerate(candidates) if np.array_equal(o, c)) for o in both
    }
    assert seen == {0, 1, 2, 3}


def test_random_rotation_keeps_the_centre_and_varies_per_example():
    x = jnp.broadcast_to(images(n=1, h=7, w=7), (8, 7, 7, 1))
    out = np.asarray(A.random_rotation(30.0)(KEY, x))
    np.testing.assert_allclose(out[:, 3, 3], np.asarray(x[:, 3, 3]), rtol=1e-5)
    assert len({o.tobytes() for o in out}) == 8
    np.testing.assert_array_equal(A.random_rotation(0)(KEY, x), x)


def test_gaussian_noise_any_shape_and_its_spread():
    x = jnp.zeros((200, 50))
    out = np.asarray(A.gaussian_noise(0.3)(KEY, x))
    assert out.shape == (200, 50)
    assert abs(out.std() - 0.3) < 0.01 and abs(out.mean()) < 0.01
    np.testing.assert_array_equal(A.gaussian_noise(0.0)(KEY, x), x)


def test_compose_applies_in_order_with_split_keys():
    shift, flip = A.random_shift(1), A.random_flip()
    x = images()
    k1, k2 = jax.random.split(KEY)
    expected = flip(k2, shift(k1, x))
    np.testing.assert_array_equal(A.compose(shift, flip)(KEY, x), expected)
    np.testing.assert_array_equal(A.compose()(KEY, x), x)


AUGS = {
    "shift": A.random_shift(2),
    "crop": A.random_crop(1, mode="reflect"),
    "flip": A.random_flip(horizontal=True, vertical=True),
    "rotation": A.random_rotation(20),
    "noise": A.gaussian_noise(0.1),
    "compose": A.compose(A.random_shift(1), A.random_rotation(10)),
}


@pytest.mark.parametrize("name", sorted(AUGS))
def test_pure_jittable_and_one_draw_per_key(name):
    aug, x = AUGS[name], images()
    once = aug(KEY, x)
    np.testing.assert_array_equal(aug(KEY, x), once)  # same key, same draw
    np.testing.assert_allclose(jax.jit(aug)(KEY, x), once, atol=1e-5)
    assert not np.array_equal(aug(jax.random.key(1), x), once)
    assert once.shape == x.shape and once.dtype == x.dtype


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.uint8])
@pytest.mark.parametrize("name", ["shift", "crop", "flip", "rotation"])
def test_dtype_is_preserved(name, dtype):
    x = images(n=2, dtype=dtype)
    out = AUGS[name](KEY, x)
    assert out.dtype == dtype and out.shape == x.shape


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "build, error, message",
    [
        (
            lambda: A.random_shift(-1),
            ValueError,
            "max_pixels must be an int >= 0, got -1",
        ),
        (lambda: A.random_shift(1.5), ValueError, "got 1.5"),
        (lambda: A.random_crop(2, mode="wrap"), ValueError, "mode must be one of"),
        (
            lambda: A.random_flip(False, False),
            ValueError,
            "enable horizontal or vertical",
        ),
        (
            lambda: A.random_rotation(200),
            ValueError,
            "must be >= 0 and <= 180, got 200",
        ),
        (lambda: A.random_rotation("10"), TypeError, "must be a number"),
        (
            lambda: A.gaussian_noise(-0.1),
            ValueError,
            "std must be >= 0 and finite, got -0.1",
        ),
        (lambda: A.gaussian_noise(float("inf")), ValueError, "finite, got inf"),
        (lambda: A.gaussian_noise(float("nan")), ValueError, "finite, got nan"),
        (lambda: A.compose(A.random_flip), TypeError, "did you mean random_flip(...)"),
        (lambda: A.compose(3), TypeError, "argument 0 is 3, not an augmentation"),
    ],
)
def test_options_are_validated_at_construction(build, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_input_rank_is_checked_at_trace_time():
    aug = jax.jit(A.random_shift(1))
    with pytest.raises(ShapeError, match=r"expected a batch of images \(N, H, W, C\), "
                       r"got shape \(6, 6, 1\); add a channel axis"):  # fmt: skip
        aug(KEY, jnp.zeros((6, 6, 1)))
    with pytest.raises(TypeError, match="needs a PRNG key"):
        A.random_flip()(None, images())
    # An int seed instead of a key: named, not JAX's "invalid PRNG key data".
    for bad in (0, jnp.array(3)):
        with pytest.raises(TypeError, match=r"random_shift\(1\): needs a PRNG key"):
            A.random_shift(1)(bad, images())
    with pytest.raises(TypeError, match="compose: needs a PRNG key"):
        A.compose(A.random_flip())(7, images())
    legacy = A.random_shift(1)(jax.random.PRNGKey(0), images())  # raw keys work
    assert legacy.shape == images().shape
    with pytest.raises(TypeError, match="needs floating inputs, got dtype int32"):
        A.gaussian_noise(0.1)(KEY, jnp.zeros((2, 3), jnp.int32))
