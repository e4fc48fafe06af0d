//! Writes the fuzz targets' starting corpora (`wedsync_sidecar::fuzzing::seeds`)
//! under DIR/<target>/, one file per seed; `scripts/fuzz` runs it first.
//! Usage: fuzz_seeds DIR

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_seeds DIR"));
    for (n, (target, data)) in wedsync_sidecar::fuzzing::seeds().into_iter().enumerate() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).expect("a writable corpus directory");
        std::fs::write(target_dir.join(format!("seed-{n}")), data)
            .expect("a writable corpus directory");
    }
}
