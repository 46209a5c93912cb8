"""Plain numpy references the loss tests compare against."""
import numpy as np


def numpy_symmetric_info_nce(a, b, scale, extra_a=None, extra_b=None):
    def cross_entropy(rows, columns):
        logits = scale * rows @ columns.T
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_softmax[:, : rows.shape[0]]))

    columns_b = b if extra_b is None else np.concatenate([b, extra_b])
    columns_a = a if extra_a is None else np.concatenate([a, extra_a])
    return (cross_entropy(a, columns_b) + cross_entropy(b, columns_a)) / 2
