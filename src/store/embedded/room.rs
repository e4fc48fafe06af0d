//! The embedded store's room: how much its database holds (redb's pages in
//! use), what it may hold (`store.max_size`, or what its volume has left),
//! and the reserve it keeps for the drain. The reserve is held twice over:
//! it is taken off the capacity, so accepting stops with that much of the
//! volume still free, and a file of the same size (`reserve`) is allocated
//! beside the database, so that another writer filling the volume cannot
//! take the drain's room. When the volume is full anyway, the file is given
//! up for the drain; it is taken again once the volume has room for it.
//!
//! Measured by the writer thread (it holds redb's one write transaction);
//! never removes anything but its own reserve file.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::engine::LocalStore;
use crate::store::records::OwnedEvent;
use crate::store::space::Room;
use crate::store::StoreError;

/// What the drain may need beyond what the store holds when accepting
/// stops. Measured (`engine` test `draining_a_full_store_needs_less_than_
/// half_the_reserve`): emptying a store of 3,000 events of 2 KiB (13.9 MB)
/// in the writer's batches of 256 peaks at 0.16 MiB over what it held,
/// inside a transaction (what it copies is freed only by the commit), and
/// replaying 1,500 dead letters one by one at 0.3 MiB; batches of acks and
/// dead letters all committed without fsync (not what the writer does)
/// peaked at 1.04 MiB. About twice the worst seen.
pub const RESERVE_BYTES: u64 = 2 << 20;

/// The file that holds the reserve on the volume.
const RESERVE_FILE: &str = "reserve";

/// Between measurements at least (and never longer than `MAX_EVERY`): a
/// measurement reads every page of the database once (redb's statistics),
/// so it is spaced at fifty times what the last one took.
const MIN_EVERY: Duration = Duration::from_millis(250);
const MAX_EVERY: Duration = Duration::from_secs(30);

/// How full the database's file must be, as a share of the capacity,
/// before its pages in use are counted (see `RoomMeter::measure`).
pub const COUNT_PAGES_FROM: f64 = 0.5;

/// About what an event takes in the database: redb keeps a body in leaf
/// pages of its own size class and each job, queue entry and dedup key in
/// B-tree leaves that are half full after a split. Measured on 2 KiB
/// events (`engine` tests); an estimate too high only stops accepting a
/// measurement early, which the next measurement corrects.
pub fn estimated_bytes(event: &OwnedEvent) -> u64 {
    let (content, jobs) = event.size();
    2 * content + 1024 + 512 * jobs
}

/// The volume under a directory: bytes an unprivileged writer may still
/// take.
pub fn volume_available(dir: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Bytes a file takes on its volume (a sparse file's holes take none).
fn allocated(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks().saturating_mul(512))
}

pub struct RoomMeter {
    dir: PathBuf,
    database: PathBuf,
    max_size: Option<u64>,
    reserve: PathBuf,
    /// Whether the reserve file is held now.
    holding: bool,
    next_at: Instant,
}

impl RoomMeter {
    /// Takes the reserve file at once if the volume has room for it.
    pub fn new(dir: &Path, database: &Path, max_size: Option<u64>) -> Self {
        let mut meter = Self {
            dir: dir.to_path_buf(),
            database: database.to_path_buf(),
            max_size,
            reserve: dir.join(RESERVE_FILE),
            holding: false,
            next_at: Instant::now(),
        };
        meter.holding = meter.reserve_held();
        meter.keep_reserve();
        meter
    }

    fn reserve_held(&self) -> bool {
        allocated(&self.reserve).is_ok_and(|bytes| bytes >= RESERVE_BYTES)
    }

    /// Whether a measurement is due.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    /// How long until the next measurement is due.
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next_at.saturating_duration_since(now)
    }

    /// Measures the room now and schedules the next measurement.
    ///
    /// The pages in use are counted (redb's statistics, which walk the
    /// whole database inside a write transaction: the writer takes no
    /// accepts meanwhile, half a second for a 1 GiB file) only once the
    /// file itself reaches [`COUNT_PAGES_FROM`] of the capacity. Below
    /// that the file's size stands for what is used: an upper bound, as
    /// its free pages count as used, which errs on the full side only
    /// where the gate is far from its marks.
    pub fn measure(&mut self, store: &LocalStore) -> Result<Room, StoreError> {
        let started = Instant::now();
        let file = allocated(&self.database).unwrap_or(0);
        let room = match self.capacity(file) {
            Ok(capacity) => {
                let near = file as f64 >= COUNT_PAGES_FROM * capacity.max(1) as f64;
                let used = if near { store.used_bytes()? } else { file };
                Ok(Room::single(used, Some(capacity)))
            }
            Err(error) => Err(StoreError::Unavailable(format!(
                "cannot measure the store's volume at {}: {error}",
                self.dir.display()
            ))),
        };
        self.keep_reserve();
        let took = started.elapsed();
        self.next_at = Instant::now() + (took * 50).clamp(MIN_EVERY, MAX_EVERY);
        room
    }

    /// What the database may hold: every byte its `file` already has on
    /// the volume (free pages inside it are reused) and what the volume
    /// has left, at most `max_size`, less the reserve.
    fn capacity(&self, file: u64) -> io::Result<u64> {
        let reachable = file.saturating_add(volume_available(&self.dir)?);
        let bound = self.max_size.map_or(reachable, |max| max.min(reachable));
        Ok(bound.saturating_sub(RESERVE_BYTES))
    }

    /// Takes the reserve file where the volume has room for it and for the
    /// drain's own share; gives it up where the volume has almost nothing
    /// left, so that the drain can go on whoever filled it.
    fn keep_reserve(&mut self) {
        let Ok(available) = volume_available(&self.dir) else {
            return;
        };
        if !self.holding && available >= 2 * RESERVE_BYTES {
            match take_reserve(&self.reserve) {
                Ok(()) => {
                    self.holding = true;
                    tracing::info!(
                        path = %self.reserve.display(),
                        bytes = RESERVE_BYTES,
                        "holding the store's reserve for draining a full store"
                    );
                }
                Err(error) => {
                    let _ = std::fs::remove_file(&self.reserve);
                    tracing::warn!(path = %self.reserve.display(), %error, "cannot hold the store's reserve file");
                }
            }
        } else if self.holding && available < RESERVE_BYTES / 4 {
            self.release_reserve();
        }
    }

    /// After a commit failed: if the volume is short of the reserve's size
    /// (another writer filled it), its file is given up so that the drain
    /// can go on. A failure with room left is not the volume's.
    pub fn after_failed_commit(&mut self) {
        if volume_available(&self.dir).is_ok_and(|available| available < RESERVE_BYTES) {
            self.release_reserve();
        }
    }

    /// Gives the reserve file's room to the database: when a write failed
    /// for want of space, or the volume is nearly full.
    pub fn release_reserve(&mut self) {
        if !self.holding {
            return;
        }
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => {
                self.holding = false;
                tracing::warn!(
                    path = %self.reserve.display(),
                    bytes = RESERVE_BYTES,
                    "the store's volume is full: its reserve file is given up so that deliveries can drain the store"
                );
            }
            Err(error) => {
                tracing::error!(path = %self.reserve.display(), %error, "cannot give up the store's reserve file")
            }
        }
    }

    pub fn holding_reserve(&self) -> bool {
        self.holding
    }
}

