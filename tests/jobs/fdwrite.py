"""A processor writing straight to fd 1 and fd 2, as C code or a child process would."""
import os
import subprocess

input_data = "alpha\nbeta\ngamma"


def processor(item):
    os.write(1, ("fd1-out %s\n" % item).encode())
    os.write(2, ("fd2-err %s\n" % item).encode())
    subprocess.run(["echo", "child-out", item])  # a child process inherits fd 1
    return item.upper()
