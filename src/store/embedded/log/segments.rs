//! The event log's files: records appended to numbered segments under
//! `log/`, each frame checksummed (`frame`), each append durable once
//! `sync` returns (one `fdatasync` for every record appended since the
//! last one). A synced byte is never written again; a segment leaves whole
//! (`remove`), when the engine says nothing in it is kept any more.
//!
//! Opening scans the segments from a position the caller knows to be
//! durable (its last checkpoint) and hands each record after it to the
//! caller: a crash's torn tail ends the records of its segment, and is cut
//! off so that new records follow the last whole one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::frame::{self, Header, HEADER};

/// What a segment starts with: the format and its version.
pub const MAGIC: &[u8; 8] = b"wslog\0\0\x01";
const START: u64 = MAGIC.len() as u64;

/// A segment is closed and the next one started once it would pass this
/// size (a record larger than it gets a segment of its own).
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Where a record lies: its segment, the offset of its frame, and its
/// payload's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Place {
    /// Where the record after this one starts.
    pub fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset + (HEADER as u64) + u64::from(self.len),
        }
    }
}

/// A point in the log: everything before it is in segments below
/// `segment`, or before `offset` in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub segment: u32,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event log {path}: the record at offset {offset} does not check out")]
    Corrupt { path: String, offset: u64 },
    #[error("event log {path}: not a segment of this version (it starts {found:?})")]
    Format { path: String, found: Vec<u8> },
    #[error("event log: segment {0} is gone")]
    Missing(u32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The segment being appended to, and what has been appended to it since
/// the last sync.
struct Appender {
    segment: u32,
    file: File,
    /// Bytes of the segment that are synced.
    synced: u64,
    buffer: Vec<u8>,
}

pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    appender: Mutex<Appender>,
    /// Read handles, opened on first use; a segment's handle goes with it.
    readers: RwLock<BTreeMap<u32, Arc<File>>>,
}

fn segment_name(segment: u32) -> String {
    format!("{segment:010}.seg")
}

