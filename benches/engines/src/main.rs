//! The embedded store's job cycle on three embedded stores (and a variant
//! of the third), side by side in one run: redb (what the sidecar uses, a
//! copy-on-write B-tree), fjall (an LSM tree with a write-ahead journal),
//! and `log`: an append-only file
//! that holds each event's record, body included, and each outcome (the
//! durable write an ack waits for: one sequential append and one
//! `fdatasync`), with redb keeping only the indexes (event number to its
//! place in the log, dedup keys, the queue, leases) in commits without
//! fsync, made durable once a second (a crash replays the log's tail into
//! them); and `logsync`, the same log with redb's index commit fsynced on
//! every accept (what taking the records out of redb gives by itself). All
//! get the same records and the same transactions, so the ratio says what
//! changing the engine could give before any of the sidecar's store is
//! rewritten for it.
//!
//! A round, as the sidecar's writer does under load (and as
//! `examples/store_cycle.rs` does on the sidecar's own store):
//! - accept BATCH events in one durable commit: the event with its body
//!   (keyed by its number), its dedup key (a hash of its id, so random), and
//!   its job in the queue (keyed by lane and job number);
//! - lease them in a second commit: the oldest BATCH jobs leave the queue
//!   for the leases;
//! - ack them in a third commit: lease and event removed (dedup keys stay,
//!   as they do until the dedup horizon).
//!
//! Leases and acks are fsynced once a second, the others committed without
//! an fsync (a crash may repeat a delivery, never lose an event). The
//! sidecar fsyncs them only when nothing was fsynced for a second, which
//! under a steady stream of accepts is never: this side is the dearer one,
//! for both engines alike.
//!
//! `BACKLOG` jobs are accepted before the clock starts and sit behind the
//! rounds' own jobs, as the backlog of an unreachable target: larger tables
//! under every commit.
//!
//! From the repository (its own workspace, so the sidecar does not build
//! fjall; data under `target/engines-data` unless `DIR` says otherwise):
//!
//!     cargo run --release --locked --manifest-path benches/engines/Cargo.toml -- [ROUNDS] [REPEATS]
//!
//! with `BATCH` (jobs per commit, 32), `BODY` (bytes, 2048), `BACKLOG` (0),
//! `ENGINES` (`redb,fjall,log,logsync`) and `JOURNAL_MIB` (fjall's journal bound) in
//! the environment.
//!
//! Prints, per engine and repeat: jobs/s, CPU µs per job (all the process's
//! threads, so an engine's background flush and compaction count), bytes
//! written to the disk per job, and the data directory's size at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::ReadableTable;

const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
const DEDUP: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("dedup");
const QUEUE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("queue");
const LEASES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("leases");
/// The log engine's index: event number to (offset, length) in the log.
const PLACES: redb::TableDefinition<u64, (u64, u32)> = redb::TableDefinition::new("places");

/// The meta part of an event record (id, type, webhook, context, targets),
/// about what the sidecar stores beside the body.
const META_BYTES: usize = 160;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: an event id's hash, spread like the sidecar's dedup keys.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn dedup_key(event: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&mix(event).to_be_bytes());
    key[8..].copy_from_slice(&mix(!event).to_be_bytes());
    key
}

fn queue_key(job: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = 1; // the normal lane
    key[1..].copy_from_slice(&job.to_be_bytes());
    key
}

fn record(event: u64, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(META_BYTES + body.len());
    value.extend_from_slice(&event.to_be_bytes());
    value.resize(META_BYTES, b'm');
    value.extend_from_slice(body);
    value
}

/// One engine holding the four tables. Job numbers are event numbers here
/// (one target per event).
trait Engine {
    fn accept(&mut self, events: std::ops::Range<u64>, body: &[u8]);
    /// Moves the oldest `max` jobs from the queue to the leases; their
    /// numbers. The scan starts at `head`, the queue's first key as the
    /// writer knows it in memory: an LSM tree keeps what earlier leases
    /// removed as tombstones, and a scan from the start would read past all
    /// of them (quadratic; the first version of this comparison did).
    /// `durable`: the commit is fsynced.
    fn lease(&mut self, max: usize, head: [u8; 9], durable: bool) -> Vec<u64>;
    fn ack(&mut self, jobs: &[u64], durable: bool);
}

type KeyTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// An event's dedup key and its job's queue entry, in both redb-backed
/// engines.
fn insert_keys(dedup: &mut KeyTable<'_>, queue: &mut KeyTable<'_>, event: u64) {
    dedup
        .insert(dedup_key(event).as_slice(), event.to_be_bytes().as_slice())
        .expect("insert");
    queue
        .insert(queue_key(event).as_slice(), event.to_be_bytes().as_slice())
        .expect("insert");
}

/// Moves the oldest `max` jobs from `head` on from the queue to the leases
/// in `txn` and commits it; their numbers. Both redb-backed engines lease
/// alike.
fn lease_in(txn: redb::WriteTransaction, max: usize, head: [u8; 9]) -> Vec<u64> {
    let mut jobs = Vec::with_capacity(max);
    {
        let mut queue = txn.open_table(QUEUE).expect("queue");
        let mut leases = txn.open_table(LEASES).expect("leases");
        let mut keys = Vec::with_capacity(max);
        for entry in queue.range(head.as_slice()..).expect("range").take(max) {
            let (key, _) = entry.expect("entry");
            keys.push(key.value().to_vec());
        }
        for key in keys {
            queue.remove(key.as_slice()).expect("remove");
            let job = u64::from_be_bytes(key[1..].try_into().expect("9-byte key"));
            leases
                .insert(job, 30_000u64.to_be_bytes().as_slice())
                .expect("insert");
            jobs.push(job);
        }
    }
    txn.commit().expect("commit");
    jobs
}

struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("store.redb")).expect("create redb");
        let txn = db.begin_write().expect("begin");
        txn.open_table(EVENTS).expect("table");
        txn.open_table(DEDUP).expect("table");
        txn.open_table(QUEUE).expect("table");
        txn.open_table(LEASES).expect("table");
        txn.commit().expect("commit");
        Redb(db)
    }

    fn begin(&self, durable: bool) -> redb::WriteTransaction {
        let mut txn = self.0.begin_write().expect("begin");
        if !durable {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        txn
    }
}

impl Engine for Redb {
    fn accept(&mut self, events: std::ops::Range<u64>, body: &[u8]) {
        let txn = self.begin(true);
        {
            let mut records = txn.open_table(EVENTS).expect("events");
            let mut dedup = txn.open_table(DEDUP).expect("dedup");
            let mut queue = txn.open_table(QUEUE).expect("queue");
            for event in events {
                records
                    .insert(event, record(event, body).as_slice())
                    .expect("insert");
                insert_keys(&mut dedup, &mut queue, event);
            }
        }
        txn.commit().expect("commit");
    }

    fn lease(&mut self, max: usize, head: [u8; 9], durable: bool) -> Vec<u64> {
        lease_in(self.begin(durable), max, head)
    }

    fn ack(&mut self, jobs: &[u64], durable: bool) {
        let txn = self.begin(durable);
        {
            let mut leases = txn.open_table(LEASES).expect("leases");
            let mut records = txn.open_table(EVENTS).expect("events");
            for &job in jobs {
                leases.remove(job).expect("remove");
                records.remove(job).expect("remove");
            }
        }
        txn.commit().expect("commit");
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    events: fjall::PartitionHandle,
    dedup: fjall::PartitionHandle,
    queue: fjall::PartitionHandle,
    leases: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        // JOURNAL_MIB bounds the journals kept on disk before the
        // memtables are flushed (fjall's default is 512 MiB): a sidecar's
        // data volume is small, and what it pays for a smaller one is
        // more flushes and compactions.
        let mut config = fjall::Config::new(dir);
        if let Some(mib) = std::env::var("JOURNAL_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            config = config
                .max_journaling_size(mib << 20)
                .max_write_buffer_size(mib << 19);
        }
        let keyspace = config.open().expect("open fjall");
        let part = |name: &str| {
            keyspace
                .open_partition(name, fjall::PartitionCreateOptions::default())
                .expect("partition")
        };
        Fjall {
            events: part("events"),
            dedup: part("dedup"),
            queue: part("queue"),
            leases: part("leases"),
            keyspace,
        }
    }

    fn commit(&self, batch: fjall::Batch, durable: bool) {
        batch.commit().expect("commit");
        if durable {
            self.keyspace
                .persist(fjall::PersistMode::SyncData)
                .expect("fdatasync the journal");
        }
    }
}

