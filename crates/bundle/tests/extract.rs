//! Hostile archives against the validator and the extractor: the link-chain escape, a link planted
//! where extraction walks, and a bounded property-based fuzz of both (random trees of files, links
//! and odd names; random corruption of valid archives). After every extraction nothing exists
//! beside the destination and no link in it resolves outside it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use voltrun_bundle::{BundleError, extract, inspect};
use voltrun_bundle::{
    Unprivileged, extract_at, extract_under_at, hand_to_root, open_destination, unprivileged,
};

/// A directory of its own for one case: `<tmp>/voltrun-bundle-<pid>-<n>/dest`, whose parent must
/// stay empty apart from `dest`.
struct Scratch {
    outer: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outer = std::env::temp_dir().join(format!("voltrun-bundle-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&outer);
        std::fs::create_dir_all(outer.join("dest")).unwrap();
        Self { outer }
    }

    fn dest(&self) -> PathBuf {
        self.outer.join("dest")
    }

    /// Everything beside `dest` in the outer directory (must be nothing).
    fn escaped(&self) -> Vec<String> {
        std::fs::read_dir(&self.outer)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "dest")
            .collect()
    }

    /// Links in `dest` whose resolution exists and lies outside it.
    fn links_out(&self) -> Vec<PathBuf> {
        let root = self.dest().canonicalize().unwrap();
        let mut out = Vec::new();
        let mut stack = vec![self.dest()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    if let Ok(resolved) = path.canonicalize()
                        && !resolved.starts_with(&root)
                    {
                        out.push(path);
                    }
                } else if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.outer);
    }
}

#[derive(Debug, Clone)]
enum Kind {
    File,
    Dir,
    Link(String),
}

fn zip_of(entries: &[(String, Kind)]) -> Vec<u8> {
    try_zip_of(entries).unwrap()
}

/// The archive, or `None` where the zip writer itself refuses the entries (a repeated name).
fn try_zip_of(entries: &[(String, Kind)]) -> Option<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, kind) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        match kind {
            Kind::File => {
                writer
                    .start_file(name.as_str(), options.unix_permissions(0o644))
                    .ok()?;
                writer.write_all(b"x").ok()?;
            }
            Kind::Dir => writer.add_directory(name.as_str(), options).ok()?,
            Kind::Link(target) => writer
                .add_symlink(name.as_str(), target.as_str(), options)
                .ok()?,
        }
    }
    Some(writer.finish().ok()?.into_inner())
}

#[test]
fn a_chain_of_links_that_each_look_inside_is_refused_before_anything_is_written() {
    // Each link's target is inside the bundle as text; on disk each climbs one level.
    let entries = vec![
        ("a/l1".to_string(), Kind::Link("..".into())),
        ("a/l1/l2".to_string(), Kind::Link("..".into())),
        ("a/l1/l2/l3".to_string(), Kind::Link("..".into())),
        ("a/l1/l2/l3/pwned".to_string(), Kind::File),
    ];
    let bytes = zip_of(&entries);
    assert!(matches!(
        inspect(&bytes),
        Err(BundleError::BelowNonDirectory { .. })
    ));
    let scratch = Scratch::new();
    assert!(extract(&bytes, &scratch.dest()).is_err());
    assert!(scratch.escaped().is_empty());
    assert_eq!(std::fs::read_dir(scratch.dest()).unwrap().count(), 0);
}

#[test]
fn a_link_whose_target_leaves_through_another_link_is_refused() {
    // `x -> a/up/..` stays inside as text; through `a/up -> ..` it resolves above the root.
    let bytes = zip_of(&[
        ("a/up".into(), Kind::Link("..".into())),
        ("x".into(), Kind::Link("a/up/..".into())),
    ]);
    assert!(matches!(inspect(&bytes), Err(BundleError::LinkEscapes(p)) if p == "x"));
}

