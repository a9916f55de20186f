"""``python -m ferfast.info``: print what was built and which backends are in use.

Importing this submodule rebinds ``ferfast.info`` from the function to the module, so the
module itself is made callable: ``ferfast.info()`` works either way.
"""

import sys
import types

from ferfast._info import info, info_dict, load_problems, main

__all__ = ["info", "info_dict", "load_problems", "main"]


class _CallableModule(types.ModuleType):
    def __call__(self) -> str:
        return info()


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
