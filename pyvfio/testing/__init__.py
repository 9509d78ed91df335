"""Test support for users of pyvfio: the pytest plugin (:mod:`.plugin`)."""