impl Engine for Fjall {
    fn accept(&mut self, events: std::ops::Range<u64>, body: &[u8]) {
        let mut batch = self.keyspace.batch();
        for event in events {
            batch.insert(&self.events, event.to_be_bytes(), record(event, body));
            batch.insert(&self.dedup, dedup_key(event), event.to_be_bytes());
            batch.insert(&self.queue, queue_key(event), event.to_be_bytes());
        }
        self.commit(batch, true);
    }

    fn lease(&mut self, max: usize, head: [u8; 9], durable: bool) -> Vec<u64> {
        let mut batch = self.keyspace.batch();
        let mut jobs = Vec::with_capacity(max);
        for entry in self.queue.range(head..).take(max) {
            let (key, _) = entry.expect("entry");
            let job = u64::from_be_bytes(key[1..].try_into().expect("9-byte key"));
            batch.remove(&self.queue, key);
            batch.insert(&self.leases, job.to_be_bytes(), 30_000u64.to_be_bytes());
            jobs.push(job);
        }
        self.commit(batch, durable);
        jobs
    }

    fn ack(&mut self, jobs: &[u64], durable: bool) {
        let mut batch = self.keyspace.batch();
        for &job in jobs {
            batch.remove(&self.leases, job.to_be_bytes());
            batch.remove(&self.events, job.to_be_bytes());
        }
        self.commit(batch, durable);
    }
}

/// The log engine: events and outcomes appended to one file, the indexes
/// in redb. An accept is durable once its records are appended and
/// fdatasynced; redb's commits are not fsynced but once a second, since
/// the log can rebuild them. Outcomes (here: acks) are appended too, and
/// fsynced with the next accept or within the second, as the sidecar does
/// with acks today.
struct Log {
    file: std::fs::File,
    /// Bytes appended so far: the next record's offset.
    end: u64,
    index: redb::Database,
    buffer: Vec<u8>,
    last_durable: Instant,
    /// Every accept's index commit fsynced too (`logsync`): no replay
    /// needed after a crash, at the cost of redb's fsync per batch.
    index_durable: bool,
}

impl Log {
    fn open(dir: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events.log"))
            .expect("open the log");
        let index = redb::Database::create(dir.join("index.redb")).expect("create redb");
        let txn = index.begin_write().expect("begin");
        txn.open_table(PLACES).expect("table");
        txn.open_table(DEDUP).expect("table");
        txn.open_table(QUEUE).expect("table");
        txn.open_table(LEASES).expect("table");
        txn.commit().expect("commit");
        Log {
            file,
            end: 0,
            index,
            buffer: Vec::new(),
            last_durable: Instant::now(),
            index_durable: false,
        }
    }

    /// Frames one record: kind, length, and the bytes (a real log adds a
    /// checksum, which this one's CPU does not miss by much).
    fn frame(&mut self, kind: u8, bytes: &[u8]) -> (u64, u32) {
        let at = self.end + self.buffer.len() as u64;
        self.buffer.push(kind);
        self.buffer
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buffer.extend_from_slice(bytes);
        (at, bytes.len() as u32)
    }

    fn append(&mut self, sync: bool) {
        self.file.write_all(&self.buffer).expect("append");
        self.end += self.buffer.len() as u64;
        self.buffer.clear();
        if sync {
            self.file.sync_data().expect("fdatasync the log");
        }
    }

    /// The index's commits are made durable once a second: the log holds
    /// what a crash would lose of them.
    fn begin(&mut self) -> redb::WriteTransaction {
        let mut txn = self.index.begin_write().expect("begin");
        if self.last_durable.elapsed().as_secs() >= 1 {
            self.last_durable = Instant::now();
        } else {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        txn
    }
}

impl Engine for Log {
    fn accept(&mut self, events: std::ops::Range<u64>, body: &[u8]) {
        let places: Vec<(u64, (u64, u32))> = events
            .clone()
            .map(|event| (event, self.frame(b'E', &record(event, body))))
            .collect();
        self.append(true);
        let txn = if self.index_durable {
            self.index.begin_write().expect("begin")
        } else {
            self.begin()
        };
        {
            let mut index = txn.open_table(PLACES).expect("places");
            let mut dedup = txn.open_table(DEDUP).expect("dedup");
            let mut queue = txn.open_table(QUEUE).expect("queue");
            for (event, place) in places {
                index.insert(event, place).expect("insert");
                insert_keys(&mut dedup, &mut queue, event);
            }
        }
        txn.commit().expect("commit");
    }

    fn lease(&mut self, max: usize, head: [u8; 9], _durable: bool) -> Vec<u64> {
        lease_in(self.begin(), max, head)
    }

