"""The chapter's clutter: square patches cut from MNIST digits and laid on
the canvases, by create_mnist_sequence.py once and by the training loop's
``-clutter`` afresh every batch.  NumPy is imported inside the functions, so
that a script's ``--help`` stays quick."""

DIGIT = 28                # side of an MNIST digit, in pixels
CHAPTER_SIZE = 9          # side of the chapter's clutter patches, in pixels
PATCH_DATABASE = 100000   # patches cut once, then drawn from


def cut_patches(rng, digits, count, size):
    """``count`` patches of ``size`` x ``size`` pixels (size at most DIGIT),
    each from a random digit of ``digits`` (N, 28, 28) at a random offset;
    (count, size, size), the digits' dtype.  ``rng``: a RandomState."""
    import numpy as np
    which = rng.randint(0, len(digits), count)
    top = rng.randint(0, DIGIT - size + 1, count)
    left = rng.randint(0, DIGIT - size + 1, count)
    span = np.arange(size)
    return digits[which[:, None, None], top[:, None, None] + span[None, :, None],
                  left[:, None, None] + span[None, None, :]]


def patch_database(rng, mnist, size):
    """The generator's PATCH_DATABASE patches of ``size`` pixels, cut from
    MNIST's training and validation digits (never the test ones), ``mnist``
    being ``stn.data.load_mnist()``'s six arrays; (PATCH_DATABASE, size,
    size) float32."""
    import numpy as np
    X_train, _, X_valid, _, _, _ = mnist
    return cut_patches(rng, np.concatenate([X_train[:, 0], X_valid[:, 0]]),
                       PATCH_DATABASE, size)


def lay_patches(canvas, patches, corners):
    """Lay clutter on ``canvas`` (n, W, W) float32, in place, as the chapter's
    generator does: ``patches`` (n, k, s, s) go one after another onto a
    layer of their own, a later one overwriting an earlier one, at
    ``corners`` (n, k, 2), each patch's top row and left column in pixels;
    the layer is then added to the canvas, which is clipped to [0, 1].
    Returns the canvas."""
    import numpy as np
    n, k, size = patches.shape[:3]
    rows = np.arange(n)[:, None, None]
    span = np.arange(size)
    layer = np.zeros_like(canvas)
    for j in range(k):
        y = corners[:, j, 0][:, None, None]
        x = corners[:, j, 1][:, None, None]
        layer[rows, y + span[None, :, None], x + span[None, None, :]] = patches[:, j]
    canvas += layer
    np.clip(canvas, 0, 1, out=canvas)
    return canvas


def add_clutter(canvas, patch_db, count, rng):
    """``count`` more patches on each of the square canvases (n, W, W)
    float32, in place: drawn from ``patch_db`` (P, s, s), placed at random
    with ``rng`` (a RandomState), laid by ``lay_patches`` over the canvas as
    it is (its own clutter included).  Returns the canvas."""
    n, dim = canvas.shape[:2]
    size = patch_db.shape[1]
    patches = patch_db[rng.randint(0, len(patch_db), (n, count))]
    corners = rng.randint(0, dim - size + 1, (n, count, 2))
    return lay_patches(canvas, patches, corners)
