//! A small tmpfs to fill, for the full-disk tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use super::unique_dir;

/// A small tmpfs mounted for one test (root only: `scripts/test` runs as
/// root on CI's Debian machine), unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let dir = unique_dir("tmpfs");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the full-disk tests run as root)"
        );
        Self { dir }
    }

    /// Fills what is left with one file; returns its path.
    pub fn fill(&self) -> PathBuf {
        Self::fill_dir(&self.dir)
    }

    /// Fills what is left of the file system at `dir` with one file.
    pub fn fill_dir(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
