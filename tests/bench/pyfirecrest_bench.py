"""pyfirecrest (CSCS's v2 client, unmodified) doing one benchmark job against `f7tfs serve`.

Run by `f7tfs-bench` with FIRECREST_URL, FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET,
AUTH_TOKEN_URL and FIRECREST_SYSTEM set. Usage:

  pyfirecrest_bench.py ls REMOTE_DIR            list one directory
  pyfirecrest_bench.py lsr REMOTE_DIR           recursive listing (find / du)
  pyfirecrest_bench.py dl-many REMOTE_DIR LOCAL_DIR   list, then download every file
  pyfirecrest_bench.py up-many LOCAL_DIR REMOTE_DIR   mkdir + upload every file of a tree
  pyfirecrest_bench.py dl-big REMOTE_FILE LOCAL_FILE  (staged transfer above the direct limit)
  pyfirecrest_bench.py up-big LOCAL_FILE REMOTE_DIR NAME
  pyfirecrest_bench.py edit REMOTE_FILE LOCAL_FILE    download, append a byte, upload back

Prints one JSON line {"seconds": wall time of the job after the client was built, "items": N}.
"""

import json
import os
import sys
import time

import firecrest
from firecrest import v2


def main():
    system = os.environ["FIRECREST_SYSTEM"]
    auth = firecrest.ClientCredentialsAuth(
        os.environ["FIRECREST_CLIENT_ID"],
        os.environ["FIRECREST_CLIENT_SECRET"],
        os.environ["AUTH_TOKEN_URL"],
    )
    c = v2.Firecrest(firecrest_url=os.environ["FIRECREST_URL"], authorization=auth)
    cmd, args = sys.argv[1], sys.argv[2:]
    t0 = time.monotonic()
    items = 0
    if cmd in ("ls", "lsr"):
        items = len(c.list_files(system, args[0], show_hidden=True, recursive=cmd == "lsr"))
    elif cmd == "dl-many":
        src, dst = args
        os.makedirs(dst, exist_ok=True)
        for e in c.list_files(system, src, show_hidden=True):
            if e["type"] == "-":
                c.download(system, f"{src}/{e['name']}", os.path.join(dst, e["name"]))
                items += 1
    elif cmd == "up-many":
        src, dst = args
        for dirpath, _dirs, files in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            rdir = dst if rel == "." else f"{dst}/{rel}"
            c.mkdir(system, rdir, create_parents=True)
            for f in files:
                c.upload(system, os.path.join(dirpath, f), rdir, f)
                items += 1
    elif cmd == "dl-big":
        c.download(system, args[0], args[1])
        items = 1
    elif cmd == "up-big":
        c.upload(system, args[0], args[1], args[2])
        items = 1
    elif cmd == "edit":
        remote, local = args
        c.download(system, remote, local)
        with open(local, "ab") as f:
            f.write(b"x")
        d, name = remote.rsplit("/", 1)
        c.upload(system, local, d, name)
        items = 1
    else:
        sys.exit(f"unknown job {cmd!r}")
    print(json.dumps({"seconds": time.monotonic() - t0, "items": items}), flush=True)


if __name__ == "__main__":
    main()
