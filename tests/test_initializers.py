"""fnn.initializers draw JAX's own values, without a compile per shape.

Eager draws go through one compiled chunk program (``CHUNK`` values at an
offset); these tests hold them to bitwise equality with
``jax.nn.initializers`` (the reference, drawing the shape directly), across
chunk boundaries, typed and raw keys, and the traced fallback.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import initializers as I

KEY = jax.random.key(3)
# Two chunks and a cut in the second: (300, 300) holds 90,000 > CHUNK values.
SHAPES = [(3, 4), (300, 300), (3, 3, 2, 5)]


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_chunk_is_smaller_than_the_two_chunk_shape():
    assert I.CHUNK < 300 * 300 < 2 * I.CHUNK


@pytest.mark.parametrize("shape", SHAPES)
def test_lecun_normal_is_bitwise_jax_across_chunks(shape):
    _same(I.lecun_normal()(KEY, shape), jax.nn.initializers.lecun_normal()(KEY, shape))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (I.he_normal(), jax.nn.initializers.he_normal()),
        (I.glorot_normal(), jax.nn.initializers.glorot_normal()),
        (I.glorot_uniform(), jax.nn.initializers.glorot_uniform()),
        (I.he_uniform(), jax.nn.initializers.he_uniform()),
        (I.lecun_uniform(), jax.nn.initializers.lecun_uniform()),
        (I.normal(0.5), jax.nn.initializers.normal(0.5)),
        (I.uniform(scale=2.0), jax.nn.initializers.uniform(scale=2.0)),
        (
            I.truncated_normal(0.7, lower=-1.0, upper=3.0),
            jax.nn.initializers.truncated_normal(0.7, lower=-1.0, upper=3.0),
        ),
        (
            I.variance_scaling(0.5, "fan_geo_avg", "normal", in_axis=0),
            jax.nn.initializers.variance_scaling(
                0.5, "fan_geo_avg", "normal", in_axis=0
            ),
        ),
        (I.constant(0.1), jax.nn.initializers.constant(0.1)),
        (I.zeros, jax.nn.initializers.zeros),
        (I.ones, jax.nn.initializers.ones),
    ],
    ids=repr,
)
def test_every_named_initializer_is_bitwise_jax(ours, theirs):
    _same(ours(KEY, (5, 7)), theirs(KEY, (5, 7)))


def test_a_raw_uint32_key_draws_the_same_as_jax():
    raw = jax.random.PRNGKey(5)
    shape = (3, 4)
    _same(I.lecun_normal()(raw, shape), jax.nn.initializers.lecun_normal()(raw, shape))


def test_traced_and_other_dtype_draws_fall_back_to_jax():
    jitted = jax.jit(lambda k: I.lecun_normal()(k, (3, 4)))
    _same(jitted(KEY), jax.nn.initializers.lecun_normal()(KEY, (3, 4)))
    keys = jax.random.split(KEY, 2)
    batched = jax.vmap(lambda k: I.lecun_normal()(k, (3, 4)))(keys)
    _same(batched[1], jax.nn.initializers.lecun_normal()(keys[1], (3, 4)))
    half = I.lecun_normal()(KEY, (3, 4), jnp.bfloat16)
    _same(half, jax.nn.initializers.lecun_normal()(KEY, (3, 4), jnp.bfloat16))


def test_new_shapes_reuse_one_compiled_draw():
    init = I.he_normal()
    init(KEY, (2, 3))  # compiles the truncated-normal chunk if nothing has yet
    before = I._chunk._cache_size()
    for shape in [(4, 5), (6, 7, 8), (9, 10), (300, 300)]:
        init(KEY, shape)
    assert I._chunk._cache_size() == before


def test_errors_stay_jax_own():
    with pytest.raises(ValueError, match="1-dimensional"):
        I.lecun_normal()(KEY, (5,))


@pytest.mark.parametrize("key", [KEY, jax.random.PRNGKey(9)], ids=["typed", "raw"])
def test_split_gives_jax_keys_from_one_program(key):
    for n in (1, 2, 5, I.SPLIT_MAX, I.SPLIT_MAX + 1):
        ours, theirs = I.split(key, n), tuple(jax.random.split(key, n))
        assert len(ours) == n
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.shape == b.shape
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            _same(a, b)
    assert I._split_words._cache_size() == 1


def test_conv_kernel_fans_follow_pytorch_definitions():
    # A kernel (kh, kw, C, F) is PyTorch's (F, C, kh, kw): fan_in = C kh kw,
    # fan_out = F kh kw. Uniform bounds are then torch's kaiming_uniform_
    # (a=0) sqrt(6 / fan_in) and xavier_uniform_ sqrt(6 / (fan_in + fan_out)).
    shape, fan_in, fan_out = (3, 3, 16, 32), 3 * 3 * 16, 3 * 3 * 32
    assert I._compute_fans(shape) == (fan_in, fan_out)
    for init, bound in [
        (I.kaiming_uniform(), np.sqrt(6 / fan_in)),
        (I.xavier_uniform(), np.sqrt(6 / (fan_in + fan_out))),
        (I.lecun_uniform(), np.sqrt(3 / fan_in)),
    ]:
        w = np.abs(np.asarray(init(KEY, shape)))
        assert 0.995 * bound < w.max() <= bound * (1 + 1e-6), init
    # He normal: variance 2 / fan_in (JAX truncates at 2 std and rescales).
    w = np.asarray(I.kaiming_normal()(KEY, shape))
    assert abs(w.std() / np.sqrt(2 / fan_in) - 1) < 0.03
    assert np.abs(w).max() <= 2 * np.sqrt(2 / fan_in) / I._TRUNCATED_NORMAL_STD


def test_a_factory_dtype_is_the_default_of_its_calls_as_in_jax():
    # normal(0.5, dtype=jnp.bfloat16)(key, shape) drew float32: the factory's
    # dtype= was accepted and ignored, where JAX's own draws bfloat16.
    jax_init = jax.nn.initializers
    for ours, theirs in [
        (I.normal(0.5, dtype=jnp.bfloat16), jax_init.normal(0.5, jnp.bfloat16)),
        (I.he_uniform(dtype=jnp.float16), jax_init.he_uniform(dtype=jnp.float16)),
    ]:
        _same(ours(KEY, (3, 4)), theirs(KEY, (3, 4)))
        # A dtype given to the call still wins.
        assert ours(KEY, (3, 4), jnp.float32).dtype == jnp.float32
    assert I.normal(0.5)(KEY, (3, 4)).dtype == jnp.float32