fn segment_of(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl SegmentLog {
    /// Opens (or starts) the log in `dir`, handing `replay` every record
    /// from `from` on, in order; a record torn by a crash ends its segment
    /// and is cut off. `replay` may refuse a record (its error ends the
    /// opening).
    pub fn open<E: From<LogError>>(
        dir: &Path,
        segment_bytes: u64,
        from: Position,
        mut replay: impl FnMut(Place, u8, &[u8]) -> Result<(), E>,
    ) -> Result<Self, E> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments = list(dir)?;
        if segments.is_empty() {
            create(dir, from.segment.max(1))?;
            segments.push(from.segment.max(1));
        }
        let mut last_end = START;
        let last = *segments.last().unwrap_or(&1);
        for &segment in segments.iter().filter(|&&s| s >= from.segment) {
            let start = if segment == from.segment {
                from.offset.max(START)
            } else {
                START
            };
            let end = scan(dir, segment, start, &mut replay)?;
            let path = dir.join(segment_name(segment));
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            let len = file.metadata().map_err(io(&path))?.len();
            if len > end {
                tracing::warn!(
                    segment = %path.display(),
                    kept = end,
                    cut = len - end,
                    "the event log's segment ends in a torn record (a crash mid-append): cut off"
                );
                file.set_len(end).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            if segment == last {
                last_end = end;
            }
        }
        let path = dir.join(segment_name(last));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            appender: Mutex::new(Appender {
                segment: last,
                file,
                synced: last_end,
                buffer: Vec::new(),
            }),
            readers: RwLock::default(),
        })
    }

    fn appender(&self) -> std::sync::MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `records` (kind, payload) and makes them durable: their
    /// places once one `fdatasync` covers them all. On an error none of
    /// them is kept (a part written before it is cut off). Callers on
    /// other threads take turns: a batch is appended and synced whole.
    pub fn append(&self, records: &[(u8, &[u8])]) -> Result<Vec<Place>, LogError> {
        let mut appender = self.appender();
        let mut places = Vec::with_capacity(records.len());
        for &(kind, payload) in records {
            let at = appender.synced + appender.buffer.len() as u64;
            let frame = (HEADER + payload.len()) as u64;
            if at > START && at + frame > self.segment_bytes {
                if let Err(error) = self.roll(&mut appender) {
                    appender.buffer.clear();
                    return Err(error);
                }
            }
            let offset = appender.synced + appender.buffer.len() as u64;
            frame::encode(&mut appender.buffer, kind, payload);
            places.push(Place {
                segment: appender.segment,
                offset,
                len: payload.len() as u32,
            });
        }
        Self::flush(&self.dir, &mut appender)?;
        Ok(places)
    }

    /// Writes and syncs the segment being appended to, and starts the next.
    fn roll(&self, appender: &mut Appender) -> Result<(), LogError> {
        Self::flush(&self.dir, appender)?;
        let next = appender.segment + 1;
        let (file, _) = create(&self.dir, next)?;
        appender.segment = next;
        appender.file = file;
        appender.synced = START;
        Ok(())
    }

    /// Starts the next segment now: the one appended to so far can then
    /// go like any other.
    pub fn roll_now(&self) -> Result<(), LogError> {
        self.roll(&mut self.appender())
    }

    /// Hands `visit` each whole record of one segment, in order.
    pub fn records<E: From<LogError>>(
        &self,
        segment: u32,
        mut visit: impl FnMut(Place, u8, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        scan(&self.dir, segment, START, &mut visit).map(drop)
    }

    fn flush(dir: &Path, appender: &mut Appender) -> Result<(), LogError> {
        if appender.buffer.is_empty() {
            return Ok(());
        }
        let path = dir.join(segment_name(appender.segment));
        let written = appender
            .file
            .write_all_at(&appender.buffer, appender.synced)
            .and_then(|()| appender.file.sync_data());
        match written {
            Ok(()) => {
                appender.synced += appender.buffer.len() as u64;
                appender.buffer.clear();
                Ok(())
            }
            Err(error) => {
                // What was appended since the last sync is not durable: its
                // places are never handed on, and a part written before the
                // error (a full disk) must not stay as a half record.
                appender.buffer.clear();
                let _ = appender.file.set_len(appender.synced);
                Err(io(&path)(error))
            }
        }
    }

    /// Hands `replay` every record from `from` on, in order, as opening
    /// does, without cutting anything (what is synced is whole).
    pub fn replay<E: From<LogError>>(
        &self,
        from: Position,
        mut replay: impl FnMut(Place, u8, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for segment in list(&self.dir)?.into_iter().filter(|&s| s >= from.segment) {
            let start = if segment == from.segment {
                from.offset.max(START)
            } else {
                START
            };
            scan(&self.dir, segment, start, &mut replay)?;
        }
        Ok(())
    }

    /// Where the next record will go: everything before it is synced.
    pub fn end(&self) -> Position {
        let appender = self.appender();
        Position {
            segment: appender.segment,
            offset: appender.synced + appender.buffer.len() as u64,
        }
    }

    /// Whether anything was appended to the segment being appended to.
    pub fn active_holds_records(&self) -> bool {
        let appender = self.appender();
        appender.synced + appender.buffer.len() as u64 > START
    }

    /// The segment being appended to: never removed.
    pub fn active(&self) -> u32 {
        self.appender().segment
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, LogError> {
        if let Some(file) = self
            .readers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&segment)
        {
            return Ok(Arc::clone(file));
        }
        let path = self.dir.join(segment_name(segment));
        let file = match File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogError::Missing(segment))
            }
            Err(error) => return Err(io(&path)(error)),
        };
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(segment, Arc::clone(&file));
        Ok(file)
    }

    /// The record at `place`: its kind and payload.
    pub fn read(&self, place: Place) -> Result<(u8, Vec<u8>), LogError> {
        let file = self.reader(place.segment)?;
        let path = || self.dir.join(segment_name(place.segment));
        let corrupt = || LogError::Corrupt {
            path: path().display().to_string(),
            offset: place.offset,
        };
        let mut bytes = vec![0; HEADER + place.len as usize];
        file.read_exact_at(&mut bytes, place.offset)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => corrupt(),
                _ => io(&path())(error),
            })?;
        let header: &[u8; HEADER] = bytes[..HEADER].try_into().map_err(|_| corrupt())?;
        let header = Header::parse(header).ok_or_else(corrupt)?;
        if header.len != place.len || !header.checks(&bytes[HEADER..]) {
            return Err(corrupt());
        }
        bytes.drain(..HEADER);
        Ok((header.kind, bytes))
    }

    /// Every segment (number and bytes), oldest first.
    pub fn segments(&self) -> Result<Vec<(u32, u64)>, LogError> {
        list(&self.dir)?
            .into_iter()
            .map(|segment| {
                let path = self.dir.join(segment_name(segment));
                let len = std::fs::metadata(&path).map_err(io(&path))?.len();
                Ok((segment, len))
            })
            .collect()
    }

    /// Bytes in every segment.
    pub fn bytes(&self) -> Result<u64, LogError> {
        Ok(self.segments()?.iter().map(|(_, len)| len).sum())
    }

    /// Removes a whole segment; the one being appended to stays.
    pub fn remove(&self, segment: u32) -> Result<bool, LogError> {
        if segment >= self.active() {
            return Ok(false);
        }
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&segment);
        let path = self.dir.join(segment_name(segment));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io(&path)(error)),
        }
    }
}

