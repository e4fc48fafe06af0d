//! The accept journal: a redo log that makes an accepted event durable
//! with one sequential append and one `fdatasync`, where a durable redb
//! commit writes every 4 KiB page the transaction dirtied (about two per
//! event, scattered over the file) before its own `fdatasync`.
//!
//! The engine commits accepts to redb without an fsync, appends them here
//! before answering, and empties the journal after each fsynced commit
//! (about once a second): what the journal holds is exactly what redb may
//! have lost in a crash, and opening the store applies it again.
//!
//! The file is a header (magic and generation) followed by records, each
//! framed with its generation, length and CRC-32. Emptying the journal
//! writes a header with the next generation and overwrites from the start,
//! so that the file, once grown, is rewritten in place (an `fdatasync`
//! that changes no file size commits no filesystem metadata). Reading
//! stops at the first record that is torn, of another generation, or
//! larger than any event the sidecar accepts.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"WSJ1";
/// Magic, generation, CRC-32 of both.
const HEADER_LEN: u64 = 16;
/// Generation, payload length, CRC-32 of the three and the payload.
const FRAME_LEN: usize = 16;
/// Bodies are at most 64 MiB (`max_body`); metadata is far smaller.
pub const MAX_RECORD: usize = 80 << 20;
/// A journal grown past this by a burst is cut back when it is emptied
/// with little in use.
const SHRINK_ABOVE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal {0} is not one: its header is unreadable")]
    NotAJournal(PathBuf),
}

/// What opening found beside the records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The records of the current generation, in order.
    pub records: Vec<Vec<u8>>,
    /// Bytes after the last whole record that looked like the start of one
    /// (a torn append): not an error, what a crash mid-write leaves.
    pub torn: bool,
}

pub struct Journal {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes.
    end: u64,
    /// The records of one append, framed, written with one `pwrite`.
    buffer: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads what the current
    /// generation holds.
    pub fn open(path: &Path) -> Result<(Self, Recovered), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let mut journal = Self {
            file,
            path: path.to_path_buf(),
            generation: 0,
            end: HEADER_LEN,
            buffer: Vec::new(),
        };
        if length < HEADER_LEN {
            // New, or cut short before its first header reached the disk:
            // nothing in it was ever answered.
            journal.write_header()?;
            journal.sync()?;
            return Ok((journal, Recovered::default()));
        }
        let mut reader = BufReader::with_capacity(1 << 16, &journal.file);
        let mut header = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut header).map_err(io)?;
        journal.generation =
            read_header(&header).ok_or_else(|| JournalError::NotAJournal(path.to_path_buf()))?;
        let mut recovered = Recovered::default();
        let mut remaining = length - HEADER_LEN;
        loop {
            match read_record(&mut reader, journal.generation, remaining).map_err(io)? {
                Record::Whole(payload) => {
                    let framed = (FRAME_LEN + payload.len()) as u64;
                    remaining -= framed;
                    journal.end += framed;
                    recovered.records.push(payload);
                }
                Record::End => break,
                Record::Torn => {
                    recovered.torn = true;
                    break;
                }
            }
        }
        Ok((journal, recovered))
    }

    /// The generation records are written under now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends `payloads` and waits for them to reach the disk. On an error
    /// nothing counts as written: the next append goes to the same place.
    pub fn append<'p>(
        &mut self,
        payloads: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<(), JournalError> {
        self.buffer.clear();
        for payload in payloads {
            frame(&mut self.buffer, self.generation, payload);
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all_at(&self.buffer, self.end).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.end += self.buffer.len() as u64;
        Ok(())
    }

    /// Forgets every record: the caller has made them durable elsewhere.
    /// The new header is not synced here: the next append's `fdatasync`
    /// covers it, and until then a crash leaves either header, under which
    /// the records read back are ones already durable or ones never answered.
    pub fn empty(&mut self) -> Result<(), JournalError> {
        if self.end == HEADER_LEN {
            return Ok(());
        }
        let used = self.end;
        self.generation += 1;
        self.end = HEADER_LEN;
        self.write_header()?;
        let length = self
            .file
            .metadata()
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })?
            .len();
        if length > SHRINK_ABOVE && used < length / 4 {
            self.file
                .set_len(HEADER_LEN)
                .map_err(|source| JournalError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn write_header(&mut self) -> Result<(), JournalError> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4..12].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&header[..12]);
        header[12..].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn sync(&self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn read_header(header: &[u8; HEADER_LEN as usize]) -> Option<u64> {
    let crc = u32::from_le_bytes(header[12..].try_into().ok()?);
    (&header[..4] == MAGIC && crc32fast::hash(&header[..12]) == crc)
        .then(|| u64::from_le_bytes(header[4..12].try_into().expect("8 bytes")))
}

fn frame(buffer: &mut Vec<u8>, generation: u64, payload: &[u8]) {
    let start = buffer.len();
    buffer.extend_from_slice(&generation.to_le_bytes());
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buffer[start..start + 12]);
    crc.update(payload);
    buffer.extend_from_slice(&crc.finalize().to_le_bytes());
    buffer.extend_from_slice(payload);
}