#[test]
fn extraction_never_walks_through_a_link_even_one_it_did_not_make() {
    // A link planted where the extractor walks (what a validator miss or a race would leave): the
    // descriptor walk refuses it (ELOOP/ENOTDIR) instead of writing where it points.
    let scratch = Scratch::new();
    let outside = scratch.outer.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, scratch.dest().join("a")).unwrap();
    let bytes = zip_of(&[("a/pwned".into(), Kind::File)]);
    let err = extract(&bytes, &scratch.dest()).unwrap_err();
    let BundleError::Write { source, .. } = err else {
        panic!("expected a write error, got {err:?}")
    };
    // ELOOP (40) from O_NOFOLLOW on a link, or ENOTDIR (20) from O_DIRECTORY.
    assert!(matches!(source.raw_os_error(), Some(40 | 20)), "{source}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_well_formed_bundle_extracts_with_fixed_modes_and_inside_links() {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    writer
        .start_file("bin/tool", options.unix_permissions(0o4777))
        .unwrap();
    writer.write_all(b"#!/bin/sh\n").unwrap();
    writer
        .start_file("lib/a.py", options.unix_permissions(0o600))
        .unwrap();
    writer.write_all(b"A = 1\n").unwrap();
    writer
        .add_symlink("node_modules/.bin/tool", "../../bin/tool", options)
        .unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    let scratch = Scratch::new();
    let manifest = extract(&bytes, &scratch.dest()).unwrap();
    assert_eq!(
        manifest.files().collect::<Vec<_>>(),
        ["bin/tool", "lib/a.py"]
    );
    let mode = |p: &str| {
        std::fs::metadata(scratch.dest().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    // No setuid bit survives; unreadable files become readable for the sandbox uid.
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("lib/a.py"), 0o644);
    assert_eq!(mode("node_modules/.bin"), 0o755);
    assert_eq!(
        std::fs::read_to_string(scratch.dest().join("node_modules/.bin/tool")).unwrap(),
        "#!/bin/sh\n"
    );
}

#[test]
fn duplicates_and_entries_below_files_are_refused() {
    let dup = zip_of(&[("a".into(), Kind::File), ("./a".into(), Kind::File)]);
    assert!(matches!(inspect(&dup), Err(BundleError::Duplicate(_))));
    let below = zip_of(&[("a".into(), Kind::File), ("a/b".into(), Kind::File)]);
    assert!(matches!(
        inspect(&below),
        Err(BundleError::BelowNonDirectory { .. })
    ));
}

/// Path segments an attacker would try, including the ones the validator must refuse.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("l".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        "[a-z]{1,3}",
    ]
}

fn path(max: usize) -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(segment(), 1..max)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

fn entry() -> impl Strategy<Value = (String, Kind)> {
    (
        path(5),
        prop_oneof![
            3 => Just(Kind::File),
            1 => Just(Kind::Dir),
            3 => path(6).prop_map(Kind::Link),
        ],
    )
}

fn check_extraction(bytes: &[u8]) -> Result<(), TestCaseError> {
    if inspect(bytes).is_err() {
        return Ok(());
    }
    let scratch = Scratch::new();
    let _ = extract(bytes, &scratch.dest());
    prop_assert!(
        scratch.escaped().is_empty(),
        "wrote beside dest: {:?}",
        scratch.escaped()
    );
    prop_assert!(
        scratch.links_out().is_empty(),
        "links out: {:?}",
        scratch.links_out()
    );
    Ok(())
}

/// Extracts `upper` and then `lower` under it, as two layers are merged; whatever either holds,
/// nothing is written beside the destination.
fn check_merge(upper: &[u8], lower: &[u8]) -> Result<(), TestCaseError> {
    let scratch = Scratch::new();
    let root = open_destination(&scratch.dest()).unwrap();
    let _ = extract_at(upper, std::os::fd::AsFd::as_fd(&root));
    let _ = extract_under_at(lower, std::os::fd::AsFd::as_fd(&root));
    prop_assert!(
        scratch.escaped().is_empty(),
        "wrote beside dest: {:?}",
        scratch.escaped()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn merged_random_trees_never_escape(
        upper in prop::collection::vec(entry(), 1..8),
        lower in prop::collection::vec(entry(), 1..8),
    ) {
        if let (Some(upper), Some(lower)) = (try_zip_of(&upper), try_zip_of(&lower)) {
            check_merge(&upper, &lower)?;
        }
    }

    #[test]
    fn random_trees_never_escape(entries in prop::collection::vec(entry(), 1..8)) {
        if let Some(bytes) = try_zip_of(&entries) {
            check_extraction(&bytes)?;
        }
    }

    #[test]
    fn corrupted_archives_are_refused_or_stay_inside(
        entries in prop::collection::vec(entry(), 1..5),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let Some(mut bytes) = try_zip_of(&entries) else { return Ok(()) };
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        check_extraction(&bytes)?;
    }
}

#[test]
fn extracting_into_a_link_is_refused() {
    let scratch = Scratch::new();
    let elsewhere = scratch.outer.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = scratch.outer.join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let bytes = zip_of(&[("f".into(), Kind::File)]);
    assert!(extract(&bytes, Path::new(&link)).is_err());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// The extractor's second wall: run as an unprivileged user on a thread of its own, given only a
/// descriptor of its directory, it unpacks there, but a write anywhere else (what a bug in the walk
/// would amount to) is refused by the kernel, and the rest of the process keeps its credentials.
#[test]
fn the_unprivileged_extractor_writes_only_where_it_is_given() {
    if rustix::process::geteuid().as_raw() != 0 {
        voltrun_test_support::skip(
            "the_unprivileged_extractor_writes_only_where_it_is_given",
            "needs root to change a thread's uid",
        );
        return;
    }
    let scratch = Scratch::new();
    let user = Unprivileged {
        uid: 3_999_999,
        gid: 3_999_999,
    };
    std::os::unix::fs::chown(scratch.dest(), Some(user.uid), Some(user.gid)).unwrap();
    // Both opened by root: the thread resolves no path itself.
    let outer = open_destination(&scratch.outer).unwrap();
    let dest = open_destination(&scratch.dest()).unwrap();
    let bytes = zip_of(&[("app/main.py".into(), Kind::File)]);
    use std::os::fd::AsFd;
    let (extracted, planted, capabilities) = unprivileged(user, || {
        let extracted = extract_at(&bytes, dest.as_fd());
        let planted = rustix::fs::openat(
            &outer,
            "planted",
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE,
            rustix::fs::Mode::from_raw_mode(0o644),
        );
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let capabilities = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim()
            .to_string();
        (extracted, planted.map(drop), capabilities)
    })
    .unwrap();
    extracted.unwrap();
    assert_eq!(planted, Err(rustix::io::Errno::ACCESS));
    assert_eq!(capabilities, "0000000000000000");
    assert!(scratch.escaped().is_empty(), "{:?}", scratch.escaped());
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(scratch.dest().join("app/main.py")).unwrap();
    assert_eq!((written.uid(), written.gid()), (user.uid, user.gid));
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "only that thread changed"
    );

    // Handed to root: every entry, the directory itself included, and no link followed.
    let chown = |path: &str| {
        std::os::unix::fs::lchown(scratch.dest().join(path), Some(user.uid), Some(user.gid))
            .unwrap()
    };
    std::os::unix::fs::symlink("/etc/hostname", scratch.dest().join("app/link")).unwrap();
    chown("app/link");
    hand_to_root(dest.as_fd(), user).unwrap();
    for path in ["", "app", "app/main.py", "app/link"] {
        let meta = std::fs::symlink_metadata(scratch.dest().join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path:?}");
    }
    assert_eq!(std::fs::metadata("/etc/hostname").unwrap().uid(), 0);
    // An entry the extractor did not write is refused, not adopted.
    for path in ["", "app", "app/main.py", "app/link"] {
        chown(path);
    }
    std::fs::write(scratch.dest().join("app/planted-by-root"), "x").unwrap();
    let refused = hand_to_root(dest.as_fd(), user).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not written by the unprivileged extractor"),
        "{refused}"
    );
}

