//! The embedded store's event log: every event's record appended once to
//! checksummed segment files (`segments`, framed by `frame`), so that an
//! accept is one sequential append and one `fdatasync`, and redb keeps only
//! what finds a record (its place), never the record itself.

pub mod frame;
pub mod segments;

pub use segments::{LogError, Place, Position, SegmentLog, SEGMENT_BYTES};

impl From<LogError> for crate::store::StoreError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Io { .. } => Self::Unavailable(error.to_string()),
            _ => Self::Corrupt(error.to_string()),
        }
    }
}
