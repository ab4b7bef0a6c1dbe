"""A program with no mlscope in it, for `mlscope run` tests: it forks CHILDREN children one at a
time and SIGTERMs each the moment `os.fork` returns in the parent, while the child may still be
starting up (as `Pool.terminate()` can catch a worker on a loaded machine); prints how each ended."""

import os
import signal

CHILDREN = 5

if __name__ == "__main__":
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            while True:  # until the signal ends it
                signal.pause()
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
