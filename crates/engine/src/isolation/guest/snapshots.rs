//! Snapshots of initialised guests, for the Firecracker backend's cold starts: one per function
//! configuration (code, runtime, memory, environment, guest images), taken from a VM of its own
//! once the runtime has asked for its first invocation, and restored into a fresh VMM for each
//! later cold start instead of booting and initialising again.
//!
//! This module owns the snapshot directory: its layout, which snapshots exist, which are being
//! made, which configurations could not be snapshotted, and how many are kept. A snapshot is a
//! directory `<key>/` holding Firecracker's state and memory files and a copy of the scratch disk;
//! it is made under a staging name and renamed, so a directory with the key's name is always
//! complete. The directory is emptied at start: a snapshot is only good for the Firecracker binary,
//! kernel and images that made it, and a server may have been upgraded in between.
//!
//! A snapshot's memory file holds the runtime's memory, environment variables (secrets included)
//! among it: the directory is private to the server's user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use voltrun_agent::protocol::StartSpec;
use voltrun_vm::{Snapshot, VmSpec};

/// The environment variable that differs between instances of one configuration (it names the
/// instance); it is left out of the key, and a restored instance keeps the snapshot's.
const PER_INSTANCE_ENV: &str = "AWS_LAMBDA_LOG_STREAM_NAME";

/// Why a configuration has no snapshot to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A template VM is booting, initialising or being snapshotted.
    Making,
    /// Making one failed; not tried again for this configuration (a new deployment is a new key).
    Failed(String),
}

/// Template VMs that may be making snapshots at once: each is a whole extra VM of its function's
/// memory, beside the instance that asked for it.
const MAKING_AT_ONCE: usize = 1;

#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// At most this many snapshots are kept; the least recently used goes first.
    max: usize,
    states: Mutex<HashMap<String, State>>,
    /// The code image each published snapshot's guest mounted: a restored guest must find that
    /// very image, so its snapshots go when the code cache removes it (see [`Self::forget_code`]).
    codes: Mutex<HashMap<String, Vec<PathBuf>>>,
}

