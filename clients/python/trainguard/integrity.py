"""Whether a checkpoint's files are still the ones registered, before a rollback loads them.

The sidecar verified the files when they were registered; a file deleted, truncated or written
since (a rotation, a disk filling up, a stray process) holds something it never verified, which a
rollback must not train on (finite values prove nothing: one flipped bit of a weight is finite).
Each registration made by this process records every file's size and modification time (one
``stat`` per file); the rollback compares them first and loads nothing that changed. A checkpoint
an earlier process registered (a restarted trainer) has no such record here: it is loaded as the
sidecar names it, its loader's errors and the finite check still standing guard.
"""
import os


def stat_of(files):
    """{path: (size, mtime_ns)} of the regular files among ``files`` (a directory is not compared:
    a framework may add a file to it later)."""
    out = {}
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        if os.path.isfile(f):
            out[f] = (st.st_size, st.st_mtime_ns)
    return out


def changed_since_registered(entry, plan):
    """Why ``plan``'s checkpoint is not what this process registered as ``entry`` (in words), or None."""
    stats = entry.get("stat")
    if not stats or (entry.get("checkpoint_id") and plan.checkpoint_id
                     and entry["checkpoint_id"] != plan.checkpoint_id):
        return None
    for path, (size, mtime) in stats.items():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"its file {path} is gone, deleted since it was registered"
        except OSError as e:
            return f"its file {path} cannot be read any more ({e})"
        if st.st_size != size:
            return (f"its file {path} changed since it was registered ({size} bytes then, {st.st_size} now: "
                    f"truncated or rewritten)")
        if st.st_mtime_ns != mtime:
            return (f"its file {path} was written since it was registered: not the content the sidecar "
                    f"verified")
    return None
