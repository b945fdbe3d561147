//! The warm pool: idle instances per (function, version), and how many of each version must stay
//! warm (`min_instances`). One value behind one lock, so a decision that reads both (pool a
//! pre-warmed instance only while its version's floor stands; reap past the keep-alive but never
//! below the floor) sees them together. Plain data and synchronous methods, tested here with
//! stand-in instances.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A function at one version.
pub(crate) type PoolKey = (Uuid, i64);

/// What the pool needs to know of an instance.
pub(crate) trait Pooled {
    fn last_used(&self) -> Instant;
    /// The user whose function it runs.
    fn user(&self) -> Uuid;
    fn runtime(&self) -> &str;
}

#[derive(Debug)]
pub(crate) struct Pool<T> {
    idle: HashMap<PoolKey, Vec<T>>,
    /// Per (function, version): how many idle instances must stay warm. At most one version of a
    /// function has one.
    floors: HashMap<PoolKey, usize>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self {
            idle: HashMap::new(),
            floors: HashMap::new(),
        }
    }
}

impl<T: Pooled> Pool<T> {
    /// The idle instance of exactly `key`'s version used last (the warmest), and every idle
    /// instance of the function's other versions, which a new version drains.
    pub fn take_warm(&mut self, key: PoolKey) -> (Option<T>, Vec<T>) {
        let stale = self.take_other_versions(key);
        // Concurrent invocations put their instances back in whatever order they end: look for
        // the most recently used rather than trusting the list's order.
        let warm = self.idle.get_mut(&key).and_then(|list| {
            let warmest = list
                .iter()
                .enumerate()
                .max_by_key(|(_, i)| i.last_used())
                .map(|(pos, _)| pos)?;
            Some(list.remove(warmest))
        });
        self.idle.retain(|_, list| !list.is_empty());
        (warm, stale)
    }

    /// Pools an instance that has just served an invocation.
    pub fn put(&mut self, key: PoolKey, instance: T) {
        self.idle.entry(key).or_default().push(instance);
    }

    /// Makes `wanted` instances of `key`'s version the function's floor (no floor when 0),
    /// replacing any other version's. Returns how many idle instances that version has, and the
    /// idle instances of the function's other versions, which go at once: each holds memory, a uid
    /// and its user's share.
    pub fn set_floor(&mut self, key: PoolKey, wanted: usize) -> (usize, Vec<T>) {
        self.floors.retain(|(f, _), _| *f != key.0);
        if wanted > 0 {
            self.floors.insert(key, wanted);
        }
        let stale = self.take_other_versions(key);
        (self.idle.get(&key).map_or(0, Vec::len), stale)
    }

    /// Pools a pre-warmed instance while its version's floor stands; gives it back (to be
    /// stopped) when an update or a deletion replaced the floor while it started.
    pub fn put_prewarmed(&mut self, key: PoolKey, instance: T) -> Option<T> {
        if self.floors.contains_key(&key) {
            self.put(key, instance);
            None
        } else {
            Some(instance)
        }
    }

    /// How many idle instances `key`'s version must keep.
    pub fn floor(&self, key: PoolKey) -> usize {
        self.floors.get(&key).copied().unwrap_or(0)
    }

    /// Forgets a deleted function: its floor, and its idle instances, which are returned.
    pub fn release(&mut self, function: Uuid) -> Vec<T> {
        self.floors.retain(|(f, _), _| *f != function);
        self.take_where_key(|(f, _)| *f == function)
    }

    /// The idle instances unused for `keep_alive` at `now`, except the most recently used ones of
    /// each version that its floor keeps warm.
    pub fn take_expired(&mut self, keep_alive: Duration, now: Instant) -> Vec<T> {
        let mut taken = Vec::new();
        for (key, list) in &mut self.idle {
            // Oldest first, as `put` leaves them: the warmest stays last, where `take_warm` looks.
            list.sort_by_key(|i| i.last_used());
            let floor = self.floors.get(key).copied().unwrap_or(0);
            let kept_warm = list.len().saturating_sub(floor);
            let mut keep = Vec::new();
            for (n, instance) in list.drain(..).enumerate() {
                if n >= kept_warm
                    || now.saturating_duration_since(instance.last_used()) < keep_alive
                {
                    keep.push(instance);
                } else {
                    taken.push(instance);
                }
            }
            *list = keep;
        }
        self.idle.retain(|_, list| !list.is_empty());
        taken
    }

