//! Wire → domain conversions of the v2 client: `ls` entries (permission strings, type
//! characters, string sizes, remote local times, C octal escapes in names) and `stat` outputs
//! (decimal `st_mode`). Pure functions, unit-tested against the recorded samples.

use std::collections::HashMap;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

use super::wire::{LsEntry, StatOutput, UserInfo};
use crate::remote::{epoch, DirEntry, FileKind, RemoteError, RemoteResult, Stat};

/// Names → numeric ids known from `userinfo`, for outputs that carry names (mkdir, chmod,
/// chown answer with an `ls` entry made without `--numeric-uid-gid`).
#[derive(Clone, Debug, Default)]
pub struct IdMap {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl IdMap {
    /// Only `root` (0), which is the same everywhere.
    pub fn new() -> Self {
        let mut map = IdMap::default();
        map.users.insert("root".into(), 0);
        map.groups.insert("root".into(), 0);
        map
    }

    /// From `GET /status/{system}/userinfo`.
    pub fn from_userinfo(info: &UserInfo) -> Self {
        let mut map = IdMap::new();
        if let Ok(id) = info.user.id.parse() {
            map.users.insert(info.user.name.clone(), id);
        }
        for g in std::iter::once(&info.group).chain(info.groups.iter()) {
            if let Ok(id) = g.id.parse() {
                map.groups.insert(g.name.clone(), id);
            }
        }
        map
    }

    fn user(&self, s: &str) -> Option<u32> {
        s.parse().ok().or_else(|| self.users.get(s).copied())
    }

