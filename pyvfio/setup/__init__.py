"""Device set-up: discovery (:mod:`.devices`), kernel support
(:mod:`.kernel_support`), safe binding and restore (:mod:`.binding`),
environment checks (:mod:`.environment`), topology capture
(:mod:`.capture`) and the ``pyvfio`` command (:mod:`.cli`).
"""
