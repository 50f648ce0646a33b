//! The configuration file: `~/.config/f7tfs/config.toml` with one `[profile.NAME]` table per
//! remote. Precedence is CLI > environment > profile: callers fill only what the command line
//! and the environment left unset. Which file: `--config FILE` (or `-o config=FILE`), else
//! `$F7TFS_CONFIG`, else `$XDG_CONFIG_HOME/f7tfs/config.toml` or `~/.config/f7tfs/config.toml`,
//! else `/etc/f7tfs/config.toml` (system-wide mounts from fstab run as root).
//!
//! ```toml
//! [profile.daint]
//! url = "https://api.cscs.ch/hpc/firecrest/v2"
//! token_url = "https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token"
//! client_id = "my-client-id"
//! client_secret_file = "~/.config/f7tfs/daint.secret"
//! remote = "daint:/capstor/scratch/cscs/alice"
//! mountpoint = "~/scratch"
//! attr_ttl = 5            # any mount option (`-o` name) as a key
//! options = "allow_other" # or a list; `-o` on the command line wins
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `[profile.NAME]` table. Unset fields stay `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// The profile's name (the table's key).
    pub name: String,
    /// The file it came from (for messages).
    pub file: PathBuf,
    pub url: Option<String>,
    pub system: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub token_url: Option<String>,
    pub token_command: Option<String>,
    pub token_file: Option<PathBuf>,
    pub api_version: Option<String>,
    /// `SYSTEM:/path` to mount.
    pub remote: Option<String>,
    pub mountpoint: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// Mount options as `-o` items (`key=value` or a bare flag), in file order.
    pub options: Vec<String>,
}

/// The configuration file to read: the explicit one, else the first default that exists.
/// `None` when no file is named and none of the defaults exists.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(expand_home(p));
    }
    if let Some(p) = std::env::var_os("F7TFS_CONFIG").filter(|p| !p.is_empty()) {
        return Some(expand_home(Path::new(&p)));
    }
    let user = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join("f7tfs/config.toml")),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config/f7tfs/config.toml")),
    };
    [user, Some(PathBuf::from("/etc/f7tfs/config.toml"))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
}

/// `~/x` → `$HOME/x`; anything else unchanged.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// Reads profile `name` from `file`. `Ok(None)` when the file has no such profile.
pub fn load(file: &Path, name: &str) -> Result<Option<Profile>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the config file {}: {e}", file.display()))?;
    parse(&text, file, name)
}

/// The names of all profiles in `file` (for "unknown profile" messages).
pub fn names(file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    doc.get("profile")
        .and_then(|p| p.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// Parses the text of a config file and extracts profile `name`.
pub fn parse(text: &str, file: &Path, name: &str) -> Result<Option<Profile>, String> {
    let at = || format!("config file {}", file.display());
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", at(), e.message()))?;
    for key in doc.keys() {
        if key != "profile" {
            return Err(format!(
                "{}: unknown top-level key {key:?} (settings go in [profile.NAME] tables)",
                at()
            ));
        }
    }
    let Some(profiles) = doc.get("profile") else {
        return Ok(None);
    };
    let profiles = profiles
        .as_table()
        .ok_or_else(|| format!("{}: `profile` must be a table ([profile.NAME])", at()))?;
    let Some(table) = profiles.get(name) else {
        return Ok(None);
    };
    let table = table
        .as_table()
        .ok_or_else(|| format!("{}: profile {name:?} must be a table", at()))?;
    let mut p = Profile {
        name: name.to_string(),
        file: file.to_path_buf(),
        ..Profile::default()
    };
    let fields: BTreeMap<&str, &toml::Value> = table.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (key, value) in fields {
        let text = || -> Result<String, String> {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{}: [profile.{name}] {key} must be a string", at()))
        };
        let path = || text().map(|t| expand_home(Path::new(&t)));
        match key {
            "url" => p.url = Some(text()?),
            "system" => p.system = Some(text()?),
            "client_id" => p.client_id = Some(text()?),
            "client_secret_file" => p.client_secret_file = Some(path()?),
            "client_secret" => {
                return Err(format!(
                    "{}: [profile.{name}] client_secret is not read from the config file; put \
                     the secret in a file of its own (chmod 600) and name it with \
                     client_secret_file",
                    at()
                ))
            }
            "token_url" => p.token_url = Some(text()?),
            "token_command" => p.token_command = Some(text()?),
            "token_file" => p.token_file = Some(path()?),
            "api_version" => p.api_version = Some(text()?),
            "remote" => p.remote = Some(text()?),
            "mountpoint" => p.mountpoint = Some(path()?),
            "log_file" => p.log_file = Some(path()?),
            "options" => match value {
                toml::Value::String(s) => p.options.extend(
                    s.split(',')
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(str::to_string),
                ),
                toml::Value::Array(items) => {
                    for item in items {
                        let s = item.as_str().ok_or_else(|| {
                            format!("{}: [profile.{name}] options must be strings", at())
                        })?;
                        p.options.push(s.to_string());
                    }
                }
                _ => {
                    return Err(format!(
                        "{}: [profile.{name}] options must be a string or a list of strings",
                        at()
                    ))
                }
            },
            option => match value {
                toml::Value::Boolean(true) => p.options.push(option.to_string()),
                // Options that default to on are switched off explicitly.
                toml::Value::Boolean(false) if option == "batch_reads" => {
                    p.options.push(format!("{option}=false"))
                }
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => p.options.push(format!("{option}={s}")),
                toml::Value::Integer(n) => p.options.push(format!("{option}={n}")),
                toml::Value::Float(f) => p.options.push(format!("{option}={f}")),
                _ => {
                    return Err(format!(
                        "{}: [profile.{name}] {option} must be a string, number or boolean",
                        at()
                    ))
                }
            },
        }
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[profile.daint]
url = "https://api.cscs.ch/hpc/firecrest/v2"
token_url = "https://auth.example/token"
client_id = "abc"
client_secret_file = "/etc/secret"
remote = "daint:/capstor/scratch/cscs/alice"
mountpoint = "/home/alice/scratch"
attr_ttl = 5
writeback_delay = 1.5
allow_other = true
ro = false
batch_reads = false
options = "rate_limit=600, max_requests=4"

[profile.other]
system = "eiger"
options = ["dir_ttl=2"]
"#;

    #[test]
    fn a_profile_with_options() {
        let p = parse(FILE, Path::new("c.toml"), "daint").unwrap().unwrap();
        assert_eq!(
            p.url.as_deref(),
            Some("https://api.cscs.ch/hpc/firecrest/v2")
        );
        assert_eq!(p.client_secret_file, Some(PathBuf::from("/etc/secret")));
        assert_eq!(
            p.remote.as_deref(),
            Some("daint:/capstor/scratch/cscs/alice")
        );
        assert_eq!(p.mountpoint, Some(PathBuf::from("/home/alice/scratch")));
        // Keys in name order, then `options` in place of its key.
        assert_eq!(
            p.options,
            [
                "allow_other",
                "attr_ttl=5",
                "batch_reads=false",
                "rate_limit=600",
                "max_requests=4",
                "writeback_delay=1.5"
            ]
        );
        let o = parse(FILE, Path::new("c.toml"), "other").unwrap().unwrap();
        assert_eq!(o.system.as_deref(), Some("eiger"));
        assert_eq!(o.options, ["dir_ttl=2"]);
        assert_eq!(parse(FILE, Path::new("c.toml"), "nope").unwrap(), None);
    }

    #[test]
    fn mistakes_name_the_file_and_the_fix() {
        let e = parse(
            "[profile.x]\nclient_secret = \"s\"\n",
            Path::new("c.toml"),
            "x",
        )
        .unwrap_err();
        assert!(
            e.contains("client_secret_file") && e.contains("c.toml"),
            "{e}"
        );
        let e = parse("url = 1\n", Path::new("c.toml"), "x").unwrap_err();
        assert!(e.contains("[profile.NAME]"), "{e}");
        let e = parse("[profile.x]\nurl = 3\n", Path::new("c.toml"), "x").unwrap_err();
        assert!(e.contains("url must be a string"), "{e}");
        let e = parse("[profile.x\n", Path::new("c.toml"), "x").unwrap_err();
        assert!(e.contains("c.toml"), "{e}");
    }

    #[test]
    fn home_is_expanded() {
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(expand_home(Path::new("~/x")), Path::new(&home).join("x"));
        }
        assert_eq!(expand_home(Path::new("/a/~")), Path::new("/a/~"));
    }
}
