//! The part of a node's filesystem that Talos's clients read through `MachineService.List`:
//! the etcd data directory, which CACPPT lists on every control-plane node before it
//! bootstraps etcd (a `member` directory on any node means the cluster was bootstrapped).
//!
//! On Talos, etcd's service creates `/var/lib/etcd` (0700, owned by the etcd user) on a control
//! plane before it waits for a bootstrap or a join; `member/` with its `snap/` and `wal/` appears
//! once the node's etcd has data. The listing follows machined's `List` over Go's
//! `filepath.Walk`: the root first, then depth-first in lexical order, with its recursion depth,
//! type filter and errors.

use std::collections::BTreeMap;

use talos_api::machine::{FileInfo, ListRequest, list_request};

/// What decides a node's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub control_plane: bool,
    /// The node's etcd holds data (it bootstrapped the cluster, or joined it).
    pub etcd_member: bool,
    /// Modification time of what the listing shows (Unix seconds).
    pub modified: i64,
}

/// Go's `os.ModeDir`.
const MODE_DIR: u32 = 1 << 31;
/// The etcd user and group on Talos.
const ETCD_ID: u32 = 60;

#[derive(Debug, Clone, Copy)]
struct Entry {
    dir: bool,
    perm: u32,
    size: i64,
    owner: u32,
}

const fn dir(perm: u32, owner: u32) -> Entry {
    Entry {
        dir: true,
        perm,
        size: 4096,
        owner,
    }
}

const fn file(perm: u32, size: i64, owner: u32) -> Entry {
    Entry {
        dir: false,
        perm,
        size,
        owner,
    }
}

/// The node's tree, by path.
fn tree(facts: Facts) -> BTreeMap<&'static str, Entry> {
    let mut t = BTreeMap::from([
        ("/", dir(0o755, 0)),
        ("/var", dir(0o755, 0)),
        ("/var/lib", dir(0o755, 0)),
    ]);
    if facts.control_plane {
        t.insert("/var/lib/etcd", dir(0o700, ETCD_ID));
    }
    if facts.control_plane && facts.etcd_member {
        t.extend([
            ("/var/lib/etcd/member", dir(0o700, ETCD_ID)),
            ("/var/lib/etcd/member/snap", dir(0o700, ETCD_ID)),
            ("/var/lib/etcd/member/snap/db", file(0o600, 20_480, ETCD_ID)),
            ("/var/lib/etcd/member/wal", dir(0o700, ETCD_ID)),
            (
                "/var/lib/etcd/member/wal/0000000000000000-0000000000000000.wal",
                // etcd preallocates each WAL segment to 64 MB.
                file(0o600, 64_000_000, ETCD_ID),
            ),
        ]);
    }
    t
}

/// The directory `path` is in.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