/// Allocates the reserve's blocks (not a sparse file: those take no room).
fn take_reserve(path: &Path) -> io::Result<()> {
    let file = File::create(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES) {
        Ok(()) => {}
        // A file system without fallocate: the blocks are written instead.
        Err(rustix::io::Errno::OPNOTSUPP) => {
            use std::io::Write;
            let zeros = vec![0u8; 64 << 10];
            let mut writer = &file;
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                writer.write_all(&zeros)?;
            }
        }
        Err(error) => return Err(error.into()),
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-room-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_reserve_file_takes_its_blocks_and_is_given_up_on_demand() {
        let dir = dir("reserve");
        let store = LocalStore::open(&dir).unwrap();
        let mut meter = RoomMeter::new(&dir, store.path().unwrap(), None);
        assert!(meter.holding_reserve());
        assert!(allocated(&dir.join(RESERVE_FILE)).unwrap() >= RESERVE_BYTES);
        meter.release_reserve();
        assert!(!meter.holding_reserve());
        assert!(!dir.join(RESERVE_FILE).exists());
        // Taken again at the next measurement: this volume has room.
        meter.measure(&store).unwrap();
        assert!(meter.holding_reserve());
    }

    #[test]
    fn max_size_bounds_the_capacity_less_the_reserve() {
        let dir = dir("max-size");
        let store = LocalStore::open(&dir).unwrap();
        let mut meter = RoomMeter::new(&dir, store.path().unwrap(), Some(8 << 20));
        let room = meter.measure(&store).unwrap();
        assert_eq!(room.capacity, Some((8 << 20) - RESERVE_BYTES));
        assert!(room.used > 0 && room.used < 2 << 20, "{room:?}");
        assert!((room.fullest - room.used as f64 / room.capacity.unwrap() as f64).abs() < 1e-9);
    }

    #[test]
    fn pages_are_counted_only_once_the_file_nears_the_capacity() {
        let dir = dir("count-pages");
        let store = LocalStore::open(&dir).unwrap();
        let file = allocated(store.path().unwrap()).unwrap();
        // Far from the capacity, the file's size stands for what is used.
        let mut roomy = RoomMeter::new(&dir, store.path().unwrap(), Some(64 << 20));
        assert_eq!(roomy.measure(&store).unwrap().used, file);
        // Near it, the pages in use are counted: fewer than the file has.
        let capacity = file + RESERVE_BYTES + file / 2;
        let mut tight = RoomMeter::new(&dir, store.path().unwrap(), Some(capacity));
        let room = tight.measure(&store).unwrap();
        assert_eq!(room.used, store.used_bytes().unwrap());
        assert!(room.used < file, "{} pages in use, file {file}", room.used);
    }

    #[test]
    fn measurements_are_spaced_by_what_they_cost() {
        let dir = dir("spacing");
        let store = LocalStore::open(&dir).unwrap();
        let mut meter = RoomMeter::new(&dir, store.path().unwrap(), None);
        let now = Instant::now();
        assert!(meter.due(now));
        meter.measure(&store).unwrap();
        assert!(!meter.due(Instant::now()));
        assert!(meter.due(Instant::now() + MIN_EVERY.max(MAX_EVERY)));
    }
}
