"""What answers look like: the functions that shape rows and service views into JSON.

One module per concept; the API, the console and the CLI import them (the CLI without the
API). The HTTP response models that document these shapes are in ``api/responses/``.
Compatible shapes keep the original's timestamps (``compat_time``); ours are RFC 3339
(``iso_time``).
"""
