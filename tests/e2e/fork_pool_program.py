"""A program with no mlscope in it, for `mlscope run` tests: a fork-based multiprocessing.Pool
whose workers call a small torch model, then ended by `pool.terminate()` (which SIGTERMs the
workers), or by `pool.close()` and `join()` with `--close`."""

import multiprocessing
import sys

import torch

model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
CALLS = 6


def predict(i: int) -> float:
    with torch.no_grad():
        return float(model(torch.ones(1, 8) * i).sum())


if __name__ == "__main__":
    pool = multiprocessing.get_context("fork").Pool(2)
    print(len(pool.map(predict, range(CALLS), chunksize=1)), flush=True)
    if "--close" in sys.argv:
        pool.close()
    else:
        pool.terminate()
    pool.join()
