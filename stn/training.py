"""Training helpers shared by the scripts: minibatches and evaluation."""
import numpy as np


def iterate_minibatches(n, batch_size, rng=None):
    """Yield index arrays of ``batch_size`` over ``range(n)``.

    With ``rng`` the order is shuffled and the last, incomplete batch dropped
    (every training step sees a full batch); without it every sample is
    visited in order, the last batch possibly smaller.
    """
    if rng is not None:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
    else:
        for start in range(0, n, batch_size):
            yield np.arange(start, min(start + batch_size, n))


def evaluate(fn, X, y, batch_size):
    """Run ``fn(X_batch, y_batch) -> (loss, correct)`` over a whole set.

    Returns the mean loss and the accuracy, each weighted by batch size.
    """
    total_loss = total_correct = 0.0
    for idx in iterate_minibatches(len(X), batch_size):
        loss, correct = fn(X[idx], y[idx])
        total_loss += float(loss) * len(idx)
        total_correct += float(correct)
    return total_loss / len(X), total_correct / len(X)
