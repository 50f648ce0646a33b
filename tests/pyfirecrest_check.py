"""CSCS's own v2 client (pyfirecrest, unmodified) against `f7tfs serve`.

Run by tests/pyfirecrest.rs with FIRECREST_URL, FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET,
AUTH_TOKEN_URL, FIRECREST_SYSTEM, F7TFS_ROOT (served root = remote path) and F7TFS_WORK (a
local scratch directory). Exits non-zero with a message on the first mismatch.
"""

import hashlib
import os
import sys

try:
    import firecrest
    from firecrest import v2
    from firecrest.FirecrestException import TransferJobFailedException
except ImportError as e:  # the Rust side checks this first; keep the hint anyway
    sys.exit(f"pyfirecrest is not importable ({e}): run `pip install pyfirecrest`")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    url = os.environ["FIRECREST_URL"]
    system = os.environ["FIRECREST_SYSTEM"]
    root = os.environ["F7TFS_ROOT"]
    work = os.environ["F7TFS_WORK"]
    max_ops = int(os.environ["F7TFS_MAX_OPS"])

    auth = firecrest.ClientCredentialsAuth(
        os.environ["FIRECREST_CLIENT_ID"],
        os.environ["FIRECREST_CLIENT_SECRET"],
        os.environ["AUTH_TOKEN_URL"],
    )
    client = v2.Firecrest(firecrest_url=url, authorization=auth)

    systems = client.systems()
    check([s["name"] for s in systems] == [system], "systems lists the served system")
    fs = systems[0]["fileSystems"][0]
    check(fs["path"] == root and fs["defaultWorkDir"] is True, "fileSystems is the served root")
    check(
        systems[0]["dataOperation"]["max_ops_file_size"] == max_ops,
        "max_ops_file_size advertised",
    )
    info = client.userinfo(system)
    check("name" in info["user"] and "id" in info["group"], "userinfo shape")

    # mkdir, nested with parents
    # No spaces: the real checksum endpoint answers 500 for paths with spaces.
    d = f"{root}/py_dir☃"
    out = client.mkdir(system, f"{d}/sub/deeper", create_parents=True)
    check(out["type"] == "d" and out["name"] == f"{d}/sub/deeper", "mkdir -p answers the ls entry")

    # small upload + list + stat + download, byte for byte
    small = os.path.join(work, "small.bin")
    payload = bytes(range(256)) * 700 + "ünï ☃\n".encode()
    with open(small, "wb") as f:
        f.write(payload)
    client.upload(system, small, d, "small_☃.bin")
    names = {e["name"]: e for e in client.list_files(system, d)}
    check("small_☃.bin" in names and "sub" in names, "list_files shows upload and subdir")
    check(names["small_☃.bin"]["size"] == str(len(payload)), "ls size is a string of the length")
    st = client.stat(system, f"{d}/small_☃.bin")
    check(st["size"] == len(payload) and (st["mode"] & 0o170000) == 0o100000, "stat of upload")
    back = os.path.join(work, "small.back")
    client.download(system, f"{d}/small_☃.bin", back)
    with open(back, "rb") as f:
        check(f.read() == payload, "direct download returns the same bytes")
    check(client.view(system, f"{d}/small_☃.bin")[:3] == "\x00\x01\x02", "view decodes text")
    check(
        client.checksum(system, f"{d}/small_☃.bin")["checksum"] == hashlib.sha256(payload).hexdigest(),
        "checksum matches",
    )

    # chmod
    e = client.chmod(system, f"{d}/small_☃.bin", "640")
    check(e["permissions"] == "rw-r-----", "chmod answers the new permissions")
    check(client.stat(system, f"{d}/small_☃.bin")["mode"] & 0o777 == 0o640, "chmod visible in stat")

    # symlink
    client.symlink(system, f"{d}/small_☃.bin", f"{d}/link")
    links = [x for x in client.list_files(system, d) if x["name"] == "link"]
    check(links and links[0]["type"] == "l" and links[0]["linkTarget"] == f"{d}/small_☃.bin",
          "symlink listed with its target")
    check(client.stat(system, f"{d}/link", dereference=True)["size"] == len(payload),
          "stat dereference follows the link")

    # mv (a transfer job, polled through /compute/.../jobs and its output log)
    client.mv(system, f"{d}/small_☃.bin", f"{d}/sub/moved.bin")
    check(client.stat(system, f"{d}/sub/moved.bin")["size"] == len(payload), "mv target present")
    try:
        client.stat(system, f"{d}/small_☃.bin")
        check(False, "mv source gone")
    except firecrest.FirecrestException as ex:
        check(ex.responses[-1].status_code == 404, "mv source gone (404)")
    # a failing mv: COMPLETED job, but the log lacks the success line -> exception
    try:
        client.mv(system, f"{d}/nothing-here", f"{d}/x")
        check(False, "failing mv raises")
    except TransferJobFailedException:
        check(True, "failing mv raises TransferJobFailedException")

    # cp and rm
    client.cp(system, f"{d}/sub", f"{d}/copy")
    check(client.stat(system, f"{d}/copy/moved.bin")["size"] == len(payload), "cp -R copied")
    client.rm(system, f"{d}/copy")
    check("copy" not in {x["name"] for x in client.list_files(system, d)}, "rm removed the tree")

    # staged upload and download of a file larger than the direct limit
    big = os.path.join(work, "big.bin")
    size = max_ops + 3 * 1024 * 1024 + 12345
    with open(big, "wb") as f:
        block = hashlib.sha256(b"seed").digest() * 4096
        written = 0
        i = 0
        while written < size:
            chunk = hashlib.sha256(i.to_bytes(8, "little")).digest() + block
            chunk = chunk[: size - written]
            f.write(chunk)
            written += len(chunk)
            i += 1
    up = client.upload(system, big, d, "big.bin")
    check(up is not None, "large upload went through the staging area")
    check(client.stat(system, f"{d}/big.bin")["size"] == size, "staged upload has the full size")
    check(client.checksum(system, f"{d}/big.bin")["checksum"] == sha(big), "staged upload bytes")
    big_back = os.path.join(work, "big.back")
    down = client.download(system, f"{d}/big.bin", big_back)
    check(down is not None, "large download went through the staging area")
    check(sha(big_back) == sha(big), "staged download returns the same bytes")

    # compress + extract (ops)
    client.compress(system, f"{d}/sub", f"{d}/sub.tar.gz")
    client.mkdir(system, f"{d}/unpacked")
    client.extract(system, f"{d}/sub.tar.gz", f"{d}/unpacked")
    check(client.stat(system, f"{d}/unpacked/sub/moved.bin")["size"] == len(payload),
          "compress + extract round trip")

    print("PYFIRECREST CHECK PASSED", flush=True)


if __name__ == "__main__":
    main()
