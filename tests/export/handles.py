# File-handle steps for tests/export.rs, run as root (open_by_handle_at
# needs CAP_DAC_READ_SEARCH):
#   handles.py get PATH          prints the handle of PATH as type:hex
#   handles.py read MNT HANDLE   opens it by handle and prints its contents
#                                (a directory: its sorted names), or the errno
#   handles.py forge MNT HANDLE INO   the same handle naming node id INO
import ctypes, errno, os, sys

libc = ctypes.CDLL(None, use_errno=True)


class FileHandle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 128)]


def get(path):
    fh = FileHandle(bytes=128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0):
        e = ctypes.get_errno()
        sys.exit(f"name_to_handle_at {path}: {errno.errorcode[e]}")
    return f"{fh.type}:{bytes(fh.f[:fh.bytes]).hex()}"


def read(mnt, handle):
    kind, hexed = handle.split(":")
    b = bytes.fromhex(hexed)
    fh = FileHandle(bytes=len(b), type=int(kind))
    fh.f[: len(b)] = b
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
    if fd < 0:
        return errno.errorcode[ctypes.get_errno()]
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        return " ".join(sorted(os.listdir(fd)))
    return os.read(fd, 4096).decode()


cmd = sys.argv[1]
if cmd == "get":
    print(get(sys.argv[2]))
elif cmd == "read":
    print(read(sys.argv[2], sys.argv[3]))
elif cmd == "forge":
    kind, hexed = sys.argv[3].split(":")
    b = bytearray(bytes.fromhex(hexed))
    ino = int(sys.argv[4])
    # FUSE's handle: node id (high word, low word), generation.
    b[0:4] = (ino >> 32).to_bytes(4, "little")
    b[4:8] = (ino & 0xFFFFFFFF).to_bytes(4, "little")
    print(read(sys.argv[2], f"{kind}:{b.hex()}"))