    /// The idle instance unused the longest among those `pick` accepts, out of the pool: the one
    /// to evict when something must make way.
    pub fn take_oldest(&mut self, pick: impl Fn(&T) -> bool) -> Option<T> {
        let (key, pos) = self
            .idle
            .iter()
            .flat_map(|(key, list)| {
                list.iter()
                    .enumerate()
                    .filter(|(_, i)| pick(i))
                    .map(move |(pos, i)| (*key, pos, i.last_used()))
            })
            .min_by_key(|(_, _, used)| *used)
            .map(|(key, pos, _)| (key, pos))?;
        let list = self.idle.get_mut(&key)?;
        let instance = list.remove(pos);
        if list.is_empty() {
            self.idle.remove(&key);
        }
        Some(instance)
    }

    /// Every idle instance, out of the pool (server shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.take_where_key(|_| true)
    }

    /// How many idle instances run `runtime`.
    pub fn idle_of(&self, runtime: &str) -> usize {
        self.idle
            .values()
            .flatten()
            .filter(|i| i.runtime() == runtime)
            .count()
    }

    fn take_other_versions(&mut self, (function, version): PoolKey) -> Vec<T> {
        self.take_where_key(|(f, v)| *f == function && *v != version)
    }

    fn take_where_key(&mut self, pick: impl Fn(&PoolKey) -> bool) -> Vec<T> {
        let keys: Vec<PoolKey> = self.idle.keys().filter(|k| pick(k)).copied().collect();
        keys.iter()
            .filter_map(|k| self.idle.remove(k))
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Stub {
        name: &'static str,
        used: Instant,
        user: Uuid,
    }

    impl Pooled for Stub {
        fn last_used(&self) -> Instant {
            self.used
        }
        fn user(&self) -> Uuid {
            self.user
        }
        fn runtime(&self) -> &str {
            "python3.11"
        }
    }

    /// Instances named by when they were last used: `s` seconds after `t0`.
    struct Clock {
        t0: Instant,
        user: Uuid,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                user: Uuid::now_v7(),
            }
        }
        fn at(&self, name: &'static str, s: u64) -> Stub {
            Stub {
                name,
                used: self.t0 + Duration::from_secs(s),
                user: self.user,
            }
        }
    }

    fn names(instances: &[Stub]) -> Vec<&'static str> {
        let mut names: Vec<_> = instances.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_warm_start_takes_the_warmest_of_its_version_and_drains_the_others() {
        let (clock, f) = (Clock::new(), Uuid::now_v7());
        let mut pool = Pool::default();
        pool.put((f, 1), clock.at("v1", 0));
        pool.put((f, 2), clock.at("v2-old", 1));
        pool.put((f, 2), clock.at("v2-new", 2));
        pool.put((Uuid::now_v7(), 1), clock.at("other-function", 0));

        let (warm, stale) = pool.take_warm((f, 2));
        assert_eq!(warm.map(|i| i.name), Some("v2-new"));
        assert_eq!(names(&stale), ["v1"]);
        assert_eq!(pool.idle_of("python3.11"), 2);

        let (warm, stale) = pool.take_warm((f, 3));
        assert!(warm.is_none(), "no instance of a version never started");
        assert_eq!(names(&stale), ["v2-old"]);
        assert_eq!(pool.idle_of("python3.11"), 1, "other functions keep theirs");
    }

    #[test]
    fn the_keep_alive_reaps_all_but_the_floors_most_recently_used() {
        let (clock, f) = (Clock::new(), Uuid::now_v7());
        let mut pool = Pool::default();
        for (name, s) in [("a", 0), ("b", 10), ("c", 20), ("d", 95)] {
            pool.put((f, 1), clock.at(name, s));
        }
        assert_eq!(pool.set_floor((f, 1), 1), (4, vec![]));
        let now = clock.t0 + Duration::from_secs(100);

        let expired = pool.take_expired(Duration::from_secs(30), now);
        // The floor of one keeps d (the most recently used); the others are past the keep-alive.
        assert_eq!(names(&expired), ["a", "b", "c"]);
        assert_eq!(pool.take_warm((f, 1)).0.map(|i| i.name), Some("d"));

        pool.put((f, 1), clock.at("e", 0));
        pool.put((f, 1), clock.at("g", 1));
        assert_eq!(
            names(&pool.take_expired(Duration::from_secs(30), now)),
            ["e"],
            "the floor keeps the most recently used even past its keep-alive"
        );
    }

    #[test]
    fn a_warm_start_takes_the_most_recently_used_whatever_order_they_came_back_in() {
        let (clock, f) = (Clock::new(), Uuid::now_v7());
        let mut pool = Pool::default();
        pool.put((f, 1), clock.at("warmest", 20));
        pool.put((f, 1), clock.at("older", 10));
        assert_eq!(pool.take_warm((f, 1)).0.map(|i| i.name), Some("warmest"));

        // Eviction within one version's list takes its oldest, wherever it sits.
        pool.put((f, 1), clock.at("oldest", 5));
        assert_eq!(pool.take_oldest(|_| true).map(|i| i.name), Some("oldest"));
        assert_eq!(pool.take_oldest(|_| true).map(|i| i.name), Some("older"));
    }

    #[test]
    fn reaping_keeps_the_warmest_where_a_warm_start_takes_it() {
        let (clock, f) = (Clock::new(), Uuid::now_v7());
        let mut pool = Pool::default();
        pool.put((f, 1), clock.at("older", 10));
        pool.put((f, 1), clock.at("warmest", 20));
        let now = clock.t0 + Duration::from_secs(21);
        assert!(pool.take_expired(Duration::from_secs(30), now).is_empty());
        assert_eq!(pool.take_warm((f, 1)).0.map(|i| i.name), Some("warmest"));
    }

    #[test]
    fn a_prewarmed_instance_is_pooled_only_while_its_floor_stands() {
        let (clock, f) = (Clock::new(), Uuid::now_v7());
        let mut pool = Pool::default();
        pool.set_floor((f, 1), 2);
        assert!(pool.put_prewarmed((f, 1), clock.at("v1", 0)).is_none());
        assert_eq!(pool.floor((f, 1)), 2);

        // An update while a second one started: version 2 takes the floor, version 1's idle go.
        let (have, stale) = pool.set_floor((f, 2), 1);
        assert_eq!((have, names(&stale)), (0, vec!["v1"]));
        assert_eq!(pool.floor((f, 1)), 0);
        let late = pool.put_prewarmed((f, 1), clock.at("late-v1", 1));
        assert_eq!(late.map(|i| i.name), Some("late-v1"));

        // A deletion takes the floor and the instances.
        assert!(pool.put_prewarmed((f, 2), clock.at("v2", 2)).is_none());
        assert_eq!(names(&pool.release(f)), ["v2"]);
        assert_eq!(pool.floor((f, 2)), 0);
        assert!(pool.put_prewarmed((f, 2), clock.at("after", 3)).is_some());
    }

    #[test]
    fn eviction_takes_the_longest_unused_among_those_picked() {
        let clock = Clock::new();
        let someone_else = Uuid::now_v7();
        let mut pool = Pool::default();
        pool.put((Uuid::now_v7(), 1), clock.at("a", 5));
        pool.put((Uuid::now_v7(), 1), clock.at("b", 1));
        let mut theirs = clock.at("theirs", 0);
        theirs.user = someone_else;
        pool.put((Uuid::now_v7(), 1), theirs);

        let mine = |i: &Stub| i.user == clock.user;
        assert_eq!(pool.take_oldest(mine).map(|i| i.name), Some("b"));
        assert_eq!(pool.take_oldest(|_| true).map(|i| i.name), Some("theirs"));
        assert_eq!(pool.take_oldest(mine).map(|i| i.name), Some("a"));
        assert!(pool.take_oldest(|_| true).is_none());
        assert!(pool.drain().is_empty());
    }
}
