"""Domain rules: plain typed Python, no I/O, no framework imports."""
