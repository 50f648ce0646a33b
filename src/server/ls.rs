//! Parsers for the output of the commands the real FirecREST runs, reproduced line for line:
//! `ls -l --quoting-style=c` (its regex, `shlex` unquoting, dropped lines, recursive blocks),
//! `stat -c '%f %i %d %h %u %g %s %X %Y %Z'`, `sha256sum`, `id`, and base64 decoding of the
//! `base64` command's output.

use crate::remote::v2::wire::{LsEntry, StatOutput};

/// The `ls` options every listing uses (`--time-style` without shell quotes: no shell here).
pub(crate) const LS_BASE: [&str; 3] =
    ["-l", "--quoting-style=c", "--time-style=+%Y-%m-%dT%H:%M:%S"];

/// The `stat` format of the real server.
pub(crate) const STAT_FORMAT: &str = "%f %i %d %h %u %g %s %X %Y %Z";

/// Parses `ls -l` output like FirecREST's `LsBaseCommand.parse_output`.
pub(crate) fn parse_ls(stdout: &str) -> Vec<LsEntry> {
    let mut out = Vec::new();
    if !starts_with_folder_header(stdout) {
        parse_folder(stdout, "", &mut out);
        return out;
    }
    // Recursive output: blocks introduced by `"folder":` lines.
    let mut root_folder: Option<String> = None;
    let mut prefix = String::new();
    let mut block = String::new();
    let mut started = false;
    for line in stdout.split_inclusive('\n') {
        if let Some(folder) = folder_header(line) {
            if started {
                parse_folder(&block, &prefix, &mut out);
            }
            block.clear();
            started = true;
            let folder = folder.trim_end_matches('/');
            let with_slash = format!("{folder}/");
            let root = root_folder.get_or_insert_with(|| with_slash.clone());
            prefix = with_slash
                .strip_prefix(root.as_str())
                .unwrap_or(&with_slash)
                .to_string();
        } else {
            block.push_str(line);
        }
    }
    if started {
        parse_folder(&block, &prefix, &mut out);
    }
    out
}

fn starts_with_folder_header(stdout: &str) -> bool {
    stdout
        .split_inclusive('\n')
        .next()
        .is_some_and(|l| folder_header(l).is_some())
}

/// `"name":\n` → `name` (raw, escapes kept, as the Python regex does).
fn folder_header(line: &str) -> Option<&str> {
    let line = line.strip_suffix('\n')?;
    let inner = line.strip_prefix('"')?.strip_suffix("\":")?;
    if inner.is_empty() {
        None
    } else {
        Some(inner)
    }
}

fn parse_folder(content: &str, prefix: &str, out: &mut Vec<LsEntry>) {
    for line in content.lines() {
        if let Some(e) = parse_line(line, prefix) {
            out.push(e);
        }
    }
}

/// One line against `^(\S)(\S+)\s+\d+\s+(\S+)\s+(\S+)\s+(\d+)\s+([\d\-T:]+)\s+(.+)$`.
fn parse_line(line: &str, prefix: &str) -> Option<LsEntry> {
    let mut rest = line;
    let mut fields: Vec<&str> = Vec::with_capacity(6);
    for _ in 0..6 {
        rest = rest.trim_start_matches(char::is_whitespace);
        let end = rest.find(char::is_whitespace)?;
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let filename = rest.trim_start_matches(char::is_whitespace);
    if filename.is_empty() {
        return None;
    }
    let mode = fields[0];
    let mut mode_chars = mode.chars();
    let kind = mode_chars.next()?;
    let permissions = mode_chars.as_str();
    if permissions.is_empty()
        || !fields[1].bytes().all(|b| b.is_ascii_digit())
        || !fields[4].bytes().all(|b| b.is_ascii_digit())
        || !fields[5]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'T' || b == b':')
    {
        return None;
    }
    let tokens = shlex_split(filename)?;
    let (name, link_target) = match tokens.len() {
        1 => (tokens[0].clone(), None),
        3 => (tokens[0].clone(), Some(tokens[2].clone())),
        _ => return None,
    };
    Some(LsEntry {
        name: format!("{prefix}{name}"),
        kind: kind.to_string(),
        link_target,
        user: fields[2].to_string(),
        group: fields[3].to_string(),
        permissions: permissions.to_string(),
        last_modified: fields[5].to_string(),
        size: fields[4].to_string(),
    })
}

/// Python `shlex.split` (POSIX mode, no comments): whitespace-separated words; double quotes
/// keep backslash escapes except `\\`, `\"`, `` \` ``, `\$`, `\<newline>`; single quotes are
/// literal. `None` on an unterminated quote (Python raises; the parser then skips the line).
pub(crate) fn shlex_split(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    if n != '\n' {
                        cur.push(n);
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return None,
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('\\' | '"' | '$' | '`')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return None,
                        },
                        Some(ch) => cur.push(ch),
                        None => return None,
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// Parses one `stat -c STAT_FORMAT` line.
pub(crate) fn parse_stat(stdout: &str) -> Option<StatOutput> {
    let f: Vec<&str> = stdout.split_whitespace().collect();
    if f.len() != 10 {
        return None;
    }
    Some(StatOutput {
        mode: u32::from_str_radix(f[0], 16).ok()?,
        ino: f[1].parse().ok()?,
        dev: f[2].parse().ok()?,
        nlink: f[3].parse().ok()?,
        uid: f[4].parse().ok()?,
        gid: f[5].parse().ok()?,
        size: f[6].parse().ok()?,
        atime: f[7].parse().ok()?,
        mtime: f[8].parse().ok()?,
        ctime: f[9].parse().ok()?,
    })
}

/// A user as `id` prints it: `uid=1001(fireuser) gid=1001(fireuser) groups=1001(fireuser),27(sudo)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdOutput {
    pub user: (String, String),
    pub group: (String, String),
    pub groups: Vec<(String, String)>,
}