/// The segments in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<u32>, LogError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(segment) = entry.file_name().to_str().and_then(segment_of) {
            segments.push(segment);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Starts segment `segment`: its magic, synced, and its name in the
/// directory synced too (a segment that vanished in a crash would take
/// synced records with it).
fn create(dir: &Path, segment: u32) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(segment_name(segment));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all_at(MAGIC, 0).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok((file, path))
}

/// Hands `replay` each whole record of `segment` from `start`; the end of
/// the last one.
fn scan<E: From<LogError>>(
    dir: &Path,
    segment: u32,
    start: u64,
    replay: &mut impl FnMut(Place, u8, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let path = dir.join(segment_name(segment));
    let file = File::open(&path).map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();
    let mut magic = [0u8; MAGIC.len()];
    let head = file.read_exact_at(&mut magic, 0);
    if head.is_err() || &magic != MAGIC {
        if len < START && MAGIC.starts_with(&magic[..len as usize]) {
            // Created and torn before its magic was synced: nothing in it.
            file.sync_all().map_err(io(&path))?;
            drop(file);
            let (_, _) = create(dir, segment)?;
            return Ok(START);
        }
        return Err(LogError::Format {
            path: path.display().to_string(),
            found: magic[..(len as usize).min(MAGIC.len())].to_vec(),
        }
        .into());
    }
    if start > len {
        // A checkpoint is written only after the log is synced up to it:
        // a segment shorter than that lost synced records.
        return Err(LogError::Corrupt {
            path: path.display().to_string(),
            offset: len,
        }
        .into());
    }
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut skip = start;
    std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).map_err(io(&path))?;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    while skip + HEADER as u64 <= len {
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let Some(parsed) = Header::parse(&header) else {
            break;
        };
        if skip + (HEADER as u64) + u64::from(parsed.len) > len {
            break;
        }
        payload.resize(parsed.len as usize, 0);
        if reader.read_exact(&mut payload).is_err() || !parsed.checks(&payload) {
            break;
        }
        let place = Place {
            segment,
            offset: skip,
            len: parsed.len,
        };
        replay(place, parsed.kind, &payload)?;
        skip = place.end().offset;
    }
    Ok(skip.max(START))
}

#[cfg(test)]
#[path = "segments_tests.rs"]
mod tests;