enum Record {
    Whole(Vec<u8>),
    /// No more records of this generation: the end of what was written.
    End,
    /// A frame of this generation whose payload is cut short or does not
    /// match its CRC.
    Torn,
}

fn read_record(reader: &mut impl Read, generation: u64, remaining: u64) -> std::io::Result<Record> {
    if remaining < FRAME_LEN as u64 {
        return Ok(if remaining == 0 {
            Record::End
        } else {
            Record::Torn
        });
    }
    let mut frame = [0u8; FRAME_LEN];
    reader.read_exact(&mut frame)?;
    let written_in = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
    if written_in != generation {
        // An older generation's record, overwritten up to here.
        return Ok(Record::End);
    }
    let length = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes")) as usize;
    if length > MAX_RECORD || (FRAME_LEN + length) as u64 > remaining {
        return Ok(Record::Torn);
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..12]);
    crc.update(&payload);
    let expected = u32::from_le_bytes(frame[12..].try_into().expect("4 bytes"));
    Ok(if crc.finalize() == expected {
        Record::Whole(payload)
    } else {
        Record::Torn
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-journal-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("events.journal")
    }

    fn records(path: &Path) -> Recovered {
        Journal::open(path).unwrap().1
    }

    #[test]
    fn appended_records_read_back_in_order_until_emptied() {
        let path = path("order");
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, Recovered::default());
        journal.append([&b"one"[..], b"two"]).unwrap();
        journal.append([&b""[..]]).unwrap();
        journal.append([&b"three"[..]]).unwrap();
        let expected: Vec<Vec<u8>> =
            vec![b"one".to_vec(), b"two".to_vec(), vec![], b"three".to_vec()];
        assert_eq!(records(&path).records, expected);

        journal.empty().unwrap();
        assert_eq!(records(&path), Recovered::default());
        // The next generation overwrites the first record in place and
        // stops where the older records begin.
        journal.append([&b"four"[..]]).unwrap();
        assert_eq!(records(&path).records, vec![b"four".to_vec()]);
    }

    #[test]
    fn a_reopened_journal_appends_after_what_it_holds() {
        let path = path("reopen");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append([&b"one"[..]]).unwrap();
        drop(journal);
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found.records.len(), 1);
        journal.append([&b"two"[..]]).unwrap();
        assert_eq!(
            records(&path).records,
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        let generation = journal.generation();
        journal.empty().unwrap();
        drop(journal);
        let (journal, _) = Journal::open(&path).unwrap();
        assert_eq!(journal.generation(), generation + 1);
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_records_before_it() {
        let path = path("torn");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append([&b"kept"[..], b"second record"]).unwrap();
        drop(journal);
        let whole = std::fs::read(&path).unwrap();

        // Cut at every length inside the second record.
        let first_end = HEADER_LEN as usize + FRAME_LEN + 4;
        for cut in first_end + 1..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let found = records(&path);
            assert_eq!(found.records, vec![b"kept".to_vec()], "cut at {cut}");
            assert!(found.torn, "cut at {cut}");
        }
        // A flipped bit in the payload.
        let mut damaged = whole.clone();
        *damaged.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(records(&path).records, vec![b"kept".to_vec()]);
        // A length far beyond the file or any event: no allocation of it.
        let mut huge = whole.clone();
        huge[first_end + 8..first_end + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let found = records(&path);
        assert_eq!((found.records.len(), found.torn), (1, true));
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_and_left_alone() {
        let path = path("foreign");
        std::fs::write(&path, b"this is somebody else's file").unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::NotAJournal(_))
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is somebody else's file"
        );
    }

    #[test]
    fn a_header_cut_short_starts_an_empty_journal() {
        let path = path("short");
        std::fs::write(&path, b"WSJ").unwrap();
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, Recovered::default());
        journal.append([&b"one"[..]]).unwrap();
        assert_eq!(records(&path).records, vec![b"one".to_vec()]);
    }

    #[test]
    fn a_journal_grown_by_a_burst_is_cut_back_when_emptied_with_little_in_use() {
        let path = path("shrink");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let big = vec![7u8; (SHRINK_ABOVE + 1) as usize];
        journal.append([big.as_slice()]).unwrap();
        journal.empty().unwrap();
        journal.append([&b"small"[..]]).unwrap();
        // Still the big file: the last generation used all of it.
        assert!(std::fs::metadata(&path).unwrap().len() > SHRINK_ABOVE);
        journal.empty().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN);
        journal.append([&b"after"[..]]).unwrap();
        assert_eq!(records(&path).records, vec![b"after".to_vec()]);
    }
}