/// An archive of `(path, contents)` files and `(path, target)` links.
fn layer(files: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    for (path, contents) in files {
        writer.start_file(*path, options).unwrap();
        writer.write_all(contents.as_bytes()).unwrap();
    }
    for (path, target) in links {
        writer.add_symlink(*path, *target, options).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Layers merge as Lambda merges them at `/opt`: extracted last first, each entry a later layer
/// already placed (the same file, or a file or link where the earlier one has a directory) hides the
/// earlier layer's; directories merge. Extracting the earlier layer without the merge refuses the
/// clash instead.
#[test]
fn a_later_layer_hides_what_an_earlier_one_has_in_the_same_place() {
    let earlier = layer(
        &[
            ("python/shared.py", "earlier"),
            ("python/only_earlier.py", "earlier"),
            ("python/pkg/inner.py", "earlier"),
            ("python/tool/x.py", "earlier"),
        ],
        &[
            ("python/link", "only_earlier.py"),
            ("python/taken", "shared.py"),
        ],
    );
    let later = layer(
        &[
            ("python/shared.py", "later"),
            ("python/only_later.py", "later"),
            ("python/pkg/other.py", "later"),
            (
                "python/tool",
                "a file where the earlier layer has a directory",
            ),
            ("python/taken", "a file where the earlier layer has a link"),
        ],
        &[],
    );
    let scratch = Scratch::new();
    let root = open_destination(&scratch.dest()).unwrap();
    extract_at(&later, std::os::fd::AsFd::as_fd(&root)).unwrap();
    extract_under_at(&earlier, std::os::fd::AsFd::as_fd(&root)).unwrap();
    let read = |p: &str| std::fs::read_to_string(scratch.dest().join(p)).unwrap();
    assert_eq!(read("python/shared.py"), "later");
    assert_eq!(read("python/only_earlier.py"), "earlier");
    assert_eq!(read("python/only_later.py"), "later");
    assert_eq!(read("python/pkg/inner.py"), "earlier");
    assert_eq!(read("python/pkg/other.py"), "later");
    assert_eq!(
        read("python/tool"),
        "a file where the earlier layer has a directory"
    );
    assert_eq!(
        read("python/taken"),
        "a file where the earlier layer has a link"
    );
    assert_eq!(
        read("python/link"),
        "earlier",
        "the earlier layer's own link is made"
    );
    assert!(scratch.escaped().is_empty());

    let again = Scratch::new();
    let root = open_destination(&again.dest()).unwrap();
    extract_at(&later, std::os::fd::AsFd::as_fd(&root)).unwrap();
    let err = extract_at(&earlier, std::os::fd::AsFd::as_fd(&root)).unwrap_err();
    assert!(matches!(err, BundleError::Write { .. }), "{err:?}");
}
