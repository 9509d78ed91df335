# Type stub of the compiled bindings.  Struct fields and constants are
# checked by the layout tests against the kernel headers, not by mypy.
from typing import Any

ffi: Any
lib: Any