impl SnapshotStore {
    /// Takes `dir` (created private, and emptied of what an earlier server left).
    pub fn open(dir: &Path, max: usize) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max,
            states: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
        })
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of one configuration: everything a restored guest would otherwise differ in.
    pub fn key(vm: &VmSpec, start: &StartSpec) -> String {
        let mut hash = Sha256::new();
        let mut field = |value: &[u8]| {
            hash.update((value.len() as u64).to_be_bytes());
            hash.update(value);
        };
        field(format!("{vm:?}").as_bytes());
        for arg in &start.command {
            field(arg.as_bytes());
        }
        let mut env: Vec<&(String, String)> = start
            .env
            .iter()
            .filter(|(k, _)| k != PER_INSTANCE_ENV)
            .collect();
        env.sort();
        for (k, v) in env {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(start.cwd.as_bytes());
        field(&start.runtime_api_port.to_be_bytes());
        field(&start.max_processes.to_be_bytes());
        hex::encode(hash.finalize())
    }

    /// Where the snapshot of `key` lives once made.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The complete snapshot of `key`, if there is one; marks it used.
    pub fn ready(&self, key: &str) -> Option<Snapshot> {
        let dir = self.path(key);
        let snapshot = Snapshot::in_dir(&dir)?;
        // The directory's mtime is the last use, for eviction.
        if let Ok(file) = std::fs::File::open(&dir) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(snapshot)
    }

    /// Claims the making of `key`'s snapshot: `false` when one exists, is being made, or failed, or
    /// when [`MAKING_AT_ONCE`] others are being made (a later cold start asks again).
    pub fn claim(&self, key: &str) -> bool {
        if self.path(key).exists() {
            return false;
        }
        let mut states = self.states();
        let making = states.values().filter(|s| **s == State::Making).count();
        if states.contains_key(key) || making >= MAKING_AT_ONCE {
            return false;
        }
        states.insert(key.to_string(), State::Making);
        true
    }

    /// A staging directory for a snapshot being made for `key`.
    pub fn staging(&self, key: &str) -> std::io::Result<PathBuf> {
        let dir = self
            .dir
            .join(format!(".{key}.{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Publishes a snapshot made in `staging` as `key`'s, its guest having mounted the code (and
    /// layers) `images`, then keeps the newest [`Self::max`].
    pub fn publish(&self, key: &str, staging: &Path, images: Vec<PathBuf>) -> std::io::Result<()> {
        let published = std::fs::rename(staging, self.path(key));
        self.states().remove(key);
        if published.is_err() {
            let _ = std::fs::remove_dir_all(staging);
        }
        published?;
        if !images.is_empty() {
            self.codes().insert(key.to_string(), images);
        }
        self.evict();
        Ok(())
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<PathBuf>>> {
        self.codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the snapshots whose guests mounted the code or layers image `image`, which is gone: an image
    /// made again at that path (the same code deployed again) is a different file system under a
    /// guest that cached the old one. Their configurations may be snapshotted again. Returns how
    /// many went.
    pub fn forget_code(&self, image: &Path) -> usize {
        let keys: Vec<String> = {
            let mut codes = self.codes();
            let keys: Vec<String> = codes
                .iter()
                .filter(|(_, images)| images.iter().any(|i| i.as_path() == image))
                .map(|(key, _)| key.clone())
                .collect();
            for key in &keys {
                codes.remove(key);
            }
            keys
        };
        for key in &keys {
            // A restore under way keeps its open files.
            let _ = std::fs::remove_dir_all(self.path(key));
        }
        keys.len()
    }

    /// Records that `key` could not be snapshotted (and removes what was staged).
    pub fn failed(&self, key: &str, staging: Option<&Path>, why: String) {
        if let Some(staging) = staging {
            let _ = std::fs::remove_dir_all(staging);
        }
        self.states().insert(key.to_string(), State::Failed(why));
    }

    /// Removes `key`'s snapshot (it could not be restored) and does not make it again.
    pub fn discard(&self, key: &str, why: String) {
        let _ = std::fs::remove_dir_all(self.path(key));
        self.states().insert(key.to_string(), State::Failed(why));
    }

    /// Why `key` has no snapshot, when making one failed.
    pub fn failure(&self, key: &str) -> Option<String> {
        match self.states().get(key) {
            Some(State::Failed(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// How many snapshots are ready.
    pub fn count(&self) -> usize {
        self.published().len()
    }

    fn published(&self) -> Vec<(SystemTime, PathBuf)> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect()
    }

    fn evict(&self) {
        let mut snapshots = self.published();
        if snapshots.len() <= self.max {
            return;
        }
        snapshots.sort();
        let excess = snapshots.len() - self.max;
        for (_, dir) in snapshots.into_iter().take(excess) {
            // A restore under way keeps its open files; the next cold start boots.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmSpec {
        VmSpec {
            vcpu_count: 1,
            mem_mib: 128,
            kernel: "/images/vmlinux".into(),
            boot_args: "console=ttyS0".into(),
            initrd: None,
            rootfs: "/images/python.ext4".into(),
            scratch_mib: 64,
            code: Some("/code/abc.ext4".into()),
            layers: None,
        }
    }

    fn start(stream: &str, secret: &str) -> StartSpec {
        StartSpec {
            command: vec!["python3".into(), "/var/runtime/bootstrap.py".into()],
            env: vec![
                (PER_INSTANCE_ENV.into(), stream.into()),
                ("SECRET".into(), secret.into()),
            ],
            cwd: "/var/task".into(),
            runtime_api_port: 9001,
            max_processes: 64,
        }
    }

    #[test]
    fn the_key_ignores_the_instance_name_but_nothing_else() {
        let key = SnapshotStore::key(&vm(), &start("a", "s"));
        assert_eq!(key, SnapshotStore::key(&vm(), &start("b", "s")));
        assert_ne!(key, SnapshotStore::key(&vm(), &start("a", "t")));
        let mut bigger = vm();
        bigger.mem_mib = 256;
        assert_ne!(key, SnapshotStore::key(&bigger, &start("a", "s")));
        let mut other_code = vm();
        other_code.code = Some("/code/def.ext4".into());
        assert_ne!(key, SnapshotStore::key(&other_code, &start("a", "s")));
    }

    fn fake_snapshot(store: &SnapshotStore, key: &str) {
        let staging = store.staging(key).unwrap();
        for file in ["snapshot.state", "snapshot.mem"] {
            std::fs::write(staging.join(file), b"x").unwrap();
        }
        store
            .publish(key, &staging, vec!["/code/abc.ext4".into()])
            .unwrap();
    }

    #[test]
    fn claims_publish_failures_and_eviction() {
        let dir = std::env::temp_dir().join(format!("vs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("left-over")).unwrap();
        let store = SnapshotStore::open(&dir, 2).unwrap();
        assert_eq!(store.count(), 0, "the directory was not emptied");

        assert!(store.ready("k1").is_none());
        assert!(store.claim("k1"));
        assert!(!store.claim("k1"), "claimed twice");
        assert!(!store.claim("k9"), "two templates at once");
        fake_snapshot(&store, "k1");
        assert!(store.ready("k1").is_some());
        assert!(!store.claim("k1"), "made again");

        assert!(store.claim("k2"));
        store.failed("k2", None, "no boot".into());
        assert!(!store.claim("k2"), "retried after a failure");
        assert_eq!(store.failure("k2").as_deref(), Some("no boot"));

        // Three published, two kept: the least recently used goes.
        fake_snapshot(&store, "k3");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(store.ready("k1").is_some()); // k1 is now the most recently used
        std::thread::sleep(std::time::Duration::from_millis(20));
        fake_snapshot(&store, "k4");
        assert_eq!(store.count(), 2);
        assert!(
            store.ready("k3").is_none(),
            "the least recently used was kept"
        );
        assert!(store.ready("k1").is_some() && store.ready("k4").is_some());

        store.discard("k4", "restore failed".into());
        assert!(store.ready("k4").is_none() && !store.claim("k4"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshots_go_with_the_code_image_their_guests_mounted() {
        let dir = std::env::temp_dir().join(format!("vs-{}", uuid::Uuid::new_v4().simple()));
        let store = SnapshotStore::open(&dir, 4).unwrap();
        fake_snapshot(&store, "abc-1");
        fake_snapshot(&store, "abc-2");
        let staging = store.staging("def").unwrap();
        for file in ["snapshot.state", "snapshot.mem"] {
            std::fs::write(staging.join(file), b"x").unwrap();
        }
        store
            .publish(
                "def",
                &staging,
                vec!["/code/def.ext4".into(), "/code/opt-1.ext4".into()],
            )
            .unwrap();

        assert_eq!(store.forget_code(Path::new("/code/abc.ext4")), 2);
        assert!(store.ready("abc-1").is_none() && store.ready("abc-2").is_none());
        assert!(
            store.ready("def").is_some(),
            "another image's snapshot went too"
        );
        assert!(
            store.claim("abc-1"),
            "its configuration cannot be snapshotted again"
        );
        assert_eq!(store.forget_code(Path::new("/code/abc.ext4")), 0);
        assert_eq!(
            store.forget_code(Path::new("/code/opt-1.ext4")),
            1,
            "a snapshot goes with the layers image its guest mounted too"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
