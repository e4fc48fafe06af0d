use super::*;

type Replayed = Vec<(Place, u8, Vec<u8>)>;

fn open(dir: &Path, bytes: u64, from: Position) -> (SegmentLog, Replayed) {
    let mut seen = Vec::new();
    let log = SegmentLog::open::<LogError>(dir, bytes, from, |place, kind, payload| {
        seen.push((place, kind, payload.to_vec()));
        Ok(())
    })
    .expect("the log opens");
    (log, seen)
}

fn record(n: usize) -> Vec<u8> {
    format!("event {n} of wedding w-{}", n % 7).into_bytes()
}

#[test]
fn records_read_back_and_replay_in_order_from_any_position() {
    let dir = tempfile_dir();
    let (log, seen) = open(&dir, SEGMENT_BYTES, Position::default());
    assert!(seen.is_empty());
    let places: Vec<Place> = (0..100)
        .map(|n| log.append(&[(1 + (n % 3) as u8, &record(n))]).unwrap()[0])
        .collect();
    for (n, place) in places.iter().enumerate() {
        assert_eq!(log.read(*place).unwrap(), (1 + (n % 3) as u8, record(n)));
    }
    assert_eq!(log.end(), places[99].end());
    drop(log);
    let (_, seen) = open(&dir, SEGMENT_BYTES, Position::default());
    assert_eq!(seen.len(), 100);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(n, (p, _, b))| *p == places[n] && *b == record(n)));
    // From a checkpoint: only what follows it.
    let (_, seen) = open(&dir, SEGMENT_BYTES, places[59].end());
    assert_eq!(seen.first().map(|s| s.0), Some(places[60]));
    assert_eq!(seen.len(), 40);
}

#[test]
fn a_torn_tail_at_any_length_ends_the_records_and_is_cut_off() {
    let dir = tempfile_dir();
    let (log, _) = open(&dir, SEGMENT_BYTES, Position::default());
    let kept: Vec<Place> = (0..5)
        .map(|n| log.append(&[(1, &record(n))]).unwrap()[0])
        .collect();
    let torn = log.append(&[(1, &record(5))]).unwrap()[0];
    drop(log);
    let path = dir.join(segment_name(torn.segment));
    let whole = std::fs::read(&path).unwrap();
    let frame_end = torn.end().offset as usize;
    assert_eq!(whole.len(), frame_end);
    for cut in torn.offset as usize..frame_end {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let (log, seen) = open(&dir, SEGMENT_BYTES, Position::default());
        assert_eq!(seen.len(), 5, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            torn.offset,
            "cut at {cut}"
        );
        // New records follow the last whole one, and replay after it.
        let next = log.append(&[(2, b"after the crash")]).unwrap()[0];
        assert_eq!(next.offset, torn.offset);
        drop(log);
        let (_, seen) = open(&dir, SEGMENT_BYTES, kept[4].end());
        assert_eq!(seen, vec![(next, 2, b"after the crash".to_vec())]);
    }
}

#[test]
fn zeros_a_crash_left_after_the_end_are_no_records() {
    let dir = tempfile_dir();
    let (log, _) = open(&dir, SEGMENT_BYTES, Position::default());
    let place = log.append(&[(1, &record(1))]).unwrap()[0];
    drop(log);
    let path = dir.join(segment_name(place.segment));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&path, &bytes).unwrap();
    let (log, seen) = open(&dir, SEGMENT_BYTES, Position::default());
    assert_eq!(seen.len(), 1);
    assert_eq!(log.end(), place.end());
}

#[test]
fn segments_roll_at_their_size_and_leave_whole() {
    let dir = tempfile_dir();
    let (log, _) = open(&dir, 4096, Position::default());
    let body = vec![b'x'; 1000];
    let places: Vec<Place> = (0..20)
        .map(|_| log.append(&[(1, &body)]).unwrap()[0])
        .collect();
    let segments = log.segments().unwrap();
    assert!(segments.len() >= 5, "{segments:?}");
    assert!(segments.iter().all(|(_, len)| *len <= 4096));
    // A record larger than a segment gets one of its own.
    let large = log.append(&[(1, &vec![b'y'; 10_000])]).unwrap()[0];
    assert_eq!(log.read(large).unwrap().1.len(), 10_000);
    let first = places[0].segment;
    assert!(log.remove(first).unwrap());
    assert!(matches!(log.read(places[0]), Err(LogError::Missing(s)) if s == first));
    assert!(
        !log.remove(log.active()).unwrap(),
        "the active segment stays"
    );
    assert_eq!(log.read(places[19]).unwrap().1, body);
    drop(log);
    // Reopened from a checkpoint in a later segment, it goes on there.
    let (log, seen) = open(&dir, 4096, places[10].end());
    assert_eq!(seen.len(), 9 + 1);
    assert_eq!(log.end(), large.end());
}

#[test]
fn a_failed_sync_keeps_nothing_of_what_it_held() {
    let dir = tempfile_dir();
    let (log, _) = open(&dir, SEGMENT_BYTES, Position::default());
    let first = log.append(&[(1, &record(1))]).unwrap()[0];
    {
        // A handle that cannot write stands for a disk that refuses.
        let mut appender = log.appender();
        let path = dir.join(segment_name(appender.segment));
        appender.file = File::open(&path).unwrap();
    }
    let refused = log.append(&[(1, &record(2)), (1, &record(3))]);
    assert!(matches!(refused, Err(LogError::Io { .. })));
    assert_eq!(log.end(), first.end(), "the failed records are given up");
    {
        let mut appender = log.appender();
        let path = dir.join(segment_name(appender.segment));
        appender.file = OpenOptions::new().write(true).open(&path).unwrap();
    }
    let next = log.append(&[(3, b"next")]).unwrap()[0];
    assert_eq!(next.offset, first.end().offset);
    drop(log);
    let (_, seen) = open(&dir, SEGMENT_BYTES, Position::default());
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn a_file_of_another_format_is_refused_and_a_segment_torn_at_birth_restarts() {
    let dir = tempfile_dir();
    std::fs::write(dir.join(segment_name(1)), b"not a log").unwrap();
    let opened =
        SegmentLog::open::<LogError>(&dir, SEGMENT_BYTES, Position::default(), |_, _, _| Ok(()));
    assert!(matches!(opened, Err(LogError::Format { .. })));
    std::fs::write(dir.join(segment_name(1)), &MAGIC[..3]).unwrap();
    let (log, seen) = open(&dir, SEGMENT_BYTES, Position::default());
    assert!(seen.is_empty());
    let place = log.append(&[(1, b"first")]).unwrap()[0];
    assert_eq!(log.read(place).unwrap().1, b"first");
}

#[test]
fn a_checkpoint_past_the_segments_end_is_an_error_not_a_hole() {
    let dir = tempfile_dir();
    let (log, _) = open(&dir, SEGMENT_BYTES, Position::default());
    let place = log.append(&[(1, &record(1))]).unwrap()[0];
    drop(log);
    let from = Position {
        segment: place.segment,
        offset: place.end().offset + 100,
    };
    let opened = SegmentLog::open::<LogError>(&dir, SEGMENT_BYTES, from, |_, _, _| Ok(()));
    assert!(matches!(opened, Err(LogError::Corrupt { .. })));
}

/// A fresh directory under the system's temporary one, removed with it.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "sidecar-log-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
