"""``python -m ferfast.info``: print what was built and which backends are in use."""

from ferfast._info import info, info_dict, main

__all__ = ["info", "info_dict", "main"]

if __name__ == "__main__":
    main()
