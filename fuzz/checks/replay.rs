//! Replays the inputs kept in `fuzz/regressions/<target>/` through a fuzz target's property
//! check, for the crates' `tests/fuzz_regressions.rs` (which include this file with
//! `#[path]`), so an input that once broke a check stays fixed without cargo-fuzz.

use std::path::{Path, PathBuf};

/// The stack the checks run on: libFuzzer runs them on the main thread (8 MiB), where test
/// threads get 2 MiB, and an input must not pass there and overflow here.
const STACK: usize = 8 << 20;

/// Runs `check` on every file of `fuzz/regressions/<target>/` and reports each one that
/// panics, by file name.
pub fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let files = inputs(&dir);
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let name = file.file_name()?.to_string_lossy().into_owned();
            let run = std::thread::Builder::new()
                .name(name.clone())
                .stack_size(STACK)
                .spawn(move || check(&data))
                .unwrap_or_else(|e| panic!("cannot start a thread: {e}"));
            run.join()
                .err()
                .map(|panic| format!("{target}/{name}: {}", panic_message(&*panic)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} inputs fail (under libFuzzer: `cargo fuzz run -O -a -s none {target} <file>`):\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
