"""Meeting a cache as another user would, even as root: the source of a function a test's subprocess runs first."""

from __future__ import annotations

import textwrap

# Root ignores file modes and ownership through four capabilities; without them it meets the cache (made
# nobody's below) as any other user would: someone else's, read-only. It stays uid 0 rather than becoming
# nobody, because the virtualenv and the checkout it imports lazily from may sit in a folder no other
# user can enter (a 0700 clone; issue 17), and those it still owns.
DROP_OVERRIDE = textwrap.dedent(
    """
    import ctypes

    def drop_file_mode_override():
        \"\"\"Clear CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from this process (capset(2)).\"\"\"
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

        libc = ctypes.CDLL(None, use_errno=True)
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
        if libc.capget(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
        keep = ~0b1111  # capabilities 0-3
        data[0].effective &= keep
        data[0].permitted &= keep
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
    """
)
