"""ASGI apps the benchmark serves next to `keyturn serve`: the baseline and the comparisons."""
