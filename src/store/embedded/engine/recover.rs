//! Gap repair's state per webhook, in a table of its own: small, rarely
//! written (once a recovery run), read at each run's start.

use redb::ReadableDatabase;

use super::schema::{failed, BY_ID, DEDUP, DEDUP_IDS, RECOVER};
use super::LocalStore;
use crate::store::records::dedup_key;
use crate::store::StoreError;

impl LocalStore {
    pub fn recover_state(&self, webhook: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let table = match txn.open_table(RECOVER) {
            Ok(table) => table,
            // Written by the first run: an older file has no such table.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(failed(error)),
        };
        Ok(table
            .get(webhook)
            .map_err(failed)?
            .map(|state| state.value().to_vec()))
    }

    /// Whether `webhook`'s event `id` was accepted and is still known: by
    /// its dedup key where that is its id (in either generation's table),
    /// or by the event log's lookup by id where it is not (GitHub's, a
    /// signature digest).
    pub fn seen(&self, webhook: &str, id: &str) -> Result<bool, StoreError> {
        let key = dedup_key(webhook, id);
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        if txn
            .open_table(DEDUP_IDS)
            .map_err(failed)?
            .get(key.as_str())
            .map_err(failed)?
            .is_some()
        {
            return Ok(true);
        }
        match txn.open_table(BY_ID) {
            Ok(table) => {
                if table.get((webhook, id)).map_err(failed)?.is_some() {
                    return Ok(true);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(failed(error)),
        }
        match txn.open_table(DEDUP) {
            Ok(table) => Ok(table.get(key.as_str()).map_err(failed)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(error) => Err(failed(error)),
        }
    }

    /// Fsynced: a checkpoint that moved must not move back after a crash,
    /// or a provider's events would be fetched (not delivered) again.
    pub fn save_recover_state(&self, webhook: &str, state: &[u8]) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(failed)?;
        {
            let mut table = txn.open_table(RECOVER).map_err(failed)?;
            table.insert(webhook, state).map_err(failed)?;
        }
        txn.commit().map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_kept_per_webhook_across_a_reopen() {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-store-{}-recover-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let store = LocalStore::open(&dir).unwrap();
        assert_eq!(store.recover_state("stripe").unwrap(), None);
        store.save_recover_state("stripe", b"one").unwrap();
        store.save_recover_state("github", b"two").unwrap();
        store.save_recover_state("stripe", b"three").unwrap();
        drop(store);
        let store = LocalStore::open(&dir).unwrap();
        assert_eq!(
            store.recover_state("stripe").unwrap().as_deref(),
            Some(&b"three"[..])
        );
        assert_eq!(
            store.recover_state("github").unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(store.recover_state("resend").unwrap(), None);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