    fn group(&self, s: &str) -> Option<u32> {
        s.parse().ok().or_else(|| self.groups.get(s).copied())
    }
}

/// Decodes the octal escapes `ls --quoting-style=c` leaves in names when the remote locale is
/// C (`unicod\303\251` → `unicodé`). Only runs of escapes of non-ASCII bytes that form valid
/// UTF-8 are decoded; anything else stays literal (a real backslash in a name survives).
pub fn decode_c_escapes(name: &str) -> String {
    if !name.contains('\\') {
        return name.to_string();
    }
    let bytes = name.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Collect a run of `\ooo` escapes with values >= 0o200.
        let mut run: Vec<u8> = Vec::new();
        let mut j = i;
        while j + 4 <= bytes.len() && bytes[j] == b'\\' {
            let d = &bytes[j + 1..j + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if (0o200..=0o377).contains(&v) {
                    run.push(v as u8);
                    j += 4;
                    continue;
                }
            }
            break;
        }
        if !run.is_empty() && std::str::from_utf8(&run).is_ok() {
            out.extend_from_slice(&run);
            i = j;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `rwxr-sr-T` → permission bits incl. setuid/setgid/sticky. Only the first nine characters
/// count (Lustre may append `+` or `.`).
pub fn parse_permissions(s: &str) -> Option<u32> {
    let c: Vec<char> = s.chars().take(9).collect();
    if c.len() != 9 {
        return None;
    }
    let mut mode = 0u32;
    for (k, special) in [(0usize, 0o4000u32), (3, 0o2000), (6, 0o1000)] {
        let shift = 6 - k as u32;
        match c[k] {
            'r' => mode |= 4 << shift,
            '-' => {}
            _ => return None,
        }
        match c[k + 1] {
            'w' => mode |= 2 << shift,
            '-' => {}
            _ => return None,
        }
        match c[k + 2] {
            'x' => mode |= 1 << shift,
            '-' => {}
            's' if k < 6 => mode |= (1 << shift) | special,
            'S' if k < 6 => mode |= special,
            't' if k == 6 => mode |= 1 | special,
            'T' if k == 6 => mode |= special,
            _ => return None,
        }
    }
    Some(mode)
}

/// The `type` character of an `ls` entry.
pub fn kind_from_char(s: &str) -> FileKind {
    match s {
        "-" => FileKind::File,
        "d" => FileKind::Dir,
        "l" => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// The file-type bits of a full `st_mode`.
pub fn kind_from_mode(mode: u32) -> FileKind {
    match mode & 0o170000 {
        0o100000 => FileKind::File,
        0o040000 => FileKind::Dir,
        0o120000 => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in the remote's zone → epoch seconds (DST gaps/folds resolved the
/// "compatible" way).
pub fn civil_to_epoch(s: &str, tz: &TimeZone) -> Option<i64> {
    let dt: DateTime = s.trim().parse().ok()?;
    Some(dt.to_zoned(tz.clone()).ok()?.timestamp().as_second())
}

/// The fixed offset of the remote's `ls` times, from one entry's civil `lastModified` and the
/// same object's `stat` mtime; rounded to a quarter of an hour.
pub fn offset_from_pair(civil: &str, mtime: i64) -> Option<Offset> {
    let as_utc = civil_to_epoch(civil, &TimeZone::UTC)?;
    let diff = as_utc - mtime;
    let quarter = 900;
    let rounded = ((diff as f64) / quarter as f64).round() as i64 * quarter;
    if rounded.abs() > 18 * 3600 || (diff - rounded).abs() > 120 {
        return None;
    }
    Offset::from_seconds(rounded as i32).ok()
}

/// Which of `civils` (`lastModified` values of one listing) to `stat` for the zone probe: the
/// first entry, plus the first of a northern winter month and the first of a northern summer
/// month, so a zone with daylight saving time shows both of its offsets (at most 3).
pub fn pick_probes(civils: &[&str]) -> Vec<usize> {
    let month = |s: &str| s.trim().parse::<DateTime>().ok().map(|d| d.month());
    let first_in = |months: &[i8]| {
        civils
            .iter()
            .position(|c| month(c).is_some_and(|m| months.contains(&m)))
    };
    let mut out: Vec<usize> = Vec::new();
    for i in [Some(0), first_in(&[12, 1, 2]), first_in(&[6, 7, 8])]
        .into_iter()
        .flatten()
    {
        if i < civils.len() && !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Zones tried first when the remote's offsets change with the seasons (the name then shown
/// is the familiar one; zones sharing its rules give the same times).
const LIKELY_ZONES: [&str; 8] = [
    "Europe/Zurich",
    "Europe/London",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Australia/Sydney",
    "Pacific/Auckland",
];

/// The zone for `ls` times given `(mtime, offset)` observations:
/// - this machine's zone when it has exactly those offsets at those instants;
/// - when the observations show two offsets (daylight saving time), the first zone of the
///   time zone database that has them all (`LIKELY_ZONES` first);
/// - else the first observed fixed offset (one season seen: the remote may or may not shift
///   in the other; `remote_timezone` settles it).
pub fn choose_zone(found: &[(i64, Offset)], system: &TimeZone) -> TimeZone {
    let Some(&(_, first)) = found.first() else {
        return TimeZone::UTC;
    };
    let fits = |zone: &TimeZone| {
        found.iter().all(|&(t, off)| {
            jiff::Timestamp::from_second(t).is_ok_and(|ts| zone.to_offset(ts) == off)
        })
    };
    if system.iana_name().is_some() && fits(system) {
        return system.clone();
    }
    if found.iter().any(|&(_, off)| off != first) {
        let db = jiff::tz::db();
        let names = LIKELY_ZONES
            .iter()
            .map(|n| n.to_string())
            .chain(db.available().map(|n| n.as_str().to_string()));
        for name in names {
            if let Ok(zone) = db.get(&name) {
                if fits(&zone) {
                    return zone;
                }
            }
        }
    }
    TimeZone::fixed(first)
}

/// One `ls` entry → `DirEntry`; the name is decoded but not otherwise checked.
pub fn entry_to_dir_entry(e: &LsEntry, tz: &TimeZone, ids: &IdMap) -> RemoteResult<DirEntry> {
    let bad = |what: &str| RemoteError::Protocol(format!("ls entry {:?}: bad {what}", e.name));
    let kind = kind_from_char(&e.kind);
    let perm = parse_permissions(&e.permissions).ok_or_else(|| bad("permissions"))?;
    let size = e.size.trim().parse::<u64>().map_err(|_| bad("size"))?;
    let mtime = civil_to_epoch(&e.last_modified, tz).ok_or_else(|| bad("lastModified"))?;
    let uid = ids.user(&e.user).ok_or_else(|| bad("user"))?;
    let gid = ids.group(&e.group).ok_or_else(|| bad("group"))?;
    Ok(DirEntry {
        name: decode_c_escapes(&e.name),
        stat: Stat {
            kind,
            perm,
            uid,
            gid,
            size,
            mtime: epoch(mtime),
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        },
        link_target: match kind {
            FileKind::Symlink => e.link_target.as_deref().map(decode_c_escapes),
            _ => None,
        },
    })
}

/// `ops/stat` output → `Stat`.
pub fn stat_output_to_stat(s: &StatOutput) -> Stat {
    Stat {
        kind: kind_from_mode(s.mode),
        perm: s.mode & 0o7777,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        mtime: epoch(s.mtime),
        atime: Some(epoch(s.atime)),
        ctime: Some(epoch(s.ctime)),
        ino: Some(s.ino),
        nlink: Some(u32::try_from(s.nlink).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::v2::wire::Output;

    /// Recorded real answers (copied from `shared/firecrest/v2-samples`).
    fn sample(name: &str) -> Option<serde_json::Value> {
        let text = match name {
            "ls_basic" => include_str!("../../../tests/fixtures/v2/ls_basic.json"),
            "ls_numeric_uid" => include_str!("../../../tests/fixtures/v2/ls_numeric_uid.json"),
            "locale_C__ls_unicode_file" => {
                include_str!("../../../tests/fixtures/v2/locale_C__ls_unicode_file.json")
            }
            "stat_file_known_mtime" => {
                include_str!("../../../tests/fixtures/v2/stat_file_known_mtime.json")
            }
            _ => return None,
        };
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(v["response_body"].clone())
    }

    #[test]
    fn permissions_parse_with_special_bits() {
        assert_eq!(parse_permissions("rwxr-xr-x"), Some(0o755));
        assert_eq!(parse_permissions("rw-r--r--"), Some(0o644));
        assert_eq!(parse_permissions("rwsr-sr-t"), Some(0o7755));
        assert_eq!(parse_permissions("rwSr-Sr-T"), Some(0o7644));
        assert_eq!(parse_permissions("rwxrwxrwx+"), Some(0o777));
        assert_eq!(parse_permissions("---------."), Some(0));
        assert_eq!(parse_permissions("rwx"), None);
        assert_eq!(parse_permissions("rwxrwxrwq"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_from_mode(33188), FileKind::File);
        assert_eq!(kind_from_mode(0o40755), FileKind::Dir);
        assert_eq!(kind_from_mode(0o120777), FileKind::Symlink);
        assert_eq!(kind_from_mode(0o20644), FileKind::Other);
        assert_eq!(kind_from_char("l"), FileKind::Symlink);
        assert_eq!(kind_from_char("p"), FileKind::Other);
    }

    #[test]
    fn octal_escapes_decode_only_when_they_make_utf8() {
        assert_eq!(
            decode_c_escapes(r"unicod\303\251 \342\230\203 \321\204\320\260\320\271\320\273.txt"),
            "unicodé ☃ файл.txt"
        );
        assert_eq!(decode_c_escapes(r"back\slash"), r"back\slash");
        assert_eq!(decode_c_escapes(r"a\101b"), r"a\101b");
        // A lone continuation byte is not UTF-8: kept literally.
        assert_eq!(decode_c_escapes(r"x\251"), r"x\251");
        assert_eq!(decode_c_escapes(r"end\30"), r"end\30");
        assert_eq!(decode_c_escapes("plain"), "plain");
    }

    #[test]
    fn civil_times_and_offsets() {
        let utc = TimeZone::UTC;
        assert_eq!(
            civil_to_epoch("2024-01-02T03:04:05", &utc),
            Some(1704164645)
        );
        let plus2 = TimeZone::fixed(Offset::from_seconds(7200).unwrap());
        assert_eq!(
            civil_to_epoch("2024-01-02T05:04:05", &plus2),
            Some(1704164645)
        );
        assert_eq!(
            offset_from_pair("2024-01-02T05:04:05", 1704164645),
            Some(Offset::from_seconds(7200).unwrap())
        );
        assert_eq!(
            offset_from_pair("2024-01-02T03:04:06", 1704164645),
            Some(Offset::UTC)
        );
        assert_eq!(
            offset_from_pair("2024-01-01T22:34:05", 1704164645),
            Some(Offset::from_seconds(-16200).unwrap())
        );
        assert_eq!(offset_from_pair("garbage", 0), None);
        // Half-hour zones exist (+05:30); seven minutes off the grid is no zone.
        assert_eq!(
            offset_from_pair("2024-01-02T08:34:05", 1704164645),
            Some(Offset::from_seconds(19800).unwrap())
        );
        assert_eq!(offset_from_pair("2024-01-02T03:11:05", 1704164645), None);
    }

    #[test]
    fn zone_choice_prefers_a_matching_system_zone() {
        let plus1 = Offset::from_seconds(3600).unwrap();
        let fixed = choose_zone(&[(1704164645, plus1)], &TimeZone::UTC);
        assert_eq!(fixed, TimeZone::fixed(plus1));
        assert_eq!(choose_zone(&[], &TimeZone::UTC), TimeZone::UTC);
        let Ok(zurich) = TimeZone::get("Europe/Zurich") else {
            return;
        };
        // Winter file at +01:00 matches Zurich: keep the zone (summer files get +02:00).
        let z = choose_zone(&[(1704164645, plus1)], &zurich);
        assert_eq!(z.iana_name(), Some("Europe/Zurich"));
        // +01:00 in July does not match Zurich (+02:00): fixed offset.
        let z = choose_zone(&[(1719835200, plus1)], &zurich);
        assert_eq!(z, TimeZone::fixed(plus1));
    }

    #[test]
    fn two_seasons_seen_pick_a_zone_with_their_daylight_saving_time() {
        if TimeZone::get("Europe/Zurich").is_err() {
            return; // no tzdata on this machine: nothing to check
        }
        let plus1 = Offset::from_seconds(3600).unwrap();
        let plus2 = Offset::from_seconds(7200).unwrap();
        // 2024-01-02 (+01:00) and 2024-07-01 (+02:00), seen from a UTC machine.
        let z = choose_zone(&[(1704164645, plus1), (1719835200, plus2)], &TimeZone::UTC);
        assert_eq!(z.iana_name(), Some("Europe/Zurich"));
        // Southern hemisphere: +11:00 in January, +10:00 in July.
        let plus10 = Offset::from_seconds(36000).unwrap();
        let plus11 = Offset::from_seconds(39600).unwrap();
        let z = choose_zone(
            &[(1704164645, plus11), (1719835200, plus10)],
            &TimeZone::UTC,
        );
        assert_eq!(z.iana_name(), Some("Australia/Sydney"));
        // Offsets no zone has at those instants: the first one, fixed.
        let odd = Offset::from_seconds(-3 * 3600 - 900).unwrap();
        let z = choose_zone(&[(1704164645, plus1), (1719835200, odd)], &TimeZone::UTC);
        assert_eq!(z, TimeZone::fixed(plus1));
    }

    #[test]
    fn probes_cover_winter_and_summer() {
        let c = [
            "2024-04-02T10:00:00",
            "2024-05-02T10:00:00",
            "2023-12-24T10:00:00",
            "2024-07-14T10:00:00",
            "2024-01-01T10:00:00",
        ];
        assert_eq!(pick_probes(&c), vec![0, 2, 3]);
        assert_eq!(pick_probes(&c[2..]), vec![0, 1]);
        assert_eq!(pick_probes(&["garbage", "2024-08-01T00:00:00"]), vec![0, 1]);
        assert!(pick_probes(&[]).is_empty());
    }

    #[test]
    fn iana_zone_through_system_tzdb() {
        let Ok(zurich) = TimeZone::get("Europe/Zurich") else {
            return; // no tzdata on this machine: nothing to check
        };
        // Winter: +01:00; summer: +02:00.
        assert_eq!(
            civil_to_epoch("2024-01-02T04:04:05", &zurich),
            Some(1704164645)
        );
        assert_eq!(
            civil_to_epoch("2024-07-01T14:00:00", &zurich),
            Some(1719835200)
        );
    }

    #[test]
    fn ls_samples_parse() {
        let body = sample("ls_basic").unwrap();
        let out: Output<Vec<LsEntry>> = serde_json::from_value(body).unwrap();
        let mut ids = IdMap::new();
        ids.users.insert("fireuser".into(), 1001);
        ids.groups.insert("fireuser".into(), 1001);
        let entries: Vec<DirEntry> = out
            .output
            .iter()
            .map(|e| entry_to_dir_entry(e, &TimeZone::UTC, &ids).unwrap())
            .collect();
        let alphabet = entries.iter().find(|e| e.name == "alphabet.txt").unwrap();
        assert_eq!(alphabet.stat.kind, FileKind::File);
        assert_eq!(alphabet.stat.perm, 0o644);
        assert_eq!(alphabet.stat.size, 36);
        assert_eq!(alphabet.stat.uid, 1001);
        // stat_file_known_mtime: the same file's mtime is 1704164645.
        assert_eq!(alphabet.stat.mtime, epoch(1704164645));
        let link = entries.iter().find(|e| e.name == "broken_link").unwrap();
        assert_eq!(link.stat.kind, FileKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("does_not_exist"));
        assert_eq!(link.stat.size, 14);
        let dir = entries
            .iter()
            .find(|e| e.name == "dir with spaces")
            .unwrap();
        assert_eq!(dir.stat.kind, FileKind::Dir);
        assert!(entries.iter().any(|e| e.name == "double\"quote.txt"));
    }

    #[test]
    fn numeric_and_locale_c_samples_parse() {
        let body = sample("ls_numeric_uid").unwrap();
        let out: Output<Vec<LsEntry>> = serde_json::from_value(body).unwrap();
        for e in &out.output {
            let d = entry_to_dir_entry(e, &TimeZone::UTC, &IdMap::default()).unwrap();
            assert!(d.stat.uid > 0 || e.user == "0");
        }
        let body = sample("locale_C__ls_unicode_file").unwrap();
        let mut ids = IdMap::default();
        ids.users.insert("fireuser".into(), 1001);
        ids.groups.insert("fireuser".into(), 1001);
        let out: Output<Vec<LsEntry>> = serde_json::from_value(body).unwrap();
        let d = entry_to_dir_entry(&out.output[0], &TimeZone::UTC, &ids).unwrap();
        assert_eq!(d.name, "/home/fireuser/data/unicodé ☃ файл.txt");
    }

    #[test]
    fn stat_sample_parses() {
        let body = sample("stat_file_known_mtime").unwrap();
        let out: Output<StatOutput> = serde_json::from_value(body).unwrap();
        let s = stat_output_to_stat(&out.output);
        assert_eq!(s.kind, FileKind::File);
        assert_eq!(s.perm, 0o644);
        assert_eq!(s.mtime, epoch(1704164645));
        assert_eq!(s.nlink, Some(1));
    }
}
