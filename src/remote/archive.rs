//! Unpacking the archives of batched reads (`RemoteFs::fetch_files`): a gzip-compressed tar
//! whose members must be regular files directly inside one directory. Anything else (a
//! member with `/` below the expected prefix, `..`, links, devices) is refused, and the total
//! uncompressed content is capped, so a hostile or surprising archive never yields a wrong
//! file or unbounded memory.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{FetchedFile, RemoteError, RemoteResult};

/// Unpacks `tgz`, whose members are named `prefix` + one component (a leading `./` is
/// ignored; a bare directory member equal to the prefix is skipped). At most `max_total`
/// content bytes are accepted.
pub fn unpack_flat(tgz: &[u8], prefix: &str, max_total: u64) -> RemoteResult<Vec<FetchedFile>> {
    let bad = |m: String| RemoteError::Protocol(format!("batch archive: {m}"));
    let gz = flate2::read::GzDecoder::new(tgz);
    let mut ar = tar::Archive::new(gz);
    let mut out = Vec::new();
    let mut total = 0u64;
    let entries = ar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw).map_err(|_| bad("member name not UTF-8".into()))?;
        let rel = raw.strip_prefix("./").unwrap_or(&raw);
        let kind = entry.header().entry_type();
        if kind.is_dir() && rel.trim_end_matches('/') == prefix.trim_end_matches('/') {
            continue;
        }
        let name = rel
            .strip_prefix(prefix)
            .ok_or_else(|| bad(format!("member {raw:?} outside the directory")))?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(bad(format!("member name {raw:?} refused")));
        }
        if !kind.is_file() {
            return Err(bad(format!("member {raw:?} is not a regular file")));
        }
        let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
        total = total.saturating_add(size);
        if total > max_total {
            return Err(RemoteError::TooLarge(format!(
                "batch archive holds more than {max_total} bytes"
            )));
        }
        let perm = entry.header().mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        let mtime = entry.header().mtime().map_err(|e| bad(e.to_string()))?;
        let mut content = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| bad(e.to_string()))?;
        if content.len() as u64 != size {
            return Err(bad(format!("member {raw:?} is truncated")));
        }
        out.push(FetchedFile {
            name: name.to_string(),
            content: Bytes::from(content),
            perm,
            mtime: from_tar_time(mtime),
        });
    }
    Ok(out)
}

/// A tar header time as the tar crate reads it: GNU tar writes times before 1970 in base-256
/// two's complement, which arrives as the `u64` of the same bits.
fn from_tar_time(raw: u64) -> SystemTime {
    let secs = raw as i64;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// The inverse of [`from_tar_time`] (whole seconds, rounded down).
fn to_tar_time(t: SystemTime) -> u64 {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    secs as u64
}

/// Packs `files` the way the server's `compress` does (members `prefix` + name): for tests
/// and the in-memory remote.
pub fn pack_flat(files: &[FetchedFile], prefix: &str) -> RemoteResult<Vec<u8>> {
    let io = |e: std::io::Error| RemoteError::LocalIo(e.to_string());
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(f.content.len() as u64);
        h.set_mode(f.perm);
        h.set_mtime(to_tar_time(f.mtime));
        b.append_data(&mut h, format!("./{prefix}{}", f.name), &f.content[..])
            .map_err(io)?;
    }
    b.into_inner().map_err(io)?.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> FetchedFile {
        FetchedFile {
            name: name.into(),
            content: Bytes::copy_from_slice(content),
            perm: 0o640,
            mtime: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn round_trip_and_caps() {
        let files = vec![file("a", b"hello"), file("b c", b""), file(".x", b"12345")];
        let tgz = pack_flat(&files, "d/").unwrap();
        assert_eq!(unpack_flat(&tgz, "d/", 100).unwrap(), files);
        assert!(matches!(
            unpack_flat(&tgz, "d/", 9),
            Err(RemoteError::TooLarge(_))
        ));
        assert!(unpack_flat(&tgz, "e/", 100).is_err());
    }

    #[test]
    fn times_before_1970_survive_gnu_tar_and_our_packing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("old"), b"x").unwrap();
        let touched = std::process::Command::new("touch")
            .args(["-d", "1969-12-31 23:59:59 UTC"])
            .arg(d.join("old"))
            .status()
            .unwrap();
        assert!(touched.success());
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .args(["-czf", "-", "./d/old"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let got = unpack_flat(&out.stdout, "d/", 100).unwrap();
        assert_eq!(got[0].mtime, UNIX_EPOCH - Duration::from_secs(1));
        let mut old = file("a", b"y");
        old.mtime = UNIX_EPOCH - Duration::from_secs(2_147_483_648);
        let tgz = pack_flat(std::slice::from_ref(&old), "d/").unwrap();
        assert_eq!(unpack_flat(&tgz, "d/", 100).unwrap(), vec![old]);
    }

    #[test]
    fn refuses_nested_and_non_regular_members() {
        let tgz = pack_flat(&[file("sub/a", b"x")], "d/").unwrap();
        assert!(unpack_flat(&tgz, "d/", 100).is_err());
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "./d/l", "/etc/passwd").unwrap();
        let tgz = b.into_inner().unwrap().finish().unwrap();
        assert!(unpack_flat(&tgz, "d/", 100).is_err());
    }
}