    /// The outcome is a record of its own (what the event log keeps), and
    /// the lease leaves the index; the event's place stays for its history.
    fn ack(&mut self, jobs: &[u64], durable: bool) {
        for &job in jobs {
            let mut outcome = [0u8; 24];
            outcome[..8].copy_from_slice(&job.to_be_bytes());
            self.frame(b'O', &outcome);
        }
        self.append(durable);
        let txn = self.begin();
        {
            let mut leases = txn.open_table(LEASES).expect("leases");
            for &job in jobs {
                leases.remove(job).expect("remove");
            }
        }
        txn.commit().expect("commit");
    }
}

/// The process's user + system CPU in microseconds, every thread counted.
fn cpu_us() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Bytes this process caused to be written to the disk (`/proc/self/io`).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Run {
    jobs_per_s: f64,
    cpu_us_per_job: f64,
    bytes_per_job: f64,
    dir_mib: f64,
}

fn run(engine: &mut dyn Engine, dir: &Path, rounds: usize, batch: usize, backlog: usize) -> Run {
    let body = vec![b'x'; setting("BODY", 2048)];
    // The backlog sits at the queue's far end (job numbers above any the
    // rounds use), so every lease takes the rounds' own jobs first.
    let far = 1u64 << 40;
    for start in (0..backlog as u64).step_by(batch.max(1)) {
        engine.accept(
            far + start..far + (start + batch as u64).min(backlog as u64),
            &body,
        );
    }
    let (cpu0, bytes0, t0) = (cpu_us(), written_bytes(), Instant::now());
    let mut next = 0u64;
    let mut last_fsync = Instant::now();
    for _ in 0..rounds {
        let head = queue_key(next);
        engine.accept(next..next + batch as u64, &body);
        next += batch as u64;
        // Leases and acks fsynced once a second (module comment).
        let durable = last_fsync.elapsed().as_secs() >= 1;
        if durable {
            last_fsync = Instant::now();
        }
        let jobs = engine.lease(batch, head, durable);
        assert_eq!(jobs.len(), batch, "the round's jobs are the oldest");
        engine.ack(&jobs, durable);
    }
    let jobs = (rounds * batch) as f64;
    Run {
        jobs_per_s: jobs / t0.elapsed().as_secs_f64(),
        cpu_us_per_job: (cpu_us() - cpu0) as f64 / jobs,
        bytes_per_job: (written_bytes() - bytes0) as f64 / jobs,
        dir_mib: dir_size(dir) as f64 / (1024.0 * 1024.0),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(300);
    let repeats: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(3);
    let batch = setting("BATCH", 32);
    let backlog = setting("BACKLOG", 0);
    let engines = std::env::var("ENGINES").unwrap_or_else(|_| "redb,fjall,log,logsync".into());
    // On the disk, not a tmpfs: what is measured is the durable write.
    let base = std::env::var_os("DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/engines-data"));
    println!(
        "{rounds} rounds of {batch} jobs ({} B bodies, backlog {backlog}), 3 commits per round (the accept's fsynced), in {}",
        setting("BODY", 2048),
        base.display()
    );
    println!("engine  repeat    jobs/s  cpu_us/job  disk_KiB/job  dir_MiB");
    for repeat in 1..=repeats {
        // Alternating, so neither engine always runs in the machine's
        // quieter moment.
        let order: [&str; 4] = if repeat % 2 == 1 {
            ["redb", "fjall", "log", "logsync"]
        } else {
            ["logsync", "log", "fjall", "redb"]
        };
        for name in order {
            if !engines.split(',').any(|e| e == name) {
                continue;
            }
            let dir = base.join(format!("{name}-{repeat}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("data dir");
            let result = match name {
                "redb" => run(&mut Redb::open(&dir), &dir, rounds, batch, backlog),
                "fjall" => run(&mut Fjall::open(&dir), &dir, rounds, batch, backlog),
                "logsync" => {
                    let mut log = Log::open(&dir);
                    log.index_durable = true;
                    run(&mut log, &dir, rounds, batch, backlog)
                }
                _ => run(&mut Log::open(&dir), &dir, rounds, batch, backlog),
            };
            println!(
                "{name:<7} {repeat:>6} {:>9.0} {:>11.1} {:>13.1} {:>8.1}",
                result.jobs_per_s,
                result.cpu_us_per_job,
                result.bytes_per_job / 1024.0,
                result.dir_mib
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
