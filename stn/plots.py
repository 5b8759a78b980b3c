"""Pictures: every PNG is drawn headless (Agg) and written atomically."""
import numpy as np

from .data import atomic_path


def pyplot(show=False):
    """matplotlib.pyplot on the Agg backend, unless a window was asked for."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, show=False):
    """Write ``fig`` to the PNG ``path`` atomically, then show it if asked."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    if show:
        pyplot(show).show()
    pyplot(show).close(fig)


def save_mosaic(images, columns, path):
    """Tile (N, H, W) images in [0, 1], ``columns`` per row, into a grey PNG."""
    import matplotlib.image
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0, vmax=1, format="png")
