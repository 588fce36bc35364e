"""``pywren.wren``: the constants of PyWren's ``wait``."""
ALL_COMPLETED = 1
ANY_COMPLETED = 2
ALWAYS = 3
