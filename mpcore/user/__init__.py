"""The user's model and data: loading a ``.keras`` file or ``pkg.mod:factory``, converting it to a
precision, its loss, and the user's arrays or ship folder."""
