//! Path rules of the served tree: the real server's lexical checks (absolute, inside a
//! configured filesystem after `..` normalisation) plus the confinement the real server does
//! not need but we do: no symlink may lead a read or a write outside ROOT.

use std::path::{Path, PathBuf};

/// Python's `posixpath.normpath` for absolute paths: drops `.`, empty components and resolves
/// `..` lexically (never above `/`); no trailing slash except for `/` itself.
pub(crate) fn normpath(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether normalised `path` lies in `root` (both absolute, normalised).
pub(crate) fn lexically_inside(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Resolves `p` like the kernel would when following every symlink (`realpath -m`): component
/// by component, expanding links in place (so a `..` after a link climbs from the link's
/// target, as the kernel does), through dangling links and missing components (kept as
/// written). Bounded against link loops.
pub(crate) fn resolve(p: &Path) -> PathBuf {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut out = PathBuf::from("/");
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_all = |pending: &mut VecDeque<std::ffi::OsString>, path: &Path, front: bool| {
        let comps: Vec<std::ffi::OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        if front {
            for c in comps.into_iter().rev() {
                pending.push_front(c);
            }
        } else {
            pending.extend(comps);
        }
    };
    push_all(&mut pending, p, false);
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => {
                links += 1;
                match std::fs::read_link(&candidate) {
                    Ok(target) => {
                        if target.is_absolute() {
                            out = PathBuf::from("/");
                        }
                        push_all(&mut pending, &target, true);
                    }
                    Err(_) => out = candidate,
                }
            }
            _ => out = candidate,
        }
    }
    out
}

/// Where the final component of `path` lands: followed (`follow`) or taken as it is (its
/// parent directories are always followed by the kernel).
pub(crate) fn landing(path: &str, follow: bool) -> PathBuf {
    let p = Path::new(path);
    if follow {
        return resolve(p);
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => resolve(parent).join(name),
        _ => p.to_path_buf(),
    }
}

/// The first symlink under `dir` (recursively when `recursive`, else only its direct
/// entries) whose target resolves outside `root`; `None` when the tree is clean. Walks at most
/// `limit` entries and reports the walk as unsafe beyond that.
pub(crate) fn escaping_link(
    dir: &Path,
    root: &Path,
    recursive: bool,
    limit: usize,
) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    // Dereferencing walks follow in-tree links to directories too; remember where we were.
    let mut visited = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        if !visited.insert(resolve(&d)) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            seen += 1;
            if seen > limit {
                return Some(d);
            }
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_symlink() {
                let r = resolve(&path);
                if !r.starts_with(root) {
                    return Some(r);
                }
                if recursive && r.is_dir() {
                    stack.push(r);
                }
            } else if ft.is_dir() && recursive {
                stack.push(path);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normpath_like_python() {
        assert_eq!(normpath("/home/../etc"), "/etc");
        assert_eq!(normpath("/a/./b//c/"), "/a/b/c");
        assert_eq!(normpath("/../.."), "/");
        assert_eq!(normpath("/"), "/");
    }

    #[test]
    fn inside_rules() {
        assert!(lexically_inside("/srv/root", "/srv/root"));
        assert!(lexically_inside("/srv/root/x", "/srv/root"));
        assert!(!lexically_inside("/srv/rootx", "/srv/root"));
        assert!(!lexically_inside("/srv", "/srv/root"));
        assert!(lexically_inside("/anything", "/"));
    }

    #[test]
    fn resolve_follows_dangling_links_and_finds_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("d/out")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink("d", root.join("in")).unwrap();
        assert_eq!(
            resolve(&root.join("dangling")),
            PathBuf::from("/nonexistent/x")
        );
        assert_eq!(resolve(&root.join("in/new")), root.join("d/new"));
        assert_eq!(
            landing(&root.join("d/out").to_string_lossy(), false),
            root.join("d/out")
        );
        assert_eq!(
            landing(&root.join("d/out").to_string_lossy(), true),
            PathBuf::from("/etc")
        );
        std::fs::create_dir(root.join("clean")).unwrap();
        std::os::unix::fs::symlink("../d", root.join("clean/ok")).unwrap();
        assert_eq!(escaping_link(&root.join("clean"), &root, false, 1000), None);
        assert_eq!(
            escaping_link(&root.join("d"), &root, false, 1000),
            Some(PathBuf::from("/etc"))
        );
        assert_eq!(
            escaping_link(&root.join("clean"), &root, true, 1000),
            Some(PathBuf::from("/etc")),
            "a recursive walk follows the in-tree link to d and finds d/out"
        );
        std::fs::remove_file(root.join("clean/ok")).unwrap();
        std::fs::create_dir(root.join("clean/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("clean/sub/deep")).unwrap();
        assert_eq!(escaping_link(&root.join("clean"), &root, false, 1000), None);
        assert_eq!(
            escaping_link(&root.join("clean"), &root, true, 1000),
            Some(PathBuf::from("/etc"))
        );
    }
}