/// machined's root: absolute, without a trailing separator, `/` when empty.
fn normalized(root: &str) -> String {
    let root = if root.starts_with('/') {
        root.to_owned()
    } else {
        format!("/{root}")
    };
    match root.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// `path` relative to `root`, as Go's `filepath.Rel` gives it.
fn relative(root: &str, path: &str) -> String {
    if root == path {
        return ".".to_owned();
    }
    let prefix = if root == "/" {
        "/".to_owned()
    } else {
        format!("{root}/")
    };
    path.strip_prefix(&prefix).unwrap_or(path).to_owned()
}

fn wanted(types: &[i32], entry: &Entry) -> bool {
    types.is_empty()
        || types
            .iter()
            .any(|t| match list_request::Type::try_from(*t) {
                Ok(list_request::Type::Regular) => !entry.dir,
                Ok(list_request::Type::Directory) => entry.dir,
                Ok(list_request::Type::Symlink) | Err(_) => false,
            })
}

/// A listing's root that is not on the node (machined's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lstat {0}: no such file or directory")]
pub(crate) struct NoSuchFile(String);

/// The listing `request` gets from a node with `facts`, or the error machined returns.
pub(crate) fn list(facts: Facts, request: &ListRequest) -> Result<Vec<FileInfo>, NoSuchFile> {
    let tree = tree(facts);
    let root = normalized(&request.root);
    let Some(top) = tree.get(root.as_str()) else {
        return Err(NoSuchFile(root));
    };
    // Recursion off lists the root's entries; on, with depth 0, everything.
    let max_depth: i64 = match (request.recurse, request.recursion_depth) {
        (false, _) => 0,
        (true, 0) => -1,
        (true, d) => i64::from(d),
    };
    let separators = |p: &str| p.matches('/').count() as i64;
    let info = |path: &str, entry: &Entry| FileInfo {
        name: path.to_owned(),
        relative_name: if path == root && !entry.dir {
            path.rsplit('/').next().unwrap_or(path).to_owned()
        } else {
            relative(&root, path)
        },
        size: entry.size,
        mode: entry.perm | if entry.dir { MODE_DIR } else { 0 },
        modified: facts.modified,
        is_dir: entry.dir,
        uid: entry.owner,
        gid: entry.owner,
        ..FileInfo::default()
    };
    let mut out = Vec::new();
    // Depth first, each directory's entries in lexical order (a stack, last pushed first).
    let mut stack = vec![(root.clone(), *top)];
    while let Some((path, entry)) = stack.pop() {
        if !wanted(&request.types, &entry) {
            // Go's walk returns before its depth check: a filtered-out directory is descended.
        } else {
            out.push(info(&path, &entry));
            let at_max = path != root
                && max_depth >= 0
                && separators(&path) - separators(&root) >= max_depth;
            if entry.dir && at_max {
                continue;
            }
        }
        if entry.dir {
            let children = tree
                .iter()
                .filter(|(p, _)| **p != "/" && parent(p) == path)
                .map(|(p, e)| ((*p).to_owned(), *e));
            let mut children: Vec<_> = children.collect();
            children.reverse();
            stack.extend(children);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(control_plane: bool, etcd_member: bool) -> Facts {
        Facts {
            control_plane,
            etcd_member,
            modified: 1,
        }
    }

    fn names(result: Result<Vec<FileInfo>, NoSuchFile>) -> Vec<String> {
        result
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.relative_name)
            .collect()
    }

    fn request(root: &str, recurse: bool, depth: i32) -> ListRequest {
        ListRequest {
            root: root.into(),
            recurse,
            recursion_depth: depth,
            ..ListRequest::default()
        }
    }

    #[test]
    fn the_member_directory_exists_only_once_the_nodes_etcd_has_data() {
        let member = request("/var/lib/etcd/member", false, 0);
        assert_eq!(
            list(facts(true, false), &member).map_err(|e| e.to_string()),
            Err("lstat /var/lib/etcd/member: no such file or directory".to_owned())
        );
        assert_eq!(
            names(list(facts(true, true), &member)),
            [".", "snap", "wal"]
        );
        // A worker has no etcd directory at all.
        let etcd = request("/var/lib/etcd/", false, 0);
        assert!(list(facts(false, false), &etcd).is_err());
        assert_eq!(names(list(facts(true, false), &etcd)), ["."]);
    }

    #[test]
    fn recursion_depth_and_type_filters_follow_gos_walk() {
        let f = facts(true, true);
        assert_eq!(
            names(list(f, &request("var/lib/etcd", true, 0))),
            [
                ".",
                "member",
                "member/snap",
                "member/snap/db",
                "member/wal",
                "member/wal/0000000000000000-0000000000000000.wal"
            ]
        );
        assert_eq!(
            names(list(f, &request("/var/lib/etcd", true, 2))),
            [".", "member", "member/snap", "member/wal"]
        );
        // The root of the filesystem counts one level less (a separator count, as in Go).
        assert_eq!(
            names(list(f, &request("", true, 1))),
            [".", "var", "var/lib"]
        );
        let files_only = ListRequest {
            types: vec![list_request::Type::Regular as i32],
            ..request("/var/lib/etcd/member", false, 0)
        };
        // A directory filtered out is still descended, whatever the depth.
        assert_eq!(
            names(list(f, &files_only)),
            ["snap/db", "wal/0000000000000000-0000000000000000.wal"]
        );
        let db = list(f, &request("/var/lib/etcd/member/snap/db", false, 0)).unwrap_or_default();
        assert_eq!((db[0].relative_name.as_str(), db[0].is_dir), ("db", false));
        let member = &list(f, &request("/var/lib/etcd/member", false, 0)).unwrap_or_default()[0];
        assert_eq!(member.mode, MODE_DIR | 0o700);
        assert_eq!(
            (member.uid, member.name.as_str()),
            (60, "/var/lib/etcd/member")
        );
    }
}