/// Parses the output of `id`.
pub(crate) fn parse_id(stdout: &str) -> Option<IdOutput> {
    fn id_name(s: &str) -> Option<(String, String)> {
        match s.split_once('(') {
            Some((id, name)) => Some((id.to_string(), name.strip_suffix(')')?.to_string())),
            None => Some((s.to_string(), s.to_string())),
        }
    }
    let mut user = None;
    let mut group = None;
    let mut groups = Vec::new();
    for part in stdout.split_whitespace() {
        if let Some(v) = part.strip_prefix("uid=") {
            user = id_name(v);
        } else if let Some(v) = part.strip_prefix("gid=") {
            group = id_name(v);
        } else if let Some(v) = part.strip_prefix("groups=") {
            for g in v.split(',') {
                groups.push(id_name(g)?);
            }
        }
    }
    Some(IdOutput {
        user: user?,
        group: group?,
        groups,
    })
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` on a bad character.
pub(crate) fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            break;
        }
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = "total 12\n\
lrwxrwxrwx 1 fireuser fireuser   29 2026-12-03T16:31:28 \"abs_link\" -> \"/home/fireuser/data/hello.txt\"\n\
-rw-r--r-- 1 fireuser fireuser   36 2024-01-02T03:04:05 \"alphabet.txt\"\n\
drwxr-xr-x 2 fireuser fireuser 4096 2026-12-03T16:31:28 \"dir with spaces\"\n\
-rw-r--r-- 1 fireuser fireuser    3 2026-12-03T16:31:28 \"double\\\"quote.txt\"\n\
crw-rw-rw- 1 root     root     1, 3 2026-12-03T16:31:28 \"null\"\n\
-rw-r--r--+ 1 fireuser fireuser    8 2026-12-03T16:31:28 \"unicod\\303\\251.txt\"\n";

    #[test]
    fn flat_listing_like_firecrest() {
        let e = parse_ls(FLAT);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "abs_link",
                "alphabet.txt",
                "dir with spaces",
                "double\"quote.txt",
                "unicod\\303\\251.txt"
            ],
            "device line dropped, escapes other than \\\" kept literally"
        );
        assert_eq!(e[0].kind, "l");
        assert_eq!(
            e[0].link_target.as_deref(),
            Some("/home/fireuser/data/hello.txt")
        );
        assert_eq!(e[0].permissions, "rwxrwxrwx");
        assert_eq!(e[0].size, "29");
        assert_eq!(e[1].link_target, None);
        assert_eq!(e[1].last_modified, "2024-01-02T03:04:05");
        assert_eq!(e[2].kind, "d");
        assert_eq!(e[4].permissions, "rw-r--r--+");
    }

    #[test]
    fn recursive_listing_names_are_relative() {
        let out = "\"/home/u/data/subdir\":\ntotal 8\n\
drwxr-xr-x 3 u u 4096 2026-12-03T16:31:28 \"nested\"\n\
-rw-r--r-- 1 u u    4 2026-12-03T16:31:28 \"top.txt\"\n\n\
\"/home/u/data/subdir/nested\":\ntotal 4\n\
-rw-r--r-- 1 u u    5 2026-12-03T16:31:28 \"deep.txt\"\n";
        let names: Vec<String> = parse_ls(out).into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["nested", "top.txt", "nested/deep.txt"]);
    }

    #[test]
    fn shlex_rules() {
        assert_eq!(
            shlex_split("\"a b\" -> \"c\"").unwrap(),
            vec!["a b", "->", "c"]
        );
        assert_eq!(shlex_split("\"x\\\\y\"").unwrap(), vec!["x\\y"]);
        assert_eq!(shlex_split("\"x\\ny\"").unwrap(), vec!["x\\ny"]);
        assert_eq!(shlex_split("'it''s'").unwrap(), vec!["its"]);
        assert!(shlex_split("\"open").is_none());
    }

    #[test]
    fn stat_and_id() {
        let s = parse_stat("81a4 869514 65024 1 1001 1001 18 1796315488 1796315480 1796315470\n")
            .unwrap();
        assert_eq!(s.mode, 33188);
        assert_eq!(s.atime, 1796315488);
        assert_eq!(s.mtime, 1796315480);
        assert_eq!(s.ctime, 1796315470);
        assert!(parse_stat("garbage").is_none());
        let id = parse_id("uid=1001(fireuser) gid=1001(fireuser) groups=1001(fireuser),27(sudo)\n")
            .unwrap();
        assert_eq!(id.user, ("1001".into(), "fireuser".into()));
        assert_eq!(id.groups.len(), 2);
        assert_eq!(id.groups[1], ("27".into(), "sudo".into()));
    }

    #[test]
    fn base64_known_values() {
        assert_eq!(base64_decode(b"SGVsbG8=\n").unwrap(), b"Hello");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"AAEC/w==").unwrap(), vec![0, 1, 2, 255]);
        assert!(base64_decode(b"@@@@").is_none());
    }
}
